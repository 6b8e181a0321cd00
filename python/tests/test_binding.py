"""The ctypes binding: loading, every public function, models, lifetimes,
the random helpers and status strings. Options by name are in test_keys.py,
steps and callbacks (exceptions, rollback) in test_steps.py, the flatness
probe in test_flatness.py."""
import ctypes
import gc
import io
import os
import re
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402

import regopt  # noqa: E402
from regopt import _core, _lib  # noqa: E402

from binding_rig import HandleCheck, LinearHost, data  # noqa: E402

HEADER = os.path.normpath(os.path.join(HERE, "..", "..", "include", "regopt.h"))



class LoadingTest(unittest.TestCase):
    def test_version(self):
        self.assertEqual(regopt.version_number(), _lib.BINDING_VERSION_NUMBER)
        self.assertEqual(regopt.version(), regopt.__version__)
        self.assertTrue(os.path.exists(regopt.library_path) or "/" not in regopt.library_path)

    def test_major_mismatch_refused(self):
        _lib.check_version(_lib.BINDING_VERSION_NUMBER + 99)  # same major: fine
        with self.assertRaises(regopt.LibraryVersionError) as cm:
            _lib.check_version(10000 + _lib.BINDING_VERSION_NUMBER)
        self.assertIn("major version", str(cm.exception))

    def test_struct_sizes(self):
        lib = _lib.lib
        self.assertEqual(ctypes.sizeof(_lib.Pass), lib.regopt_sizeof_pass())
        self.assertEqual(ctypes.sizeof(_lib.Batch), lib.regopt_sizeof_batch())
        self.assertEqual(ctypes.sizeof(_lib.Allocator), lib.regopt_sizeof_allocator())
        b = _lib.Batch()
        b.rows = 7
        lib.regopt_batch_init(ctypes.byref(b))
        self.assertEqual((b.size, b.rows), (ctypes.sizeof(_lib.Batch), 0))

    def test_env_var_and_missing_library(self):
        with self.assertRaises(regopt.LibraryNotFound):
            _lib.load("/nonexistent/libregopt.so.0")
        env = dict(os.environ, REGOPT_LIBRARY="/nonexistent/libregopt.so.0",
                   PYTHONPATH=os.path.join(HERE, ".."))
        r = subprocess.run([sys.executable, "-c", "import regopt"], env=env,
                           capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("REGOPT_LIBRARY", r.stderr)
        env["REGOPT_LIBRARY"] = regopt.library_path
        r = subprocess.run([sys.executable, "-c", "import regopt; print(regopt.library_path)"],
                           env=env, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), regopt.library_path)

    @unittest.skipUnless(os.path.exists(HEADER), "header not found")
    def test_every_header_function_declared(self):
        with open(HEADER) as f:
            text = f.read()
        declared = set(re.findall(r"\b(regopt_[a-z0-9_]+)\s*\(", text.split("#ifdef __cplusplus")[1]))
        declared = {n for n in declared if not n.endswith("_fn")}
        api = set(re.findall(r"REGOPT_API[^;]*?\b(regopt_[a-z0-9_]+)\s*\(", text, re.S))
        self.assertTrue(api)
        self.assertEqual(api - set(_lib.PROTOTYPES), set(),
                         "functions of regopt.h without a binding prototype")
        self.assertEqual(set(_lib.PROTOTYPES) - api, set())


class CountingLib:
    """Stands in for the CDLL and records which functions are called."""

    def __init__(self, real):
        self._real = real
        self.called = set()

    def __getattr__(self, name):
        fn = getattr(self._real, name)
        called = self.called

        def wrapper(*a):
            called.add(name)
            return fn(*a)
        return wrapper


