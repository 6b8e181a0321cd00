"""SAM's second wave through the binding: sam.direction (FriendlySAM,
VaSSO), sam.wsam (WSAM), sam.group_perturb (SAM-ON), sam.looksam and
sam.momentum with their parameters as attributes of the SAM handle, their
bounds, the reductions to SAM bit for bit, steps against NumPy, and a
checkpoint resume that carries the direction's state."""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402

import regopt  # noqa: E402

H = np.array([1.0, 10.0, 3.0, 0.5, 4.0], np.float32)
W0 = np.sin(0.3 * np.arange(5) + 0.1).astype(np.float32)


class Quadratic:
    """L = 1/2 sum h w^2 as the one output of a one-row batch (loss = z)."""

    def __init__(self):
        self.w = W0.copy()
        self.g = np.zeros_like(self.w)

    def forward(self, p):
        p.outputs[:] = 0.5 * float(np.sum(H.astype(np.float64) * self.w * self.w))

    def backward(self, p):
        self.g += float(p.d_outputs[0, 0]) * (H * self.w)

    def build(self, lr=0.02, **sam):
        m = regopt.Model(1, forward=self.forward, backward=self.backward)
        m.add_param("w", self.w, self.g)
        o = regopt.Optimizer("sgd", lr=lr)
        t = regopt.Trainer(m, o)
        t.set_loss(unit_loss)
        return m, o, t, t.add("sam", **sam)


def unit_loss(batch, z, row_loss, dz):
    row_loss[:] = z[:, 0]
    dz[:] = 1.0
    return 0


X = np.zeros((1, 1), np.float32)


def reference(direction, steps, rho=0.1, lr=0.02, sigma=1.0, lam=0.9, theta=0.9):
    """Double-precision FriendlySAM / VaSSO with SGD on the quadratic."""
    h = H.astype(np.float64)
    w = W0.astype(np.float64)
    m = None
    for _ in range(steps):
        g = h * w
        if m is None:
            a, mn = g, g
        elif direction == 1:
            a, mn = g - sigma * m, lam * m + (1 - lam) * g
        else:
            mn = (1 - theta) * m + theta * g
            a = mn
        wp = w + rho * a / (np.linalg.norm(a) + 1e-12)
        w = w - lr * h * wp
        m = mn
    return w


