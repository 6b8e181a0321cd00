"""Checkpoints through the binding: bytes and files round trips, resume
equivalence (bit for bit) with a NumPy host using dropout, errors as
exceptions, and a refused load leaving everything unchanged."""
import os
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402

import regopt  # noqa: E402


class DropoutHost:
    """z = (x * mask(seed)) W + b: the pass seeds matter, so a resumed run
    only matches when the checkpoint restored the trainer's RNG state."""

    def __init__(self, d_in=6, k=3, init=True):
        rng = np.random.default_rng(3)
        self.w = ((rng.standard_normal((d_in, k)) * 0.3) if init
                  else np.full((d_in, k), 5.0)).astype(np.float32)
        self.b = np.zeros(k, np.float32) if init else np.full(k, -5.0, np.float32)
        self.gw = np.zeros_like(self.w)
        self.gb = np.zeros_like(self.b)
        self.cache = {}

    def forward(self, p):
        x = p.data[p.rows_slice]
        if p.flags & regopt.PASS_TRAIN:
            keep = regopt.dropout_mask(p.seed, x.shape, 0.3)
        else:
            keep = np.ones_like(x)
        u = (x + (p.input_perturbation if p.input_perturbation is not None else 0)) * keep
        self.cache[p.slot] = (u, keep)
        p.outputs[:] = u @ self.w + self.b

    def backward(self, p):
        u, keep = self.cache[p.slot]
        if p.d_input is not None:
            p.d_input[:] = (p.d_outputs @ self.w.T) * keep
        if p.flags & regopt.PASS_NO_PARAM_GRAD:
            return
        self.gw += u.T @ p.d_outputs
        self.gb += p.d_outputs.sum(0)

    def build(self, configured=True):
        m = regopt.Model(3, forward=self.forward, backward=self.backward, slots=3,
                         input_width=self.w.shape[0])
        m.add_param("w", self.w, self.gw, group=0)
        m.add_param("b", self.b, self.gb, group=1)
        opt = regopt.Optimizer("adamw", **(dict(lr=0.05, weight_decay=0.01) if configured
                                           else {}))
        t = regopt.Trainer(m, opt, **(dict(seed=77) if configured else {}))
        t.add("rdrop", **(dict(alpha=2.0) if configured else {}))
        t.add("smart", **(dict(lambda_=3.0) if configured else {}))
        t.add("bregman", **(dict(mu=1.0, beta=0.5) if configured else {}))
        return m, opt, t


def batch(step, n=8, d_in=6, k=3):
    rng = np.random.default_rng(100 + step)
    return dict(data=rng.standard_normal((n, d_in)).astype(np.float32),
                labels=rng.integers(0, k, n).astype(np.int32))


class CheckpointTest(unittest.TestCase):
    def run_steps(self, t, first, last):
        for s in range(first, last):
            t.step(**batch(s))

    def test_resume_bit_identical_bytes_and_file(self):
        a = DropoutHost()
        ma, oa, ta = a.build()
        self.run_steps(ta, 0, 6)
        want = (a.w.copy(), a.b.copy(), ta.to_bytes())

        for how in ("bytes", "file"):
            h = DropoutHost()
            m, o, t = h.build()
            self.run_steps(t, 0, 2)
            if how == "bytes":
                ck = t.to_bytes()
            else:
                d = tempfile.mkdtemp()
                path = os.path.join(d, "run.ckpt")
                t.save(path)
            t.close(), o.close(), m.close()

            h2 = DropoutHost(init=False)
            m2, o2, t2 = h2.build(configured=False)   # options come from the checkpoint
            if how == "bytes":
                t2.from_bytes(ck)
            else:
                t2.load(path)
                os.unlink(path)
                os.rmdir(d)
            self.assertEqual(t2.get("seed"), 77)
            self.assertAlmostEqual(o2.get("lr"), 0.05)
            self.run_steps(t2, 2, 6)
            np.testing.assert_array_equal(h2.w, want[0])
            np.testing.assert_array_equal(h2.b, want[1])
            self.assertEqual(t2.to_bytes(), want[2])
            t2.close(), o2.close(), m2.close()
        ta.close(), oa.close(), ma.close()

    def test_errors_leave_everything_unchanged(self):
        h = DropoutHost()
        m, o, t = h.build()
        self.run_steps(t, 0, 2)
        good = t.to_bytes()
        self.run_steps(t, 2, 3)
        before = (h.w.copy(), t.to_bytes())

        with self.assertRaises(regopt.CorruptCheckpoint) as cm:
            t.from_bytes(good[:-1])
        self.assertIn("truncated", str(cm.exception))
        flipped = bytearray(good)
        flipped[len(good) // 2] ^= 0x10
        with self.assertRaises(regopt.CorruptCheckpoint) as cm:
            t.from_bytes(bytes(flipped))
        self.assertIn("CRC", str(cm.exception))
        with self.assertRaises(regopt.CheckpointIOError) as cm:
            t.load("/nonexistent/dir/x.ckpt")
        self.assertIsInstance(cm.exception, OSError)
        no_params = t.to_bytes(params=False, options=False)
        with self.assertRaises(regopt.CheckpointMismatch):
            t.from_bytes(no_params)                 # params asked for, not saved
        np.testing.assert_array_equal(h.w, before[0])
        self.assertEqual(t.to_bytes(), before[1])

        # streams that hand over a few bytes at a time still work
        import io

        class Trickle(io.RawIOBase):
            def __init__(self, data=b""):
                self.data, self.out = data, bytearray()

            def readable(self):
                return True

            def writable(self):
                return True

            def read(self, n=-1):
                chunk, self.data = self.data[:min(n, 7)], self.data[min(n, 7):]
                return chunk

            def write(self, b):
                self.out += bytes(b[:5])
                return min(len(b), 5)
        w = Trickle()
        t.write_to(w)
        self.assertEqual(bytes(w.out), t.to_bytes())
        t.read_from(Trickle(good))
        self.assertEqual(t.to_bytes(), good)
        t.from_bytes(before[1])

        # streams: a short read, and a writer that raises
        with self.assertRaises(regopt.CheckpointIOError):
            t.read_from(io.BytesIO(good[:100]))

        class Full:
            def write(self, b):
                raise OSError(28, "No space left on device")
        with self.assertRaises(OSError) as cm:
            t.write_to(Full())
        self.assertEqual(cm.exception.errno, 28)
        np.testing.assert_array_equal(h.w, before[0])
        self.assertEqual(t.to_bytes(), before[1])

        # another setup: no Bregman regularizer
        h3 = DropoutHost()
        m3 = regopt.Model(3, forward=h3.forward, backward=h3.backward, slots=3, input_width=6)
        m3.add_param("w", h3.w, h3.gw)
        m3.add_param("b", h3.b, h3.gb, group=1)
        o3 = regopt.Optimizer("adamw")
        t3 = regopt.Trainer(m3, o3)
        with self.assertRaises(regopt.CheckpointMismatch) as cm:
            t3.from_bytes(good)
        self.assertIn("regularizers", str(cm.exception))
        for x in (t3, o3, m3, t, o, m):
            x.close()


if __name__ == "__main__":
    unittest.main()
