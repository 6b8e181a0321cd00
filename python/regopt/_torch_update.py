"""TorchBackend's REGOPT_VOP_UPDATE and REGOPT_VOP_UPDATE_CHECK: the base
optimizer's step on lists of float32 tensors, operation for operation as
the library's C kernels compute it (src/optim/optim_sgd.c sgd_one,
src/optim/optim_adam.c adam_one and radam_one):

  SGD     d = g*s + wd*w; b = first ? d : mu*b + (1-dampening)*d;
          w = w - lr * (nesterov ? d + mu*b : b)     (mu = 0: w - lr*d)
  Adam    wi = w * shrink (AdamW: 1 - lr*wd, and no coupled decay);
          d = g*s + wd*wi; m = b1*m + (1-b1)*d; v = b2*v + ((1-b2)*d)*d;
          (AMSGrad: vmax = max(vmax, v), used for v)
          w = wi - step * (m / (sqrt(v)/bc2s + eps))
  RAdam   d = g*s + wd*w; moments as Adam; rectified:
          w = w - (step*m) * (bc2s / (sqrt(v) + eps)), else w - step*m

with s = the clipping factor, lr, wd and step per tensor (per_tensor[3k ..
3k+2]) and the rest shared (s[REGOPT_VOP_S_*]). Vectors: x the weights,
y the gradients, z the first moment (SGD's momentum buffer), u the second,
v AMSGrad's maximum.

The check runs the same arithmetic on copies and reports the first
non-finite result as ro_*_check does: per element in order, a weight
non-finite before the update (1; under SGD without momentum not a failure),
then the first moment (3), the second (4), AMSGrad's maximum (5), the new
weight (2).
"""
import ctypes

import torch

from . import _lib as L


# REGOPT_VOP_UPDATE_CHECK's out[2]
WHAT_NONE, WHAT_WEIGHT_BEFORE, WHAT_WEIGHT, WHAT_FIRST, WHAT_SECOND, WHAT_SECOND_MAX = range(6)


def f32(x):
    """x rounded to float32, as a Python float (the C code's (float)x)."""
    return ctypes.c_float(x).value


def _to_host(values):
    """A list of 0-dim tensors (any devices) -> Python floats, one
    synchronization per device."""
    if not values:
        return []
    dev = values[0].device
    if all(t.device == dev for t in values):
        return torch.stack(values).tolist()
    return [float(t) for t in values]


def _per_tensor(op, n):
    """(lrs, wds, steps): per_tensor[3k], [3k+1], [3k+2] as float32 values."""
    if not n:
        return [], [], []
    raw = (ctypes.c_double * (3 * n)).from_address(ctypes.addressof(op.per_tensor.contents))
    vals = [f32(x) for x in raw]
    return vals[0::3], vals[1::3], vals[2::3]


def _direction(w, g, scale, wds):
    """d = g*s + wd*w per tensor (g itself when s = 1 and no decay: never
    written in place)."""
    d = torch._foreach_mul(g, scale) if scale != 1.0 else g
    if any(wd != 0.0 for wd in wds):
        d = torch._foreach_add(d, torch._foreach_mul(w, wds))
    return d


def _sgd(op, w, g, z, lrs, wds):
    s = op.s
    scale, mu = s[L.VOP_S_GRAD_SCALE], s[L.VOP_S_MOMENTUM]
    d = _direction(w, g, scale, wds)
    if mu == 0.0:
        torch._foreach_sub_(w, torch._foreach_mul(d, lrs))
        return
    # (the in-place forms below round as the out-of-place ones: one
    # operation, one rounding)
    if s[L.VOP_S_FIRST] != 0.0:  # torch: the buffer starts as the first d
        for b, dk in zip(z, d):
            b.copy_(dk)
    else:
        torch._foreach_mul_(z, mu)
        torch._foreach_add_(z, torch._foreach_mul(d, s[L.VOP_S_ONE_MINUS_DAMPENING]))
    if s[L.VOP_S_NESTEROV] != 0.0:
        step = torch._foreach_mul(z, mu)
        torch._foreach_add_(step, d)  # d + mu b
        torch._foreach_mul_(step, lrs)
    else:
        step = torch._foreach_mul(z, lrs)
    torch._foreach_sub_(w, step)


def _moments(op, g, m, v, d):
    s = op.s
    torch._foreach_mul_(m, s[L.VOP_S_BETA1])
    torch._foreach_add_(m, torch._foreach_mul(d, s[L.VOP_S_ONE_MINUS_BETA1]))
    torch._foreach_mul_(v, s[L.VOP_S_BETA2])
    t = torch._foreach_mul(d, s[L.VOP_S_ONE_MINUS_BETA2])
    torch._foreach_mul_(t, d)  # ((1 - b2) d) d
    torch._foreach_add_(v, t)


