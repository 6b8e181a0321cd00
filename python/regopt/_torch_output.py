"""TorchModel(output=...): the one output tensor the library sees when a
module returns a dict, a tuple or another structure."""
import torch


def _kind(out):
    if isinstance(out, dict):
        return "a dict with keys %s" % ", ".join(map(repr, out))
    if isinstance(out, (tuple, list)):
        return "a %s of %d items" % (type(out).__name__, len(out))
    return "a %s" % type(out).__name__


def select_output(out, output):
    """out as the module returned it -> the tensor chosen by `output`."""
    if output is None:
        if isinstance(out, torch.Tensor):
            return out
        raise TypeError("the module returned %s, not a tensor: pass TorchModel(output=...) -- a "
                        "key of the dict, an index of the tuple, or a callable(out) -> tensor -- "
                        "to choose the output the loss and the regularizers see" % _kind(out))
    if callable(output):
        sel = output(out)
    elif isinstance(out, dict):
        if output not in out:
            raise KeyError("TorchModel(output=%r): the module returned %s" % (output, _kind(out)))
        sel = out[output]
    elif isinstance(out, (tuple, list)):
        if not isinstance(output, int) or not -len(out) <= output < len(out):
            raise IndexError("TorchModel(output=%r): the module returned %s; output= must be an "
                             "index" % (output, _kind(out)))
        sel = out[output]
    elif isinstance(out, torch.Tensor):
        raise TypeError("TorchModel(output=%r): the module returned a tensor; leave output= "
                        "None" % (output,))
    else:
        sel = getattr(out, output) if isinstance(output, str) and hasattr(out, output) else None
        if sel is None:
            raise TypeError("TorchModel(output=%r): the module returned %s" % (output, _kind(out)))
    if not isinstance(sel, torch.Tensor):
        raise TypeError("TorchModel(output=%r) chose %s, not a tensor" % (output, _kind(sel)))
    return sel
