"""Model: the host network as the library sees it."""
import collections
import ctypes
import weakref

from . import _lib as L
from ._lib import lib
from ._allocator import _alloc_arg
from ._arrays import _check_param_buffer
from ._batch import Pass, _int_rc
from ._errors import StateError, _check, _text, last_error_message
from ._guard import Call, call, trampoline
from ._handles import (_RELEASE_FN, _CallbackState, _Handle, _free_trainer_cell, _keepalive,
                       _register_user, _weak_callable)
from ._ints import ADDRESS, INT, INT32, SIZE, UINT32, c_int


class Model(_Handle):
    """regopt_model: the host network as the library sees it.

        m = Model(output_width=10, forward=fwd, backward=bwd)
        m.add_param("w1", w1, g1, group=0)     # float32 C-contiguous arrays

    Callbacks take one Pass and return None (or 0) on success; an exception
    (any BaseException: KeyboardInterrupt too) aborts the step, the library
    rolls back, and Trainer.step re-raises it.
    Instead of passing callbacks, a subclass may define forward(self, p) and
    backward(self, p): they are installed when a Trainer is created."""

    _kind = "model"

    def __init__(self, output_width=None, *, input_width=None, slots=None, capabilities=None,
                 forward=None, backward=None, allocator=None):
        super().__init__()
        self._arrays = []
        self._params = collections.OrderedDict()
        self._trainer_cells = []
        self._allocator = allocator
        self._callbacks_set = False
        self._cbs = _CallbackState()
        self._output_width = 0
        self._input_width = 0
        self._backend = None  # (backend, its C callback, the table) while the model lives
        st = ctypes.c_int(0)
        with Call() as c:  # the allocator's hooks
            ptr = lib.regopt_model_create(_alloc_arg(allocator), ctypes.byref(st))
        if ptr:
            self._ptr = ptr
            self._count(+1)
        c.finish(None if ptr else st.value, last_error_message)
        if output_width is not None:
            self.output_width = output_width
        if input_width is not None:
            self.input_width = input_width
        if slots is not None:
            self.slots = slots
        if capabilities is not None:
            self.set_capabilities(capabilities)
        if forward is not None or backward is not None:
            self.set_callbacks(forward, backward)

    def _msg(self):
        return _text(lib.regopt_model_message(self._ptr))

    @property
    def message(self):
        """regopt_model_message: detail of the last failure."""
        return self._msg() if self._ptr else ""

    # -- parameters --------------------------------------------------------
    def add_param(self, name, data, grad=None, group=0, dtype=None):
        """Register a C-contiguous writable array (updated in place) and its
        gradient buffer (same size and dtype; None = frozen tensor).
        float32 arrays; float16 arrays (mixed precision: the library keeps an
        fp32 master and writes round(w) into the array before every forward);
        uint16 arrays of bfloat16 bits with dtype=DTYPE_BFLOAT16."""
        dt = _check_param_buffer(data, "parameter %r data" % name, dtype)
        if grad is not None:
            _check_param_buffer(grad, "parameter %r grad" % name, dt)
            if grad.size != data.size:
                raise ValueError("parameter %r: grad has %d elements, data %d"
                                 % (name, grad.size, data.size))
        self.add_param_address(name, data.ctypes.data, grad.ctypes.data if grad is not None
                               else None, data.size, group, dtype=dt, keepalive=(data, grad))
        self._params[name] = (data, grad)

    def add_param_address(self, name, data_address, grad_address, count, group=0,
                          dtype=L.DTYPE_FLOAT32, keepalive=None):
        """Register raw buffers by address (for other array libraries); the
        objects in `keepalive` are kept alive until the model is closed."""
        args = (c_int(data_address, "parameter %r data address" % name, ADDRESS),
                None if grad_address is None
                else c_int(grad_address, "parameter %r grad address" % name, ADDRESS),
                c_int(count, "parameter %r count" % name, SIZE),
                c_int(dtype, "parameter %r dtype" % name, INT),
                c_int(group, "parameter %r group" % name, INT32))
        call(self._msg, lib.regopt_model_add_param, self._p(), name.encode(), *args)
        self._arrays.append(keepalive)
        if name not in self._params:
            self._params[name] = keepalive

    @property
    def params(self):
        """name -> (data, grad) as registered."""
        return dict(self._params)

    @property
    def param_count(self):
        return int(lib.regopt_model_param_count(self._ptr))

    @property
    def element_count(self):
        return int(lib.regopt_model_element_count(self._ptr))

    # -- backend -----------------------------------------------------------
    def set_backend(self, backend):
        """regopt_model_set_backend: make the parameter memory a backend's,
        before any add_param. backend.run(op) is called with a regopt._lib.Vop
        for every operation on parameter-sized memory and returns None or 0
        on success; an exception (or another value) fails the library call
        with REGOPT_ERR_BACKEND, and the step re-raises that exception with
        the BackendFailed error attached as .regopt_error (a backend that
        returns non-zero with its exception in backend.error, as TorchBackend
        does, gets that one re-raised). Afterwards
        add_param_address takes opaque handles (ints the library hands back
        to the backend, never dereferences). The model keeps backend and its
        C callback alive until it is freed. A CpuBackend's C table is
        installed as it is (no Python in between)."""
        if isinstance(backend, CpuBackend):
            call(self._msg, lib.regopt_model_set_backend, self._p(), backend._table_p())
            backend._users += 1
            self._drop_backend()
            self._backend = (backend, None, None)
            return
        run = backend.run
        seen = [None]

        def body(user, op):
            rc = run(op.contents)
            if rc is None or rc == 0:
                return 0
            # a backend that keeps its exception (TorchBackend.error) instead
            # of raising: raised here, so that the call re-raises it
            exc = getattr(backend, "error", None)
            if isinstance(exc, BaseException) and exc is not seen[0]:
                seen[0] = exc
                raise exc
            return _int_rc(rc)
        cf = L.BACKEND_FN(trampoline(body, 1))
        table = L.Backend(ctypes.sizeof(L.Backend), cf, None)
        call(self._msg, lib.regopt_model_set_backend, self._p(), ctypes.byref(table))
        self._drop_backend()
        self._backend = (backend, cf, table)

    def _drop_backend(self):
        """Forget the backend the library no longer uses (replaced, or the
        model freed): a CpuBackend counts one model less."""
        if self._backend is not None and isinstance(self._backend[0], CpuBackend):
            self._backend[0]._users -= 1
        self._backend = None

    @property
    def backend(self):
        """The backend given to set_backend, or None."""
        return self._backend[0] if self._backend is not None else None

    # -- shape -------------------------------------------------------------
    @property
    def output_width(self):
        return self._output_width

    @output_width.setter
    def output_width(self, width):
        width = c_int(width, "output_width", SIZE)
        _check(lib.regopt_model_set_output_width(self._p(), width), self._msg)
        self._output_width = width

    @property
    def input_width(self):
        return self._input_width

    @input_width.setter
    def input_width(self, width):
        width = c_int(width, "input_width", SIZE)
        _check(lib.regopt_model_set_input_width(self._p(), width), self._msg)
        self._input_width = width

    @property
    def slots(self):
        return getattr(self, "_slots", 1)

    @slots.setter
    def slots(self, n):
        n = c_int(n, "slots", INT32)
        _check(lib.regopt_model_set_slots(self._p(), n), self._msg)
        self._slots = n

    def set_capabilities(self, caps):
        """REGOPT_CAP_* bits (regopt.CAP_DOUBLED_BATCH)."""
        caps = c_int(caps, "capabilities", UINT32)
        _check(lib.regopt_model_set_capabilities(self._p(), caps), self._msg)
        self._caps = caps

    # -- callbacks ---------------------------------------------------------
    def forward(self, p):
        raise NotImplementedError("give Model(forward=...) or override Model.forward")

    def backward(self, p):
        raise NotImplementedError("give Model(backward=...) or override Model.backward")

    def _trampoline(self, fn):
        state = self._cbs
        if getattr(fn, "__self__", None) is self and hasattr(fn, "__func__"):
            # a method of this model: held weakly (as _weak_callable does),
            # dereferenced here rather than through a wrapper (one frame
            # less per pass: the step's Python overhead on a small model)
            ref = weakref.ref(self)
            func = fn.__func__

            def body(pp, user):
                c = pp.contents
                obj = ref()
                if obj is None:
                    raise ReferenceError("the model of this callback was collected")
                # state.data(c.batch), inline
                objs, token = state.batch_objects, c.batch
                data = objs[token - 1] if objs is not None and 0 < token <= len(objs) else None
                rc = func(obj, Pass(c, data))
                return 0 if rc is None else _int_rc(rc)
            return trampoline(body, 1)
        fn = _weak_callable(fn, self)

        def body(pp, user):
            c = pp.contents
            return _int_rc(fn(Pass(c, state.data(c.batch))))
        return trampoline(body, 1)

    def set_callbacks(self, forward, backward):
        """Install the forward and backward callables (each takes a Pass)."""
        if forward is None or backward is None or not callable(forward) \
                or not callable(backward):
            raise TypeError("set_callbacks needs two callables, forward and backward")
        cf = L.PASS_FN(self._trampoline(forward))
        cb = L.PASS_FN(self._trampoline(backward))
        token = _register_user((cf, cb))
        with Call() as c:  # the free hook of the callbacks replaced
            st = lib.regopt_model_set_callbacks(self._p(), cf, cb, token, _RELEASE_FN)
        if st != L.OK:
            _keepalive.pop(token, None)  # on failure the library does not call free_user
        else:
            self._callbacks_set = True
        c.finish(st, self._msg)

    def _before_call(self):
        """Called by the trainer before each step or evaluation (a hook for
        adapters that check their registered buffers, as TorchModel)."""

    def _after_call(self):
        """Called after each step, evaluation or recalibration that ran the
        callbacks, whatever its outcome (TorchModel restores the caller's
        RNG state there)."""

    def _save_host_state(self):
        """Before a batch-norm recalibration of averaged weights: what the
        host must get back afterwards (TorchModel: its batch-norm buffers).
        A plain Model keeps no such state."""
        return None

    def _restore_host_state(self, saved):
        """After the averaged weights are swapped back out."""

    def _install_methods_if_needed(self):
        if self._callbacks_set:
            return
        cls = type(self)
        if cls.forward is not Model.forward and cls.backward is not Model.backward:
            self.set_callbacks(self.forward, self.backward)

    # -- lifetime ----------------------------------------------------------
    def close(self):
        """Free the model now. Fails (StateError) while a trainer is bound."""
        if not self._ptr:
            return
        live = [c for c in self._trainer_cells if c.ptr]
        if live:
            raise StateError("the model is bound to %d live trainer(s): close the trainer "
                             "first" % len(live), L.ERR_STATE)
        self._free()

    def _free(self):
        with Call() as c:  # the allocator's and the callbacks' free hooks
            lib.regopt_model_free(self._ptr)
        self._ptr = None
        self._count(-1)
        self._arrays = []
        self._drop_backend()
        self._params.clear()
        self._trainer_cells = []
        c.finish()

    def _finalize(self):
        if not self._ptr:
            return
        # Unreachable, so its trainers are unreachable too (they reference
        # it); in cyclic garbage they may be finalized after us: free them first.
        for c in self._trainer_cells:
            _free_trainer_cell(c)
        self._free()

    def __repr__(self):
        return "<regopt.Model %s params=%d elements=%d output_width=%d>" % (
            "closed" if not self._ptr else "open", self.param_count, self.element_count,
            self._output_width)