def _adam(op, w, g, m, v, vmax, lrs, wds, steps, decoupled):
    s = op.s
    scale = s[L.VOP_S_GRAD_SCALE]
    if decoupled:
        shrink = [f32(1.0 - f32(lr * wd)) for lr, wd in zip(lrs, wds)]  # 1.0f - lr * wd
        if any(k != 1.0 for k in shrink):
            torch._foreach_mul_(w, shrink)
        wds = [0.0] * len(wds)
    d = _direction(w, g, scale, wds)
    _moments(op, g, m, v, d)
    if s[L.VOP_S_AMSGRAD] != 0.0:
        torch._foreach_maximum_(vmax, v)
        v = vmax
    den = torch._foreach_sqrt(v)
    torch._foreach_div_(den, s[L.VOP_S_BC2_SQRT])
    torch._foreach_add_(den, s[L.VOP_S_EPS])
    q = torch._foreach_div(m, den)
    torch._foreach_mul_(q, steps)
    torch._foreach_sub_(w, q)


def _radam(op, w, g, m, v, lrs, wds, steps):
    s = op.s
    d = _direction(w, g, s[L.VOP_S_GRAD_SCALE], wds)
    _moments(op, g, m, v, d)
    sm = torch._foreach_mul(m, steps)
    if s[L.VOP_S_RECTIFIED] != 0.0:
        den = torch._foreach_sqrt(v)
        torch._foreach_add_(den, s[L.VOP_S_EPS])
        # bc2s / den as a division (Tensor.__rtruediv__ would multiply by a
        # reciprocal): the numerator a 0-dim tensor on the CPU
        num = torch.tensor(f32(s[L.VOP_S_BC2_SQRT]), dtype=torch.float32)
        torch._foreach_mul_(sm, [torch.div(num, t) for t in den])
    torch._foreach_sub_(w, sm)


def update(backend, op, check):
    """REGOPT_VOP_UPDATE (check False) or REGOPT_VOP_UPDATE_CHECK."""
    kind = op.variant
    if kind not in (L.SGD, L.ADAM, L.ADAMW, L.RADAM):
        raise ValueError("TorchBackend: UPDATE of optimizer kind %d (SGD, Adam, AdamW and "
                         "RAdam run with a backend)" % kind)
    n = op.tensors
    w, g = backend.vec(op.x, "x (weights)"), backend.vec(op.y, "y (gradients)")
    lrs, wds, steps = _per_tensor(op, n)
    sgd_mu = kind == L.SGD and op.s[L.VOP_S_MOMENTUM] != 0.0
    amsgrad = kind in (L.ADAM, L.ADAMW) and op.s[L.VOP_S_AMSGRAD] != 0.0
    z = backend.vec(op.z, "z (first moment)") if kind != L.SGD or sgd_mu else None
    u = backend.vec(op.u, "u (second moment)") if kind != L.SGD else None
    v = backend.vec(op.v, "v (AMSGrad's maximum)") if amsgrad else None
    w0 = w
    if check:
        w = [t.clone() for t in w]
        z, u, v = ([t.clone() for t in lst] if lst is not None else None for lst in (z, u, v))
    if kind == L.SGD:
        _sgd(op, w, g, z, lrs, wds)
    elif kind == L.RADAM:
        _radam(op, w, g, z, u, lrs, wds, steps)
    else:
        _adam(op, w, g, z, u, v, lrs, wds, steps, kind == L.ADAMW)
    if check:
        _verdict(op, kind, w0, w, z, u, v, sgd_mu)


def _verdict(op, kind, w0, wn, m, v, vmax, sgd_mu):
    """out[0..3] of REGOPT_VOP_UPDATE_CHECK from the copies the update wrote."""
    codes, anys, maxes = [], [], []
    for k in range(len(w0)):
        code = torch.zeros(w0[k].shape, dtype=torch.int8, device=w0[k].device)
        # the verdicts from the last to the first in C's order: the first wins
        code.masked_fill_(~torch.isfinite(wn[k]), WHAT_WEIGHT)
        if vmax is not None:
            code.masked_fill_(~torch.isfinite(vmax[k]), WHAT_SECOND_MAX)
        if v is not None:
            code.masked_fill_(~torch.isfinite(v[k]), WHAT_SECOND)
        if m is not None:
            code.masked_fill_(~torch.isfinite(m[k]), WHAT_FIRST)
        # a weight non-finite before: a failure unless SGD keeps no buffer
        before = WHAT_WEIGHT_BEFORE if kind != L.SGD or sgd_mu else WHAT_NONE
        code.masked_fill_(~torch.isfinite(w0[k]), before)
        codes.append(code)
        anys.append(code.ne(0).any().to(torch.float32))
        maxes.append(m[k].abs().max() if m is not None and m[k].numel()
                     else torch.zeros((), device=w0[k].device))
    op.out[0], op.out[1], op.out[2], op.out[3] = -1.0, 0.0, 0.0, 0.0
    flags = _to_host(anys)
    for k, bad in enumerate(flags):
        if bad:
            i = int(torch.nonzero(codes[k])[0, 0])
            op.out[0], op.out[1], op.out[2] = float(k), float(i), float(codes[k][i])
            return
    op.out[3] = max(_to_host([t.float() for t in maxes]), default=0.0)
