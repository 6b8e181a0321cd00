"""A NumPy MLP trained through the binding reaches the parameters of an
independent NumPy computation of the same optimizer steps (AdamW with
decoupled decay and a no-decay bias group, linear warm-up/decay schedule,
global-norm clipping), and a dropout host gets reproducible runs."""
import gc
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402

import regopt  # noqa: E402

DIGITS = os.path.normpath(os.path.join(HERE, "..", "..", "data", "digits.csv"))


def load_digits(n=256):
    if os.path.exists(DIGITS):
        d = np.loadtxt(DIGITS, delimiter=",", max_rows=n)
        return (d[:, :64] / 16.0).astype(np.float32), d[:, 64].astype(np.int32)
    rng = np.random.default_rng(0)  # pragma: no cover - data/ missing
    x = rng.random((n, 64)).astype(np.float32)
    return x, (x[:, :10].argmax(1)).astype(np.int32)


def init_params(hidden=32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.standard_normal((64, hidden)) / 8).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "w2": (rng.standard_normal((hidden, 10)) / np.sqrt(hidden)).astype(np.float32),
        "b2": np.zeros(10, np.float32),
    }


class MLPHost:
    """64 -> hidden (tanh, optional inverted dropout from pass.seed) -> 10."""

    def __init__(self, params, dropout=0.0):
        self.p = {k: v.copy() for k, v in params.items()}
        self.g = {k: np.zeros_like(v) for k, v in params.items()}
        self.dropout = dropout
        self.slots = {}
        self.seeds = []

    def forward(self, ps):
        x = ps.data[ps.rows_slice]
        h = np.tanh(x @ self.p["w1"] + self.p["b1"])
        if ps.train and self.dropout > 0:
            self.seeds.append(ps.seed)
            h = h * regopt.dropout_mask(ps.seed, h.shape, self.dropout)
        ps.outputs[:] = h @ self.p["w2"] + self.p["b2"]
        if not ps.no_grad:
            self.slots[ps.slot] = (x, h)

    def backward(self, ps):
        x, h = self.slots.pop(ps.slot)
        dz = ps.d_outputs
        self.g["w2"] += h.T @ dz
        self.g["b2"] += dz.sum(0)
        dh = dz @ self.p["w2"].T
        if self.dropout > 0:
            # h already carries the mask; tanh' from the unmasked activation
            keep = (h != 0)
            pre = np.where(keep, h * (1 - self.dropout), 0)
            da = dh * keep / (1 - self.dropout) * (1 - pre ** 2)
        else:
            da = dh * (1 - h ** 2)
        self.g["w1"] += x.T @ da
        self.g["b1"] += da.sum(0)

    def model(self):
        m = regopt.Model(10, forward=self.forward, backward=self.backward, slots=2)
        for k in ("w1", "b1", "w2", "b2"):
            m.add_param(k, self.p[k], self.g[k], group=1 if k.startswith("b") else 0)
        return m


