"""PyTorch adapter: train an nn.Module through libregopt.

    import torch, regopt
    from regopt.torch import TorchModel

    net = MyNet()                                   # float32, CPU
    model = TorchModel(net, output_width=10, embedding="embed")
    opt = regopt.Optimizer("adamw", lr=1e-3)
    trainer = regopt.Trainer(model, opt, seed=0)
    trainer.add("sam", rho=0.05)
    trainer.add("smart", lambda_=1.0)
    trainer.step(regopt.Batch(data=x, labels=y))    # x: tensor (or tuple/dict of tensors)

A torch.optim optimizer and scheduler, a loss written in torch, state_dict()
and torch.distributed: regopt.torch_train.TorchTrainer (its docstring).

What the adapter does:
  * registers every parameter zero-copy: p.data and p.grad (allocated as
    zeros first) by data_ptr(); the library updates p in place and zeroes
    p.grad at the start of each step.
  * before every step, evaluation and checkpoint it checks that each
    parameter is still the registered memory: the module's Parameter object,
    data_ptr(), dtype, device, numel, contiguity and requires_grad, and the
    data_ptr() of the registered .grad. A change -- p.data = ..., module.double(),
    module.to(...), module.share_memory(), vector_to_parameters, a new or
    replaced Parameter, freezing or unfreezing (requires_grad) -- raises
    regopt.StateError naming the parameter and the change: the adapter does
    not re-register (the library's parameter table is fixed once a trainer
    is bound); build a new TorchModel and Trainer after such changes (move
    the optimizer state with to_bytes(params=False)/from_bytes when the
    layout is the same), and change values in place instead
    (with torch.no_grad(): p.copy_(...)). A .grad set to None
    (zero_grad(set_to_none=True)) or replaced by another tensor is simply put
    back: gradients are zeroed at the start of each step anyway.
  * forward: runs call(module, data[rows]) with torch's RNG seeded from
    pass.seed (so dropout is reproducible from trainer.seed; the caller's RNG
    state is put back when the step or evaluation returns), in train() or
    eval() mode by REGOPT_PASS_TRAIN, under torch.no_grad() for NO_GRAD, with
    batch-norm running statistics frozen (momentum 0, counters restored) for
    PERTURBED_WEIGHTS, TEACHER and input-perturbed passes, recomputed for
    RECALIBRATE passes (torch.optim.swa_utils.update_bn: reset_running_stats
    at micro_batch 0, then momentum None: the equal-weight mean over the
    recalibration), and with SMART's
    perturbation added to the output of the submodule named `embedding`
    (a forward hook). The autograd graph is kept per activation slot.
    Teacher passes of a float32 module (Bregman, MESA) compute with the
    library's teacher buffers put under the parameters (p.data, restored
    after the pass; REGOPT_CAP_PASS_WEIGHTS).
  * SMART and the adversarial family: the `embedding` submodule runs once
    per micro-batch, its output reused by the perturbed passes at the
    step's weights, bitwise the same training (reuse_embedding=False: every
    pass runs the whole module; regopt._torch_lower says when it falls back).
  * backward: torch.autograd.backward(outputs, d_outputs) accumulates into
    p.grad; NO_PARAM_GRAD passes use torch.autograd.grad on the perturbation
    only (parameters untouched); d_input is written when asked.

Parameters on a GPU: TorchModel(net, ..., backend="torch") registers each
tensor's data_ptr() as an opaque handle and hands every operation of the
library on the parameters (update, gradient zeroing, norms, SAM's move,
the Bregman/MESA teacher's and the weight averages' swaps and means) to a
TorchBackend (regopt._torch_backend), which does it in torch on the
parameters' device; outputs are copied to the library's host buffers after
each forward, d_outputs to the device for backward, and dropout is seeded
from pass.seed on the CUDA devices in use too (regopt._torch_device).
Float32 parameters only; the library refuses (regopt.Unsupported) what it
cannot run with a backend: stateful SAM variants, loss scaling, a host
optimizer (TorchTrainer with a torch.optim optimizer), an all-reduce
(process_group=), flatness and checkpoints.

Parameter groups: group_fn(name, param) -> group; the default puts tensors
with fewer than 2 dimensions (biases, normalisation weights) in group 1 and
the rest in group 0, so Optimizer.set_group(1, weight_decay=0) exempts them.
"""
import ctypes
import operator
import weakref