class EveryFunctionTest(HandleCheck):
    def test_every_function_reachable(self):
        counting = CountingLib(_lib.lib)
        saved = _core.lib
        _core.lib = counting
        _core._all_keys = None
        _core._info_cache.clear()
        _core._key_cache.clear()
        try:
            self._exercise()
        finally:
            _core.lib = saved
        missing = set(_lib.PROTOTYPES) - counting.called
        # struct sizes, batch_init on the pass path and the version are used
        # by the loader in _lib, not through _core; Batch._fill writes a
        # descriptor's size itself (regopt_batch_init's value, see there):
        missing -= {"regopt_batch_init",
                    "regopt_sizeof_pass", "regopt_sizeof_batch", "regopt_sizeof_allocator",
                    "regopt_sizeof_term_ops", "regopt_sizeof_term_view",
                    "regopt_sizeof_flatness_request", "regopt_sizeof_flatness",
                    "regopt_version_number"}
        self.assertEqual(missing, set())

    def _exercise(self):
        regopt.version(), regopt.version_number(), regopt.status_string(-3)
        regopt.last_error_message(), regopt.keys(), regopt.key_from_name("optimizer.lr")
        regopt.random_uniform(1, 4), regopt.random_normal(1, 4)
        regopt.convert(np.ones(2, np.float32), regopt.DTYPE_BFLOAT16)
        h = LinearHost()
        x, y = data()
        alloc = regopt.CountingAllocator()
        with h.model(allocator=alloc) as m, \
                regopt.Optimizer("sgd", lr=0.1, momentum=0.9, allocator=alloc) as opt:
            m.input_width = 4
            m.slots = 3
            m.set_capabilities(0)
            self.assertEqual((m.param_count, m.element_count), (2, 15))
            with self.assertRaises(regopt.InvalidArgument):
                m.add_param("w", h.w.copy(), None)
            self.assertIn("w", m.message)
            opt.set_group(1, weight_decay=0.0)
            self.assertEqual(opt.get_group(1, "weight_decay"), 0.0)
            self.assertEqual(opt.kind, "sgd")
            with self.assertRaises(regopt.InvalidArgument):  # only a "host" optimizer takes one
                opt.set_host_update(lambda step, lr: None)
            opt.set(nesterov=1)
            self.assertEqual(opt.get("nesterov"), 1)
            self.assertEqual(opt.get("momentum"), 0.9)
            opt.message
            with regopt.Trainer(m, opt, seed=5, reserve=32) as t:
                t.set_group(1, sam_adaptive=0)
                self.assertEqual(t.get_group(1, "sam_adaptive"), 0.0)
                sam = t.add("sam", rho=0.05)
                # the pending group option went to the SAM handle at add
                self.assertEqual(sam.get_group(1, "adaptive"), 0.0)
                self.assertEqual(t.get_group(1, "sam_adaptive"), 0.0)
                self.assertEqual(sam.kind_value, _lib.REG_SAM)
                sam.adaptive = 1
                self.assertEqual((sam.adaptive, sam.rho), (1, 0.05))
                with self.assertRaises(regopt.OutOfRange):
                    sam.rho = -1.0
                self.assertIn("sam.rho", sam.message)
                self.assertIs(t.remove("sam"), sam)
                calls = []
                term = t.add(regopt.Term("zero", lambda v: calls.append(v.rows) or 0.0))
                t.set(label_smoothing=0.1)
                t.set_loss(lambda b, z, l, dz: (l.__setitem__(slice(None), 0.0),
                                                dz.__setitem__(slice(None), 0.0)) and None)
                t.set_loss(None)
                t.set_allreduce(lambda buf: None)
                avg = t.add("average")
                t.step(data=x, labels=y)
                t.set_allreduce(None)
                t.evaluate(data=x, labels=y)
                with avg.averaged(recalibrate=regopt.Batch(data=x)):
                    self.assertTrue(avg.swapped)
                t.remove(avg)
                avg.close()
                fl = t.flatness(regopt.Batch(data=x, labels=y), measures="trace",
                                trace_samples=2)
                self.assertIsNone(fl.worst_case)
                self.assertEqual(fl.trace_samples, 2)
                t.recover()  # nothing was abandoned: a no-op
                t.stats(), t.steps, t.message
                self.assertEqual(t.attached(), [term])
                self.assertTrue(calls)
                ck = t.to_bytes()
                t.from_bytes(ck)
                stream = io.BytesIO()
                t.write_to(stream)
                self.assertEqual(stream.getvalue(), ck)
                stream.seek(0)
                t.read_from(stream)
                with tempfile.TemporaryDirectory() as d:
                    t.save(os.path.join(d, "c"))
                    t.load(os.path.join(d, "c"))
        self.assertEqual(alloc.live, 0)
        be = regopt.CpuBackend()  # the backend table (its own tests: test_torch_backend*)
        with regopt.Model(3) as mb:
            mb.set_backend(be)
            with self.assertRaises(regopt.StateError):
                be.close()  # a model uses it
        be.close()



