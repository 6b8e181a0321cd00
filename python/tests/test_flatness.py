"""The ctypes binding: the flatness probe (eigenvalue, trace, worst and
average case, bad requests, failing forwards)."""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402

import regopt  # noqa: E402
from binding_rig import HandleCheck, LinearHost, data  # noqa: E402


def hadamard_inputs():
    """8 rows, 4 columns orthogonal to each other and to the constant
    column: X~^T X~ = 8 I for X~ = [X, 1]."""
    h2 = np.array([[1, 1], [1, -1]], np.float32)
    return np.kron(np.kron(h2, h2), h2)[:, 1:5].copy()


class FlatnessTest(HandleCheck):
    """Trainer.flatness on the linear host with the MSE loss: per output
    column, H = 2 / (N K) X~^T X~, computed here with NumPy."""

    def run_probe(self, x, **kw):
        h = LinearHost(d_in=4, k=3)
        tgt = np.sin(np.arange(x.shape[0] * 3, dtype=np.float32)).reshape(-1, 3) * 0.3
        with h.model() as m, regopt.Optimizer("adam") as o, \
                regopt.Trainer(m, o, loss="mse") as t:
            b = regopt.Batch(data=x, targets=tgt)
            t.step(b)
            before, w, bias = t.to_bytes(), h.w.copy(), h.b.copy()
            fl = t.flatness(b, **kw)
            self.assertEqual(t.to_bytes(), before)
            self.assertTrue(np.array_equal(h.w, w) and np.array_equal(h.b, bias))
            xt = np.hstack([x, np.ones((x.shape[0], 1), np.float32)]).astype(np.float64)
            a = 2.0 / (x.shape[0] * 3) * xt.T @ xt
            z = xt @ np.vstack([h.w, h.b]).astype(np.float64)
            g = 2.0 / (x.shape[0] * 3) * xt.T @ (z - tgt)
            return fl, a, g

    def test_eigenvalue_and_trace(self):
        x, _ = data(n=16, d_in=4)
        fl, a, _ = self.run_probe(x, measures=["eigenvalue", "trace"], eigen_tolerance=1e-10,
                                  eigen_iterations=1000, trace_samples=2000,
                                  trace_tolerance=0.0)
        self.assertIsInstance(fl, regopt.Flatness)
        top = np.linalg.eigvalsh(a)[-1]
        self.assertLess(abs(fl.eigenvalue - top), 1e-4 * top)
        self.assertTrue(fl.eigen_converged)
        self.assertLessEqual(abs(fl.trace - 3 * np.trace(a)), 4 * fl.trace_stderr)
        self.assertEqual((fl.trace_samples, fl.trace_converged), (2000, False))
        self.assertIsNone(fl.average_case)

    def test_worst_case_closed_form(self):
        fl, a, g = self.run_probe(hadamard_inputs(), measures="worst_case", rho=0.05,
                                  worst_iterations=60)
        self.assertTrue(np.allclose(a, a[0, 0] * np.eye(5)))  # H = c I
        want = 0.05 * np.linalg.norm(g) + 0.5 * a[0, 0] * 0.05 ** 2
        self.assertLess(abs(fl.worst_case - want), 1e-4 * want)
        self.assertEqual(fl.worst_iterations, 60)

    def test_average_case_and_counts(self):
        fl, _, _ = self.run_probe(hadamard_inputs(), measures="average_case", sigma=0.1,
                                  average_samples=5, seed=3)
        self.assertEqual((fl.forward_calls, fl.backward_calls), (1 + 5, 0))
        self.assertGreater(fl.average_case, 0.0)

    def test_bad_requests(self):
        x, _ = data(n=8, d_in=4)
        for kw, exc in (({"rho": 0.0}, regopt.OutOfRange),
                        ({"rho": float("nan")}, regopt.OutOfRange),
                        ({"worst_iterations": 0}, regopt.OutOfRange),
                        ({"trace_tolerance": -1.0}, regopt.OutOfRange),
                        ({"norm": "l1"}, ValueError),
                        ({"measures": "sharpness"}, ValueError),
                        ({"bogus": 1}, TypeError),
                        ({"seed": -1}, regopt.OutOfRange)):
            with self.subTest(kw=kw), self.assertRaises(exc) as cm:
                self.run_probe(x, **kw)
            if exc is regopt.OutOfRange and "seed" not in kw:
                self.assertIn(next(iter(kw)), str(cm.exception))

    def test_failing_forward_changes_nothing(self):
        x, _ = data(n=8, d_in=4)
        h = LinearHost(d_in=4, k=3)
        tgt = np.zeros((8, 3), np.float32)
        with h.model() as m, regopt.Optimizer("adam") as o, \
                regopt.Trainer(m, o, loss="mse") as t:
            b = regopt.Batch(data=x, targets=tgt)
            t.step(b)
            before, w = t.to_bytes(), h.w.copy()
            h.fail = {"forward": h.calls["forward"] + 4}
            with self.assertRaises(ZeroDivisionError):
                t.flatness(b, worst_iterations=5)
            self.assertEqual(t.to_bytes(), before)
            self.assertTrue(np.array_equal(h.w, w))
            self.assertTrue(all(f & regopt.PASS_PROBE for f in h.flags[-4:]))



if __name__ == "__main__":
    unittest.main()
