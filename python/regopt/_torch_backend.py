"""TorchBackend: the library's operations on parameter-sized memory done
by torch, on whatever device the parameters live (regopt_model_set_backend,
"Backends" in regopt.h).

With a backend the library never reads or writes a registered tensor: the
handles it was given (TorchModel registers each tensor's data_ptr()) come
back in REGOPT_VOP_BIND, and every later operation names vectors by id --
0 the weights, 1 their gradients, 2 and up buffers the library asked this
backend to allocate (optimizer moments, SAM's saved weights) -- each one
float32 tensor per trainable parameter, in registration order.

Arithmetic. Every elementwise formula is the C reference's (ro_sgd_update,
ro_adam_update, ro_radam_update, SAM's move) with the same float32
operations in the same order, each rounded once: multiplications,
additions, divisions and square roots as separate torch operations (no
alpha= or addcmul/addcdiv, which may fuse into a multiply-add), scalars
rounded to float32 as the C code holds them. On the CPU this gives the
library's own bits; sums of squares are in double, each tensor cut into
chunks of 4096 elements whose sums are added in order (torch sums a chunk
in its own order, which the contract allows). On a GPU torch's kernels
round the same way except where a kernel rewrites a division by a scalar
as a multiplication (torch's CUDA div by a CPU scalar), so trajectories
agree to float32 rounding, not bit for bit.

Checkpoints. REGOPT_VOP_READ and REGOPT_VOP_WRITE copy pieces of a vector
(or of a frozen tensor) to and from a host float array: the library's
checkpoints of this backend's trainer are the built-in path's bytes.

Failures. run(op) never raises: an exception is kept in .error and run
returns 1, which fails the library call with REGOPT_ERR_BACKEND; through
Model.set_backend the step then re-raises the exception itself with the
library's error attached (.regopt_error). Results needing the host (sums,
maxima, the update check) synchronize the device once per operation.
"""
import collections
import ctypes
import math

import torch

from . import _lib as L
from ._torch_update import _to_host, update

CHUNK = 4096                 # the contract's summation chunk
_SLICE = 1024 * CHUNK        # elements joined (or widened to double) at a time
_SMALL = 64 * CHUNK          # tensors below this are joined with their neighbours
_INF = float("inf")

OP_NAMES = {L.VOP_BIND: "BIND", L.VOP_ALLOC: "ALLOC", L.VOP_FREE: "FREE",
            L.VOP_ZERO: "ZERO", L.VOP_COPY: "COPY", L.VOP_SUM_SQUARES: "SUM_SQUARES",
            L.VOP_ABS_MAX: "ABS_MAX", L.VOP_UPDATE: "UPDATE",
            L.VOP_UPDATE_CHECK: "UPDATE_CHECK", L.VOP_SAM_PERTURB: "SAM_PERTURB",
            L.VOP_SAM_SQUARES: "SAM_SQUARES", L.VOP_SWAP: "SWAP", L.VOP_EMA: "EMA",
            L.VOP_SWA: "SWA", L.VOP_SCALE: "SCALE", L.VOP_AXPBY: "AXPBY", L.VOP_DOT: "DOT",
            L.VOP_READ: "READ", L.VOP_WRITE: "WRITE"}


def _groups(tensors, pad):
    """Lists of consecutive 1-D pieces, one device each, joined by one
    torch.cat: tensors below _SMALL elements (biases, norms: most tensors
    of a model, and a kernel launch each on a GPU) gathered up to _SLICE
    elements per group, larger ones sliced at most _SLICE elements each (a
    multiple of CHUNK) and alone. pad: each small tensor followed by zeros
    up to a multiple of CHUNK, so that every chunk of the join is a chunk of
    one tensor from its start."""
    group, size, dev = [], 0, None
    for t in tensors:
        n = t.numel()
        if n >= _SMALL:
            if group:
                yield group
                group, size = [], 0
            for start in range(0, n, _SLICE):
                yield [t[start:start + _SLICE]]
            continue
        tail = -n % CHUNK if pad else 0
        if group and (size + n + tail > _SLICE or t.device != dev):
            yield group
            group, size = [], 0
        group.append(t)
        if tail:
            group.append(_zeros(t.device, tail))
        size += n + tail
        dev = t.device
    if group:
        yield group


