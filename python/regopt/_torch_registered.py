"""TorchModel's record of one registered parameter: what was registered,
to notice a change (p.data = ..., module.to(), freezing) before the library
touches the memory again."""


class _Registered:
    """What was registered for one parameter, to notice a change before the
    library touches the memory again."""
    __slots__ = ("name", "param", "ptr", "dtype", "device", "numel", "requires_grad", "grad",
                 "grad_ptr", "storage")

    def __init__(self, name, param, grad):
        self.name, self.param, self.grad = name, param, grad
        # the registered memory stays allocated even if p.data is replaced
        # (refused before the library uses it again, but not freed under it)
        self.storage = (param.detach(), grad.detach() if grad is not None else None)
        self.ptr, self.dtype, self.device = param.data_ptr(), param.dtype, param.device
        self.numel, self.requires_grad = param.numel(), param.requires_grad
        self.grad_ptr = grad.data_ptr() if grad is not None else None

    def change(self, p):
        """What changed in parameter p (the module's one under this name) since
        registration, or None."""
        if p is not self.param:
            return ("the module now holds another Parameter object under this name (a "
                    "module.to()/.cuda()/.half() that made new Parameters, or an assignment); "
                    "the new one is %s on %s" % (p.dtype, p.device))
        if p.dtype != self.dtype:
            return "its dtype changed from %s to %s (module.double()/.half()/.to(dtype)?)" \
                % (self.dtype, p.dtype)
        if p.device != self.device:
            return "it moved from %s to %s" % (self.device, p.device)
        if p.numel() != self.numel:
            return "its size changed from %d to %d elements" % (self.numel, p.numel())
        if p.data_ptr() != self.ptr:
            return ("its storage was replaced (data_ptr %#x -> %#x: p.data = ..., "
                    "module.share_memory(), torch.nn.utils.vector_to_parameters, ...)"
                    % (self.ptr, p.data_ptr()))
        if not p.is_contiguous():
            return "it is no longer contiguous (p.data = a strided view)"
        if p.requires_grad != self.requires_grad:
            return ("requires_grad changed from %s to %s (%s after TorchModel() registered it: "
                    "the library would %s)"
                    % (self.requires_grad, p.requires_grad,
                       "frozen" if self.requires_grad else "unfrozen",
                       "go on updating it from a zero gradient (weight decay, momentum)"
                       if self.requires_grad else "never update it"))
        g = self.grad
        if g is not None:
            if g.data_ptr() != self.grad_ptr or g.numel() != self.numel \
                    or g.dtype != self.dtype or not g.is_contiguous():
                return ("its registered .grad buffer was moved or replaced in place (data_ptr "
                        "%#x -> %#x; module.share_memory(), grad.data = ...)"
                        % (self.grad_ptr, g.data_ptr()))
        return None
