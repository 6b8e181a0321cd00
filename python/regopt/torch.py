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

What the adapter does:
  * registers every parameter zero-copy: p.data and p.grad (allocated as
    zeros first) by data_ptr(); the library updates p in place and zeroes
    p.grad at the start of each step. Do not replace p.grad or p.data
    (e.g. no optimizer.zero_grad(set_to_none=True)) while training.
  * forward: runs call(module, data[rows]) under a torch RNG fork seeded from
    pass.seed (so dropout is reproducible from trainer.seed), in train() or
    eval() mode by REGOPT_PASS_TRAIN, under torch.no_grad() for NO_GRAD, with
    batch-norm running statistics frozen (momentum 0, counters restored) for
    PERTURBED_WEIGHTS, TEACHER and input-perturbed passes, and with SMART's
    perturbation added to the output of the submodule named `embedding`
    (a forward hook). The autograd graph is kept per activation slot.
  * backward: torch.autograd.backward(outputs, d_outputs) accumulates into
    p.grad; NO_PARAM_GRAD passes use torch.autograd.grad on the perturbation
    only (parameters untouched); d_input is written when asked.

Parameter groups: group_fn(name, param) -> group; the default puts tensors
with fewer than 2 dimensions (biases, normalisation weights) in group 1 and
the rest in group 0, so Optimizer.set_group(1, weight_decay=0) exempts them.
"""
import ctypes

import torch
import torch.nn as nn

from . import _core
from . import _lib as L


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


def _addr(ptr):
    return ctypes.cast(ptr, ctypes.c_void_p).value


_BN = (nn.modules.batchnorm._BatchNorm,)


class TorchModel(_core.Model):
    """A regopt.Model over an nn.Module.

    module        the network (float32 parameters on the CPU, contiguous)
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
    """

    def __init__(self, module, output_width, *, embedding=None, input_width=None, slots=3,
                 call=None, group_fn=default_group, allocator=None):
        if not isinstance(module, nn.Module):
            raise TypeError("TorchModel needs a torch.nn.Module")
        super().__init__(output_width, slots=slots, allocator=allocator)
        self.module = module
        self.call = call or default_call
        self._graphs = {}
        self._registered = []
        self._bns = [m for m in module.modules() if isinstance(m, _BN)]
        self._embedding = None
        self._delta = None
        self._hook = None
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
            self._hook = sub.register_forward_hook(self._perturb_hook)
        if input_width:
            self.input_width = input_width
        try:
            self._register(module, group_fn)
        except BaseException:
            self.close()
            raise
        self.set_callbacks(self._forward, self._backward)

    # -- registration ------------------------------------------------------
    def _register(self, module, group_fn):
        seen = set()
        for name, p in module.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            if p.dtype != torch.float32:
                raise TypeError("parameter %r is %s; libregopt needs float32 (module.float())"
                                % (name, p.dtype))
            if p.device.type != "cpu":
                raise ValueError("parameter %r is on %s; the adapter registers CPU memory"
                                 % (name, p.device))
            if not p.is_contiguous():
                raise ValueError("parameter %r is not contiguous" % name)
            grad = None
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p, memory_format=torch.contiguous_format)
                grad = p.grad
                if grad.dtype != torch.float32 or not grad.is_contiguous() \
                        or grad.data_ptr() == p.data_ptr():
                    raise ValueError("parameter %r: .grad must be a separate contiguous "
                                     "float32 tensor" % name)
            self.add_param_address(name, p.data_ptr(), grad.data_ptr() if grad is not None
                                   else None, p.numel(), int(group_fn(name, p)),
                                   keepalive=(p, grad))
            if grad is not None:
                self._registered.append((name, p, grad, grad.data_ptr()))

    # -- SMART -------------------------------------------------------------
    def _perturb_hook(self, mod, inputs, output):
        d = self._delta
        if d is None:
            return None
        if d.numel() != output.numel():
            raise ValueError("SMART: the perturbation has %d floats (input_rows x input_width) "
                             "but the output of %r has shape %s: give Batch(input_rows=...)"
                             % (d.numel(), self.embedding_name, tuple(output.shape)))
        return output + d.view_as(output)

    # -- callbacks ---------------------------------------------------------
    def _forward(self, p):
        c = p._c
        module = self.module
        flags = c.flags
        train = bool(flags & L.PASS_TRAIN)
        want_grad = not (flags & L.PASS_NO_GRAD)
        perturbed_input = bool(c.input_perturbation)
        freeze_bn = bool(flags & (L.PASS_PERTURBED_WEIGHTS | L.PASS_TEACHER)) or perturbed_input
        data = _slice(p.data, slice(c.row_offset, c.row_offset + c.rows))
        self._graphs.pop(c.slot, None)

        modes = [(m, m.training) for m in module.modules()]
        bn_saved = []
        delta = None
        try:
            module.train(train)
            if freeze_bn and train:
                for bn in self._bns:
                    bn_saved.append((bn, bn.momentum, bn.num_batches_tracked.clone()
                                     if bn.num_batches_tracked is not None else None))
                    bn.momentum = 0.0
            if perturbed_input:
                if self._embedding is None:
                    raise RuntimeError("SMART passes need TorchModel(embedding=...)")
                n = c.input_rows * c.input_width
                delta = _tensor_at(_addr(c.input_perturbation), n).clone()
                if want_grad:
                    delta.requires_grad_(True)
            self._delta = delta
            with torch.random.fork_rng(devices=[], enabled=train):
                if train:
                    torch.default_generator.manual_seed(int(c.seed))
                with torch.set_grad_enabled(want_grad):
                    out = self.call(module, data)
        finally:
            self._delta = None
            for bn, mom, nbt in bn_saved:
                bn.momentum = mom
                if nbt is not None:
                    bn.num_batches_tracked.copy_(nbt)
            for m, mode in modes:
                m.training = mode
        n_out = c.rows * c.output_width
        if out.numel() != n_out:
            raise ValueError("the module returned %s (%d floats) for %d rows x output_width %d"
                             % (tuple(out.shape), out.numel(), c.rows, c.output_width))
        out = out.reshape(c.rows, c.output_width)
        if out.dtype != torch.float32:
            out = out.float()
        _tensor_at(_addr(c.outputs), n_out).copy_(out.detach().reshape(-1))
        if want_grad and out.requires_grad:
            self._graphs[c.slot] = (out, delta)

    def _backward(self, p):
        c = p._c
        entry = self._graphs.pop(c.slot, None)
        if entry is None:
            raise RuntimeError("backward for slot %d without a forward that kept its graph"
                               % c.slot)
        out, delta = entry
        d_out = _tensor_at(_addr(c.d_outputs), c.rows * c.output_width).view(out.shape)
        flags = c.flags
        if flags & L.PASS_NO_PARAM_GRAD:
            if c.d_input:
                if delta is None:
                    raise RuntimeError("d_input requested for a pass without perturbation")
                (g,) = torch.autograd.grad(out, delta, grad_outputs=d_out)
                _tensor_at(_addr(c.d_input), c.input_rows * c.input_width).copy_(g.reshape(-1))
            return 0
        torch.autograd.backward(out, grad_tensors=d_out)
        if c.d_input:
            g = delta.grad if delta is not None else None
            dst = _tensor_at(_addr(c.d_input), c.input_rows * c.input_width)
            if g is None:
                dst.zero_()
            else:
                dst.copy_(g.reshape(-1))
        self._check_grads()
        return 0

    def _check_grads(self):
        """Autograd accumulates into an existing .grad in place; should it ever
        have replaced a .grad tensor, copy the sum back into the registered
        buffer and put that buffer back."""
        for name, param, grad, ptr in self._registered:
            g = param.grad
            if g is None:
                raise RuntimeError("parameter %r lost its .grad during training; the adapter "
                                   "registered that buffer with the library" % name)
            if g.data_ptr() != ptr:
                grad.copy_(g)
                param.grad = grad

    def close(self):
        super().close()
        if self.closed and self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._graphs = {}

    def _finalize(self):
        super()._finalize()
        if getattr(self, "_hook", None) is not None:
            self._hook.remove()
            self._hook = None