class CpuBackendTest(HandleCheck):
    def test_same_bits_as_without_a_backend(self):
        """A NumPy host whose parameters the library's CPU backend serves
        (regopt.CpuBackend through Model.set_backend) trains the same bits
        as the library working in them itself."""
        x, y = data()
        out = []
        for use in (False, True):
            h = LinearHost()
            be = regopt.CpuBackend() if use else None
            with regopt.Model(3, forward=h.forward, backward=h.backward) as m:
                if be is not None:
                    m.set_backend(be)
                    self.assertIs(m.backend, be)
                m.add_param("w", h.w, h.gw, group=0)
                m.add_param("b", h.b, h.gb, group=1)
                with regopt.Optimizer("adamw", lr=0.05, weight_decay=0.1) as opt, \
                        regopt.Trainer(m, opt, seed=2) as t:
                    t.add("sam", rho=0.1)
                    losses = [t.step(data=x, labels=y) for _ in range(10)]
            if be is not None:
                be.close()
            out.append((losses, h.w.copy(), h.b.copy()))
        self.assertEqual(out[0][0], out[1][0])
        np.testing.assert_array_equal(out[0][1], out[1][1])
        np.testing.assert_array_equal(out[0][2], out[1][2])

    def test_set_backend_rules(self):
        with regopt.Model(3) as m:
            m.add_param("w", np.zeros(3, np.float32), np.zeros(3, np.float32))
            with self.assertRaises(regopt.StateError):  # after a tensor
                m.set_backend(regopt.CpuBackend())


class ModelTest(HandleCheck):
    def test_param_checks(self):
        with regopt.Model(3) as m:
            with self.assertRaises(TypeError):
                m.add_param("a", np.zeros(3))  # float64
            with self.assertRaises(TypeError):
                m.add_param("a", [1.0, 2.0])
            with self.assertRaises(ValueError):
                m.add_param("a", np.zeros((4, 4), np.float32)[:, 1])
            ro = np.zeros(3, np.float32)
            ro.flags.writeable = False
            with self.assertRaises(ValueError):
                m.add_param("a", ro)
            with self.assertRaises(ValueError):
                m.add_param("a", np.zeros(3, np.float32), np.zeros(4, np.float32))
            with self.assertRaises(regopt.InvalidArgument) as cm:
                m.add_param("", np.zeros(3, np.float32))
            self.assertTrue(cm.exception.message)
            m.add_param("frozen", np.zeros(3, np.float32), None)
            self.assertEqual(m.param_count, 1)
            with self.assertRaises(regopt.OutOfRange) as cm:
                m.output_width = 0
            self.assertIn("output width", cm.exception.message)
            with self.assertRaises(regopt.Error):
                m.slots = 99
            with self.assertRaises(regopt.InvalidArgument):
                m.set_capabilities(0x80)

    def test_trainer_needs_callbacks_and_grads(self):
        with regopt.Model(3) as m, regopt.Optimizer("sgd") as o:
            m.add_param("w", np.zeros(3, np.float32), np.zeros(3, np.float32))
            with self.assertRaises(regopt.StateError) as cm:
                regopt.Trainer(m, o)
            self.assertIn("callback", regopt.last_error_message())
            self.assertEqual(cm.exception.message, regopt.last_error_message())

    def test_bound_model_is_frozen(self):
        h = LinearHost()
        with h.model() as m, regopt.Optimizer("sgd") as o:
            t = regopt.Trainer(m, o)
            with self.assertRaises(regopt.StateError):
                m.add_param("c", np.zeros(3, np.float32), np.zeros(3, np.float32))
            with self.assertRaises(regopt.StateError):
                m.close()
            with self.assertRaises(regopt.StateError):
                o.close()
            t.close()
            t.close()  # idempotent
            with self.assertRaises(regopt.NullPointer):
                t.step(data=np.zeros((1, 4), np.float32), labels=[0])
            m.add_param("c", np.zeros(3, np.float32), np.zeros(3, np.float32))

    def test_subclass_callbacks(self):
        class Sub(regopt.Model):
            def __init__(self):
                super().__init__(1)
                self.w = np.ones(1, np.float32)
                self.g = np.zeros(1, np.float32)
                self.add_param("w", self.w, self.g)

            def forward(self, p):
                p.outputs[:, 0] = p.data[p.rows_slice] * self.w[0]

            def backward(self, p):
                self.g[0] += float((p.d_outputs[:, 0] * p.data[p.rows_slice]).sum())

        x = np.arange(4, dtype=np.float32)
        with Sub() as m, regopt.Optimizer("sgd", lr=0.01) as o, \
                regopt.Trainer(m, o, loss="mse") as t:
            t.step(data=x, targets=2 * x)
            self.assertGreater(m.w[0], 1.0)


