"""Adversarial training and the task mask through the binding: the
"adv.*" keys are discovered by name, Batch(task_mask=...) reaches the
library's regopt_batch, a semi-supervised VAT step trains on an unlabelled
row, and FGM matches a NumPy recomputation of its step."""
import ctypes
import unittest

from binding_rig import HandleCheck, np, regopt

from regopt import _lib as L


class EmbeddingHost:
    """z = (x + r) W + b over one embedding row per example, d_input = dz W^T."""

    def __init__(self, d=4, k=3, seed=0):
        rng = np.random.default_rng(seed)
        self.w = (rng.standard_normal((d, k)) * 0.5).astype(np.float32)
        self.b = np.zeros(k, np.float32)
        self.gw = np.zeros_like(self.w)
        self.gb = np.zeros_like(self.b)
        self.cache = {}
        self.perts = []

    def forward(self, p):
        x = p.data[p.rows_slice]
        r = p.input_perturbation
        self.perts.append(None if r is None else np.array(r))
        u = x + (r if r is not None else 0)
        self.cache[p.slot] = u
        p.outputs[:] = u @ self.w + self.b

    def backward(self, p):
        if p.d_input is not None:
            p.d_input[:] = p.d_outputs @ self.w.T
        if p.flags & regopt.PASS_NO_PARAM_GRAD:
            return
        u = self.cache[p.slot]
        self.gw += u.T @ p.d_outputs
        self.gb += p.d_outputs.sum(0)

    def model(self):
        m = regopt.Model(self.w.shape[1], forward=self.forward, backward=self.backward,
                         slots=3, input_width=self.w.shape[0])
        m.add_param("w", self.w, self.gw, group=0)
        m.add_param("b", self.b, self.gb, group=1)
        return m


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


class AdversarialTest(HandleCheck):
    def test_keys_by_name(self):
        with regopt.Adversarial() as g:
            g.method = 2
            g.steps = 3
            g.init_mag = 0.1
            opts = g.options()
            self.assertEqual(opts["method"], 2)
            self.assertEqual(opts["steps"], 3)
            self.assertEqual(opts["objective"], -1)
            self.assertIn("loss", g.stats())
            with self.assertRaises(regopt.Error):
                g.method = 4
        self.assertEqual(regopt.key_from_name("adv.clean_pass"), 1511)
        self.assertEqual(regopt.key_from_name("smart.detach_target"), 1209)
        self.assertIn((7, "adv", 2), regopt.regularizer_kinds())

    def test_task_mask_reaches_the_struct(self):
        self.assertEqual(ctypes.sizeof(L.Batch), L.lib.regopt_sizeof_batch())
        b = regopt.Batch(data=np.zeros((3, 4), np.float32), labels=[0, 1, 2],
                         task_mask=[1, 0, True])
        c = L.Batch()
        b._fill(c, None, 3, True)
        self.assertEqual([c.task_mask[i] for i in range(3)], [1, 0, 1])
        self.assertTrue(regopt.Batch(rows=2).task_mask is None)
        with self.assertRaises(ValueError):
            regopt.Batch(data=np.zeros((3, 4), np.float32), labels=[0, 1, 2],
                         task_mask=[1, 0])
        with self.assertRaises(TypeError):
            regopt.Batch(rows=2, task_mask=[0.5, 1.0])

    def test_fgm_step_matches_numpy(self):
        h = EmbeddingHost()
        rng = np.random.default_rng(3)
        x = rng.standard_normal((4, 4)).astype(np.float32)
        y = np.array([0, 2, 1, 1], np.int32)
        w0, b0 = h.w.astype(np.float64), h.b.astype(np.float64)
        with h.model() as m, regopt.Optimizer("sgd", lr=0.5) as o, \
                regopt.Trainer(m, o) as t:
            t.add("adv", method=0, epsilon=0.3, alpha=0.5)
            t.step(data=x, labels=y)
            # NumPy: clean CE gradient, its d_input per example, r = eps g/||g||
            onehot = np.eye(3)[y]
            z = x @ w0 + b0
            dz = (softmax(z) - onehot) / 4
            g = dz @ w0.T
            r = 0.3 * g / np.linalg.norm(g, axis=1, keepdims=True)
            za = (x + r) @ w0 + b0
            da = 0.5 * (softmax(za) - onehot) / 4
            gw = x.T @ dz + (x + r).T @ da
            np.testing.assert_allclose(h.gw, gw, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(h.w, w0 - 0.5 * gw, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(h.perts[1], r, rtol=1e-5, atol=1e-7)

    def test_semi_supervised_vat(self):
        h = EmbeddingHost()
        rng = np.random.default_rng(4)
        x = rng.standard_normal((4, 4)).astype(np.float32)
        with h.model() as m, regopt.Optimizer("sgd", lr=0.5) as o, \
                regopt.Trainer(m, o) as t:
            vat = t.add("adv", method=3, epsilon=1.0, init_mag=0.1)
            # no row labelled: labels may be absent, VAT still trains
            t.step(regopt.Batch(data=x, rows=4, task_mask=np.zeros(4, np.uint8)))
            self.assertEqual(t.stat("loss"), 0.0)
            self.assertGreater(vat.stats()["loss"], 0.0)
            self.assertTrue(np.any(h.gw != 0))


if __name__ == "__main__":
    unittest.main()
