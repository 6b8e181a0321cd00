"""TorchTrainer: a regopt.Trainer that fits a PyTorch training loop.

    from regopt.torch import TorchModel
    from regopt.torch_train import TorchTrainer

    model = TorchModel(net, output_width=10, output="logits")
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100)
    trainer = TorchTrainer(model, opt, scheduler=sched,
                           loss_fn=lambda out, b: F.cross_entropy(out, b.labels))
    trainer.add("sam", rho=0.05)
    for x, y in loader:
        trainer.step(regopt.Batch(data=x, labels=y))
        sched.step()
    torch.save(trainer.state_dict(), "ck.pt")

Optimizer. A torch.optim optimizer of any kind makes the library's
optimizer a REGOPT_HOST one: the library runs every pass (SAM's ascent,
R-Drop, SMART, ...), composes the final gradient in each parameter's .grad
(after the all-reduce, clipped when clip_norm is set) and calls
optimizer.step(); what follows an update (the Bregman teacher's EMA) then
reads the weights torch.optim wrote. A regopt.Optimizer is passed through
unchanged: the built-in update, the fast path.

Learning rate. The torch optimizer's param groups own it: a torch scheduler
changes them as usual (call scheduler.step() in your loop), and the
library's optimizer.lr follows param group 0, copied before every step (so
stat.lr reports it; the library's own schedule keys are left at constant).
A zero lr (a warmup's first step) is not copied: optimizer.lr must be > 0.

Loss. loss_fn(outputs, batch) -> scalar tensor, computed in torch with
autograd, replaces the built-in loss through the library's loss callback,
so every method composes with it: outputs is a (rows, output_width) float32
tensor (the module's output chosen by TorchModel(output=...)); batch has
.data (Batch.data), .labels (int64 tensor or None), .targets (float32
tensor or None) and .rows. It must return the mean loss over the rows (as
torch's losses do by default); the library weights micro-batches by their
rows. Batch.mask and Batch.weights are refused with a loss_fn (it sees the
whole batch: apply them inside it). A loss_fn that returns a non-scalar or
a non-finite value fails the step (ValueError re-raised by step(), the
library's state and the parameters unchanged).

Auxiliary losses. loss_fn may return a pair (loss, aux): loss the task
loss computed from `outputs` as above, aux a scalar tensor computed from
model internals of the same forward -- batch.module_output is what the
module returned there (a dict, tuple or tensor with hidden activations,
in that forward's autograd graph), or anything else in that graph. aux is
a mean over the pass's rows, like loss. The adapter adds task_scale x aux
to that pass's backward (regopt_pass.task_scale: the weight of the pass's
task loss in the step's objective), so the term is weighted per
micro-batch, per R-Drop copy, at SAM's ascent and descent points and
all-reduced exactly as the task loss; passes that are not of the task loss
(SMART's adversarial ones, the Bregman teacher) carry weight 0 and get no
aux. stat.loss reports the task loss alone. The task loss must come from
`outputs` (its gradient reaches the library through them); a loss computed
from batch.module_output's logits instead would get no gradient.

Checkpoints. state_dict() returns {"module", "optimizer", "scheduler",
"trainer"}: the module's state_dict (parameters and buffers, batch-norm
statistics included), the torch optimizer's and scheduler's state_dicts
(None when absent) and the library's part (step, seed, regularizer state,
options: Trainer.to_bytes(params=False)). torch.save it;
load_state_dict() restores all four in place (the registered memory is
kept) and the run resumes exactly.

Multi-process. process_group=dist.group.WORLD (or any group) sums the
step's all-reduce buffer over the group with torch.distributed.all_reduce
(gloo on CPU); every replica then makes the same update (torch.optim's
step is deterministic), so replicas stay bit-identical.
"""
import weakref

import numpy as _np
import torch

from . import _lib as L
from ._errors import InvalidArgument
from ._optimizer import Optimizer
from ._trainer import Trainer
from .torch import TorchModel


class LossBatch:
    """What loss_fn receives as its batch: .data, .labels, .targets, .rows,
    and .module_output: what the module returned in the forward that
    produced these outputs (a dict, tuple or tensor, in that forward's
    autograd graph; None when no such forward is known)."""
    __slots__ = ("data", "labels", "targets", "rows", "module_output")

    def __init__(self, data, labels, targets, rows, module_output=None):
        self.data, self.labels, self.targets, self.rows = data, labels, targets, rows
        self.module_output = module_output