class CpuBackend:
    """regopt_backend_cpu_create: the library's reference backend, whose
    handles are float32 host addresses, worked on with the kernels the
    library uses without a backend (the same bits). Model.set_backend takes
    it; run(op) runs one regopt._lib.Vop through it directly (a reference
    for another backend's operations). close() frees its state, refused
    (StateError) while a model that uses it is open; the garbage collector
    frees it too."""

    def __init__(self):
        self._table = L.Backend()
        self._users = 0
        _check(lib.regopt_backend_cpu_create(ctypes.byref(self._table)), last_error_message)

    def _table_p(self):
        if not self._table.run:
            raise StateError("the CPU backend is closed", L.ERR_STATE)
        return ctypes.byref(self._table)

    def run(self, op):
        """The table's run on op (a Vop): its return value (0: success)."""
        self._table_p()
        return self._table.run(self._table.user, ctypes.byref(op))

    def close(self):
        if self._users:
            raise StateError("the CPU backend is used by %d open model(s): close them first"
                             % self._users, L.ERR_STATE)
        if self._table.run:
            _check(lib.regopt_backend_cpu_free(ctypes.byref(self._table)), last_error_message)

    def __del__(self):
        try:
            if self._users == 0 and self._table.run:
                lib.regopt_backend_cpu_free(ctypes.byref(self._table))
        except Exception:  # a failed __init__, or the interpreter shutting down
            pass
