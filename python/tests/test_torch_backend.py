"""TorchModel(backend="torch"): the library's operations on the parameters
done by TorchBackend (regopt._torch_backend) train as the library's own
path does -- every supported method with every optimizer, 50 steps, the
same module and data -- fail cleanly when the backend fails, and run on
CUDA when there is one (scripts/check-torch-cuda.sh runs that test alone)."""
import gc
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import regopt  # noqa: E402
from regopt import _lib as L  # noqa: E402

try:
    import torch
    import torch.nn as nn
    from regopt.torch import TorchModel
    from regopt._torch_backend import TorchBackend
    HAVE_TORCH = True
except ImportError:  # pragma: no cover
    HAVE_TORCH = False

CUDA = HAVE_TORCH and torch.cuda.is_available()
SMART = dict(steps=1, epsilon=0.1, eta=0.05, sigma=0.01, norm="l2", lambda_=1.0)
METHODS = [
    ("plain", []),
    ("sam", [("sam", dict(rho=0.05))]),
    ("asam", [("sam", dict(rho=0.5, adaptive=1, eta=0.01))]),
    ("rdrop", [("rdrop", dict(alpha=1.0))]),
    ("smart", [("smart", SMART)]),
    ("fgm", [("adv", dict(method=0, epsilon=0.3, alpha=0.5))]),
    ("pgd", [("adv", dict(method=1, epsilon=0.3, step=0.1, steps=2, alpha=0.5))]),
    ("freelb", [("adv", dict(method=2, epsilon=0.3, step=0.1, steps=2, init_mag=0.05))]),
    ("vat", [("adv", dict(method=3, epsilon=1.0, init_mag=0.1, alpha=0.5))]),
    ("smart+bregman", [("smart", SMART), ("bregman", dict(beta=0.9))]),
    ("mesa", [("bregman", dict(mu=0.3, divergence="kl_teacher", tau=5.0, beta=0.99))]),
    ("sam+rdrop+smart+bregman", [("sam", dict(rho=0.05)), ("rdrop", dict(alpha=1.0)),
                                 ("smart", SMART), ("bregman", dict(beta=0.9))]),
    # SAM's stateful variants (REGOPT_VOP_AXPBY, REGOPT_VOP_DOT)
    ("v-m-sharpness", [("sam", dict(rho=0.05, m_rows=4))]),
    ("v-momentum-sam", [("sam", dict(rho=0.05, momentum=1))]),
    ("v-looksam", [("sam", dict(rho=0.05, looksam=1, every=2))]),
    ("v-friendlysam", [("sam", dict(rho=0.05, direction=1))]),
    ("v-vasso", [("sam", dict(rho=0.05, direction=2))]),
    ("v-gsam", [("sam", dict(rho=0.05, gsam=1))]),
    ("v-wsam", [("sam", dict(rho=0.05, wsam=2))]),
]
OPTIMIZERS = [
    ("sgd-nesterov", "sgd", dict(lr=0.05, momentum=0.9, nesterov=1, weight_decay=5e-4)),
    ("adam", "adam", dict(lr=3e-3, weight_decay=1e-4, clip_norm=0.5)),
    ("adamw", "adamw", dict(lr=3e-3, weight_decay=0.05)),
    ("adamw-amsgrad", "adamw", dict(lr=3e-3, weight_decay=0.05, amsgrad=1)),
    ("radam", "radam", dict(lr=1e-2, weight_decay=1e-4)),
]

if HAVE_TORCH:
    class Net(nn.Module):
        def __init__(self, dropout=0.1):
            super().__init__()
            self.embed = nn.Linear(12, 16)
            self.drop = nn.Dropout(dropout)
            self.head = nn.Linear(16, 5)

        def forward(self, x):
            return self.head(self.drop(torch.tanh(self.embed(x))))