def reference_adamw(params, batches, lr, wd, warmup, total, clip, b1=0.9, b2=0.999, eps=1e-8):
    """The same steps in float64 NumPy, from the formulas in regopt.h."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    for t, (x, y) in enumerate(batches):
        x = x.astype(np.float64)
        a = x @ p["w1"] + p["b1"]
        h = np.tanh(a)
        z = h @ p["w2"] + p["b2"]
        z = z - z.max(1, keepdims=True)
        s = np.exp(z)
        s /= s.sum(1, keepdims=True)
        dz = s.copy()
        dz[np.arange(len(y)), y] -= 1
        dz /= len(y)
        g = {"w2": h.T @ dz, "b2": dz.sum(0)}
        da = dz @ p["w2"].T * (1 - h ** 2)
        g["w1"] = x.T @ da
        g["b1"] = da.sum(0)
        norm = np.sqrt(sum((gi ** 2).sum() for gi in g.values()))
        scale = min(1.0, clip / (norm + 1e-6))
        f = t / warmup if t < warmup else max(0.0, (total - t) / (total - warmup))
        lr_t = lr * f
        step = t + 1
        for k in p:
            gk = g[k] * scale
            decay = 0.0 if k.startswith("b") else wd
            p[k] *= 1 - lr_t * decay
            m[k] = b1 * m[k] + (1 - b1) * gk
            v[k] = b2 * v[k] + (1 - b2) * gk * gk
            p[k] -= lr_t / (1 - b1 ** step) * m[k] / (np.sqrt(v[k]) / np.sqrt(1 - b2 ** step)
                                                      + eps)
    return p


class NumpyMLPTest(unittest.TestCase):
    def tearDown(self):
        gc.collect()
        self.assertEqual(regopt.live_handles(), {"model": 0, "optimizer": 0, "trainer": 0})

    def test_adamw_matches_independent_numpy(self):
        x, y = load_digits(256)
        params = init_params()
        steps, bs = 24, 32
        batches = [(x[i % 8 * bs:(i % 8 + 1) * bs], y[i % 8 * bs:(i % 8 + 1) * bs])
                   for i in range(steps)]
        lr, wd, warmup, clip = 1e-2, 1e-2, 3, 0.7
        host = MLPHost(params)
        clipped = 0
        with host.model() as m, \
                regopt.Optimizer("adamw", lr=lr, weight_decay=wd, schedule="linear",
                                 warmup_steps=warmup, total_steps=steps, clip_norm=clip) as opt, \
                regopt.Trainer(m, opt, seed=1) as t:
            opt.set_group(1, weight_decay=0.0)
            for xb, yb in batches:
                t.step(regopt.Batch(data=xb, labels=yb))
                clipped += t.stats()["clip_scale"] < 1
            self.assertEqual(t.steps, steps)
        ref = reference_adamw(params, batches, lr, wd, warmup, steps, clip)
        self.assertGreater(clipped, 0, "the test should exercise clipping")
        for k in params:
            err = np.linalg.norm(host.p[k] - ref[k]) / np.linalg.norm(ref[k])
            self.assertLess(err, 1e-5, "%s: relative error %.3g" % (k, err))
            self.assertGreater(np.abs(host.p[k] - params[k]).max(), 1e-3)  # it trained

    def test_micro_batches_equal_one_batch(self):
        x, y = load_digits(64)
        params = init_params()
        hosts = []
        for split in (1, 4):
            h = MLPHost(params)
            with h.model() as m, regopt.Optimizer("sgd", lr=0.5, momentum=0.9) as o, \
                    regopt.Trainer(m, o) as t:
                for _ in range(5):
                    n = 64 // split
                    t.step([regopt.Batch(data=x[i * n:(i + 1) * n], labels=y[i * n:(i + 1) * n])
                            for i in range(split)])
            hosts.append(h)
        for k in params:
            np.testing.assert_allclose(hosts[0].p[k], hosts[1].p[k], rtol=1e-5, atol=1e-6)

    def test_dropout_seeds_reproducible_with_regularizers(self):
        x, y = load_digits(64)
        params = init_params()
        runs = []
        for seed in (5, 5, 6):
            h = MLPHost(params, dropout=0.2)
            with h.model() as m, regopt.Optimizer("adamw", lr=1e-2) as o, \
                    regopt.Trainer(m, o, seed=seed) as t:
                t.add("sam", rho=0.05)
                t.add("rdrop", alpha=1.0)
                for _ in range(4):
                    t.step(data=x, labels=y)
                st = t.stats()
                # SAM x two-call R-Drop: 2 x 2 forwards and backwards
                self.assertEqual((st["forward_calls"], st["backward_calls"]), (4, 4))
                self.assertGreater(st["rdrop_consistency"], 0)
                self.assertEqual(st["sam_applied"], 1)
            runs.append((h.p["w1"].copy(), h.seeds))
        np.testing.assert_array_equal(runs[0][0], runs[1][0])
        self.assertEqual(runs[0][1], runs[1][1])
        self.assertFalse(np.array_equal(runs[0][0], runs[2][0]))

    def test_threads_give_the_same_bits(self):
        # 64 -> 4096 -> 10: 307k trainable elements, enough for the worker
        # threads to take part (the library runs models under 262144 on the
        # calling thread); SAM + R-Drop covers the update, norms, perturb
        # and restore
        x, y = load_digits(64)
        params = init_params(hidden=4096)
        runs = []
        for threads in (1, 3):
            h = MLPHost(params, dropout=0.1)
            with h.model() as m, regopt.Optimizer("adamw", lr=1e-2, clip_norm=0.5) as o, \
                    regopt.Trainer(m, o, seed=3, threads=threads) as t:
                self.assertEqual(t["threads"], threads)
                t.add("sam", rho=0.05, adaptive=1)
                t.add("rdrop", alpha=1.0)
                for _ in range(4):
                    t.step(data=x, labels=y)
                t["threads"] = 1  # lowering joins the workers
            runs.append({k: v.copy() for k, v in h.p.items()})
        for k in params:
            np.testing.assert_array_equal(runs[0][k], runs[1][k])
            self.assertGreater(np.abs(runs[0][k] - params[k]).max(), 1e-4)  # it trained
        with MLPHost(params).model() as m, regopt.Optimizer("adamw") as o, \
                regopt.Trainer(m, o) as t:
            with self.assertRaises(regopt.OutOfRange):
                t["threads"] = 0


if __name__ == "__main__":
    unittest.main()
