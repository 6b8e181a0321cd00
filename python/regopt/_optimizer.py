"""Optimizer: regopt_optimizer and its options."""
import ctypes

from . import _lib as L
from ._lib import lib
from ._allocator import _alloc_arg
from ._errors import InvalidArgument, StateError, UnknownKey, _text, last_error_message
from ._guard import Call, trampoline
from ._handles import _RELEASE_FN, _Handle, _free_trainer_cell, _keepalive, _register_user
from ._ints import INT, c_int
from ._keys import _Options, _full_name, key_from_name, key_info


OPTIMIZER_KINDS = {"sgd": L.SGD, "adam": L.ADAM, "adamw": L.ADAMW, "radam": L.RADAM,
                   "host": L.HOST}


class Optimizer(_Handle, _Options):
    """regopt_optimizer: Optimizer('adamw', lr=1e-3, weight_decay=0.01).
    Keywords map to "optimizer.<name>" keys; opt.lr reads, opt.lr = x sets;
    opt.set_group(1, weight_decay=0.0) sets "group.<name>" for a group."""

    _kind = "optimizer"
    _prefix = "optimizer"
    _c_functions = {
        "set_int": "regopt_optimizer_set_int", "get_int": "regopt_optimizer_get_int",
        "set_double": "regopt_optimizer_set_double", "get_double": "regopt_optimizer_get_double",
        "set_group": "regopt_optimizer_set_group", "get_group": "regopt_optimizer_get_group",
    }

    def __init__(self, kind="adamw", *, allocator=None, **options):
        _Handle.__init__(self)
        self._trainer_cells = []
        self._allocator = allocator
        if isinstance(kind, str):
            k = OPTIMIZER_KINDS.get(kind.lower())
            if k is None:
                raise InvalidArgument("unknown optimizer kind %r (known: %s)"
                                      % (kind, ", ".join(OPTIMIZER_KINDS)), L.ERR_INVALID_ARGUMENT)
            kind = k
        kind = c_int(kind, "optimizer kind", INT)
        st = ctypes.c_int(0)
        with Call() as c:  # the allocator's hooks
            ptr = lib.regopt_optimizer_create(kind, _alloc_arg(allocator), ctypes.byref(st))
        if ptr:
            self._ptr = ptr
            self._count(+1)
        c.finish(None if ptr else st.value, last_error_message)
        try:
            self.set(**options)
        except BaseException:
            self.close()
            raise

    def _msg(self):
        return _text(lib.regopt_optimizer_message(self._ptr))

    @property
    def message(self):
        return self._msg() if self._ptr else ""

    def set_host_update(self, fn):
        """The update of a 'host' optimizer (regopt_optimizer_set_host_update):
        fn(step, lr) updates the parameters in place from the final gradient
        in their registered gradient buffers (include/regopt.h says what it
        holds); step counts from 1, lr is optimizer.lr times the schedule.
        An exception (or a true return value) fails the step with
        HostUpdateFailed; the exception is re-raised by the step."""
        if not callable(fn):
            raise TypeError("set_host_update needs a callable fn(step, lr)")

        def body(step, lr, user):
            rc = fn(step, lr)
            return 0 if rc is None or rc is False or rc == 0 else 1

        cfn = L.HOST_UPDATE_FN(trampoline(body, 1))
        token = _register_user((cfn, fn))
        with Call() as c:  # runs the free hook of the update replaced
            st = lib.regopt_optimizer_set_host_update(self._p(), cfn, token, _RELEASE_FN)
        if st != L.OK:
            _keepalive.pop(token, None)  # on failure the library does not call free_user
        c.finish(st, self._msg)

    @property
    def kind(self):
        """'sgd', 'adam', 'adamw', 'radam' or 'host'."""
        k = lib.regopt_optimizer_get_kind(self._p())
        for name, v in OPTIMIZER_KINDS.items():
            if v == k:
                return name
        return k

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            key = key_from_name(_full_name(self._prefix, name))
        except UnknownKey:
            raise AttributeError("Optimizer has no attribute or key %r" % name) from None
        return self._get_raw(key, key_info(key).type == L.TYPE_INT)

    def __setattr__(self, name, value):
        if name.startswith("_") or hasattr(type(self), name):
            object.__setattr__(self, name, value)
            return
        self.set_option(_full_name(self._prefix, name), value)

    def close(self):
        """Free the optimizer now. Fails (StateError) while a trainer is bound."""
        if not self._ptr:
            return
        if any(c.ptr for c in self._trainer_cells):
            raise StateError("the optimizer is bound to a live trainer: close the trainer "
                             "first", L.ERR_STATE)
        self._free()

    def _free(self):
        with Call() as c:  # the allocator's free hook
            lib.regopt_optimizer_free(self._ptr)
        self._ptr = None
        self._count(-1)
        self._trainer_cells = []
        c.finish()

    def _finalize(self):
        if not self._ptr:
            return
        for c in self._trainer_cells:
            _free_trainer_cell(c)
        self._free()

    def __repr__(self):
        if not self._ptr:
            return "<regopt.Optimizer closed>"
        return "<regopt.Optimizer %s lr=%g>" % (self.kind, self.get("lr"))