_ZEROS = {}


def _zeros(device, n):
    z = _ZEROS.get(device)
    if z is None:
        z = _ZEROS[device] = torch.zeros(CHUNK, device=device)
    return z[:n]


def chunk_sums(tensors):
    """The contract's sum of squares of float32 tensors: each element
    squared in double, chunks of CHUNK elements from each tensor's start
    summed, the chunk sums added in order (here, in Python)."""
    total = 0.0
    for s in chunk_list(tensors):
        total += s
    return total


def chunk_list(tensors):
    """The sums of squares of the chunks, in order, as Python floats: a few
    kernels per _SLICE elements, whatever the number of tensors."""
    parts = []
    for group in _groups([t for t in tensors if t.numel()], pad=True):
        # widened while joined into a double tensor padded to whole chunks
        # (a lone piece by copy_, twice as fast as cat's conversion), then
        # squared in place
        n = sum(p.numel() for p in group)
        d = torch.empty(n + -n % CHUNK, dtype=torch.float64, device=group[0].device)
        if len(group) == 1:
            d[:n].copy_(group[0])
            d[n:].zero_()
        else:
            torch.cat(group, out=d)
        d.mul_(d)
        parts.append(d.view(-1, CHUNK).sum(1))
    if not parts:
        return []
    dev = parts[0].device
    if all(p.device == dev for p in parts):
        return torch.cat(parts).tolist()
    return torch.cat([p.cpu() for p in parts]).tolist()


def abs_max(tensors):
    """max |x| over the tensors, infinity when one holds a NaN or an
    infinity: amax and amin (which propagate NaN; two reads without a
    temporary, cheaper than abs().max() or an infinity norm), one pair per
    group (_groups)."""
    ends = []
    for group in _groups([t for t in tensors if t.numel()], pad=False):
        x = group[0] if len(group) == 1 else torch.cat(group)
        ends += (x.amax(), x.amin())
    if not ends:
        return 0.0
    vals = _to_host(ends)
    return max(map(abs, vals)) if all(map(math.isfinite, vals)) else _INF