def batches(device="cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 12, generator=g)
    y = torch.randint(0, 5, (48,), generator=g)
    return [regopt.Batch(data=x[i:i + 16].to(device), labels=y[i:i + 16])
            for i in range(0, 48, 16)]


def rel(a, b):
    return float((a.double() - b.double()).norm() / max(float(b.double().norm()), 1e-30))


def train(backend, opt_kind, opt_kw, regs, steps=50, device="cpu", dropout=0.1):
    """(losses, final parameters on the CPU, the model's backend)."""
    torch.manual_seed(3)
    net = Net(dropout).to(device)
    data = batches(device)
    with TorchModel(net, 5, embedding="embed", backend=backend) as model, \
            regopt.Optimizer(opt_kind, **opt_kw) as opt, \
            regopt.Trainer(model, opt, seed=1) as t:
        opt.set_group(1, weight_decay=0.0)  # biases: per-tensor decay differs
        for name, kw in regs:
            t.add(name, **kw)
        losses = [t.step(data[i % len(data)]) for i in range(steps)]
        be = model.backend
    return losses, [p.detach().cpu().clone() for p in net.parameters()], be


class Failing(TorchBackend):
    """Fails operation `code` the `at`-th time it runs (counting from 1)."""

    def __init__(self, code, at):
        super().__init__()
        self.code, self.at, self.seen = code, at, 0

    def run(self, op):
        if op.code == self.code:
            self.seen += 1
            if self.seen == self.at:
                self.error = RuntimeError("injected failure of operation %d" % op.code)
                return 1
        return super().run(op)


@unittest.skipUnless(HAVE_TORCH, "torch (python3-torch) is not installed")
class TorchBackendTrainingTest(unittest.TestCase):

    def tearDown(self):
        gc.collect()
        self.assertEqual(regopt.live_handles(), {"model": 0, "optimizer": 0, "trainer": 0})

    def test_every_method_and_optimizer_matches_the_builtin_path(self):
        worst = 0.0
        for mname, regs in METHODS:
            for oname, kind, kw in OPTIMIZERS:
                with self.subTest(method=mname, optimizer=oname):
                    ref_l, ref_p, none = train(None, kind, kw, regs)
                    got_l, got_p, be = train("torch", kind, kw, regs)
                    self.assertIsNone(none)
                    self.assertIsInstance(be, TorchBackend)
                    # the update ran through the backend, once per step
                    self.assertEqual(be.calls[L.VOP_UPDATE], 50)
                    self.assertEqual(be.calls[L.VOP_BIND], 1)
                    if mname.startswith(("sam", "asam")):
                        self.assertEqual(be.calls[L.VOP_SAM_PERTURB], 50)
                    if mname.startswith("v-"):  # the variants' own operations
                        self.assertGreater(be.calls[L.VOP_AXPBY] + be.calls[L.VOP_DOT], 0)
                    if "bregman" in mname or mname == "mesa":  # the teacher through it
                        self.assertEqual(be.calls[L.VOP_EMA], 50)
                        self.assertGreaterEqual(be.calls[L.VOP_SWAP], 100)
                    for a, b in zip(got_l, ref_l):
                        self.assertLess(abs(a - b), 1e-6 * abs(b) + 1e-12)
                    for p, q in zip(got_p, ref_p):
                        worst = max(worst, rel(p, q))
                        self.assertLess(rel(p, q), 1e-6)
                    self.assertLess(sum(ref_l[-3:]), sum(ref_l[:3]))  # it trained
        print("\n  torch backend vs built-in, worst parameter difference: %.3g" % worst,
              file=sys.stderr)

    def test_failing_operation_raises_and_keeps_the_step_undone(self):
        torch.manual_seed(3)
        net = Net()
        data = batches()
        be = Failing(L.VOP_SAM_PERTURB, 3)
        with TorchModel(net, 5, backend=be) as model, \
                regopt.Optimizer("adamw", lr=1e-2) as opt, \
                regopt.Trainer(model, opt, seed=1) as t:
            t.add("sam", rho=0.05)
            t.step(data[0])
            t.step(data[1])
            before = [p.detach().clone() for p in net.parameters()]
            with self.assertRaises(RuntimeError) as cm:
                t.step(data[2])
            self.assertIn("injected failure", str(cm.exception))
            err = cm.exception.regopt_error
            self.assertIsInstance(err, regopt.BackendFailed)
            self.assertEqual(err.status, L.ERR_BACKEND)
            self.assertIn("SAM_PERTURB", str(err))
            self.assertEqual(t.steps, 2)
            for p, q in zip(net.parameters(), before):
                self.assertTrue(torch.equal(p.detach(), q))
            t.step(data[2])  # the failure was one-off: the step now succeeds
            self.assertEqual(t.steps, 3)

    def test_exception_inside_an_operation_reaches_the_caller(self):
        class Broken(TorchBackend):
            def _abs_max(self, op):
                raise ZeroDivisionError("broken abs max")
        net = Net()
        with TorchModel(net, 5, backend=Broken()) as model, \
                regopt.Optimizer("sgd", lr=0.1, momentum=0.9) as opt, \
                regopt.Trainer(model, opt, seed=1) as t:
            before = [p.detach().clone() for p in net.parameters()]
            with self.assertRaises(ZeroDivisionError) as cm:
                t.step(batches()[0])
            self.assertIsInstance(cm.exception.regopt_error, regopt.BackendFailed)
            self.assertIsInstance(model.backend.error, ZeroDivisionError)
            for p, q in zip(net.parameters(), before):
                self.assertTrue(torch.equal(p.detach(), q))

    def test_refusals(self):
        with self.assertRaises(TypeError) as cm:
            TorchModel(Net().half(), 5, backend="torch")
        self.assertIn("float32", str(cm.exception))
        with self.assertRaises(ValueError):
            TorchModel(Net(), 5, backend="gpu")
        with TorchModel(Net(), 5, backend="torch") as used:
            with self.assertRaises(ValueError) as cm:
                TorchModel(Net(), 5, backend=used.backend)
            self.assertIn("already serves a model", str(cm.exception))
        # what the library cannot run with a backend: refused by name
        for what in ("check_host", "flatness"):
            with TorchModel(Net(), 5, backend="torch") as model, \
                    regopt.Optimizer("adamw", lr=1e-2) as opt, \
                    regopt.Trainer(model, opt, seed=1) as t:
                with self.assertRaises(regopt.Unsupported, msg=what):
                    b = batches()[0]
                    if what == "check_host":
                        t.set(check_host=1)
                    t.step(b)
                    if what == "flatness":
                        t.flatness(b, measures="trace", trace_samples=2)

    def test_checkpoints_cross_between_backend_and_built_in(self):
        """A torch-backend trainer's checkpoint (REGOPT_VOP_READ) is the
        built-in trainer's bytes and loads into one (and back, through
        REGOPT_VOP_WRITE, the frozen tensor included); both go on with the
        same losses and weights."""
        def make(backend):
            torch.manual_seed(3)
            net = Net()
            net.embed.bias.requires_grad_(False)  # frozen: saved all the same
            model = TorchModel(net, 5, backend=backend)
            opt = regopt.Optimizer("adamw", lr=1e-2, weight_decay=0.05)
            t = regopt.Trainer(model, opt, seed=1)
            t.add("sam", rho=0.05, direction=2)  # VaSSO: state kept in a buffer
            t.add("average", decay=0.9)
            return net, model, opt, t

        def close(run):
            run[3].close()
            run[2].close()
            run[1].close()

        data = batches()
        src, ref = make("torch"), make(None)
        for i in range(4):
            src[3].step(data[i % 3])
            ref[3].step(data[i % 3])
        with torch.no_grad():
            src[0].embed.bias.add_(0.5)  # the host moves the frozen tensor
            ref[0].embed.bias.add_(0.5)
        ck = src[3].to_bytes()
        self.assertEqual(ck, ref[3].to_bytes())
        self.assertGreater(src[1].backend.calls[L.VOP_READ], 0)
        built, back = make(None), make("torch")
        built[3].from_bytes(ck)             # the backend's checkpoint, built in
        back[3].from_bytes(ref[3].to_bytes())  # and the built-in one, through torch
        self.assertGreater(back[1].backend.calls[L.VOP_WRITE], 0)
        self.assertTrue(torch.equal(back[0].embed.bias, ref[0].embed.bias))
        losses = {id(r): [r[3].step(data[i % 3]) for i in range(3)]
                  for r in (src, ref, built, back)}
        for r in (src, built, back):
            self.assertEqual(losses[id(r)], losses[id(ref)])
            for p, q in zip(r[0].parameters(), ref[0].parameters()):
                self.assertTrue(torch.equal(p.detach(), q.detach()))
        for r in (src, ref, built, back):
            close(r)

    def test_frozen_parameters_and_micro_batches(self):
        results = []
        for backend in (None, "torch"):
            torch.manual_seed(3)
            net = Net()
            net.embed.bias.requires_grad_(False)  # registered, never bound
            with TorchModel(net, 5, embedding="embed", backend=backend) as model, \
                    regopt.Optimizer("sgd", lr=0.05, momentum=0.9) as opt, \
                    regopt.Trainer(model, opt, seed=1) as t:
                t.add("sam", rho=0.05)
                t.add("smart", **SMART)
                data = batches()
                losses = [t.step(data[:2]) for _ in range(5)]  # two micro-batches
                if backend:
                    self.assertEqual(len(model.backend.vectors[L.VEC_WEIGHTS]), 3)
            results.append((losses, [p.detach().clone() for p in net.parameters()]))
        for a, b in zip(results[1][0], results[0][0]):
            self.assertLess(abs(a - b), 1e-6 * abs(b))
        for p, q in zip(results[1][1], results[0][1]):
            self.assertLess(rel(p, q), 1e-6)

    def test_weight_averages(self):
        """EMA and SWA averages kept through the backend (REGOPT_VOP_EMA,
        REGOPT_VOP_SWA) and swapped in for evaluation: the same averaged
        weights and outputs as the built-in path."""
        for mode in ("ema", "swa"):
            got = []
            for backend in (None, "torch"):
                torch.manual_seed(3)
                net = Net()
                with TorchModel(net, 5, backend=backend) as model, \
                        regopt.Optimizer("adam", lr=1e-2) as opt, \
                        regopt.Trainer(model, opt, seed=1) as t:
                    avg = t.add("average", mode=mode, decay=0.9)
                    t.add("sam", rho=0.05)
                    data = batches()
                    for i in range(12):
                        t.step(data[i % 3])
                    trained = [p.detach().clone() for p in net.parameters()]
                    with avg.averaged():
                        averaged = [p.detach().clone() for p in net.parameters()]
                        loss, out = t.evaluate(data[0])
                    back = [p.detach().clone() for p in net.parameters()]
                    if backend:
                        self.assertGreater(model.backend.calls[
                            L.VOP_EMA if mode == "ema" else L.VOP_SWA], 0)
                got.append((averaged, out, loss))
                for p, q in zip(back, trained):  # swapped back out
                    self.assertTrue(torch.equal(p, q))
                self.assertFalse(all(torch.equal(p, q) for p, q in zip(averaged, trained)))
            for p, q in zip(got[1][0], got[0][0]):
                self.assertLess(rel(p, q), 1e-6, mode)
            self.assertLess(abs(got[1][2] - got[0][2]), 1e-6 * got[0][2])

    def test_torch_trainer(self):
        """TorchTrainer: a loss_fn with a library optimizer, and a torch.optim
        optimizer (REGOPT_HOST, clipped through REGOPT_VOP_SCALE), train as
        on the built-in path."""
        import torch.nn.functional as F
        from regopt.torch_train import TorchTrainer
        results = []
        for backend in (None, "torch"):
            torch.manual_seed(3)
            net = Net()
            model = TorchModel(net, 5, backend=backend)
            with TorchTrainer(model, regopt.Optimizer("adam", lr=1e-2), seed=1,
                              loss_fn=lambda out, b: F.cross_entropy(out, b.labels)) as t:
                t.add("sam", rho=0.05)
                losses = [t.step(b) for b in batches() * 3]
            model.close()
            results.append((losses, [p.detach().clone() for p in net.parameters()]))
        for a, b in zip(results[1][0], results[0][0]):
            self.assertLess(abs(a - b), 1e-6 * abs(b))
        for p, q in zip(results[1][1], results[0][1]):
            self.assertLess(rel(p, q), 1e-6)
        results = []
        for backend in (None, "torch"):
            torch.manual_seed(3)
            net = Net()
            model = TorchModel(net, 5, backend=backend)
            with TorchTrainer(model, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
                              seed=1) as t:
                t.optimizer.set(clip_norm=0.05)
                t.add("sam", rho=0.05)
                losses = [t.step(b) for b in batches() * 3]
                if backend:
                    self.assertEqual(model.backend.calls[L.VOP_SCALE], len(losses))
            model.close()
            results.append((losses, [p.detach().clone() for p in net.parameters()]))
        self.assertEqual(results[1][0], results[0][0])
        for p, q in zip(results[1][1], results[0][1]):
            self.assertTrue(torch.equal(p, q))

    def test_backend_outlives_its_callers_references(self):
        net = Net()
        model = TorchModel(net, 5, backend="torch")
        opt = regopt.Optimizer("adam", lr=1e-2)
        t = regopt.Trainer(model, opt, seed=1)
        gc.collect()  # the model holds the backend and its C callback
        for b in batches():
            t.step(b)
        self.assertEqual(model.backend.calls[L.VOP_UPDATE], 3)
        b = batches()[0]
        loss, out = t.evaluate(b)  # the outputs copied to the library's buffers
        with torch.no_grad():
            net.eval()
            ref = net(b.data)
        self.assertTrue(torch.equal(torch.from_numpy(out), ref))
        self.assertGreater(loss, 0.0)
        t.close()
        model.close()
        opt.close()

    def test_pass_rng_logic_with_stand_in_generators(self):
        """PassRNG's bookkeeping (regopt._torch_device), which runs for CUDA
        generators, with CPU generators standing in for them."""
        from regopt._torch_device import PassRNG
        rng = PassRNG([])
        self.assertEqual(rng.cuda, [])
        rng.cuda = [torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)]
        callers = [g.get_state() for g in rng.cuda]
        rng.seed(77)
        drawn = [torch.rand(3, generator=g) for g in rng.cuda]
        self.assertTrue(torch.equal(drawn[0], drawn[1]))  # both seeded from the pass
        rng.seed(78)  # the caller's states are kept from the first seed on
        state = rng.get_state()
        a = torch.rand(4, generator=rng.cuda[1])
        torch.rand(2)  # the CPU generator moves too
        rng.set_state(state)
        self.assertTrue(torch.equal(torch.rand(4, generator=rng.cuda[1]), a))
        self.assertEqual(state.numel(), torch.default_generator.get_state().numel()
                         + sum(g.get_state().numel() for g in rng.cuda))
        rng.restore()
        for g, c in zip(rng.cuda, callers):
            self.assertTrue(torch.equal(g.get_state(), c))
        rng.restore()  # nothing kept: a no-op


