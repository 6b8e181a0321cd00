"""The helpers of the binding tests (test_binding.py, test_keys.py,
test_steps.py, test_flatness.py): a NumPy linear host, its data, and a
test case checking that every handle and callback is released."""
import gc
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402

import regopt  # noqa: E402


class LinearHost:
    """z = x W + b, a NumPy host (float32 buffers registered zero-copy)."""

    def __init__(self, d_in=4, k=3, seed=0, fail=None):
        rng = np.random.default_rng(seed)
        self.w = (rng.standard_normal((d_in, k)) * 0.3).astype(np.float32)
        self.b = np.zeros(k, np.float32)
        self.gw = np.zeros_like(self.w)
        self.gb = np.zeros_like(self.b)
        self.fail = fail or {}  # {"forward": n}: raise on the n-th call (0-based)
        self.calls = {"forward": 0, "backward": 0}
        self.flags = []
        self.cache = {}

    def _maybe_fail(self, what):
        n = self.calls[what]
        self.calls[what] += 1
        if self.fail.get(what) == n:
            raise ZeroDivisionError("%s failed on purpose (call %d)" % (what, n))

    def forward(self, p):
        self._maybe_fail("forward")
        self.flags.append(p.flags)
        x = p.data[p.rows_slice]
        self.cache[p.slot] = x
        p.outputs[:] = x @ self.w + self.b

    def backward(self, p):
        self._maybe_fail("backward")
        x = self.cache[p.slot]
        self.gw += x.T @ p.d_outputs
        self.gb += p.d_outputs.sum(0)

    def model(self, **kw):
        m = regopt.Model(self.w.shape[1], forward=self.forward, backward=self.backward, **kw)
        m.add_param("w", self.w, self.gw, group=0)
        m.add_param("b", self.b, self.gb, group=1)
        return m


def data(n=16, d_in=4, k=3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    y = rng.integers(0, k, n).astype(np.int32)
    return x, y


class HandleCheck(unittest.TestCase):
    def tearDown(self):
        gc.collect()
        self.assertEqual(regopt.live_handles(), {"model": 0, "optimizer": 0, "trainer": 0})
        self.assertEqual(regopt.pending_callbacks(), 0)
