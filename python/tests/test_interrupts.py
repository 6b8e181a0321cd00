"""KeyboardInterrupt (and any BaseException) in callbacks: raised inside any
callback of a step -- every pass of SAM, R-Drop, SMART, a user Term, the
loss and all-reduce callbacks -- or arriving as a signal while the library
runs, it aborts the step, the library rolls back bit-exactly, and the call
that ran the library re-raises it; nothing reaches ctypes' "Exception
ignored" path. Also the allocator's hooks, the free hooks and the checkpoint
stream callbacks."""
import gc
import io
import os
import signal
import subprocess
import sys
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402

import regopt  # noqa: E402
from regopt import _core  # noqa: E402

D_IN, WIDTH, K = 6, 8, 3


class Interrupt:
    """Raises `exc_type` at the target-th callback of a step (1-based);
    records the label of every callback entered."""

    def __init__(self):
        self.target = None
        self.exc_type = KeyboardInterrupt
        self.raised = None
        self.labels = []

    def hit(self, label):
        self.labels.append(label)
        if len(self.labels) == self.target:
            self.raised = self.exc_type("interrupted at %s" % label)
            raise self.raised


class EmbedHost:
    """x -> e = x We + be (+ SMART's perturbation) -> tanh -> dropout from the
    pass seed -> z = h Wo + bo; NumPy, with d_input for SMART."""

    def __init__(self, inj, seed=0):
        rng = np.random.default_rng(seed)
        self.p = {"we": (rng.standard_normal((D_IN, WIDTH)) * 0.4).astype(np.float32),
                  "be": np.zeros(WIDTH, np.float32),
                  "wo": (rng.standard_normal((WIDTH, K)) * 0.4).astype(np.float32),
                  "bo": np.zeros(K, np.float32)}
        self.g = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.inj = inj
        self.cache = {}

    def label(self, ps, what):
        tags = [n for n in ("perturbed_weights", "teacher", "no_param_grad", "no_grad")
                if getattr(ps, n)]
        if ps.input_perturbation is not None:
            tags.append("input_perturbation")
        return "%s[%s]" % (what, ",".join(tags))

    def forward(self, ps):
        self.inj.hit(self.label(ps, "forward"))
        x = ps.data[ps.rows_slice]
        e = x @ self.p["we"] + self.p["be"]
        if ps.input_perturbation is not None:
            e = e + ps.input_perturbation
        h = np.tanh(e)
        mask = regopt.dropout_mask(ps.seed, h.shape, 0.2) if ps.train \
            else np.ones_like(h)
        ps.outputs[:] = (h * mask) @ self.p["wo"] + self.p["bo"]
        self.cache[ps.slot] = (x, h, mask)

    def backward(self, ps):
        self.inj.hit(self.label(ps, "backward"))
        x, h, mask = self.cache.pop(ps.slot)
        dz = ps.d_outputs
        de = (dz @ self.p["wo"].T) * mask * (1 - h ** 2)
        if ps.d_input is not None:
            ps.d_input[:] = de
        if ps.no_param_grad:
            return
        self.g["wo"] += (h * mask).T @ dz
        self.g["bo"] += dz.sum(0)
        self.g["we"] += x.T @ de
        self.g["be"] += de.sum(0)

    def model(self, **kw):
        m = regopt.Model(K, forward=self.forward, backward=self.backward, slots=6,
                         input_width=WIDTH, **kw)
        for k in ("we", "be", "wo", "bo"):
            m.add_param(k, self.p[k], self.g[k], group=1 if k.startswith("b") else 0)
        return m


def data(n=12, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, D_IN)).astype(np.float32),
            rng.integers(0, K, n).astype(np.int32))