import torch
import torch.nn as nn

from . import _core
from . import _lib as L
from . import _torch_device, _torch_lower
from ._errors import StateError
from ._torch_output import select_output
from ._torch_registered import _Registered


def default_group(name, param):
    return 1 if param.dim() < 2 else 0


def _slice(data, sl):
    if data is None:
        return None
    if isinstance(data, torch.Tensor):
        return data[sl]
    if isinstance(data, (tuple, list)):
        return type(data)(_slice(d, sl) for d in data)
    if isinstance(data, dict):
        return {k: _slice(v, sl) for k, v in data.items()}
    try:
        return data[sl]
    except TypeError:
        return data


def default_call(module, data):
    if isinstance(data, dict):
        return module(**data)
    if isinstance(data, (tuple, list)):
        return module(*data)
    return module(data)


def _tensor_at(address, n):
    """A float32 tensor over library memory (zero-copy, valid during the call)."""
    if n == 0:
        return torch.zeros(0)
    buf = (ctypes.c_float * n).from_address(address)
    return torch.frombuffer(buf, dtype=torch.float32)


class _PassAddr(ctypes.Structure):
    """struct regopt_pass with its pointers as integers: read over a pass
    (from_address) for the buffer addresses, which ctypes.cast would
    otherwise compute at a microsecond or two each, several times a pass."""
    _fields_ = [(n, ctypes.c_size_t if t is ctypes.c_void_p or issubclass(t, ctypes._Pointer)
                 else t) for n, t in L.Pass._fields_]


def _autograd_backward():
    """torch.autograd.backward without its Python argument handling (~10 us
    a pass on a small model): the engine's run_backward, when this torch
    has it with the signature we call it with; else the public function."""
    engine = getattr(getattr(torch.autograd, "Variable", None), "_execution_engine", None)

    def public(outs, grads, keep=False):
        torch.autograd.backward(outs, grad_tensors=grads, retain_graph=keep)

    if engine is None:
        return public

    def direct(outs, grads, keep=False):
        engine.run_backward(outs, grads, keep, False, (), allow_unreachable=True,
                            accumulate_grad=True)
    try:
        w = torch.ones(1, requires_grad=True)
        direct((w * 2.0,), (torch.ones(1),))
        if w.grad is None or float(w.grad) != 2.0:
            return public
    except Exception:  # another torch: its internals differ
        return public
    return direct


_run_backward = _autograd_backward()


_BN = (nn.modules.batchnorm._BatchNorm,)
_WEIGHTS_OFFSET = L.Pass.weights.offset
_DTYPE_REQ = operator.attrgetter("dtype", "requires_grad")
_GRAD = operator.attrgetter("grad")
_PARAMS = operator.attrgetter("_parameters")
_MODULES = operator.attrgetter("_modules")

# Parameter dtypes the library takes; float16 and bfloat16 get the library's
# fp32 master copy and loss scaling (float16: dynamic from 2^16), see
# "Mixed precision" in regopt.h. The module computes in its own dtype; its
# outputs are widened to float32 for the loss.
_DTYPES = {torch.float32: L.DTYPE_FLOAT32, torch.float16: L.DTYPE_FLOAT16,
           torch.bfloat16: L.DTYPE_BFLOAT16}


class _PerturbHook:
    """The forward hook that adds SMART's perturbation to the embedding's
    output. It holds its TorchModel weakly, and copies of it (a deepcopy or
    pickle of the module, e.g. for an EMA model or torch.save) do nothing:
    the TorchModel itself cannot be copied (it owns a library handle)."""

    def __init__(self, model=None):
        self._ref = weakref.ref(model) if model is not None else None

    def __call__(self, mod, inputs, output):
        model = self._ref() if self._ref is not None else None
        return model._perturb_hook(mod, inputs, output) if model is not None else None

    def __reduce__(self):
        return (_PerturbHook, ())


