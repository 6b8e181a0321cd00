"""TorchBackend's operations one by one, on hand-built regopt_vop structs,
against NumPy float32 computations of the formulas (the C kernels' element
code: the same operations in the same order, so the same bits on the CPU)
and torch.optim for the updates."""
import ctypes
import math
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import regopt  # noqa: E402
from regopt import _lib as L  # noqa: E402

try:
    import numpy as np
    import torch
    from regopt._torch_backend import CHUNK, TorchBackend
    from torch_backend_rig import (OpBuilder, adam_scalars, np_adam, np_radam, np_sam_perturb,
                                   np_sam_q, np_sgd, rnd)
    HAVE_TORCH = True
except ImportError:  # pragma: no cover
    HAVE_TORCH = False

SHAPES = [(7, 5), (5,), (CHUNK + 37,), (3, 1, 2)]


@unittest.skipUnless(HAVE_TORCH, "torch (python3-torch) is not installed")
class TorchBackendOpsTest(unittest.TestCase):

    def setUp(self):
        gen = torch.Generator().manual_seed(5)
        self.params = [torch.randn(s, generator=gen) for s in SHAPES]
        self.grads = [torch.randn(s, generator=gen) * 0.1 for s in SHAPES]
        self.frozen = torch.randn(4, generator=gen)  # registered, never bound
        self.be = TorchBackend()
        for t in self.params + self.grads + [self.frozen]:
            self.be.register(t)
        self.ob = OpBuilder([t.numel() for t in self.params])
        self.run_op(L.VOP_BIND, data=[t.data_ptr() for t in self.params],
                    grad=[t.data_ptr() for t in self.grads])

    def run_op(self, code, **kw):
        op = self.ob.op(code, **kw)
        rc = self.be.run(op)
        self.assertEqual(rc, 0, "operation %d failed: %r" % (code, self.be.error))
        return op

    def np_vec(self, vid):
        return [t.numpy().reshape(-1).copy() for t in self.be.vectors[vid]]

    def alloc(self, *ids):
        for i in ids:
            self.run_op(L.VOP_ALLOC, x=i)

    def fill(self, vid, scale, seed):
        gen = torch.Generator().manual_seed(seed)
        for t in self.be.vectors[vid]:
            t.copy_(torch.randn(t.shape, generator=gen).abs() * scale)

    # -- bookkeeping ---------------------------------------------------------
    def test_bind_views_the_registered_tensors(self):
        w = self.be.vectors[L.VEC_WEIGHTS]
        self.assertEqual([t.data_ptr() for t in w], [t.data_ptr() for t in self.params])
        w[0][0] = 42.0
        self.assertEqual(float(self.params[0].reshape(-1)[0]), 42.0)

    def test_bind_of_an_unknown_handle_fails_with_the_reason(self):
        be = TorchBackend()
        op = self.ob.op(L.VOP_BIND, data=[t.data_ptr() for t in self.params],
                        grad=[t.data_ptr() for t in self.grads])
        self.assertEqual(be.run(op), 1)
        self.assertIsInstance(be.error, LookupError)
        self.assertIn("no registered tensor", str(be.error))

    def test_register_refuses_half_and_strided(self):
        with self.assertRaises(TypeError):
            self.be.register(torch.zeros(3, dtype=torch.float16))
        with self.assertRaises(ValueError):
            self.be.register(torch.zeros(3, 4).t())

    def test_alloc_zero_copy_free(self):
        self.alloc(2, 3)
        for t, p in zip(self.be.vectors[2], self.params):
            self.assertEqual(t.shape, p.reshape(-1).shape)
            self.assertEqual(float(t.abs().sum()), 0.0)
        self.run_op(L.VOP_COPY, x=2, y=L.VEC_WEIGHTS)
        for a, b in zip(self.np_vec(2), self.params):
            np.testing.assert_array_equal(a, b.numpy().reshape(-1))
        self.run_op(L.VOP_ZERO, x=2)
        self.assertTrue(all(float(t.abs().sum()) == 0.0 for t in self.be.vectors[2]))
        self.run_op(L.VOP_FREE, x=2)
        self.assertNotIn(2, self.be.vectors)
        self.assertIn(3, self.be.vectors)
        op = self.ob.op(L.VOP_ALLOC, x=3)
        self.assertEqual(self.be.run(op), 1)  # exists
        op = self.ob.op(L.VOP_ZERO, x=2)
        self.assertEqual(self.be.run(op), 1)
        self.assertIn("does not exist", str(self.be.error))

    def piece(self, code, x, tensor, first, values=None, count=None):
        """REGOPT_VOP_READ / WRITE of one piece through a host float array;
        returns (rc, the array's values after the call)."""
        n = len(values) if values is not None else count
        host = (ctypes.c_float * max(n, 1))(*(values or []))
        op = self.ob.op(code, x=x, tensor=tensor)
        op.host = ctypes.cast(host, ctypes.POINTER(ctypes.c_float))
        op.first, op.count = first, n
        rc = self.be.run(op)
        return rc, list(host)[:n]

    def test_read_write_pieces_and_the_frozen_tensor(self):
        # BIND again, this time with the frozen tensor's handle
        op = self.ob.op(L.VOP_BIND, data=[t.data_ptr() for t in self.params],
                        grad=[t.data_ptr() for t in self.grads])
        fd = (ctypes.c_void_p * 1)(self.frozen.data_ptr())
        fc = (ctypes.c_size_t * 1)(self.frozen.numel())
        op.frozen = 1
        op.frozen_data = ctypes.cast(fd, ctypes.POINTER(ctypes.c_void_p))
        op.frozen_counts = ctypes.cast(fc, ctypes.POINTER(ctypes.c_size_t))
        self.assertEqual(self.be.run(op), 0, repr(self.be.error))
        w2 = self.params[2].numpy().reshape(-1)
        rc, got = self.piece(L.VOP_READ, L.VEC_WEIGHTS, 2, CHUNK - 3, count=9)
        self.assertEqual(rc, 0)
        self.assertEqual(np.array(got, np.float32).tobytes(), w2[CHUNK - 3:CHUNK + 6].tobytes())
        rc, got = self.piece(L.VOP_READ, L.VEC_FROZEN, 0, 1, count=3)
        self.assertEqual(rc, 0)
        self.assertEqual(np.array(got, np.float32).tobytes(),
                         self.frozen.numpy()[1:4].tobytes())
        before = w2.copy()
        rc, _ = self.piece(L.VOP_WRITE, L.VEC_WEIGHTS, 2, 10, values=[1.5, -0.25])
        self.assertEqual(rc, 0)
        self.assertEqual(list(w2[10:12]), [1.5, -0.25])
        self.assertTrue(np.array_equal(np.delete(w2, [10, 11]), np.delete(before, [10, 11])))
        rc, _ = self.piece(L.VOP_WRITE, L.VEC_FROZEN, 0, 3, values=[7.0])
        self.assertEqual(rc, 0)
        self.assertEqual(float(self.frozen[3]), 7.0)
        # beyond the tensor, or a frozen tensor that does not exist: refused
        self.assertEqual(self.piece(L.VOP_READ, L.VEC_WEIGHTS, 1, 3, count=3)[0], 1)
        self.assertIsInstance(self.be.error, IndexError)
        self.assertEqual(self.piece(L.VOP_WRITE, L.VEC_FROZEN, 1, 0, values=[1.0])[0], 1)

    def test_unknown_code_fails(self):
        self.assertEqual(self.be.run(self.ob.op(99)), 1)
        self.assertIsInstance(self.be.error, NotImplementedError)

    # -- reductions ----------------------------------------------------------
    def test_sum_squares_all_and_one_tensor(self):
        op = self.run_op(L.VOP_SUM_SQUARES, x=L.VEC_GRADS)
        ref = sum(float(np.sum(g.numpy().astype(np.float64) ** 2)) for g in self.grads)
        self.assertAlmostEqual(op.out[0] / ref, 1.0, delta=1e-14)
        # the contract's order, exactly: chunks of 4096 summed, added in order
        chunks = []
        for g in self.grads:
            d = g.numpy().reshape(-1).astype(np.float64) ** 2
            chunks += [math.fsum(d[i:i + CHUNK]) for i in range(0, d.size, CHUNK)]
        total = 0.0
        for c in chunks:
            total += c
        self.assertAlmostEqual(op.out[0] / total, 1.0, delta=1e-15)
        op = self.run_op(L.VOP_SUM_SQUARES, x=L.VEC_WEIGHTS, tensor=2)
        ref = float(np.sum(self.params[2].numpy().astype(np.float64) ** 2))
        self.assertAlmostEqual(op.out[0] / ref, 1.0, delta=1e-14)

    def test_reductions_over_joined_and_sliced_tensors(self):
        """chunk_sums and abs_max join small tensors and slice large ones
        (_groups): with the limits made small, every boundary case, against
        per-chunk exact sums (math.fsum) added in order."""
        import regopt._torch_backend as TB
        saved = TB._SLICE, TB._SMALL
        TB._SLICE, TB._SMALL = 4 * CHUNK, 2 * CHUNK
        try:
            gen = torch.Generator().manual_seed(2)
            sizes = [3, 2 * CHUNK + 5, 10, 0, 9 * CHUNK + 3, CHUNK, 1, CHUNK - 1, 4 * CHUNK,
                     2 * CHUNK - 1, 3 * CHUNK]
            ts = [torch.randn(n, generator=gen) * (k + 1) for k, n in enumerate(sizes)]
            chunks = []
            for t in ts:
                d = t.numpy().astype(np.float64) ** 2
                chunks += [math.fsum(d[i:i + CHUNK]) for i in range(0, d.size, CHUNK)]
            got = TB.chunk_list(ts)
            self.assertEqual(len(got), len(chunks))
            for a, b in zip(got, chunks):
                self.assertLessEqual(abs(a - b), 1e-14 * b)
            total = 0.0
            for c in chunks:
                total += c
            self.assertLessEqual(abs(TB.chunk_sums(ts) - total), 1e-14 * total)
            self.assertEqual(TB.abs_max(ts), max(float(t.abs().max()) for t in ts if t.numel()))
            ts[4][7 * CHUNK] = float("nan")  # in the third slice of a large tensor
            self.assertEqual(TB.abs_max(ts), float("inf"))
            self.assertEqual(TB.abs_max([]), 0.0)
            self.assertEqual(TB.chunk_sums([torch.zeros(0)]), 0.0)
        finally:
            TB._SLICE, TB._SMALL = saved

    def test_abs_max_and_non_finite(self):
        op = self.run_op(L.VOP_ABS_MAX, x=L.VEC_WEIGHTS)
        ref = max(float(np.abs(p.numpy()).max()) for p in self.params)
        self.assertEqual(op.out[0], ref)
        for bad in (float("nan"), float("inf"), -float("inf")):
            self.params[3].view(-1)[1] = bad
            op = self.run_op(L.VOP_ABS_MAX, x=L.VEC_WEIGHTS)
            self.assertEqual(op.out[0], float("inf"), bad)

    def test_swap_and_ema(self):
        self.alloc(2)
        self.fill(2, 0.5, 4)
        w0, b0 = self.np_vec(0), self.np_vec(2)
        op = self.run_op(L.VOP_SWAP, x=0, y=2)
        self.assertEqual(op.out[0], 1.0)
        for k in range(len(w0)):
            np.testing.assert_array_equal(self.np_vec(0)[k], b0[k])
            np.testing.assert_array_equal(self.np_vec(2)[k], w0[k])
        # the moving average in double, rounded once
        keep = 0.9998
        op = self.run_op(L.VOP_EMA, x=2, y=0, s={0: keep, 1: 1.0 - keep})
        for k in range(len(w0)):
            ref = (keep * w0[k].astype(np.float64)
                   + (1.0 - keep) * b0[k].astype(np.float64)).astype(np.float32)
            np.testing.assert_array_equal(self.np_vec(2)[k], ref)
        # SWA's running mean, n + 1 = 3
        a0, y0 = self.np_vec(2), self.np_vec(0)
        self.run_op(L.VOP_SWA, x=2, y=0, s={0: 3.0})
        for k in range(len(w0)):
            a = a0[k].astype(np.float64)
            ref = (a + (y0[k].astype(np.float64) - a) / 3.0).astype(np.float32)
            np.testing.assert_array_equal(self.np_vec(2)[k], ref)
        # a NaN leaving x: reported, the exchange made all the same
        self.params[1][2] = float("nan")
        op = self.run_op(L.VOP_SWAP, x=0, y=2)
        self.assertEqual(op.out[0], 0.0)
        self.assertTrue(math.isnan(float(self.be.vectors[2][1][2])))
        op = self.run_op(L.VOP_ABS_MAX, x=2, tensor=0)  # one tensor alone
        self.assertEqual(op.out[0], float(self.be.vectors[2][0].abs().max()))

    # -- updates -------------------------------------------------------------
    def per_tensor(self, lr, wd, step=0.0):
        # group 1 (second tensor) without decay and half the rate
        out = []
        for k in range(len(self.params)):
            out += [rnd(lr * (0.5 if k == 1 else 1.0)), 0.0 if k == 1 else rnd(wd), step]
        return out

    def test_sgd_against_numpy(self):
        for nesterov, first, mu, scale in ((1, 1, 0.9, 1.0), (1, 0, 0.9, 0.5),
                                           (0, 0, 0.8, 1.0), (0, 0, 0.0, 0.75)):
            self.setUp()
            self.alloc(2)
            self.fill(2, 0.3, 1)
            pt = self.per_tensor(0.1, 5e-4)
            s = {L.VOP_S_GRAD_SCALE: scale, L.VOP_S_MOMENTUM: rnd(mu),
                 L.VOP_S_ONE_MINUS_DAMPENING: rnd(1.0 - 0.1), L.VOP_S_NESTEROV: nesterov,
                 L.VOP_S_FIRST: first}
            w0, g0, b0 = self.np_vec(0), self.np_vec(1), self.np_vec(2)
            self.run_op(L.VOP_UPDATE, variant=L.SGD, x=0, y=1, z=2 if mu else -1,
                        s=s, per_tensor=pt)
            for k in range(len(w0)):
                w, b = np_sgd(w0[k], g0[k], b0[k], pt[3 * k], pt[3 * k + 1], scale, s[1],
                              s[2], nesterov, first)
                np.testing.assert_array_equal(self.np_vec(0)[k], w)
                np.testing.assert_array_equal(self.np_vec(2)[k], b if mu else b0[k])

    def test_adam_family_against_numpy(self):
        for variant, amsgrad, t in ((L.ADAM, 0, 1), (L.ADAM, 1, 7), (L.ADAMW, 0, 3),
                                    (L.ADAMW, 1, 2), (L.RADAM, 0, 2), (L.RADAM, 0, 9)):
            self.setUp()
            self.alloc(2, 3, 4)
            self.fill(2, 0.05, 1)
            self.fill(3, 0.002, 2)
            self.fill(4, 0.003, 3)
            sc, step = adam_scalars(t, 1e-3, amsgrad=amsgrad, radam=variant == L.RADAM)
            sc[L.VOP_S_GRAD_SCALE] = 0.625 if t % 2 else 1.0
            lrs = [1e-3, 5e-4, 1e-3, 1e-3]
            pt = []
            for k, lr in enumerate(lrs):
                pt += [rnd(lr), 0.0 if k == 1 else rnd(0.01), rnd(step * lr / 1e-3)]
            w0, g0 = self.np_vec(0), self.np_vec(1)
            m0, v0, x0 = self.np_vec(2), self.np_vec(3), self.np_vec(4)
            self.run_op(L.VOP_UPDATE, variant=variant, x=0, y=1, z=2, u=3,
                        v=4 if amsgrad else -1, s=sc, per_tensor=pt)
            for k in range(len(w0)):
                lr, wd, st = pt[3 * k:3 * k + 3]
                if variant == L.RADAM:
                    w, m, v = np_radam(w0[k], g0[k], m0[k], v0[k], lr, wd, st, sc)
                    vx = x0[k]
                else:
                    w, m, v, vx = np_adam(w0[k], g0[k], m0[k], v0[k], x0[k], lr, wd, st, sc,
                                          variant == L.ADAMW)
                msg = "variant %d amsgrad %d t %d tensor %d" % (variant, amsgrad, t, k)
                np.testing.assert_array_equal(self.np_vec(0)[k], w, msg)
                np.testing.assert_array_equal(self.np_vec(2)[k], m, msg)
                np.testing.assert_array_equal(self.np_vec(3)[k], v, msg)
                np.testing.assert_array_equal(self.np_vec(4)[k], vx, msg)

    def test_updates_follow_torch_optim(self):
        """Ten steps of each kind beside torch.optim on copies (its own
        formulas, to float32 rounding)."""
        cases = [("sgd", L.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
                 ("adam", L.ADAM, dict(lr=1e-2, weight_decay=1e-3)),
                 ("adamw", L.ADAMW, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
                 ("radam", L.RADAM, dict(lr=1e-2, weight_decay=1e-3))]
        for name, variant, kw in cases:
            self.setUp()
            ref = [p.clone().requires_grad_(True) for p in self.params]
            cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                   "radam": torch.optim.RAdam}[name]
            topt = cls(ref, **kw)
            self.alloc(2, 3, 4)
            for t in range(1, 11):
                gen = torch.Generator().manual_seed(100 + t)
                for g, r in zip(self.grads, ref):
                    g.copy_(torch.randn(g.shape, generator=gen))
                    r.grad = g.clone()
                topt.step()
                lr, wd = kw["lr"], kw["weight_decay"]
                if variant == L.SGD:
                    s = {L.VOP_S_GRAD_SCALE: 1.0, L.VOP_S_MOMENTUM: rnd(0.9),
                         L.VOP_S_ONE_MINUS_DAMPENING: 1.0, L.VOP_S_NESTEROV: 1,
                         L.VOP_S_FIRST: 1 if t == 1 else 0}
                    step = 0.0
                else:
                    s, step = adam_scalars(t, lr, amsgrad=kw.get("amsgrad", False),
                                           radam=variant == L.RADAM)
                pt = [rnd(lr), rnd(wd), step] * len(self.params)
                self.run_op(L.VOP_UPDATE, variant=variant, x=0, y=1, z=2, u=3,
                            v=4 if kw.get("amsgrad") else -1, s=s, per_tensor=pt)
            for p, r in zip(self.params, ref):
                err = float((p - r.detach()).norm() / r.detach().norm())
                self.assertLess(err, 1e-6, name)

    def test_update_check_reports_without_writing(self):
        self.alloc(2, 3)
        sc, step = adam_scalars(1, 1e-3)
        pt = [rnd(1e-3), 0.0, step] * len(self.params)
        before = [self.np_vec(i) for i in (0, 2, 3)]
        op = self.run_op(L.VOP_UPDATE_CHECK, variant=L.ADAM, x=0, y=1, z=2, u=3, s=sc,
                         per_tensor=pt)
        self.assertEqual(op.out[0], -1.0)
        # max |m| after the update: (1 - b1) * |g|, in float32
        ref = max(float(np.abs(np.float32(sc[L.VOP_S_ONE_MINUS_BETA1]) * g.numpy()).max())
                  for g in self.grads)
        self.assertEqual(op.out[3], ref)
        after = [self.np_vec(i) for i in (0, 2, 3)]
        for a, b in zip(before, after):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
        # an overflowing gradient at tensor 2, element 4100: the second moment
        self.grads[2][4100] = 3e38
        op = self.run_op(L.VOP_UPDATE_CHECK, variant=L.ADAM, x=0, y=1, z=2, u=3, s=sc,
                         per_tensor=pt)
        self.assertEqual(list(op.out)[:3], [2.0, 4100.0, 4.0])
        # a weight already NaN earlier in the same tensor wins (element order)
        self.params[2][17] = float("nan")
        op = self.run_op(L.VOP_UPDATE_CHECK, variant=L.ADAM, x=0, y=1, z=2, u=3, s=sc,
                         per_tensor=pt)
        self.assertEqual(list(op.out)[:3], [2.0, 17.0, 1.0])
        # SGD without momentum: a NaN weight is no failure; an infinite
        # gradient makes the new weight non-finite
        s = {L.VOP_S_GRAD_SCALE: 1.0}
        sgd_pt = [0.1, 0.0, 0.0] * len(self.params)
        self.grads[2][4100] = 0.0
        op = self.run_op(L.VOP_UPDATE_CHECK, variant=L.SGD, x=0, y=1, s=s, per_tensor=sgd_pt)
        self.assertEqual(op.out[0], -1.0)
        self.assertEqual(op.out[3], 0.0)
        self.grads[3].view(-1)[5] = float("inf")
        op = self.run_op(L.VOP_UPDATE_CHECK, variant=L.SGD, x=0, y=1, s=s, per_tensor=sgd_pt)
        self.assertEqual(list(op.out)[:3], [3.0, 5.0, 2.0])
        # with momentum the buffer takes it first
        s.update({L.VOP_S_MOMENTUM: 0.9, L.VOP_S_ONE_MINUS_DAMPENING: 1.0, L.VOP_S_FIRST: 1})
        op = self.run_op(L.VOP_UPDATE_CHECK, variant=L.SGD, x=0, y=1, z=2, s=s,
                         per_tensor=sgd_pt)
        self.assertEqual(list(op.out)[:3], [2.0, 17.0, 1.0])

    # -- SAM -----------------------------------------------------------------
    def test_sam_perturb_and_squares(self):
        flags = [1, 0, 3, 3]  # tensor 1 not perturbed; 2 and 3 adaptive (ASAM)
        for wd, variant in ((0.0, 0), (5e-4, 1)):
            self.setUp()
            self.alloc(2)
            c, eta = 0.0123, 0.01
            s = {0: c, 1: wd, 2: eta}
            x0, y0 = self.np_vec(0), self.np_vec(1)
            op = self.run_op(L.VOP_SAM_SQUARES, x=0, y=1, s=s, flags=flags)
            qs = [np_sam_q(x0[k], y0[k], wd, eta, flags[k] & 2) for k in range(4) if flags[k]]
            ref = sum(float(np.sum(q.astype(np.float64) ** 2)) for q in qs)
            self.assertAlmostEqual(op.out[0] / ref, 1.0, delta=1e-14)
            self.run_op(L.VOP_SAM_PERTURB, x=0, y=1, z=2, s=s, flags=flags, variant=variant)
            for k in range(4):
                np.testing.assert_array_equal(self.np_vec(2)[k], x0[k])
                want = np_sam_perturb(x0[k], y0[k], c, wd, eta, flags[k] & 2) if flags[k] \
                    else x0[k]
                np.testing.assert_array_equal(self.np_vec(0)[k], want)
                np.testing.assert_array_equal(self.np_vec(1)[k], 0 * y0[k] if variant else y0[k])


@unittest.skipUnless(HAVE_TORCH, "torch (python3-torch) is not installed")
class AgainstCpuBackendTest(unittest.TestCase):
    """The same operations through the library's CPU backend (its C
    kernels, regopt_backend_cpu_create) on copies: the same bits."""

    def test_operation_sequences(self):
        gen = torch.Generator().manual_seed(9)
        params = [torch.randn(sh, generator=gen) for sh in SHAPES]
        grads = [torch.randn(sh, generator=gen) * 0.1 for sh in SHAPES]
        sides = []
        cpu = regopt.CpuBackend()
        for be in (TorchBackend(), cpu):
            p = [t.clone() for t in params]
            g = [t.clone() for t in grads]
            if isinstance(be, TorchBackend):
                for t in p + g:
                    be.register(t)
            sides.append((be, p, g))
        ob = OpBuilder([t.numel() for t in params])
        flags = [1, 0, 3, 1]

        def both(code, **kw):
            outs = []
            for be, p, g in sides:
                op = ob.op(code, **kw)
                self.assertEqual(be.run(op), 0, (code, getattr(be, "error", None)))
                outs.append(list(op.out))
            if code == L.VOP_ABS_MAX:  # the C one is a bound: at most 2^-7 above
                self.assertTrue(outs[0][0] <= outs[1][0] <= outs[0][0] * (1 + 2 ** -7), outs)
            elif code in (L.VOP_SUM_SQUARES, L.VOP_SAM_SQUARES):  # a chunk's own order
                self.assertLessEqual(abs(outs[0][0] - outs[1][0]), 1e-14 * abs(outs[1][0]))
            elif code == L.VOP_DOT:  # the lanes and the running sum: the same bits
                self.assertEqual(outs[0][0], outs[1][0])
            elif code in (L.VOP_UPDATE_CHECK, L.VOP_SWAP):  # out[] of the others: nothing
                self.assertEqual(outs[0], outs[1], "operation %d" % code)
            for a, b in zip(sides[0][1] + sides[0][2], sides[1][1] + sides[1][2]):
                self.assertTrue(torch.equal(a, b), "operation %d" % code)
            return outs[0]

        for be, p, g in sides:  # each side binds its own tensors
            self.assertEqual(be.run(ob.op(L.VOP_BIND, data=[t.data_ptr() for t in p],
                                          grad=[t.data_ptr() for t in g])), 0)
        for vid in (2, 3, 4, 5):
            both(L.VOP_ALLOC, x=vid)
        both(L.VOP_SUM_SQUARES, x=1)
        both(L.VOP_SUM_SQUARES, x=0, tensor=2)
        both(L.VOP_SAM_SQUARES, x=0, y=1, s={1: 1e-3, 2: 0.01}, flags=flags)
        both(L.VOP_SAM_PERTURB, x=0, y=1, z=5, s={0: 0.02, 1: 1e-3, 2: 0.01}, flags=flags)
        both(L.VOP_COPY, x=0, y=5)
        both(L.VOP_ABS_MAX, x=0, tensor=1)
        both(L.VOP_SWAP, x=0, y=5)
        both(L.VOP_EMA, x=5, y=0, s={0: 0.99, 1: 1.0 - 0.99})
        both(L.VOP_SWA, x=5, y=1, s={0: 7.0})
        both(L.VOP_SWAP, x=0, y=5)
        # the SAM variants' operations: shared and per-tensor scalars, flags,
        # in place, without z; DOT in its two orders, whole and one tensor
        both(L.VOP_AXPBY, x=5, y=0, z=1, s={0: 1.0, 1: rnd(-0.37)})
        both(L.VOP_AXPBY, x=5, y=5, z=1, per_tensor=[rnd(0.9), rnd(0.1)] * len(SHAPES),
             flags=flags)
        both(L.VOP_AXPBY, x=4, y=1, s={0: rnd(1.7)})
        for variant in (0, 1):
            both(L.VOP_DOT, variant=variant, x=5, y=1)
            both(L.VOP_DOT, variant=variant, x=0, y=0, tensor=2)
        for variant, amsgrad in ((L.ADAMW, 1), (L.RADAM, 0), (L.SGD, 0)):
            for vid in (2, 3, 4):
                both(L.VOP_ZERO, x=vid)
            for t in range(1, 8):
                if variant == L.SGD:
                    sc, step = {L.VOP_S_GRAD_SCALE: 0.5, L.VOP_S_MOMENTUM: rnd(0.9),
                                L.VOP_S_ONE_MINUS_DAMPENING: 1.0, L.VOP_S_NESTEROV: 1,
                                L.VOP_S_FIRST: t == 1}, 0.0
                else:
                    sc, step = adam_scalars(t, 1e-2, amsgrad=amsgrad, radam=variant == L.RADAM)
                pt = [rnd(1e-2), rnd(0.01), step] * len(SHAPES)
                out = both(L.VOP_UPDATE_CHECK, variant=variant, x=0, y=1, z=2, u=3,
                           v=4 if amsgrad else -1, s=sc, per_tensor=pt)
                self.assertEqual(out[0], -1.0)
                both(L.VOP_UPDATE, variant=variant, x=0, y=1, z=2, u=3,
                     v=4 if amsgrad else -1, s=sc, per_tensor=pt)
                both(L.VOP_ABS_MAX, x=0)
            for vid in (2, 3, 4):  # the moments, read through the gradients
                both(L.VOP_COPY, x=1, y=vid)
                both(L.VOP_SUM_SQUARES, x=1)
        sides[1][2][2][5] = sides[0][2][2][5] = float("inf")
        sc, step = adam_scalars(8, 1e-2)
        out = both(L.VOP_UPDATE_CHECK, variant=L.ADAM, x=0, y=1, z=2, u=3, s=sc,
                   per_tensor=[rnd(1e-2), 0.0, step] * len(SHAPES))
        self.assertEqual(out[:3], [2.0, 5.0, 3.0])
        self.assertEqual(both(L.VOP_ABS_MAX, x=1)[0], float("inf"))
        cpu.close()


if __name__ == "__main__":
    unittest.main()
