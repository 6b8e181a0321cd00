"""Helpers of the TorchBackend tests: regopt_vop structs built by hand, the
library's per-step scalars (ro_adam_scalars), and NumPy float32 references
of the update formulas written from the C kernels' element code."""
import ctypes
import math

import numpy as np

from regopt import _lib as L

f32 = np.float32


class OpBuilder:
    """Builds regopt._lib.Vop structs over one set of tensors (counts), the
    arrays a struct points to kept alive with it."""

    def __init__(self, counts):
        self.counts = list(counts)
        self._keep = []

    def op(self, code, x=-1, y=-1, z=-1, u=-1, v=-1, variant=0, s=None, per_tensor=None,
           flags=None, tensor=None, data=None, grad=None):
        n = len(self.counts)
        op = L.Vop()
        op.size = ctypes.sizeof(L.Vop)
        op.code, op.variant = code, variant
        op.x, op.y, op.z, op.u, op.v = x, y, z, u, v
        op.tensors = n
        op.tensor = n if tensor is None else tensor
        keep = []
        if data is not None:
            arr = (ctypes.c_void_p * n)(*data)
            op.data = ctypes.cast(arr, ctypes.POINTER(ctypes.c_void_p))
            keep.append(arr)
            arr = (ctypes.c_void_p * n)(*grad)
            op.grad = ctypes.cast(arr, ctypes.POINTER(ctypes.c_void_p))
            keep.append(arr)
            arr = (ctypes.c_size_t * n)(*self.counts)
            op.counts = ctypes.cast(arr, ctypes.POINTER(ctypes.c_size_t))
            keep.append(arr)
        if flags is not None:
            arr = (ctypes.c_int32 * n)(*flags)
            op.flags = ctypes.cast(arr, ctypes.POINTER(ctypes.c_int32))
            keep.append(arr)
        if per_tensor is not None:
            arr = (ctypes.c_double * (3 * n))(*per_tensor)
            op.per_tensor = ctypes.cast(arr, ctypes.POINTER(ctypes.c_double))
            keep.append(arr)
        for i, val in (s or {}).items():
            op.s[i] = val
        self._keep.append(keep)
        return op


def rnd(x):
    """A double rounded to float32 and back (the library's (float) casts)."""
    return float(np.float32(x))


def adam_scalars(t, lr, b1=0.9, b2=0.999, eps=1e-8, amsgrad=False, radam=False):
    """(shared s{} of REGOPT_VOP_UPDATE, step size) as ro_adam_scalars computes
    them for step t: double arithmetic, then rounded to float32."""
    bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    s = {L.VOP_S_GRAD_SCALE: 1.0, L.VOP_S_BETA1: rnd(b1), L.VOP_S_BETA2: rnd(b2),
         L.VOP_S_EPS: rnd(eps), L.VOP_S_ONE_MINUS_BETA1: rnd(1.0 - b1),
         L.VOP_S_ONE_MINUS_BETA2: rnd(1.0 - b2), L.VOP_S_BC2_SQRT: rnd(math.sqrt(bc2)),
         L.VOP_S_AMSGRAD: 1.0 if amsgrad else 0.0, L.VOP_S_RECTIFIED: 0.0}
    step = lr / bc1
    if radam:
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        rho_t = rho_inf - 2.0 * t * b2 ** t / bc2
        if rho_t > 5.0:
            rect = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                             / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            s[L.VOP_S_RECTIFIED] = 1.0
            step = lr * rect / bc1
    return s, rnd(step)


# ---- NumPy float32 references, element formulas of the C kernels ----------

def np_sgd(w, g, b, lr, wd, s, mu, keep, nesterov, first):
    lr, wd, s, mu, keep = f32(lr), f32(wd), f32(s), f32(mu), f32(keep)
    d = g * s + wd * w
    if mu == 0:
        return w - lr * d, b
    b = d.copy() if first else mu * b + keep * d
    return w - lr * (d + mu * b if nesterov else b), b


def np_adam(w, g, m, v, vmax, lr, wd, step, sc, decoupled):
    b1, b2 = f32(sc[L.VOP_S_BETA1]), f32(sc[L.VOP_S_BETA2])
    a1, a2 = f32(sc[L.VOP_S_ONE_MINUS_BETA1]), f32(sc[L.VOP_S_ONE_MINUS_BETA2])
    eps, bc2s, s = f32(sc[L.VOP_S_EPS]), f32(sc[L.VOP_S_BC2_SQRT]), f32(sc[L.VOP_S_GRAD_SCALE])
    lr, wd, step = f32(lr), f32(wd), f32(step)
    shrink = f32(1) - lr * wd if decoupled else f32(1)
    wdc = f32(0) if decoupled else wd
    wi = w * shrink
    d = g * s + wdc * wi
    m = b1 * m + a1 * d
    v = b2 * v + a2 * d * d
    vv = v
    if sc[L.VOP_S_AMSGRAD]:
        vmax = np.maximum(vmax, v)
        vv = vmax
    return wi - step * (m / (np.sqrt(vv) / bc2s + eps)), m, v, vmax


def np_radam(w, g, m, v, lr, wd, step, sc):
    b1, b2 = f32(sc[L.VOP_S_BETA1]), f32(sc[L.VOP_S_BETA2])
    a1, a2 = f32(sc[L.VOP_S_ONE_MINUS_BETA1]), f32(sc[L.VOP_S_ONE_MINUS_BETA2])
    eps, bc2s, s = f32(sc[L.VOP_S_EPS]), f32(sc[L.VOP_S_BC2_SQRT]), f32(sc[L.VOP_S_GRAD_SCALE])
    wd, step = f32(wd), f32(step)
    d = g * s + wd * w
    m = b1 * m + a1 * d
    v = b2 * v + a2 * d * d
    if sc[L.VOP_S_RECTIFIED]:
        return w - step * m * (bc2s / (np.sqrt(v) + eps)), m, v
    return w - step * m, m, v


def np_sam_perturb(x, y, c, wd, eta, asam):
    c, wd, eta = f32(c), f32(wd), f32(eta)
    a = y + wd * x
    t = np.abs(x) + eta if asam else f32(1)
    return x + c * (t * t * a)


def np_sam_q(x, y, wd, eta, asam):
    wd, eta = f32(wd), f32(eta)
    a = y + wd * x
    return (np.abs(x) + eta) * a if asam else a