class TorchModel(_core.Model):
    """A regopt.Model over an nn.Module.

    module        the network (float32, float16 or bfloat16 parameters on the CPU,
                  contiguous; 16-bit ones get the library's fp32 master and loss
                  scaling; with backend="torch": float32 on the CPU or CUDA)
    output_width  floats per output row (classes); outputs are reshaped to
                  (rows, output_width)
    embedding     name of the submodule whose output SMART perturbs
                  (module.get_submodule(name)); None: no SMART
    input_width   floats per embedding row; inferred for nn.Embedding
                  (embedding_dim) and nn.Linear (out_features)
    slots         activation slots (3 covers R-Drop + SMART)
    call          call(module, data) -> outputs; default module(data),
                  module(*data) for tuples, module(**data) for dicts. data is
                  Batch.data sliced to the pass's rows.
    group_fn      group_fn(name, param) -> parameter group
    output        which output the library sees when the module returns a
                  dict (a key), a tuple or list (an index) or anything else
                  (a callable(out) -> tensor); None: the module returns a
                  tensor (a dict or tuple then raises, naming output=)
    reuse_embedding  run the embedding submodule once per micro-batch and
                  reuse its output in the perturbed passes of the step
                  (SMART, adversarial training); the results are the same
                  (regopt._torch_lower says when, and when it falls back).
                  False: every pass runs the whole module.
    backend       None or "cpu": the library works in the parameters' CPU
                  memory itself (float32/16/bfloat16). "torch" (or a
                  TorchBackend instance): float32 parameters on any CPU or
                  CUDA device, the library's operations on them run by
                  torch (see the module docstring); model.backend is the
                  TorchBackend. Gradients stay on the parameters' device;
                  reuse_embedding works there too (the RNG states it
                  compares include the CUDA generators).
    """

    def __init__(self, module, output_width, *, embedding=None, input_width=None, slots=3,
                 call=None, group_fn=default_group, allocator=None, output=None,
                 reuse_embedding=True, backend=None):
        if not isinstance(module, nn.Module):
            raise TypeError("TorchModel needs a torch.nn.Module")
        torch_backend = _torch_device.backend_from(backend)
        devices = _torch_device.parameter_devices(module, torch_backend is not None)
        super().__init__(output_width, slots=slots, allocator=allocator)
        self._devices = devices  # of the parameters, CUDA ones with their index
        self._cuda_rng = _torch_device.PassRNG(devices) \
            if any(d.type == "cuda" for d in devices) else None
        self.module = module
        self.call = call or default_call
        self.output = output
        self._graphs = {}
        self._registered = []  # _Registered, in registration order
        self._bns = [m for m in module.modules() if isinstance(m, _BN)]
        # per-pass caches (the step's Python overhead is what a small model
        # pays): library buffers wrapped once per (address, floats), and the
        # module tree as last checked (_snapshot)
        self._views = {}
        self._mods = []
        self._tree = ()
        # auxiliary losses (TorchTrainer's loss_fn): each forward's module
        # output by the address of its outputs (the loss callback's key), and
        # the auxiliary term loss_fn returned for a slot, until its backward
        self._keep_outputs = False
        self._by_out = {}
        self._aux = {}
        self._rng = None  # the caller's torch RNG state during a call
        self._embedding = None
        self._delta = None
        self._hook = None
        self._lower = None  # _torch_lower.LowerCache when reuse_embedding
        if embedding is not None:
            sub = module.get_submodule(embedding)
            if input_width is None:
                if isinstance(sub, nn.Embedding):
                    input_width = sub.embedding_dim
                elif isinstance(sub, nn.Linear):
                    input_width = sub.out_features
                else:
                    raise ValueError("input_width is needed for embedding %r (%s)"
                                     % (embedding, type(sub).__name__))
            self._embedding = sub
            self.embedding_name = embedding
            self._hook = sub.register_forward_hook(_PerturbHook(self))
            if reuse_embedding:
                rng = self._cuda_rng
                self._lower = _torch_lower.LowerCache(sub) if rng is None \
                    else _torch_lower.LowerCache(sub, rng.get_state, rng.set_state)
        if input_width:
            self.input_width = input_width
        try:
            if torch_backend is not None:
                self.set_backend(torch_backend)
            self._register(module, group_fn)
        except BaseException:
            self.close()
            raise
        self._snapshot()
        self.set_callbacks(self._forward, self._backward)
        # teacher passes (Bregman, MESA) compute with the teacher's own
        # buffers, put under the parameters for the pass (p.data = a tensor
        # over them), instead of the library copying the teacher into the
        # registered memory and back: two passes over the weights less a
        # step. The library uses this for float32 models only.
        self._teacher_views = {}
        if torch_backend is None and all(r.dtype == torch.float32 for r in self._registered):
            self.set_capabilities(L.CAP_PASS_WEIGHTS)

    def _view(self, address, rows, width):
        """A (rows, width) float32 tensor over library memory at address, made
        once: the library's output and gradient buffers stay put between
        reserves, so a step re-creates no wrapper."""
        key = (address, rows, width)
        t = self._views.get(key)
        if t is None:
            if len(self._views) > 64:  # buffers were reallocated: drop the old ones
                self._views.clear()
            t = self._views[key] = _tensor_at(address, rows * width).view(rows, width)
        return t

    # -- registration ------------------------------------------------------
    def _register(self, module, group_fn):
        seen = set()
        for name, p in module.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            backend = self.backend
            if backend is not None:  # devices: _torch_device.parameter_devices
                _torch_device.check_backend_dtype(name, p)
            dtype = _DTYPES.get(p.dtype)
            if dtype is None:
                raise TypeError("parameter %r is %s; libregopt takes float32, float16 "
                                "(module.half()) or bfloat16 (module.bfloat16())"
                                % (name, p.dtype))
            if not p.is_contiguous():
                raise ValueError("parameter %r is not contiguous" % name)
            grad = None
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p, memory_format=torch.contiguous_format)
                grad = p.grad
                if grad.dtype != p.dtype or not grad.is_contiguous() \
                        or grad.data_ptr() == p.data_ptr():
                    raise ValueError("parameter %r: .grad must be a separate contiguous "
                                     "%s tensor" % (name, p.dtype))
            if backend is not None:  # the handles below: these tensors' data_ptr()
                backend.register(p.detach())
                if grad is not None:
                    backend.register(grad)
            self.add_param_address(name, p.data_ptr(), grad.data_ptr() if grad is not None
                                   else None, p.numel(), group_fn(name, p), dtype=dtype,
                                   keepalive=(p, grad))
            self._registered.append(_Registered(name, p, grad))

    def _after_call(self):
        if self._lower is not None:
            self._lower.clear()  # the records hold the submodule's graphs
        if self._rng is not None:
            torch.default_generator.set_state(self._rng)
            self._rng = None
        if self._cuda_rng is not None:
            self._cuda_rng.restore()
        if self._by_out or self._aux:  # module outputs (graphs) no pass will use
            self._by_out.clear()
            self._aux.clear()

    def _snapshot(self):
        """Record the module tree (each module's parameter and child entries)
        as it is now, so that _before_call can confirm nothing changed with
        identity checks instead of walking named_parameters()."""
        mods = list(self.module.modules())
        pdicts = [m._parameters for m in mods]
        mdicts = [m._modules for m in mods]
        entries = [(d, k, v) for d in pdicts + mdicts for k, v in d.items()]
        self._mods = mods
        # as parallel lists, compared by map() in C (a Python loop over the
        # modules and tensors was most of a small model's check)
        self._tree = (mods, pdicts, mdicts, pdicts + mdicts, [len(d) for d in pdicts + mdicts],
                      [e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries])
        regs = self._registered
        with_grad = [r for r in regs if r.grad is not None]
        self._flat = (
            [r.param for r in regs], [r.ptr for r in regs],
            [(r.dtype, r.requires_grad) for r in regs], [r.numel for r in regs], None,
            [r.param for r in with_grad], [r.grad for r in with_grad],
            [r.grad_ptr for r in with_grad])

    def _unchanged(self):
        """True when the tree and every registered tensor are as recorded:
        the common case, a few identity and integer comparisons per tensor."""
        mods, pdicts, mdicts, dicts, lens, edicts, ekeys, evals = self._tree
        is_ = operator.is_
        if not (all(map(is_, map(_PARAMS, mods), pdicts))
                and all(map(is_, map(_MODULES, mods), mdicts))
                and list(map(len, dicts)) == lens
                and all(map(is_, map(dict.get, edicts, ekeys), evals))):
            return False
        params, ptrs, dtype_req, numels, _, gparams, gbufs, gptrs = self._flat
        T = torch.Tensor
        return (list(map(T.data_ptr, params)) == ptrs
                and list(map(_DTYPE_REQ, params)) == dtype_req
                and list(map(T.numel, params)) == numels
                and all(map(T.is_contiguous, params))
                and all(map(operator.is_, map(_GRAD, gparams), gbufs))
                and list(map(T.data_ptr, gbufs)) == gptrs)

    def _before_call(self):
        """Before each step, evaluation and checkpoint: the registered memory
        must still be the parameters' (see the module docstring)."""
        if self._lower is not None:
            self._lower.clear()
        if self._unchanged():
            return
        self._check_all()
        self._snapshot()

    def _check_all(self):
        regs = self._registered
        i = 0
        for name, p in self.module.named_parameters():
            r = regs[i] if i < len(regs) else None
            if r is None or r.name != name:
                known = {x.name for x in regs}
                if name not in known:
                    raise StateError("TorchModel: the module has a parameter %r that was not "
                                     "there when TorchModel() registered its parameters: the "
                                     "library would not train it; build a new TorchModel and "
                                     "Trainer" % name, L.ERR_STATE)
                r = next(x for x in regs if x.name == name)
            i += 1
            why = r.change(p)
            if why is not None:
                raise StateError("TorchModel: parameter %r changed after registration: %s. The "
                                 "library holds the registered memory; build a new TorchModel "
                                 "and Trainer after such a change, or change values in place "
                                 "(with torch.no_grad(): p.copy_(...))" % (name, why),
                                 L.ERR_STATE)
            if r.grad is not None and p.grad is not r.grad:
                # zero_grad(set_to_none=True) or another tensor: put the
                # registered buffer back (the step zeroes it first anyway)
                p.grad = r.grad
        if i < len(regs):
            have = {n for n, _ in self.module.named_parameters()}
            gone = [x.name for x in regs if x.name not in have]
            raise StateError("TorchModel: parameter(s) %s registered by TorchModel() are no "
                             "longer in the module; build a new TorchModel and Trainer"
                             % ", ".join(map(repr, gone)), L.ERR_STATE)

    # -- SMART -------------------------------------------------------------
    def _perturb_hook(self, mod, inputs, output):
        d = self._delta
        if d is None:
            return None
        if d.numel() != output.numel():
            raise ValueError("SMART: the perturbation has %d floats (input_rows x input_width) "
                             "but the output of %r has shape %s: give Batch(input_rows=...)"
                             % (d.numel(), self.embedding_name, tuple(output.shape)))
        if d.device != output.device:  # backend='torch': the module on a device
            d = d.to(output.device)
        return output + d.view_as(output)

    # -- callbacks ---------------------------------------------------------
    def _forward(self, p):
        c = p._c
        a = _PassAddr.from_address(ctypes.addressof(c))
        module = self.module
        flags = c.flags
        train = bool(flags & L.PASS_TRAIN)
        want_grad = not (flags & L.PASS_NO_GRAD)
        perturbed_input = a.input_perturbation != 0
        freeze_bn = bool(flags & (L.PASS_PERTURBED_WEIGHTS | L.PASS_TEACHER)) or perturbed_input
        recalibrate = bool(flags & L.PASS_RECALIBRATE)
        rows, r0 = c.rows, c.row_offset
        data = p.data
        if r0 or not isinstance(data, torch.Tensor) or data.shape[0] != rows:
            data = _slice(data, slice(r0, r0 + rows))
        self._graphs.pop(c.slot, None)
        self._aux.pop(c.slot, None)

        # train()/eval() walks the tree and sets every module's attribute
        # through nn.Module.__setattr__: skipped when all are in mode already
        modes = None
        for m in self._mods:
            if m.training != train:
                modes = [(m, m.training) for m in self._mods]
                module.train(train)
                break
        bn_saved = []
        delta = None
        lower = None
        swapped = []
        try:
            if freeze_bn and train:
                for bn in self._bns:
                    bn_saved.append((bn, bn.momentum, bn.num_batches_tracked.clone()
                                     if bn.num_batches_tracked is not None else None))
                    bn.momentum = 0.0
            if recalibrate:
                for bn in self._bns:
                    if c.micro_batch == 0:
                        bn.reset_running_stats()
                    bn_saved.append((bn, bn.momentum, None))
                    bn.momentum = None  # cumulative average (update_bn)
            if perturbed_input:
                if self._embedding is None:
                    raise RuntimeError("SMART passes need TorchModel(embedding=...)")
                n = c.input_rows * c.input_width
                delta = _tensor_at(a.input_perturbation, n).clone()
                if want_grad:
                    delta.requires_grad_(True)
            self._delta = delta
            if flags & L.PASS_TEACHER and c.size > _WEIGHTS_OFFSET and a.weights:
                self._swap_in_teacher(a.weights, swapped)
            if self._lower is not None and _torch_lower.eligible(flags) \
                    and self._lower.usable():
                lower = self._lower.begin(c, perturbed_input,
                                          want_grad and not flags & L.PASS_NO_PARAM_GRAD)
            # dropout from pass.seed; the caller's RNG state is saved before the
            # call's first seeded pass and put back by _after_call (what
            # torch.random.fork_rng around each pass did, once per call)
            if train:
                gen = torch.default_generator
                if self._rng is None:
                    self._rng = gen.get_state()
                gen.manual_seed(int(c.seed))
                if self._cuda_rng is not None:
                    self._cuda_rng.seed(int(c.seed))
            if want_grad == torch.is_grad_enabled():
                raw = self.call(module, data)
            else:
                with torch.set_grad_enabled(want_grad):
                    raw = self.call(module, data)
            out = select_output(raw, self.output)
        finally:
            self._delta = None
            for param, own in swapped:
                param.data = own
            if lower is not None:
                self._lower.end()
            for bn, mom, nbt in bn_saved:
                bn.momentum = mom
                if nbt is not None:
                    bn.num_batches_tracked.copy_(nbt)
            if modes is not None:
                for m, mode in modes:
                    m.training = mode
        width = c.output_width
        if out.shape != (rows, width):
            if out.numel() != rows * width:
                raise ValueError("the module returned %s (%d floats) for %d rows x output_width "
                                 "%d" % (tuple(out.shape), out.numel(), rows, width))
            out = out.reshape(rows, width)
        if out.dtype != torch.float32:
            out = out.float()
        address = a.outputs
        self._view(address, rows, width).copy_(out.detach())
        if self._keep_outputs:
            self._by_out[address] = (c.slot, raw)
        if want_grad and out.requires_grad:
            self._graphs[c.slot] = (out, delta, lower)

    def _backward(self, p):
        c = p._c
        a = _PassAddr.from_address(ctypes.addressof(c))
        entry = self._graphs.pop(c.slot, None)
        if entry is None:
            raise RuntimeError("backward for slot %d without a forward that kept its graph"
                               % c.slot)
        out, delta, lower = entry
        # a pass that recorded the embedding's output keeps its graph for
        # the passes that reuse it (the call's end frees it)
        keep = lower is not None and lower.stored
        d_out = self._view(a.d_outputs, c.rows, c.output_width)
        if out.device.type != "cpu":  # backend='torch': the module on a device
            d_out = d_out.to(out.device)
        outs, grads = (out,), (d_out,)
        aux = self._aux.pop(c.slot, None)
        if self._by_out:
            for k in [k for k, v in self._by_out.items() if v[0] == c.slot]:
                del self._by_out[k]
        if aux is not None and c.task_scale != 0.0:
            # the auxiliary term enters as the task loss does: weighted by the
            # pass's task_scale, at the step's loss scale like d_outputs
            outs = (out, aux)
            grads = (d_out, torch.tensor(c.task_scale * c.loss_scale, dtype=aux.dtype,
                                         device=aux.device))
        flags = c.flags
        if flags & L.PASS_NO_PARAM_GRAD:
            if a.d_input:
                if delta is None:
                    raise RuntimeError("d_input requested for a pass without perturbation")
                (g,) = torch.autograd.grad(outs, delta, grad_outputs=grads, allow_unused=True,
                                           retain_graph=keep)
                dst = _tensor_at(a.d_input, c.input_rows * c.input_width)
                if g is None:
                    dst.zero_()
                else:
                    dst.copy_(g.reshape(-1))
            return 0
        _run_backward(outs, grads, keep)
        if lower is not None and lower.reroutes:
            self._reroute(lower.reroutes)
        if a.d_input:
            g = delta.grad if delta is not None else None
            dst = _tensor_at(a.d_input, c.input_rows * c.input_width)
            if g is None:
                dst.zero_()
            else:
                dst.copy_(g.reshape(-1))
        self._check_grads()
        return 0

    def _swap_in_teacher(self, weights, swapped):
        """Put tensors over the teacher's buffers (pass->weights, one float*
        per registered tensor) under the parameters; swapped gets what
        restores them (the registered memory, as p.data), each before its
        parameter is changed."""
        regs = self._registered
        addrs = (ctypes.c_size_t * len(regs)).from_address(weights)
        views = self._teacher_views
        for r, addr in zip(regs, addrs):
            if addr == r.ptr:  # a frozen tensor: its own buffer
                continue
            key = (r.ptr, addr)
            t = views.get(key)
            if t is None:
                if len(views) > 4 * len(regs):  # the teacher's buffers moved
                    views.clear()
                t = views[key] = _tensor_at(addr, r.numel).view(r.param.shape)
            own = r.storage[0]
            swapped.append((r.param, own))
            r.param.data = t

    @staticmethod
    def _reroute(reroutes):
        """The gradient that reached the reused embedding outputs (leaves of
        this pass), through the recorded submodule graph into its parameters:
        what this pass's backward would have done had it run the submodule."""
        outs, grads = [], []
        for rec, leaf in reroutes:
            if leaf.grad is not None:
                outs.append(rec)
                grads.append(leaf.grad)
        del reroutes[:]
        if outs:
            _run_backward(tuple(outs), tuple(grads), True)

    def _check_grads(self):
        """Autograd accumulates into an existing .grad in place; should it ever
        have replaced a .grad tensor, copy the sum back into the registered
        buffer and put that buffer back."""
        gparams, gbufs = self._flat[5:7]
        if all(map(operator.is_, map(_GRAD, gparams), gbufs)):
            return  # the common case, checked in C
        for r in self._registered:
            grad, param = r.grad, r.param
            if grad is None:
                continue
            g = param.grad
            if g is None:
                raise RuntimeError("parameter %r lost its .grad during training; the adapter "
                                   "registered that buffer with the library" % r.name)
            if g is not grad:
                grad.copy_(g)
                param.grad = grad

    def close(self):
        super().close()
        if self.closed:
            self._registered = []
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
        self._graphs = {}
        self._by_out = {}
        self._aux = {}
        if getattr(self, "_lower", None) is not None:
            self._lower.clear()

    def _save_host_state(self):
        """The batch-norm buffers (running mean, variance, batch count), put
        back by _restore_host_state after an evaluation on recalibrated
        averaged weights, so that training continues with its own."""
        return [(bn, [b.detach().clone() for b in bn.buffers()]) for bn in self._bns]

    def _restore_host_state(self, saved):
        with torch.no_grad():
            for bn, bufs in saved:
                for b, s in zip(bn.buffers(), bufs):
                    b.copy_(s)

    def _finalize(self):
        super()._finalize()
        if getattr(self, "_hook", None) is not None:
            self._hook.remove()
            self._hook = None
