"""The ctypes binding: steps, callbacks (exceptions, nonzero returns,
interrupts, rollback), batches, losses, all-reduce, non-finite values."""
import os
import sys
import traceback
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402

import regopt  # noqa: E402
from binding_rig import HandleCheck, LinearHost, data  # noqa: E402


class StepTest(HandleCheck):
    def run_steps(self, host, n, sam=False, fail_at=None):
        x, y = data()
        with host.model() as m, regopt.Optimizer("adamw", lr=0.05) as o, \
                regopt.Trainer(m, o, seed=7) as t:
            if sam:
                t.add("sam", rho=0.1)
            for i in range(n):
                t.step(data=x, labels=y)
            return t.stats()

    def test_exception_in_callbacks_propagates_and_rolls_back(self):
        x, y = data()
        for sam in (False, True):
            for what, nth in (("forward", 0), ("backward", 0), ("forward", 1), ("backward", 1)):
                if not sam and nth == 1:
                    continue
                with self.subTest(sam=sam, what=what, nth=nth):
                    ref = LinearHost()
                    self.run_steps(ref, 3, sam)
                    h = LinearHost()
                    calls_per_step = 2 if sam else 1
                    with h.model() as m, regopt.Optimizer("adamw", lr=0.05) as o, \
                            regopt.Trainer(m, o, seed=7) as t:
                        if sam:
                            t.add("sam", rho=0.1)
                        t.step(data=x, labels=y)
                        w0, b0 = h.w.copy(), h.b.copy()
                        h.fail = {what: calls_per_step + nth}
                        try:  # not assertRaises: it strips the traceback
                            t.step(data=x, labels=y)
                        except ZeroDivisionError as e:
                            exc = e
                        else:
                            self.fail("the callback's exception was not raised")
                        tb = "".join(traceback.format_tb(exc.__traceback__))
                        self.assertIn("_maybe_fail", tb)  # the callback's own frame
                        self.assertIsInstance(exc.regopt_error,
                                              regopt.ForwardFailed if what == "forward"
                                              else regopt.BackwardFailed)
                        self.assertIn("%s callback returned 1" % what, t.message)
                        np.testing.assert_array_equal(h.w, w0)
                        np.testing.assert_array_equal(h.b, b0)
                        self.assertEqual(t.steps, 1)
                        # the optimizer state was rolled back too: the run
                        # continues exactly like one that never failed
                        t.step(data=x, labels=y)
                        t.step(data=x, labels=y)
                        np.testing.assert_array_equal(h.w, ref.w)
                        np.testing.assert_array_equal(h.b, ref.b)

    def test_nonzero_return_and_keyboard_interrupt(self):
        x, y = data()
        h = LinearHost()
        state = {"rc": 0}

        def fwd(p):
            h.forward(p)
            return state["rc"]

        with regopt.Model(3, forward=fwd, backward=h.backward) as m, \
                regopt.Optimizer("sgd") as o:
            m.add_param("w", h.w, h.gw)
            with regopt.Trainer(m, o) as t:
                state["rc"] = 42
                with self.assertRaises(regopt.ForwardFailed) as cm:
                    t.step(data=x, labels=y)
                self.assertIn("returned 42", cm.exception.message)
                self.assertIn("REGOPT_ERR_FORWARD", str(cm.exception))
                state["rc"] = None

                state["rc"] = 0
                t.step(data=x, labels=y)
                self.assertEqual(t.steps, 1)

        def interrupt(p):
            raise KeyboardInterrupt
        with regopt.Model(3, forward=interrupt, backward=h.backward) as m, \
                regopt.Optimizer("sgd") as o:
            m.add_param("w", h.w, h.gw)
            with regopt.Trainer(m, o) as t:
                with self.assertRaises(KeyboardInterrupt):
                    t.step(data=x, labels=y)
                self.assertEqual(t.steps, 0)

    def test_batch_validation(self):
        h = LinearHost()
        x, y = data()
        with h.model() as m, regopt.Optimizer("sgd") as o, regopt.Trainer(m, o) as t:
            with self.assertRaises(regopt.InvalidArgument) as cm:
                t.step(data=x, labels=np.full(16, 7))  # label out of [0, 3)
            self.assertTrue(cm.exception.message)
            with self.assertRaises(TypeError):
                t.step(data=x, labels=y.astype(np.float32))
            with self.assertRaises(ValueError):
                t.step(data=x, labels=y, mask=np.ones(3, np.uint8))
            with self.assertRaises(ValueError):
                t.step(regopt.Batch(data=x, rows=16, targets=np.zeros(5)))
            self.assertEqual(t.steps, 0)
            # micro-batches (gradient accumulation) equal one batch
            t.step([regopt.Batch(data=x[:8], labels=y[:8]),
                    dict(data=x[8:], labels=y[8:], weights=np.ones(8))])
            self.assertEqual(t.stats()["weight"], 16.0)

    def test_mask_weights_and_evaluate(self):
        h = LinearHost()
        x, y = data()
        with h.model() as m, regopt.Optimizer("sgd") as o, regopt.Trainer(m, o) as t:
            loss, out = t.evaluate(data=x, labels=y)
            z = x @ h.w + h.b
            np.testing.assert_allclose(out, z, rtol=1e-6)
            zs = z - z.max(1, keepdims=True)
            lp = zs - np.log(np.exp(zs).sum(1, keepdims=True))
            ce = -lp[np.arange(16), y]
            self.assertAlmostEqual(loss, ce.mean(), places=5)
            mask = (np.arange(16) % 2).astype(bool)
            wts = np.linspace(0.5, 2, 16)
            loss2, _ = t.evaluate(regopt.Batch(data=x, labels=y, mask=mask, weights=wts))
            ref = (ce * mask * wts).sum() / (mask * wts).sum()
            self.assertAlmostEqual(loss2, ref, places=5)
            self.assertIsNone(t.evaluate(data=x)[0])
            self.assertIsNone(t.evaluate(data=x, labels=y, outputs=False)[1])
            self.assertTrue(all(not (f & regopt.PASS_TRAIN) and f & regopt.PASS_NO_GRAD
                                for f in h.flags))

    def test_loss_callback(self):
        x, _ = data()
        tgt = np.random.default_rng(3).standard_normal((16, 3)).astype(np.float32)
        results = []
        for use_cb in (False, True):
            h = LinearHost()
            with h.model() as m, regopt.Optimizer("adam", lr=0.01) as o, \
                    regopt.Trainer(m, o, loss="mse") as t:
                if use_cb:
                    seen = []

                    def mse_cb(b, z, row_loss, dz):
                        seen.append(b.rows)
                        self.assertIsNone(b.labels)
                        d = z - tgt
                        row_loss[:] = (d * d).mean(1)
                        dz[:] = 2 * d / z.shape[1]
                    t.set_loss(mse_cb)
                    self.assertEqual(t.get("loss"), 2)
                for _ in range(5):
                    t.step(data=x, targets=None if use_cb else tgt, rows=16)
                results.append(h.w.copy())
                if use_cb:
                    self.assertEqual(seen, [16] * 5)
                    def boom(b, z, l, dz):
                        raise ValueError("loss boom")
                    t.set_loss(boom)
                    w = h.w.copy()
                    with self.assertRaises(ValueError) as cm:
                        t.step(data=x, rows=16)
                    self.assertIsInstance(cm.exception.regopt_error, regopt.LossCallbackFailed)
                    np.testing.assert_array_equal(h.w, w)
        np.testing.assert_allclose(results[0], results[1], rtol=1e-6)

    def test_allreduce(self):
        x, y = data()
        h1, h2 = LinearHost(), LinearHost()
        counts = []
        for h, ar in ((h1, None), (h2, lambda buf: counts.append(buf.size))):
            with h.model() as m, regopt.Optimizer("sgd", lr=0.1) as o, \
                    regopt.Trainer(m, o) as t:
                if ar:
                    t.set_allreduce(ar)  # one replica: the sum is the identity
                t.step(data=x, labels=y)
                t.step(data=x, labels=y)
                if ar:
                    t.set_allreduce(lambda buf: 1)
                    with self.assertRaises(regopt.AllreduceFailed) as cm:
                        t.step(data=x, labels=y)
                    self.assertTrue(cm.exception.message)

                    def raising(buf):
                        raise OSError("network down")
                    t.set_allreduce(raising)
                    with self.assertRaises(OSError):
                        t.step(data=x, labels=y)
                    self.assertEqual(t.steps, 2)
        np.testing.assert_array_equal(h1.w, h2.w)
        # the header (regopt.h, set_allreduce) says trainable elements + 4;
        # the library sends more (+ its statistics accumulators): >= is the
        # contract a binding can rely on
        self.assertEqual(len(set(counts)), 1)
        self.assertGreaterEqual(counts[0], 15 + 4)

    def test_nonfinite(self):
        h = LinearHost()
        x, y = data()
        x[0, 0] = np.inf
        with h.model() as m, regopt.Optimizer("sgd") as o, regopt.Trainer(m, o) as t:
            with self.assertRaises((regopt.NonFiniteLoss, regopt.NonFiniteGradient)) as cm, \
                    np.errstate(invalid="ignore", over="ignore"):
                t.step(data=x, labels=y)
            self.assertIsInstance(cm.exception, ArithmeticError)
            self.assertTrue(cm.exception.message)



if __name__ == "__main__":
    unittest.main()
