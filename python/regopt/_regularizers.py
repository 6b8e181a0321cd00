"""Regularizers: the objects a Trainer switches on, whose attributes are
their trainer keys."""
from . import _lib as L
from ._errors import UnknownKey
from ._keys import _full_name, key_from_name, key_info, keys


REGULARIZER_KINDS = {"sam": L.REG_SAM, "rdrop": L.REG_RDROP, "smart": L.REG_SMART,
                     "bregman": L.REG_BREGMAN}


class Regularizer:
    """A regularizer switched on in a trainer; its options are trainer keys
    "<prefix>.<name>". Before it is added, options are stored; once added,
    attributes read and write the trainer's keys: sam.rho = 0.1."""

    kind = None
    prefix = None

    def __init__(self, **options):
        object.__setattr__(self, "_options", dict(options))
        object.__setattr__(self, "_trainer", None)

    @property
    def trainer(self):
        return self._trainer

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        t = self._trainer
        full = _full_name(self.prefix, name)
        try:
            key_from_name(full)
        except UnknownKey:
            raise AttributeError("%s has no option %r" % (type(self).__name__, name)) from None
        if t is None or t.closed:
            if name in self._options:
                return self._options[name]
            return key_info(full).default
        return t.get(full)

    def __setattr__(self, name, value):
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        full = _full_name(self.prefix, name)
        key_from_name(full)  # UnknownKey for a typo
        if self._trainer is None:
            self._options[name] = value
        else:
            self._trainer.set_option(full, value)

    def set(self, **options):
        for k, v in options.items():
            setattr(self, k, v)
        return self

    def options(self):
        out = {}
        for info in keys(self.prefix + "."):
            short = info.name.split(".", 1)[1]
            out[short] = getattr(self, short)
        return out

    def __repr__(self):
        state = "on" if self._trainer is not None else "not added"
        return "<regopt.%s %s %s>" % (type(self).__name__, state, self._options)


class SAM(Regularizer):
    """SAM family (SAM, ASAM with adaptive=1, GSAM with gsam=1); "sam.*"."""
    kind = L.REG_SAM
    prefix = "sam"


class RDrop(Regularizer):
    """R-Drop; "rdrop.*" (alpha, ce_weight, kl_sum, every, doubled)."""
    kind = L.REG_RDROP
    prefix = "rdrop"


class SMART(Regularizer):
    """SMART's adversarial term; "smart.*" (lambda_ or 'lambda', epsilon, ...)."""
    kind = L.REG_SMART
    prefix = "smart"


class Bregman(Regularizer):
    """SMART's momentum Bregman proximal term; "bregman.*" (mu, beta, ...)."""
    kind = L.REG_BREGMAN
    prefix = "bregman"


REGULARIZERS = {"sam": SAM, "rdrop": RDrop, "r-drop": RDrop, "r_drop": RDrop,
                "smart": SMART, "bregman": Bregman}