class LifetimeTest(HandleCheck):
    def test_counting_allocator_balances(self):
        alloc = regopt.CountingAllocator()
        h = LinearHost()
        x, y = data()
        m = h.model(allocator=alloc, slots=3, input_width=4)
        o = regopt.Optimizer("adamw", allocator=alloc)
        t = regopt.Trainer(m, o)
        t.add("sam")
        t.add("rdrop")
        t.add("smart")
        for _ in range(3):
            t.step(data=x, labels=y)
        n = alloc.allocs
        t.step(data=x, labels=y)
        self.assertEqual(alloc.allocs, n, "a step allocated after the first")
        self.assertGreater(alloc.live, 0)
        self.assertEqual(regopt.live_handles(), {"model": 1, "optimizer": 1, "trainer": 1})
        t.close()
        o.close()
        m.close()
        self.assertEqual((alloc.live, alloc.bytes_live), (0, 0))
        self.assertEqual(alloc.allocs, alloc.frees)
        self.assertEqual(alloc.errors, [])

    def test_allocator_failure(self):
        for k in range(0, 4):
            alloc = regopt.CountingAllocator(fail_after=k)
            try:
                with LinearHost().model(allocator=alloc) as m, \
                        regopt.Optimizer("adam", allocator=alloc) as o, \
                        regopt.Trainer(m, o) as t:
                    t.step(data=data()[0], labels=data()[1])
            except regopt.NoMemory as e:
                self.assertTrue(e.message)
                self.assertIsInstance(e, MemoryError)
            gc.collect()
            self.assertEqual(alloc.live, 0)

    def test_garbage_collection_frees_in_order(self):
        alloc = regopt.CountingAllocator()
        h = LinearHost()
        m = h.model(allocator=alloc)
        o = regopt.Optimizer("sgd", allocator=alloc)
        t = regopt.Trainer(m, o)
        m.cycle = t  # a reference cycle model <-> trainer
        t.step(data=data()[0], labels=data()[1])
        del m, o, t
        gc.collect()
        self.assertEqual(alloc.live, 0)

    def test_refcount_frees_without_gc(self):
        h = LinearHost()
        t = regopt.Trainer(h.model(), regopt.Optimizer("sgd"))
        self.assertEqual(regopt.live_handles()["trainer"], 1)
        del t
        self.assertEqual(regopt.live_handles(), {"model": 0, "optimizer": 0, "trainer": 0})


class RandomTest(unittest.TestCase):
    def test_random(self):
        u = regopt.random_uniform(42, 1000)
        self.assertEqual(u.dtype, np.float32)
        self.assertTrue(((u >= 0) & (u < 1)).all())
        np.testing.assert_array_equal(u, regopt.random_uniform(42, 1000))
        np.testing.assert_array_equal(u[10:20], regopt.random_uniform(42, 10, offset=10))
        self.assertFalse(np.array_equal(u, regopt.random_uniform(43, 1000)))
        z = regopt.random_normal(7, 20000)
        self.assertLess(abs(z.mean()), 0.05)
        self.assertLess(abs(z.std() - 1), 0.05)
        out = np.empty(8, np.float32)
        self.assertIs(regopt.random_normal(7, out=out), out)
        np.testing.assert_array_equal(out, z[:8])
        mask = regopt.dropout_mask(42, (10, 100), 0.25)
        np.testing.assert_array_equal(mask.reshape(-1) > 0, u >= 0.25)

    def test_status_strings(self):
        for code, cls in regopt.ERRORS.items():
            s = regopt.status_string(code)
            self.assertTrue(s.startswith("REGOPT_ERR_"), s)
            self.assertTrue(issubclass(cls, regopt.Error))
            self.assertEqual(cls("x").status, code)
        self.assertEqual(regopt.status_string(0), "REGOPT_OK: success")
        self.assertEqual(regopt.status_string(-999), "unknown status")
        self.assertEqual(len(regopt.ERRORS), 19)  # -1 .. -19


if __name__ == "__main__":
    unittest.main()
