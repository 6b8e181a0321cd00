"""TorchModel's reuse of the embedding submodule's output within a step.

SMART and the adversarial family run the module several times per
micro-batch (the clean pass, K noise passes, the adversarial pass), each
time with the perturbation added to the output of the submodule named
`embedding`. Everything the submodule computes is the same in these passes:
the same rows, the same weights (passes at the step's unperturbed weights),
the same dropout seed (smart.same_seed / adv.same_seed, the default). So
the submodule runs once per micro-batch and its output is reused:

  * store: in an eligible pass (training mode, at the step's weights: no
    PERTURBED_WEIGHTS, TEACHER, PROBE, RECALIBRATE or DOUBLED flag) the
    submodule runs as usual and its output, arguments and the torch RNG
    state before and after it (its dropout draws) are recorded. The pass
    sees the real output (in-place changes to it are then noticed through
    its version counter and the record is not reused), and its backward
    keeps the submodule's graph (retain_graph) for the passes that reuse it.
  * reuse: a later eligible pass that adds a perturbation, calls the
    submodule with equal arguments and, when the submodule drew random
    numbers, reaches it with the same RNG state, gets the recorded output
    instead of running it; the RNG is moved to where the submodule left it,
    so what follows draws what it drew before. A pass whose backward
    computes parameter gradients gets a detached leaf: its backward stops
    there, and the leaf's gradient is then sent through the recorded graph
    (one more backward, retain_graph) into the submodule's parameters. Each
    parameter thus receives the same contributions, in the same order, as
    when every pass ran the whole module, so the results are bitwise the
    same -- except for a parameter used both inside the submodule and
    outside it (tied weights): its two contributions of a pass are then
    added to .grad one after the other instead of summed first (float32
    rounding).
  * everything else runs as before: passes at perturbed or teacher weights
    (SAM's second point, the Bregman teacher), a submodule with backward
    hooks, outputs that are not a tensor, arguments that differ, another RNG
    state, a record changed in place. TorchModel(reuse_embedding=False)
    turns the reuse off.

Only the submodule's own forward is skipped: what the parent computes
before calling it runs in every pass. Forward hooks inside the submodule
run once per micro-batch; hooks on the submodule itself run in every pass.
Records live for one micro-batch of one call (step, evaluation): they hold
the submodule's graph, which is freed when the micro-batch changes and when
the call returns.
"""
import torch

from . import _lib as L

# passes whose weights may not be the step's, or that see the batch twice
_NOT_ELIGIBLE = (L.PASS_PERTURBED_WEIGHTS | L.PASS_TEACHER | L.PASS_PROBE
                 | L.PASS_RECALIBRATE | L.PASS_DOUBLED)
_MAX_RECORDS = 8  # per micro-batch: R-Drop copies x calls of the submodule


def eligible(flags):
    return bool(flags & L.PASS_TRAIN) and not (flags & _NOT_ELIGIBLE)


def _same_arg(a, b):
    """a (this pass's argument) equals b (the recorded one)."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.dtype != b.dtype or a.shape != b.shape \
                or a.device != b.device:
            return False
        # a new view of the same rows (the batch sliced again) is the common case
        if a.data_ptr() == b.data_ptr() and a.stride() == b.stride() \
                and a._version == b._version:
            return True
        return bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same_arg, a, b))
    if isinstance(a, (int, float, str, bool, bytes, type(None))):
        return type(a) is type(b) and a == b
    return False  # another object: cannot tell whether it is unchanged


class _Record:
    __slots__ = ("key", "args", "kwargs", "version", "rng_before", "rng_after", "out",
                 "grad_mode")

    def matches(self, key, args, kwargs, rng):
        if key != self.key or self.out._version != self.version:
            return False
        if len(args) != len(self.args) or kwargs.keys() != self.kwargs.keys():
            return False
        if not all(map(_same_arg, args, self.args)):
            return False
        if not all(_same_arg(kwargs[k], self.kwargs[k]) for k in kwargs):
            return False
        if self.rng_after is not None and not torch.equal(rng(), self.rng_before):
            return False
        return True


class PassState:
    """One forward pass's part: what it stored, what it reused."""
    __slots__ = ("key", "perturbed", "param_grad", "calls", "stored", "reroutes")

    def __init__(self, key, perturbed, param_grad):
        self.key, self.perturbed, self.param_grad = key, perturbed, param_grad
        self.calls = 0
        self.stored = False     # its backward must keep the submodule's graph
        self.reroutes = []      # (recorded output, leaf given to this pass)


class LowerCache:
    """The records of one TorchModel's embedding submodule (see the module
    docstring); `run` stands in for the submodule's forward during a pass."""

    def __init__(self, sub, rng_get=None, rng_set=None):
        self.sub = sub
        self.records = []
        self.micro_batch = None
        self.state = None
        self._saved = None
        # the state of every generator the submodule may draw from (the CPU
        # one; with parameters on CUDA, those devices' too: _torch_device)
        self._rng = rng_get or torch.default_generator.get_state
        self._rng_set = rng_set or torch.default_generator.set_state

    def clear(self):
        self.records = []
        self.micro_batch = None

    def usable(self):
        sub = self.sub
        return not (sub._backward_hooks or getattr(sub, "_backward_pre_hooks", None))

    def begin(self, c, perturbed, param_grad):
        """Before the module's forward of an eligible pass: put `run` in
        place of the submodule's forward (an instance attribute, removed by
        end(), so copies of the module never see it)."""
        if c.micro_batch != self.micro_batch:
            self.records = []  # frees the previous micro-batch's graphs
            self.micro_batch = c.micro_batch
        st = self.state = PassState((c.row_offset, c.rows), perturbed, param_grad)
        d = self.sub.__dict__
        self._saved = d.get("forward")
        d["forward"] = self.run
        return st

    def end(self):
        d = self.sub.__dict__
        if self._saved is None:
            d.pop("forward", None)
        else:
            d["forward"] = self._saved
        self._saved = None
        self.state = None

    def _forward(self, args, kwargs):
        f = self._saved
        if f is not None:
            return f(*args, **kwargs)
        return type(self.sub).forward(self.sub, *args, **kwargs)

    def run(self, *args, **kwargs):
        st = self.state
        if st is None:  # called outside a pass (the module reused from a hook?)
            return self._forward(args, kwargs)
        index = st.calls
        st.calls += 1
        key = (st.key, index)
        if st.perturbed:
            need_graph = st.param_grad and torch.is_grad_enabled()
            for r in reversed(self.records):
                if (r.grad_mode or not need_graph) and r.matches(key, args, kwargs, self._rng):
                    return self._reuse(st, r, need_graph)
        if len(self.records) >= _MAX_RECORDS:
            return self._forward(args, kwargs)
        before = self._rng()
        out = self._forward(args, kwargs)
        if not isinstance(out, torch.Tensor):
            return out
        r = _Record()
        r.key, r.args, r.kwargs, r.out = key, args, dict(kwargs), out
        after = self._rng()
        r.rng_before = before
        r.rng_after = None if torch.equal(before, after) else after
        r.version = out._version
        r.grad_mode = torch.is_grad_enabled()
        self.records.append(r)
        if out.requires_grad:
            st.stored = True
        return out

    def _reuse(self, st, r, need_graph):
        if r.rng_after is not None:
            self._rng_set(r.rng_after)
        out = r.out.detach()
        if need_graph and r.out.requires_grad:
            out.requires_grad_(True)
            st.reroutes.append((r.out, out))
        return out