def _scalar(value, what):
    """value as a finite float, or ValueError naming what loss_fn returned."""
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ValueError("loss_fn must return a scalar tensor (%s), got %s" % (
            what, "a tensor of shape %s" % (tuple(value.shape),)
            if isinstance(value, torch.Tensor) else type(value).__name__))
    v = float(value.detach())
    if not _np.isfinite(v):
        raise ValueError("loss_fn returned a non-finite %s (%r)" % (what, v))
    return v


def _torch_params(opt):
    return [p for g in opt.param_groups for p in g["params"]]


class TorchTrainer(Trainer):
    """A Trainer over a TorchModel with a torch.optim optimizer (or a
    regopt.Optimizer), a torch scheduler, a torch loss and torch.distributed.

    model          a regopt.torch.TorchModel
    optimizer      a torch.optim.Optimizer over (some of) the module's
                   trainable parameters, or a regopt.Optimizer
    scheduler      a torch LR scheduler of that optimizer (checked; kept for
                   state_dict; you call scheduler.step() yourself)
    loss_fn        loss_fn(outputs, batch) -> scalar tensor, or None for the
                   trainer's built-in loss ("trainer.loss")
    process_group  a torch.distributed process group to all-reduce over
    options        trainer keys (seed=..., threads=...)
    """

    def __init__(self, model, optimizer, *, scheduler=None, loss_fn=None, process_group=None,
                 **options):
        if not isinstance(model, TorchModel):
            raise TypeError("TorchTrainer needs a regopt.torch.TorchModel, got %s"
                            % type(model).__name__)
        self.torch_optimizer = None
        self.scheduler = None
        self._lr_copied = None
        if isinstance(optimizer, torch.optim.Optimizer):
            self._check_params(model, optimizer)
            torch_opt = optimizer
            lr = float(torch_opt.param_groups[0].get("lr", 1e-3))
            optimizer = Optimizer("host", lr=lr if lr > 0 else 1e-3)
            # weakly: the library keeps the callback until the optimizer goes
            me = weakref.ref(self)
            optimizer.set_host_update(lambda step, lr: me()._host_update(step, lr))
        elif not isinstance(optimizer, Optimizer):
            raise TypeError("TorchTrainer needs a torch.optim.Optimizer or a regopt.Optimizer, "
                            "got %s" % type(optimizer).__name__)
        else:
            torch_opt = None
        if scheduler is not None:
            if torch_opt is None:
                raise InvalidArgument("scheduler= needs a torch.optim optimizer: a "
                                      "regopt.Optimizer schedules with its own keys "
                                      "(optimizer.schedule, warmup_steps, total_steps)",
                                      L.ERR_INVALID_ARGUMENT)
            if getattr(scheduler, "optimizer", None) is not torch_opt:
                raise InvalidArgument("the scheduler (%s) is attached to another optimizer "
                                      "than the one given to TorchTrainer: build it over the "
                                      "same torch.optim optimizer" % type(scheduler).__name__,
                                      L.ERR_INVALID_ARGUMENT)
        Trainer.__init__(self, model, optimizer, **options)
        self.torch_optimizer = torch_opt
        self.scheduler = scheduler
        self.loss_fn = None
        if loss_fn is not None:
            self.set_torch_loss(loss_fn)
        self.process_group = None
        if process_group is not None:
            self.set_process_group(process_group)

    # -- optimizer -----------------------------------------------------------
    @staticmethod
    def _check_params(model, opt):
        registered = {id(r.param): r for r in model._registered}
        for p in _torch_params(opt):
            r = registered.get(id(p))
            if r is None:
                raise InvalidArgument("the torch optimizer holds a parameter (%s, shape %s) that "
                                      "is not one of the TorchModel's module's parameters"
                                      % (p.dtype, tuple(p.shape)), L.ERR_INVALID_ARGUMENT)
            if r.grad is None:
                raise InvalidArgument("the torch optimizer holds parameter %r, which is frozen "
                                      "(requires_grad False when TorchModel registered it)"
                                      % r.name, L.ERR_INVALID_ARGUMENT)

    def _host_update(self, step, lr):
        # torch.optim reads p.grad: the registered buffers, which hold the
        # library's final gradient; it writes p in place (the registered memory)
        self.torch_optimizer.step()

    def _sync_lr(self):
        # compared with the value last copied, not read back from the library
        # (a ctypes call a step); optimizer.lr of a host optimizer is ours
        lr = float(self.torch_optimizer.param_groups[0]["lr"])
        if 0.0 < lr <= 1e3 and lr != self._lr_copied:
            self.optimizer.set_option("optimizer.lr", lr)
            self._lr_copied = lr

    def step(self, batches=None, **fields):
        if self.torch_optimizer is not None:
            self._sync_lr()
        return Trainer.step(self, batches, **fields)

    # -- loss ----------------------------------------------------------------
    def set_torch_loss(self, loss_fn):
        """loss_fn(outputs, batch) -> scalar tensor (see the module docstring);
        None: back to the built-in loss."""
        if loss_fn is None:
            self.set_loss(None)  # back to softmax CE
            self.loss_fn = None
            self.model._keep_outputs = False
            return
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable: loss_fn(outputs, batch) -> scalar")

        model = self.model

        def body(b, outputs, row_loss, d_outputs):
            if b.mask is not None or b.weights is not None:
                raise ValueError("loss_fn: Batch.mask and Batch.weights are not applied with a "
                                 "torch loss_fn (it returns the batch's mean itself); apply "
                                 "them inside loss_fn and leave them out of the Batch")
            z = torch.from_numpy(_np.array(outputs, copy=True)).requires_grad_(True)
            labels = torch.from_numpy(b.labels.astype(_np.int64)) if b.labels is not None \
                else None
            targets = torch.from_numpy(_np.array(b.targets)) if b.targets is not None else None
            # the forward that wrote these outputs: its slot and module output
            slot, raw = model._by_out.get(outputs.ctypes.data, (None, None))
            with torch.enable_grad():
                res = loss_fn(z, LossBatch(b.data, labels, targets, b.rows, raw))
                aux = None
                if isinstance(res, (tuple, list)):
                    if len(res) != 2:
                        raise ValueError("loss_fn must return a scalar tensor or a pair (loss, "
                                         "aux), got a %s of %d items"
                                         % (type(res).__name__, len(res)))
                    res, aux = res
                value = _scalar(res, "the batch's mean loss")
                if aux is not None:
                    _scalar(aux, "auxiliary term")
                (g,) = torch.autograd.grad(res.reshape(()), z, allow_unused=True)
            if aux is not None and aux.requires_grad and slot is not None:
                model._aux[slot] = aux.reshape(())
            # every row carries the batch's mean; the library's mean over rows
            # then gives it back, and rows * g its gradient
            row_loss[:] = value
            if g is None:
                d_outputs[:] = 0.0
            else:
                d_outputs[:] = (g * float(b.rows)).numpy()
            return 0

        self.set_loss(body)
        self.loss_fn = loss_fn
        self.model._keep_outputs = True

    # -- distributed -----------------------------------------------------------
    def set_process_group(self, group):
        """All-reduce the step over a torch.distributed process group (sum;
        the library divides by the global row weight). None: one process."""
        if group is None:
            self.set_allreduce(None)
            self.process_group = None
            return
        import torch.distributed as dist
        if not dist.is_initialized():
            raise InvalidArgument("process_group: torch.distributed is not initialized "
                                  "(dist.init_process_group first)", L.ERR_INVALID_ARGUMENT)

        def allreduce(buf):
            dist.all_reduce(torch.from_numpy(buf), op=dist.ReduceOp.SUM, group=group)
            return 0

        self.set_allreduce(allreduce)
        self.process_group = group

    # -- checkpoints -----------------------------------------------------------
    def state_dict(self):
        """{"module", "optimizer", "scheduler", "trainer"} for torch.save."""
        return {
            "module": self.model.module.state_dict(),
            "optimizer": self.torch_optimizer.state_dict()
            if self.torch_optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "trainer": self.to_bytes(params=False, options=True),
        }

    def load_state_dict(self, state):
        """Restore what state_dict() returned, in place. The library's part is
        checked first (a mismatch raises before anything changes)."""
        missing = [k for k in ("module", "optimizer", "scheduler", "trainer") if k not in state]
        if missing:
            raise KeyError("state_dict lacks %s" % ", ".join(missing))
        if (state["optimizer"] is None) != (self.torch_optimizer is None):
            raise ValueError("the state_dict was saved %s a torch.optim optimizer, this trainer "
                             "has %s" % ("without" if state["optimizer"] is None else "with",
                                         "one" if self.torch_optimizer is not None else "none"))
        if (state["scheduler"] is None) != (self.scheduler is None):
            raise ValueError("the state_dict's scheduler and this trainer's do not match "
                             "(one of them has none)")
        self.from_bytes(state["trainer"], params=False, options=True)
        self._lr_copied = None  # the options just read hold the saved lr
        with torch.no_grad():
            self.model.module.load_state_dict(state["module"])  # copies in place
        if self.torch_optimizer is not None:
            self.torch_optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