@unittest.skipUnless(HAVE_TORCH, "torch (python3-torch) is not installed")
class TorchBackendCudaTest(unittest.TestCase):
    """The module on a CUDA device (scripts/check-torch-cuda.sh)."""

    def setUp(self):
        if not CUDA:
            self.skipTest("no CUDA device (torch.cuda.is_available() is False): the torch "
                          "backend's GPU path is checked by scripts/check-torch-cuda.sh on a "
                          "machine with one")

    def tearDown(self):
        gc.collect()
        self.assertEqual(regopt.live_handles(), {"model": 0, "optimizer": 0, "trainer": 0})

    def test_cuda_follows_the_cpu_path(self):
        # without dropout (CUDA draws other masks than the CPU): the CUDA
        # module with the backend against the CPU module on the library's
        # own path, to float32 rounding of different kernels
        for mname, regs in METHODS:
            if mname == "rdrop" or "rdrop" in mname:
                continue  # R-Drop needs dropout: checked below
            for oname, kind, kw in OPTIMIZERS:
                with self.subTest(method=mname, optimizer=oname):
                    ref_l, ref_p, _ = train(None, kind, kw, regs, dropout=0.0)
                    got_l, got_p, be = train("torch", kind, kw, regs, device="cuda",
                                             dropout=0.0)
                    self.assertEqual(be.calls[L.VOP_UPDATE], 50)
                    for a, b in zip(got_l, ref_l):
                        self.assertLess(abs(a - b), 1e-4 * abs(b) + 1e-6)
                    for p, q in zip(got_p, ref_p):
                        self.assertLess(rel(p, q), 1e-4)

    def test_cuda_dropout_is_seeded_and_reproducible(self):
        regs = [("rdrop", dict(alpha=1.0)), ("smart", SMART), ("sam", dict(rho=0.05))]
        torch.manual_seed(3)  # what train() starts with; building the net draws on the CPU
        state = torch.cuda.get_rng_state()
        a_l, a_p, _ = train("torch", "adamw", dict(lr=3e-3), regs, steps=20, device="cuda")
        # every step seeded the device's generator from its passes and put
        # the caller's state back
        self.assertTrue(torch.equal(torch.cuda.get_rng_state(), state))
        b_l, b_p, _ = train("torch", "adamw", dict(lr=3e-3), regs, steps=20, device="cuda")
        self.assertEqual(a_l, b_l)
        for p, q in zip(a_p, b_p):
            self.assertTrue(torch.equal(p, q))
        self.assertLess(sum(a_l[-3:]), sum(a_l[:3]))

    def test_cuda_module_needs_the_backend(self):
        with self.assertRaises(ValueError) as cm:
            TorchModel(Net().cuda(), 5)
        self.assertIn("backend='torch'", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