class TorchBackend:
    """A regopt backend whose vectors are torch tensors.

        backend = TorchBackend()
        backend.register(p.detach()); backend.register(p.grad)   # per tensor
        model.set_backend(backend)
        model.add_param_address(name, p.data_ptr(), p.grad.data_ptr(), p.numel())

    register() makes a tensor findable by its data_ptr() when the library
    binds its handles (REGOPT_VOP_BIND); TorchModel(backend="torch") does
    all of this. Tensors must be float32 and contiguous, on any device.

    .vectors   id -> list of 1-D tensors (views of the registered tensors
               for ids 0 and 1; buffers from 2 up)
    .frozen    1-D views of the frozen tensors (no gradient), which only a
               checkpoint reads and writes (REGOPT_VOP_READ / WRITE)
    .error     the exception of the last failed operation (None before)
    .calls     Counter of the operations run, by REGOPT_VOP_* code
    """

    def __init__(self):
        self._by_ptr = collections.defaultdict(list)
        self.vectors = {}
        self.frozen = []
        self.error = None
        self.calls = collections.Counter()

    def register(self, tensor):
        """Make tensor (float32, contiguous) bindable by its data_ptr()."""
        if not isinstance(tensor, torch.Tensor):
            raise TypeError("TorchBackend.register takes a torch.Tensor, got %s"
                            % type(tensor).__name__)
        if tensor.dtype != torch.float32:
            raise TypeError("TorchBackend: tensors must be float32, got %s (the library "
                            "refuses float16/bfloat16 with a backend)" % tensor.dtype)
        if not tensor.is_contiguous():
            raise ValueError("TorchBackend: a registered tensor must be contiguous")
        self._by_ptr[tensor.data_ptr()].append(tensor.detach())

    # -- the entry point -----------------------------------------------------
    def run(self, op):
        """Run one regopt_vop (a regopt._lib.Vop); 0 on success, 1 on failure
        with the exception in .error. Never raises."""
        try:
            name = _DISPATCH.get(op.code)
            if name is None:
                raise NotImplementedError("TorchBackend: unknown operation code %d (a newer "
                                          "library?)" % op.code)
            self.calls[op.code] += 1
            getattr(self, name)(op)
            return 0
        except BaseException as exc:  # never into C; the caller re-raises it
            if hasattr(exc, "add_note") and op.code in OP_NAMES:
                exc.add_note("TorchBackend: in REGOPT_VOP_%s" % OP_NAMES[op.code])
            self.error = exc
            return 1

    # -- helpers -------------------------------------------------------------
    def vec(self, vid, what="x"):
        v = self.vectors.get(vid)
        if v is None:
            raise KeyError("TorchBackend: operand %s names vector %d, which does not exist "
                           "(known: %s)" % (what, vid, sorted(self.vectors)))
        return v

    def _lookup(self, handle, count, k, role):
        cands = self._by_ptr.get(handle or 0, ())
        for t in cands:
            if t.numel() == count:
                return t.view(-1)
        raise LookupError("TorchBackend: BIND: %s handle %#x of tensor %d (%d elements) is no "
                          "registered tensor's data_ptr()%s" % (
                              role, handle or 0, k, count,
                              " (registered there: %s elements)"
                              % [t.numel() for t in cands] if cands else ""))

    # -- operations ----------------------------------------------------------
    def _bind(self, op):
        n = op.tensors
        w = [self._lookup(op.data[k], op.counts[k], k, "data") for k in range(n)]
        g = [self._lookup(op.grad[k], op.counts[k], k, "grad") for k in range(n)]
        self.vectors[L.VEC_WEIGHTS] = w
        self.vectors[L.VEC_GRADS] = g
        self.frozen = [self._lookup(op.frozen_data[k], op.frozen_counts[k], k, "frozen data")
                       for k in range(op.frozen)]

    def _piece(self, op):
        """The elements [first, first + count) of part op.tensor of op.x
        (VEC_FROZEN: frozen tensor op.tensor), and a float32 CPU tensor over
        the host array op.host of count floats (None when count is 0)."""
        parts = self.frozen if op.x == L.VEC_FROZEN else self.vec(op.x)
        if op.tensor >= len(parts):
            raise IndexError("TorchBackend: tensor %d of vector %d (it has %d)"
                             % (op.tensor, op.x, len(parts)))
        t = parts[op.tensor]
        if op.first > t.numel() or op.count > t.numel() - op.first:
            raise IndexError("TorchBackend: elements [%d, %d) of a %d-element tensor"
                             % (op.first, op.first + op.count, t.numel()))
        if not op.count:
            return t[:0], None
        addr = ctypes.cast(op.host, ctypes.c_void_p).value
        host = torch.frombuffer((ctypes.c_float * op.count).from_address(addr),
                                dtype=torch.float32)
        return t[op.first:op.first + op.count], host

    def _read(self, op):
        """host = the piece, the exact bits (a checkpoint's save); the copy
        to the host waits for the device."""
        src, host = self._piece(op)
        if host is not None:
            host.copy_(src)

    def _write(self, op):
        """The piece = host (a checkpoint's load); the library reuses the
        host array after the call, so a device gets its own copy first."""
        dst, host = self._piece(op)
        if host is not None:
            dst.copy_(host if dst.device.type == "cpu" else host.clone())

    def _alloc(self, op):
        if op.x < L.VEC_BUFFER0:
            raise ValueError("TorchBackend: ALLOC of vector %d (buffers start at %d)"
                             % (op.x, L.VEC_BUFFER0))
        if op.x in self.vectors:
            raise ValueError("TorchBackend: ALLOC of vector %d, which exists" % op.x)
        w = self.vec(L.VEC_WEIGHTS, "weights")
        self.vectors[op.x] = [torch.zeros_like(t) for t in w]

    def _free(self, op):
        if op.x >= L.VEC_BUFFER0:
            self.vectors.pop(op.x, None)

    def _zero(self, op):
        torch._foreach_zero_(self.vec(op.x))

    def _copy(self, op):
        for a, b in zip(self.vec(op.x), self.vec(op.y, "y")):
            a.copy_(b)

    def _sum_squares(self, op):
        x = self.vec(op.x)
        op.out[0] = chunk_sums(x if op.tensor >= op.tensors else [x[op.tensor]])

    def _abs_max(self, op):
        x = self.vec(op.x)
        op.out[0] = abs_max(x if op.tensor >= op.tensors else [x[op.tensor]])

    def _swap(self, op):
        """x <-> y (the Bregman/MESA teacher into the weights and back);
        out[0] = 1 when every value that left x was finite."""
        x, y = self.vec(op.x), self.vec(op.y, "y")
        finite = math.isfinite(abs_max(x))
        for a, b in zip(x, y):
            t = a.clone()
            a.copy_(b)
            b.copy_(t)
        op.out[0] = 1.0 if finite else 0.0

    def _ema(self, op):
        """x = (float)(s[0] * (double)x + s[1] * (double)y), in double and
        rounded once (the teacher's and the EMA average's recurrence)."""
        x, y = self.vec(op.x), self.vec(op.y, "y")
        keep, take = op.s[0], op.s[1]
        for a, b in zip(x, y):
            d = a.double().mul_(keep)
            d.add_(b.double().mul_(take))
            a.copy_(d)

    def _swa(self, op):
        """SWA's running mean x = (float)((double)x + ((double)y -
        (double)x) / s[0]), in double and rounded once (s[0] = n + 1)."""
        x, y = self.vec(op.x), self.vec(op.y, "y")
        n1 = op.s[0]
        for a, b in zip(x, y):
            d = a.double()
            d.add_(b.double().sub_(d).div_(n1))
            a.copy_(d)

    def _scale(self, op):
        """x = x * s[0] in float32: the clipping factor applied to the
        gradient before a torch.optim update (REGOPT_HOST)."""
        torch._foreach_mul_(self.vec(op.x), float(op.s[0]))

    def _axpby(self, op):
        """x = a * y + b * z in float32, each product rounded, then the sum
        (z none: a * y); a, b shared (s[0], s[1]) or per tensor
        (per_tensor[2k], [2k + 1]); tensors without flags[k] & 1 untouched:
        the SAM family's stateful variants."""
        x, y = self.vec(op.x), self.vec(op.y, "y")
        z = self.vec(op.z, "z") if op.z != L.VEC_NONE else None
        for k in range(len(x)):
            if op.flags and not op.flags[k] & 1:
                continue
            a = op.per_tensor[2 * k] if op.per_tensor else op.s[0]
            b = op.per_tensor[2 * k + 1] if op.per_tensor else op.s[1]
            r = torch.mul(y[k], a)  # float32 tensor x float32 value: one rounding
            if z is not None:
                r.add_(torch.mul(z[k], b))
            x[k].copy_(r)

    def _dot(self, op):
        """out[0] = sum of x * y in double over every tensor or op.tensor:
        variant 0 in the contract's sixteen lanes per tensor, variant 1 one
        running sum in element order (cumulative sums: sequential on the
        CPU, so the CPU backend's bits there)."""
        x, y = self.vec(op.x), self.vec(op.y, "y")
        ks = range(len(x)) if op.tensor >= op.tensors else [op.tensor]
        prods = [x[k].double() * y[k].double() for k in ks]
        if op.variant == 1:
            flat = torch.cat(prods) if prods else torch.zeros(1, dtype=torch.float64)
            op.out[0] = float(flat.cumsum(0)[-1]) if flat.numel() else 0.0
            return
        total = 0.0
        for p in prods:
            n16 = p.numel() // 16 * 16
            lanes = (p[:n16].view(-1, 16).cumsum(0)[-1] if n16
                     else torch.zeros(16, dtype=torch.float64, device=p.device))
            lanes = lanes.tolist()
            for i, v in enumerate(p[n16:].tolist()):
                lanes[i] += v
            for w in (8, 4):
                for i in range(w):
                    lanes[i] += lanes[i + w]
            lanes[0] += lanes[2]
            lanes[1] += lanes[3]
            total += lanes[0] + lanes[1]
        op.out[0] = total

    def _update(self, op):
        update(self, op, check=False)

    def _update_check(self, op):
        update(self, op, check=True)

    def _sam_q(self, op, x, y, idx):
        """SAM's ascent direction q = t * t * a (the perturbation) or t * a
        (the squares) on the tensors idx; returns (a, t) lists, t None
        where t = 1."""
        wd, eta = op.s[1], op.s[2]
        xs, ys = [x[k] for k in idx], [y[k] for k in idx]
        a = torch._foreach_add(ys, torch._foreach_mul(xs, wd)) if wd != 0.0 else ys
        asam = [bool(op.flags[k] & 2) for k in idx]
        ts = None
        if any(asam):
            ts = [torch.abs(xk).add_(eta) if f else None for xk, f in zip(xs, asam)]
        return a, ts

    def _sam_perturb(self, op):
        x, y, z = self.vec(op.x), self.vec(op.y, "y"), self.vec(op.z, "z")
        for zk, xk in zip(z, x):
            zk.copy_(xk)
        idx = [k for k in range(op.tensors) if op.flags[k] & 1]
        if idx:
            c = op.s[0]
            a, ts = self._sam_q(op, x, y, idx)
            q = list(a)
            if ts is not None:
                q = [ak if t is None else (t * t) * ak for ak, t in zip(a, ts)]
            torch._foreach_add_([x[k] for k in idx], torch._foreach_mul(q, c))
        if op.variant == 1:
            torch._foreach_zero_(y)

    def _sam_squares(self, op):
        x, y = self.vec(op.x), self.vec(op.y, "y")
        idx = [k for k in range(op.tensors) if op.flags[k] & 1]
        if not idx:
            op.out[0] = 0.0
            return
        a, ts = self._sam_q(op, x, y, idx)
        q = a if ts is None else [ak if t is None else t * ak for ak, t in zip(a, ts)]
        op.out[0] = chunk_sums(q)


# code -> method name (looked up on the instance: a subclass may override one)
_DISPATCH = {L.VOP_BIND: "_bind", L.VOP_ALLOC: "_alloc", L.VOP_FREE: "_free",
             L.VOP_ZERO: "_zero", L.VOP_COPY: "_copy", L.VOP_SUM_SQUARES: "_sum_squares",
             L.VOP_ABS_MAX: "_abs_max", L.VOP_UPDATE: "_update",
             L.VOP_UPDATE_CHECK: "_update_check", L.VOP_SAM_PERTURB: "_sam_perturb",
             L.VOP_SAM_SQUARES: "_sam_squares", L.VOP_SWAP: "_swap", L.VOP_EMA: "_ema",
             L.VOP_SWA: "_swa", L.VOP_SCALE: "_scale", L.VOP_AXPBY: "_axpby",
             L.VOP_DOT: "_dot", L.VOP_READ: "_read", L.VOP_WRITE: "_write"}
