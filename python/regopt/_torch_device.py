"""TorchModel on devices other than the CPU (backend="torch"): which
devices the parameters use, and the random number generators a pass seeds.

A pass's dropout must come from pass.seed on every device the module
computes on: SMART's and the adversarial passes reuse the clean pass's seed
and need the same masks, R-Drop's two copies need different ones, and a
retried step must draw what it drew. On the CPU torch.default_generator is
seeded (as always); on CUDA the default generator of each device holding
parameters is seeded as well, and the caller's states of all of them are
put back when the step or evaluation returns. Other device types (mps,
xpu, ...) have no such generator here: TorchModel refuses them rather than
train with dropout masks the library cannot reproduce.
"""
import torch


def backend_from(option):
    """TorchModel(backend=...) -> a TorchBackend or None (the library's own
    memory path): None or "cpu" -> None, "torch" -> a new TorchBackend, a
    TorchBackend instance -> itself."""
    from ._torch_backend import TorchBackend
    if option is None or option == "cpu":
        return None
    if option == "torch":
        return TorchBackend()
    if isinstance(option, TorchBackend):
        if option.vectors or option._by_ptr:
            raise ValueError("TorchModel(backend=...): this TorchBackend already serves a "
                             "model (its vector ids and tensors are that model's); give each "
                             "model its own")
        return option
    raise ValueError("TorchModel(backend=%r): None or 'cpu' (the library works in the "
                     "parameters' CPU memory) or 'torch' (a TorchBackend: parameters on any "
                     "device, the library's operations on them done by torch)" % (option,))


def parameter_devices(module, with_backend):
    """The devices of the module's parameters (CUDA ones with their index),
    refusing what the chosen path cannot train."""
    devices = []
    for name, p in module.named_parameters():
        dev = p.device
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.type != "cpu" and not with_backend:
            raise ValueError("parameter %r is on %s; the adapter registers CPU memory unless "
                             "TorchModel(backend='torch') hands the library's operations on "
                             "the parameters to torch" % (name, p.device))
        if dev.type not in ("cpu", "cuda"):
            raise ValueError("parameter %r is on %s: backend='torch' trains on the CPU and on "
                             "CUDA devices, whose random number generators a pass seeds from "
                             "pass.seed (dropout); %s has none the adapter knows"
                             % (name, p.device, dev.type))
        if dev not in devices:
            devices.append(dev)
    return devices


def check_backend_dtype(name, p):
    if p.dtype != torch.float32:
        raise TypeError("parameter %r is %s; with backend='torch' the library takes float32 "
                        "parameters only (its float16/bfloat16 path keeps an fp32 master copy "
                        "and scales the loss in host memory, which a backend does not have)"
                        % (name, p.dtype))


class PassRNG:
    """Seeds the default generators of the CUDA devices in use from a pass's
    seed (TorchModel seeds the CPU's itself), keeping the caller's states
    until restore(); get_state/set_state cover the CPU's and these."""

    def __init__(self, devices):
        self.cuda = [torch.cuda.default_generators[d.index] for d in devices
                     if d.type == "cuda"]
        self.saved = None

    def seed(self, seed):
        if self.saved is None:
            self.saved = [g.get_state() for g in self.cuda]
        for g in self.cuda:
            g.manual_seed(seed)

    def restore(self):
        if self.saved is not None:
            for g, s in zip(self.cuda, self.saved):
                g.set_state(s)
            self.saved = None

    def get_state(self):
        """All the generators' states as one CPU byte tensor (what the
        embedding reuse compares and puts back, _torch_lower)."""
        return torch.cat([torch.default_generator.get_state()]
                         + [g.get_state() for g in self.cuda])

    def set_state(self, state):
        at = 0
        for g in [torch.default_generator] + self.cuda:
            n = g.get_state().numel()
            g.set_state(state[at:at + n].clone())
            at += n
