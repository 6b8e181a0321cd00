"""regopt.Batch over torch tensors: converted with torch (no NumPy on the
step's path), the same checks and the same descriptor as NumPy input."""
import ctypes
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import regopt  # noqa: E402
from regopt import _lib as L  # noqa: E402

try:
    import torch
    HAVE_TORCH = True
except ImportError:  # pragma: no cover
    HAVE_TORCH = False


def descriptor(b, width):
    c = L.Batch()
    b._fill(c, 1, width, False)
    return c


@unittest.skipUnless(HAVE_TORCH, "torch (python3-torch) is not installed")
class TorchBatchTest(unittest.TestCase):

    def test_converted_like_numpy(self):
        y = torch.tensor([2, 0, 1], dtype=torch.int64)
        t = torch.arange(6, dtype=torch.float64).reshape(3, 2).requires_grad_(True)
        w = torch.tensor([1, 0, 3], dtype=torch.int32)
        m = torch.tensor([True, False, True])
        b = regopt.Batch(data=None, labels=y, targets=t, weights=w, mask=m, task_mask=m)
        self.assertEqual(b.rows, 3)
        self.assertEqual((b.labels.dtype, b.targets.dtype, b.weights.dtype, b.mask.dtype),
                         (torch.int32, torch.float32, torch.float32, torch.uint8))
        c = descriptor(b, 2)
        self.assertEqual(c.size, L.lib.regopt_sizeof_batch())
        self.assertEqual((c.rows, c.data), (3, 1))
        self.assertEqual([c.labels[i] for i in range(3)], [2, 0, 1])
        self.assertEqual([c.targets[i] for i in range(6)], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
        self.assertEqual([c.weights[i] for i in range(3)], [1.0, 0.0, 3.0])
        self.assertEqual([c.mask[i] for i in range(3)], [1, 0, 1])
        self.assertEqual([c.task_mask[i] for i in range(3)], [1, 0, 1])
        # the same descriptor as from NumPy arrays, but for the addresses
        n = regopt.Batch(data=None, labels=y.numpy(), targets=t.detach().numpy(),
                         weights=w.numpy(), mask=m.numpy(), task_mask=m.numpy())
        cn = descriptor(n, 2)
        for f, _ in L.Batch._fields_:
            if f in ("size", "rows", "input_rows"):
                self.assertEqual(getattr(c, f), getattr(cn, f), f)

    def test_contiguous_int32_is_not_copied(self):
        y = torch.tensor([1, 2, 3], dtype=torch.int32)
        b = regopt.Batch(labels=y)
        self.assertEqual(b.labels.data_ptr(), y.data_ptr())
        s = torch.arange(6, dtype=torch.int32)[::2]  # strided: copied contiguous
        b = regopt.Batch(labels=s)
        self.assertTrue(b.labels.is_contiguous())
        self.assertEqual(b.labels.tolist(), [0, 2, 4])

    def test_bad_input(self):
        with self.assertRaisesRegex(TypeError, "labels must be integers"):
            regopt.Batch(labels=torch.tensor([0.0, 1.0]))
        with self.assertRaisesRegex(TypeError, "weights must be numbers"):
            regopt.Batch(labels=[0, 1], weights=torch.tensor([True, False]))
        with self.assertRaisesRegex(ValueError, "labels do not fit int32"):
            regopt.Batch(labels=torch.tensor([0, 2 ** 31], dtype=torch.int64))
        with self.assertRaisesRegex(ValueError, "labels do not fit int32"):
            regopt.Batch(labels=torch.tensor([-2 ** 31 - 1, 0], dtype=torch.int64))
        with self.assertRaisesRegex(ValueError, "mask has 2 elements for 3 rows"):
            regopt.Batch(labels=torch.tensor([0, 1, 2]), mask=torch.tensor([1, 1]))
        b = regopt.Batch(labels=torch.tensor([0, 1]), targets=torch.zeros(3))
        with self.assertRaisesRegex(ValueError, "targets has 3 elements"):
            descriptor(b, 2)

    def test_labels_shortcut_agrees_with_the_general_path(self):
        # Batch(labels=t) alone takes a shortcut for common tensors; with
        # rows= given it takes the general conversion: the same result
        from regopt import _batch
        regopt.Batch(labels=torch.tensor([0]), rows=1)  # the shortcut is armed
        self.assertIs(_batch._TORCH_TENSOR, torch.Tensor)
        n = _batch._LABELS_BY_LIST
        cases = [torch.tensor([3, 1, 2]), torch.arange(n), torch.arange(n + 1),
                 torch.tensor([5, 6], dtype=torch.int32), torch.arange(8)[::2],
                 torch.arange(6, dtype=torch.int32)[::2], torch.tensor([[1], [2]]),
                 torch.tensor([1, 0], dtype=torch.uint8), torch.tensor([True, False]),
                 torch.zeros(0, dtype=torch.int64), torch.tensor([-2 ** 31, 2 ** 31 - 1])]
        for t in cases:
            fast, general = regopt.Batch(labels=t), regopt.Batch(labels=t, rows=t.numel())
            self.assertEqual((fast.rows, fast.input_rows), (general.rows, general.input_rows))
            self.assertEqual((fast.labels.dtype, fast.labels.tolist()),
                             (general.labels.dtype, general.labels.tolist()))
            self.assertTrue(fast.labels.is_contiguous())
            self.assertEqual(fast.labels.data_ptr() == t.data_ptr(),
                             general.labels.data_ptr() == t.data_ptr())
            for f in ("targets", "mask", "weights", "task_mask"):
                self.assertIsNone(getattr(fast, f))
        for bad in (torch.tensor([0, 2 ** 31]), torch.tensor([-2 ** 31 - 1])):
            with self.assertRaisesRegex(ValueError, "labels do not fit int32"):
                regopt.Batch(labels=bad)
        with self.assertRaisesRegex(TypeError, "labels must be integers"):
            regopt.Batch(labels=torch.tensor([0.0]))

    def test_descriptor_packed_and_field_by_field_agree(self):
        # Batch._fill writes the descriptor with one struct.pack_into; the
        # ctypes fallback (a struct that is not all words) writes the same
        from regopt import _batch
        self.assertIsNotNone(_batch._BATCH_WORDS)
        y = torch.tensor([2, 0, 1])
        t = torch.zeros(3, 2)
        m = torch.tensor([1, 0, 1], dtype=torch.uint8)
        for kw in ({"labels": y}, {"targets": t, "weights": [1.0, 2.0, 3.0]},
                   {"labels": y, "mask": m, "task_mask": m, "input_rows": 5}):
            b = regopt.Batch(data=None, **kw)
            arr = (L.Batch * 3)()
            for i in range(3):  # stale values where the fill writes zeros
                ctypes.memset(ctypes.byref(arr, i * ctypes.sizeof(L.Batch)), 0xAB,
                              ctypes.sizeof(L.Batch))
            b._fill(arr, 7, 2, False, ctypes.sizeof(L.Batch))
            saved = _batch._BATCH_WORDS
            _batch._BATCH_WORDS = None
            try:
                b._fill(arr, 7, 2, False, 2 * ctypes.sizeof(L.Batch))
            finally:
                _batch._BATCH_WORDS = saved
            self.assertEqual(bytes(arr[1]), bytes(arr[2]))
            self.assertEqual(bytes(arr[0]), b"\xab" * ctypes.sizeof(L.Batch))  # untouched
            c = arr[1]
            self.assertEqual((c.size, c.data, c.rows, c.input_rows),
                             (L.lib.regopt_sizeof_batch(), 7, 3, kw.get("input_rows", 0)))
            for name in ("labels", "targets", "mask", "weights", "task_mask"):
                a = getattr(b, name)
                got = ctypes.cast(getattr(c, name), ctypes.c_void_p).value
                self.assertEqual(got, None if a is None else
                                 (a.data_ptr() if hasattr(a, "data_ptr") else a.ctypes.data),
                                 name)

    def test_labels_range_checked_at_every_size(self):
        # small 1-D labels are checked through .tolist(), others with
        # torch.aminmax: both refuse the same values and convert the same
        from regopt import _batch
        for n in (1, _batch._LABELS_BY_LIST, _batch._LABELS_BY_LIST + 1, 1000):
            for bad in (2 ** 31, -2 ** 31 - 1):
                y = torch.zeros(n, dtype=torch.int64)
                y[n // 2] = bad
                with self.assertRaisesRegex(ValueError, "labels do not fit int32"):
                    regopt.Batch(labels=y)
                with self.assertRaisesRegex(ValueError, "labels do not fit int32"):
                    regopt.Batch(labels=y.reshape(n, 1), rows=n)
            y = torch.arange(n, dtype=torch.int64) * 7 - 3 + (2 ** 31 - 1 - 7 * n)
            y[0] = -2 ** 31
            b = regopt.Batch(labels=y)
            self.assertEqual(b.labels.dtype, torch.int32)
            self.assertEqual(b.labels.tolist(), y.tolist())
        self.assertEqual(regopt.Batch(labels=torch.zeros(0, dtype=torch.int64), rows=0)
                         .labels.numel(), 0)

    def test_labels_changed_in_place_between_steps_are_read_anew(self):
        # one label tensor refilled in place before every step (as a loader
        # reusing its buffers does) trains as fresh tensors of those values
        from regopt.torch import TorchModel
        from regopt.torch_train import TorchTrainer
        g = torch.Generator().manual_seed(4)
        x = torch.randn(6, 3, generator=g)
        ys = [torch.randint(0, 4, (6,), generator=g) for _ in range(4)]
        finals = []
        for reuse in (True, False):
            torch.manual_seed(0)
            net = torch.nn.Linear(3, 4)
            buf = torch.zeros(6, dtype=torch.int64)
            with TorchModel(net, 4) as m:
                t = TorchTrainer(m, torch.optim.SGD(net.parameters(), lr=0.5), seed=2)
                losses = []
                for y in ys:
                    if reuse:
                        buf.copy_(y)
                        y = buf
                    losses.append(t.step(regopt.Batch(data=x, labels=y)))
                t.close()
            finals.append((net.weight.detach().clone(), losses))
        self.assertTrue(torch.equal(finals[0][0], finals[1][0]))
        self.assertEqual(finals[0][1], finals[1][1])
        self.assertEqual(len(set(finals[0][1])), 4)

    def test_step_with_torch_and_numpy_labels_agrees(self):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((8, 3)).astype(np.float32)
        y = rng.integers(0, 4, 8)
        finals = []
        for labels in (torch.from_numpy(y), y):
            w = np.zeros((4, 3), np.float32)
            g = np.zeros_like(w)

            def fwd(p):
                p.outputs[:] = x[p.rows_slice] @ w.T

            def bwd(p):
                g[:] += p.d_outputs.T @ x[p.rows_slice]
            with regopt.Model(4, forward=fwd, backward=bwd) as m:
                m.add_param("w", w, g)
                with regopt.Optimizer("sgd", lr=0.5) as opt, regopt.Trainer(m, opt) as t:
                    for _ in range(3):
                        t.step(regopt.Batch(data=x, labels=labels))
            finals.append(w.copy())
        self.assertTrue(np.array_equal(finals[0], finals[1]))
        self.assertGreater(float(np.abs(finals[0]).sum()), 0.0)


if __name__ == "__main__":
    unittest.main()