class EntryLib:
    """Stands in for the CDLL: every library function is called from the
    Python frame of call_c, so a frame whose caller is call_c is a callback
    the library entered (whatever the binding names its trampolines)."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        fn = getattr(self._real, name)

        def call_c(*a):
            return fn(*a)
        return call_c


CALL_C = [c for c in EntryLib.__getattr__.__code__.co_consts
          if getattr(c, "co_name", None) == "call_c"][0]


class SignalAtEntry:
    """sys.settrace hook: SIGINT is raised as the library enters its n-th
    callback, before any line of it runs -- as a Ctrl-C pressed while the
    library computes is handled at the entry of the next Python frame."""

    def __init__(self, n):
        self.n = n
        self.count = 0

    def __call__(self, frame, event, arg):
        if event == "call" and frame.f_back is not None and frame.f_back.f_code is CALL_C:
            self.count += 1
            if self.count == self.n:
                signal.raise_signal(signal.SIGINT)
        return None


class InterruptTest(unittest.TestCase):
    def setUp(self):
        self.unraisable = []
        self._hook = sys.unraisablehook
        sys.unraisablehook = lambda u: self.unraisable.append(u)
        self._sigint = signal.signal(signal.SIGINT, signal.default_int_handler)

    def tearDown(self):
        sys.settrace(None)
        sys.unraisablehook = self._hook
        signal.signal(signal.SIGINT, self._sigint)
        gc.collect()
        self.assertEqual(regopt.live_handles(), {"model": 0, "optimizer": 0, "trainer": 0})
        self.assertEqual(regopt.pending_callbacks(), 0)

    def make(self, inj, host, stack):
        x, y = data()
        m = stack.enter_context(host.model())
        o = stack.enter_context(regopt.Optimizer("adamw", lr=0.05, weight_decay=0.01))
        t = stack.enter_context(regopt.Trainer(m, o, seed=7))
        t.add("sam", rho=0.1)
        t.add("rdrop", alpha=0.5)
        t.add("smart", lambda_=1.0, epsilon=0.1, eta=0.05, sigma=0.01, steps=1, norm="l2")

        def term(view):
            inj.hit("term")
            d = view.outputs[0] - view.outputs[1]
            view.d_outputs[0][:] = d * view.inv_weight
            view.d_outputs[1][:] = -d * view.inv_weight
            return float(0.5 * (d * d).sum() * view.inv_weight)
        t.add(regopt.Term("consistency", term, passes=1,
                          pass_flags=[regopt.TERM_PASS_FRESH_SEED]))

        def allreduce(buf):
            inj.hit("allreduce")
        t.set_allreduce(allreduce)
        return t, x, y

    def check_every_callback(self, inject, completes=()):
        """inject(t, x, y, n): run a step whose n-th callback is interrupted;
        returns the exception the step raised (None: it did not raise). The
        step rolls back, except when the n-th callback's label is in
        `completes`: then it completes and only then raises."""
        import contextlib
        inj = Interrupt()
        host = EmbedHost(inj)
        with contextlib.ExitStack() as stack:
            t, x, y = self.make(inj, host, stack)
            t.step(data=x, labels=y)  # moments, teacher and statistics are not zero
            ck = t.to_bytes()
            p0 = {k: v.copy() for k, v in host.p.items()}
            inj.labels = []
            t.step(data=x, labels=y)
            labels = list(inj.labels)
            after = {k: v.copy() for k, v in host.p.items()}
            ck_after = t.to_bytes()
            self.assertNotEqual(ck, ck_after)
            for n in range(1, len(labels) + 1):
                with self.subTest(n=n, callback=labels[n - 1]):
                    t.from_bytes(ck)
                    inj.labels = []
                    exc = inject(t, x, y, n, inj)
                    self.assertIsInstance(exc, KeyboardInterrupt)
                    # its traceback holds the trainer, the Term's function holds
                    # inj: a cycle through the Term's keep-alive entry
                    exc = inj.raised = None
                    self.assertEqual(self.unraisable, [])
                    if labels[n - 1] in completes:
                        self.assertEqual(t.steps, 2)
                        self.assertEqual(t.to_bytes(), ck_after)
                        continue
                    self.assertEqual(t.steps, 1)
                    for k in p0:
                        np.testing.assert_array_equal(host.p[k], p0[k])
                    self.assertEqual(t.to_bytes(), ck)  # optimizer, teacher, stats, ...
                    inj.target = None
                    t.step(data=x, labels=y)  # and the run goes on as if nothing happened
                    for k in p0:
                        np.testing.assert_array_equal(host.p[k], after[k])
                    self.assertEqual(t.to_bytes(), ck_after)
        return labels

    def test_keyboard_interrupt_in_each_callback(self):
        def inject(t, x, y, n, inj):
            inj.target = n
            try:
                t.step(data=x, labels=y)
            except KeyboardInterrupt as e:
                self.assertIs(e, inj.raised)  # the original object
                self.assertIsInstance(e.regopt_error, regopt.Error)
                return e
            return None
        labels = self.check_every_callback(inject)
        seen = set(labels)
        for want in ("forward[]", "backward[]", "forward[perturbed_weights]",
                     "backward[perturbed_weights]", "forward[input_perturbation]",
                     "backward[no_param_grad,input_perturbation]", "term", "allreduce"):
            self.assertIn(want, seen)
        # R-Drop's second copy and the term's pass: more clean forwards than one
        self.assertGreaterEqual(labels.count("forward[]"), 3)

    def test_signal_while_the_library_runs(self):
        saved = _core.lib
        _core.lib = EntryLib(saved)

        def inject(t, x, y, n, inj):
            tracer = SignalAtEntry(n)
            try:
                sys.settrace(tracer)
                t.step(data=x, labels=y)
            except KeyboardInterrupt as e:
                return e
            finally:
                sys.settrace(None)
            return None
        try:
            # a signal held until the all-reduce is delivered after it: every
            # replica must join the collective (regopt.h), so the step completes
            self.check_every_callback(inject, completes=("allreduce",))
        finally:
            _core.lib = saved

    def test_other_base_exceptions_and_evaluate(self):
        import contextlib
        inj = Interrupt()
        host = EmbedHost(inj)
        with contextlib.ExitStack() as stack:
            t, x, y = self.make(inj, host, stack)
            ck = t.to_bytes()
            for exc_type, n in ((SystemExit, 1), (GeneratorExit, 2), (KeyboardInterrupt, 5)):
                inj.labels, inj.target, inj.exc_type = [], n, exc_type
                with self.assertRaises(exc_type) as cm:
                    t.step(data=x, labels=y)
                self.assertIs(cm.exception, inj.raised)
                self.assertEqual(t.to_bytes(), ck)
            inj.labels, inj.target, inj.exc_type = [], 1, KeyboardInterrupt
            with self.assertRaises(KeyboardInterrupt):
                t.evaluate(data=x, labels=y)
            inj.raised = None
            self.assertEqual(self.unraisable, [])

    def test_loss_callback(self):
        inj = Interrupt()
        host = EmbedHost(inj)
        x, y = data()

        def loss(b, z, row_loss, dz):
            inj.hit("loss")
            s = np.exp(z - z.max(1, keepdims=True))
            s /= s.sum(1, keepdims=True)
            rows = np.arange(len(z))
            row_loss[:] = -np.log(s[rows, y])
            s[rows, y] -= 1
            dz[:] = s
        with host.model() as m, regopt.Optimizer("adam", lr=0.05) as o, \
                regopt.Trainer(m, o, seed=3) as t:
            t.add("sam", rho=0.05)
            t.set_loss(loss)
            t.step(data=x, rows=len(x))
            ck = t.to_bytes()
            inj.labels = []
            t.step(data=x, rows=len(x))
            labels = inj.labels
            self.assertEqual(labels.count("loss"), 2)
            for n in [i + 1 for i, lab in enumerate(labels) if lab == "loss"]:
                t.from_bytes(ck)
                inj.labels, inj.target = [], n
                with self.assertRaises(KeyboardInterrupt) as cm:
                    t.step(data=x, rows=len(x))
                self.assertIs(cm.exception, inj.raised)
                self.assertIsInstance(cm.exception.regopt_error, regopt.LossCallbackFailed)
                self.assertEqual(t.to_bytes(), ck)
            self.assertEqual(self.unraisable, [])

    def test_allocator_hooks(self):
        class Interrupting(regopt.CountingAllocator):
            def __init__(self):
                super().__init__()
                self.at = None
                self.raised = None

            def alloc(self, size):
                if self.allocs == self.at:
                    self.at = None
                    self.raised = KeyboardInterrupt("alloc")
                    raise self.raised
                return super().alloc(size)

        x, y = data()
        for at in range(12):
            with self.subTest(at=at):
                alloc = Interrupting()
                alloc.at = at
                host = EmbedHost(Interrupt())
                try:
                    with host.model(allocator=alloc) as m, \
                            regopt.Optimizer("adam", allocator=alloc) as o, \
                            regopt.Trainer(m, o) as t:
                        t.step(data=x, labels=y)
                except KeyboardInterrupt as e:
                    self.assertIs(e, alloc.raised)
                    alloc.raised = e.__traceback__ = None  # its frames hold the handles
                else:
                    self.assertIsNone(alloc.raised)  # fewer allocations than `at`
                gc.collect()
                self.assertEqual(alloc.live, 0)
                self.assertEqual(self.unraisable, [])

    def test_allocator_returning_a_non_address(self):
        # ctypes converts a callback's result after it returned, out of any
        # try: -8 became a pointer the library wrote to. In a child process.
        r = subprocess.run([sys.executable, "-c", textwrap.dedent("""
            import regopt
            class Bad(regopt.CountingAllocator):
                def alloc(self, size):
                    return -8 if self.allocs == 1 else super().alloc(size)
            a = Bad()
            try:
                with regopt.Model(3, allocator=a) as m:
                    import numpy as np
                    w = np.zeros(4, np.float32)
                    m.add_param("w", w, w.copy())
            except ValueError as e:
                print("refused:", e, type(e.regopt_error).__name__)
            print("live", a.live)
        """)], env=dict(os.environ, PYTHONPATH=os.path.join(HERE, "..")),
            capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        self.assertEqual(r.returncode, 0, out)
        self.assertIn("refused: Bad.alloc returned -8, not an address NoMemory", out)
        self.assertIn("live 0", out)

    def test_free_hook(self):
        class Raising(regopt.CountingAllocator):
            armed = False

            def free(self, address):
                super().free(address)
                if self.armed:
                    self.armed = False
                    raise KeyboardInterrupt("free")
        alloc = Raising()
        m = EmbedHost(Interrupt()).model(allocator=alloc)
        alloc.armed = True
        with self.assertRaises(KeyboardInterrupt):
            m.close()
        self.assertTrue(m.closed)
        self.assertEqual(alloc.live, 0)
        self.assertEqual(self.unraisable, [])

    def test_checkpoint_streams(self):
        inj = Interrupt()
        host = EmbedHost(inj)
        x, y = data()
        with host.model() as m, regopt.Optimizer("adam", lr=0.05) as o, \
                regopt.Trainer(m, o, seed=3) as t:
            t.step(data=x, labels=y)
            ck = t.to_bytes()

            class Writer(io.RawIOBase):
                def write(self, b):
                    raise KeyboardInterrupt("write")
            with self.assertRaises(KeyboardInterrupt):
                t.write_to(Writer())
            t.step(data=x, labels=y)
            ck2 = t.to_bytes()
            src = io.BytesIO(ck)

            class Reader:
                n = 0

                def read(self, size):
                    self.n += 1
                    if self.n == 2:
                        raise KeyboardInterrupt("read")
                    return src.read(size)
            with self.assertRaises(KeyboardInterrupt) as cm:
                t.read_from(Reader())
            self.assertIsInstance(cm.exception.regopt_error, regopt.CheckpointIOError)
            self.assertEqual(t.to_bytes(), ck2)

            class TooMuch:
                def read(self, size):  # more than asked: must not overflow the buffer
                    return b"\0" * (size + 4096)
            with self.assertRaises(ValueError):
                t.read_from(TooMuch())
            self.assertEqual(t.to_bytes(), ck2)
        self.assertEqual(self.unraisable, [])


if __name__ == "__main__":
    unittest.main()
