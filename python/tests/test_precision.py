"""Mixed precision through the binding: float16 NumPy parameters (and
bfloat16 as uint16 bits) with the library's fp32 master, the pass's
loss_scale, skipped steps, and float32 buffers with scaling alone."""
import unittest

import numpy as np

from binding_rig import HandleCheck, data

import regopt


class HalfHost:
    """z = x W + b with float16 parameter buffers; computes in float32."""

    def __init__(self, inject=None):
        rng = np.random.default_rng(0)
        self.w = (rng.standard_normal((4, 3)) * 0.3).astype(np.float16)
        self.b = np.zeros(3, np.float16)
        self.gw = np.zeros_like(self.w)
        self.gb = np.zeros_like(self.b)
        self.inject = inject  # the backward call (0-based) that writes inf
        self.backwards = 0
        self.scales = []
        self.cache = {}

    def forward(self, p):
        x = p.data[p.rows_slice]
        self.cache[p.slot] = x
        p.outputs[:] = x @ self.w.astype(np.float32) + self.b.astype(np.float32)

    def backward(self, p):
        self.scales.append(p.loss_scale)
        x = self.cache[p.slot]
        self.gw += (x.T @ p.d_outputs).astype(np.float16)
        self.gb += p.d_outputs.sum(0).astype(np.float16)
        if self.backwards == self.inject:
            self.gw[0, 0] = np.inf
        self.backwards += 1

    def model(self):
        m = regopt.Model(3, forward=self.forward, backward=self.backward)
        m.add_param("w", self.w, self.gw, group=0)
        m.add_param("b", self.b, self.gb, group=1)
        return m


class Precision(HandleCheck):
    def test_float16_parameters_train_with_scaling(self):
        x, y = data()
        h = HalfHost(inject=2)
        with h.model() as m, regopt.Optimizer("adamw", lr=0.05) as o, \
                regopt.Trainer(m, o, seed=7) as t:
            self.assertEqual(t.stat("loss_scale"), 65536.0)
            w0 = h.w.copy()
            t.step(data=x, labels=y)
            t.step(data=x, labels=y)
            self.assertFalse(np.array_equal(w0, h.w))
            self.assertEqual(h.scales, [65536.0, 65536.0])
            w1 = h.w.copy()
            t.step(data=x, labels=y)  # the inf: skipped, not raised
            self.assertEqual(t.stat("skipped"), 1)
            self.assertEqual(t.stat("skipped_steps"), 1)
            self.assertEqual(t.stat("loss_scale"), 32768.0)
            self.assertEqual(t.stat("step"), 2)
            np.testing.assert_array_equal(h.w, w1)
            self.assertFalse(h.gw.any())  # the library flushed and zeroed it
            t.step(data=x, labels=y)
            self.assertEqual(t.stat("skipped"), 0)
            self.assertEqual(h.scales[-1], 32768.0)

    def test_bfloat16_bits_and_bad_dtypes(self):
        w = np.zeros(4, np.uint16)
        g = np.zeros(4, np.uint16)
        with regopt.Model(1, forward=lambda p: None, backward=lambda p: None) as m:
            with self.assertRaises(TypeError):
                m.add_param("w", w, g)  # uint16 needs dtype=DTYPE_BFLOAT16
            m.add_param("w", w, g, dtype=regopt.DTYPE_BFLOAT16)
            with self.assertRaises(TypeError):
                m.add_param("d", np.zeros(4, np.float64), np.zeros(4, np.float64))
            with self.assertRaises(TypeError):  # data and grad must agree
                m.add_param("h", np.zeros(4, np.float16), np.zeros(4, np.float32))

    def test_float32_buffers_with_scaling_give_the_same_bits(self):
        from binding_rig import LinearHost
        x, y = data()
        a, b = LinearHost(), LinearHost()
        with a.model() as ma, b.model() as mb, regopt.Optimizer("adamw", lr=0.05) as o, \
                regopt.Trainer(ma, o, seed=7) as ta, regopt.Trainer(mb, o, seed=7) as tb:
            tb.set_option("trainer.loss_scaling", 1)
            for _ in range(3):
                ta.step(data=x, labels=y)
                tb.step(data=x, labels=y)
            np.testing.assert_array_equal(a.w, b.w)
            self.assertEqual(tb.stat("loss_scale"), 65536.0)
            with self.assertRaises(regopt.OutOfRange):
                tb.set_option("trainer.loss_scale", 0.0)
            with self.assertRaises(regopt.OutOfRange):
                tb.set_option("trainer.loss_scale", float("nan"))

    def test_convert_matches_numpy_float16(self):
        x = np.random.default_rng(3).standard_normal(10000).astype(np.float32) * 1000
        h = regopt.convert(x, regopt.DTYPE_FLOAT16)
        np.testing.assert_array_equal(h.view(np.uint16), x.astype(np.float16).view(np.uint16))
        np.testing.assert_array_equal(regopt.convert(h), h.astype(np.float32))
        b = regopt.convert(x, regopt.DTYPE_BFLOAT16)
        back = regopt.convert(b)
        self.assertTrue(np.all(np.abs(back - x) <= np.abs(x) * 2.0 ** -8))
        with self.assertRaises(ValueError):
            regopt.convert(x)

    def test_error_class(self):
        self.assertIs(regopt.ERRORS[-18], regopt.Overflow)


if __name__ == "__main__":
    unittest.main()