class SamVariantsTest(unittest.TestCase):
    def test_keys_are_attributes(self):
        sam = regopt.SAM()
        self.assertEqual(sam.direction, 0)
        self.assertEqual(sam.friendly_sigma, 1.0)
        self.assertEqual(sam.friendly_lambda, 0.9)
        self.assertEqual(sam.vasso_theta, 0.9)
        sam.direction = 2                          # VaSSO
        sam.vasso_theta = 0.5
        self.assertEqual((sam.direction, sam.vasso_theta), (2, 0.5))
        for name, value in (("direction", 3), ("friendly_lambda", 1.5),
                            ("vasso_theta", -0.1), ("friendly_sigma", -1.0)):
            with self.assertRaises(regopt.OutOfRange):
                setattr(sam, name, value)
        self.assertEqual(sam.direction, 2)
        self.assertIn("direction", sam.options())
        sam.close()


    def train(self, steps, **sam):
        q = Quadratic()
        m, o, t, reg = q.build(**sam)
        for _ in range(steps):
            t.step(data=X)
        w = q.w.copy()
        t.close(), o.close(), m.close()
        return w

    def test_against_numpy(self):
        for direction, extra in ((1, dict(friendly_sigma=0.5, friendly_lambda=0.6)),
                                 (2, dict(vasso_theta=0.3))):
            got = self.train(3, rho=0.1, direction=direction, **extra)
            want = reference(direction, 3, sigma=extra.get("friendly_sigma", 1.0),
                             lam=extra.get("friendly_lambda", 0.9),
                             theta=extra.get("vasso_theta", 0.9))
            np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-7)

    def test_reductions_to_sam(self):
        sam = self.train(4, rho=0.1)
        np.testing.assert_array_equal(self.train(4, rho=0.1, direction=1, friendly_sigma=0.0), sam)
        np.testing.assert_array_equal(self.train(4, rho=0.1, direction=2, vasso_theta=1.0), sam)
        self.assertFalse(np.array_equal(self.train(4, rho=0.1, direction=1), sam))

    def test_resume_carries_the_state(self):
        want = self.train(5, rho=0.1, direction=1)
        q = Quadratic()
        m, o, t, reg = q.build(rho=0.1, direction=1)
        t.step(data=X)
        t.step(data=X)
        ck = t.to_bytes()
        t.close(), o.close(), m.close()
        q2 = Quadratic()
        m2, o2, t2, reg2 = q2.build()          # plain SAM: the options come from ck
        t2.from_bytes(ck)
        self.assertEqual(reg2.direction, 1)
        for _ in range(3):
            t2.step(data=X)
        np.testing.assert_array_equal(q2.w, want)
        t2.close(), o2.close(), m2.close()

    def test_wsam(self):
        sam = regopt.SAM(wsam=1)
        self.assertEqual((sam.wsam, sam.wsam_gamma), (1, 0.9))
        for value in (1.0, -0.5):
            with self.assertRaises(regopt.OutOfRange):
                sam.wsam_gamma = value
        with self.assertRaises(regopt.OutOfRange):
            sam.wsam = 3
        sam.close()
        # gamma 1/2 coupled is SAM, bit for bit
        np.testing.assert_array_equal(self.train(4, rho=0.1, wsam=2, wsam_gamma=0.5),
                                      self.train(4, rho=0.1))
        # decoupled against NumPy: the SGD step on g, then w -= lr alpha (g_p - g)
        for mode, gamma in ((1, 0.9), (2, 0.7)):
            h = H.astype(np.float64)
            w = W0.astype(np.float64)
            alpha = gamma / (1 - gamma)
            for _ in range(3):
                g = h * w
                gp = h * (w + 0.1 * g / (np.linalg.norm(g) + 1e-12))
                w = w - 0.02 * (alpha * gp + (1 - alpha) * g)   # both forms, plain SGD
            got = self.train(3, rho=0.1, wsam=mode, wsam_gamma=gamma)
            np.testing.assert_allclose(got, w, rtol=2e-6, atol=2e-7)

    def test_sam_on_group_flag(self):
        """sam.group_perturb through set_group: all groups out = plain SGD."""
        q = Quadratic()
        m = regopt.Model(1, forward=q.forward, backward=q.backward)
        m.add_param("a", q.w[:3], q.g[:3], group=0)
        m.add_param("b", q.w[3:], q.g[3:], group=1)
        o = regopt.Optimizer("sgd", lr=0.02)
        t = regopt.Trainer(m, o)
        t.set_loss(unit_loss)
        sam = t.add("sam", rho=0.1)
        self.assertEqual(sam.get_group(1, "perturb"), 1.0)
        sam.set_group(0, perturb=0).set_group(1, perturb=0)
        self.assertEqual(sam.get_group(0, "perturb"), 0.0)
        with self.assertRaises(regopt.OutOfRange):
            sam.set_group(1, perturb=2)
        want = W0.astype(np.float64)
        for _ in range(3):
            t.step(data=X)
            want = want - 0.02 * (H * want)
            self.assertEqual(sam.stat("applied"), 0)
        np.testing.assert_allclose(q.w, want, rtol=2e-6, atol=2e-7)
        t.close(), o.close(), m.close()

    def test_looksam(self):
        sam = regopt.SAM(looksam=1, looksam_alpha=0.5)
        self.assertEqual((sam.looksam, sam.looksam_alpha), (1, 0.5))
        with self.assertRaises(regopt.OutOfRange):
            sam.looksam = 2
        sam.close()
        # k = 1: SAM bit for bit; k = 3: one pass on the reuse steps
        np.testing.assert_array_equal(self.train(4, rho=0.1, looksam=1),
                                      self.train(4, rho=0.1))
        self.assertFalse(np.array_equal(self.train(4, rho=0.1, looksam=1, every=3),
                                        self.train(4, rho=0.1, every=3)))

    def test_momentum_sam(self):
        """One pass per step at w - rho v/||v||, v SGD's momentum buffer."""
        q = Quadratic()
        m, o, t, sam = q.build(rho=0.3, momentum=1)
        o.momentum = 0.9
        self.assertEqual(sam.momentum, 1)
        h = H.astype(np.float64)
        w = W0.astype(np.float64)
        buf = np.zeros_like(w)
        for k in range(3):
            t.step(data=X)
            c = -0.3 / (np.linalg.norm(buf) + 1e-12) if k else 0.0
            gp = h * (w + c * buf)
            buf = 0.9 * buf + gp if k else gp
            w = w - 0.02 * buf
        np.testing.assert_allclose(q.w, w, rtol=2e-6, atol=2e-7)
        self.assertEqual(t.stat("forward_calls"), 1)
        t.close(), o.close(), m.close()


if __name__ == "__main__":
    unittest.main()
