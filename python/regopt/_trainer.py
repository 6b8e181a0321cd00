"""Trainer: binds a Model and an Optimizer and runs steps."""
import collections
import ctypes

from . import _flatness
from . import _lib as L
from ._lib import lib
from ._arrays import _need_numpy, _np, _view
from ._batch import Batch, BatchView, _as_batches, _int_rc
from ._checkpoint import _Checkpoints
from ._errors import (InvalidArgument, OutOfRange, StateError, UnknownKey, _check, _text,
                      last_error_message)
from ._guard import Call, call, trampoline
from ._handles import (_RELEASE_FN, _Cell, _Handle, _free_trainer_cell, _keepalive, _live,
                       _live_lock, _register_user, _weak_callable)
from ._ints import INT32, SIZE, c_int
from ._keys import _Options, _full_name, key_from_name, key_info, keys
from ._model import Model
from ._optimizer import Optimizer
from ._regularizers import REGULARIZERS, Regularizer, Term, _stat_alias, regularizer_kinds

_STAT_LOSS = 900  # REGOPT_STAT_LOSS ("stat.loss"); key values are fixed forever
_BATCH_BYTES = ctypes.sizeof(L.Batch)
_ONE_BATCH = L.Batch * 1


class Trainer(_Handle, _Options, _Checkpoints):
    """regopt_trainer: binds a Model and an Optimizer (kept alive by the
    trainer) and runs steps.

        t = Trainer(model, opt, seed=1, loss='mse')    # "trainer.*" keys
        sam = t.add('sam', rho=0.05)                    # "sam.rho"
        loss = t.step(Batch(data=x, labels=y))
        t.stats()['sam_sharpness']

    The checkpoint methods (to_bytes, save, write_to, ...) come from
    _Checkpoints (regopt/_checkpoint.py).
    """

    _kind = "trainer"
    _prefix = "trainer"
    _c_functions = {
        "set_int": "regopt_trainer_set_int", "get_int": "regopt_trainer_get_int",
        "set_double": "regopt_trainer_set_double", "get_double": "regopt_trainer_get_double",
    }

    def __init__(self, model, optimizer, *, reserve=None, **options):
        _Handle.__init__(self)
        if not isinstance(model, Model):
            raise TypeError("Trainer needs a regopt.Model, got %s" % type(model).__name__)
        if not isinstance(optimizer, Optimizer):
            raise TypeError("Trainer needs a regopt.Optimizer, got %s"
                            % type(optimizer).__name__)
        self._cell = None
        self.model = model
        self.optimizer = optimizer
        self.regularizers = collections.OrderedDict()
        self._pending_groups = {}  # kind name -> {(group, key name): value} before add
        self._loss_cb = None
        model._install_methods_if_needed()
        st = ctypes.c_int(0)
        with Call() as c:  # the allocator's hooks
            ptr = lib.regopt_trainer_create(model._p(), optimizer._p(), ctypes.byref(st))
        if ptr:
            self._cell = _Cell(ptr)
            self._count(+1)
            model._trainer_cells.append(self._cell)
            optimizer._trainer_cells.append(self._cell)
        try:
            c.finish(None if ptr else st.value, last_error_message)
            if reserve:
                self.reserve(reserve)
            self.set(**options)
        except BaseException:
            self.close()
            raise

    @property
    def _ptr(self):
        c = self.__dict__.get("_cell")
        return c.ptr if c is not None else None

    @_ptr.setter
    def _ptr(self, value):
        pass  # the cell holds the pointer

    def _msg(self):
        return _text(lib.regopt_trainer_message(self._ptr))

    @property
    def message(self):
        """regopt_trainer_message: detail of the last failure."""
        return self._msg() if self._ptr else ""

    # -- statistics --------------------------------------------------------
    def stat(self, name):
        """One statistic by short ("loss") or full ("stat.loss") name; the
        0.x names of regularizer statistics ("sam_sharpness") still work."""
        try:
            key = key_from_name(_full_name("stat", name))
        except UnknownKey:
            st = self.stats()
            if name in st:
                return st[name]
            raise
        return self._get_raw(key, key_info(key).type == L.TYPE_INT)

    def stats(self):
        """Every statistic of the last successful step: {'loss': ..., ...},
        and those of every regularizer kind under their 0.x names
        ('sam_sharpness', 'rdrop_consistency', 'sam_rho', 'bregman_beta'):
        those of the attached regularizers, 0 for kinds not attached."""
        out = {}
        for info in keys("stat."):
            out[info.name[5:]] = self._get_raw(info.key, info.type == L.TYPE_INT)
        for kind, name, flags in regularizer_kinds():
            if kind == L.REG_TERM:
                continue
            for info in keys(name + "."):
                if info.flags & L.KEY_READ_ONLY:
                    out[_stat_alias(info.name)] = 0 if info.type == L.TYPE_INT else 0.0
        for reg in self.attached():
            if reg.kind == L.REG_TERM:
                out["term_%s_value" % reg.name] = reg.stat("value")
            else:
                out.update(reg._trainer_stats())
        return out

    def attached(self):
        """The attached regularizers in the order the step runs them
        (regopt_trainer_regularizer_count / _at)."""
        n = lib.regopt_trainer_regularizer_count(self._p())
        by_ptr = {r._ptr: r for r in self.regularizers.values()}
        out = []
        for i in range(n):
            p = lib.regopt_trainer_regularizer_at(self._p(), i)
            r = by_ptr.get(p)
            if r is not None:
                out.append(r)
        return out

    loss = property(lambda s: s.stat("loss"), doc="stat.loss of the last step")
    objective = property(lambda s: s.stat("objective"))
    grad_norm = property(lambda s: s.stat("grad_norm"))
    lr = property(lambda s: s.stat("lr"))

    @property
    def steps(self):
        """Completed steps (stat.step as an integer)."""
        v = ctypes.c_int64()
        _check(lib.regopt_trainer_get_int(self._p(), key_from_name("stat.step"),
                                          ctypes.byref(v)), self._msg)
        return v.value

    # -- options of the attached regularizers (0.x sugar) --------------------
    def _owner(self, name):
        """The attached regularizer a key name belongs to, or None for a
        trainer key."""
        prefix = name.split(".", 1)[0]
        if prefix in ("trainer", "stat", "optimizer", "group"):
            return None
        reg = self.regularizers.get(prefix)
        if reg is None:
            raise UnknownKey("%s: no %s regularizer is attached to this trainer (method "
                             "options are keys of the regularizer handle since libregopt "
                             "1.0)" % (name, prefix), L.ERR_UNKNOWN_KEY)
        return reg

    def set_option(self, name, value):
        """Set one key by full name; a regularizer key ("sam.rho") goes to
        the attached regularizer of that kind."""
        full = name if isinstance(name, str) else key_info(int(name)).name
        reg = self._owner(full)
        if reg is not None:
            return reg.set_option(full, value)
        return _Options.set_option(self, name, value)

    def get(self, name):
        full = (_full_name(self._prefix, name) if isinstance(name, str)
                else key_info(int(name)).name)
        reg = self._owner(full)
        if reg is not None:
            return reg.get(full)
        return _Options.get(self, name)

    @staticmethod
    def _group_name(name):
        """sam_adaptive / sam.group_adaptive -> ("sam", "sam.group_adaptive")."""
        if "." in name:
            return name.split(".", 1)[0], name
        if "_" not in name:
            raise UnknownKey("%r: per-group trainer options are regularizer keys, e.g. "
                             "sam_adaptive" % name, L.ERR_UNKNOWN_KEY)
        prefix, short = name.split("_", 1)
        full = "%s.group_%s" % (prefix, short.rstrip("_"))
        key_from_name(full)  # UnknownKey for a typo
        return prefix, full

    def set_group(self, group, **options):
        """0.x sugar: set_group(1, sam_adaptive=0) sets "sam.group_adaptive"
        on the attached SAM, or on the SAM added later."""
        for name, value in options.items():
            prefix, full = self._group_name(name)
            reg = self.regularizers.get(prefix)
            if reg is not None:
                reg.set_group(group, **{full: value})
            else:
                group = c_int(group, "group", INT32)
                if not 0 <= group < L.MAX_GROUPS:
                    raise OutOfRange("group %d out of range [0, %d)" % (group, L.MAX_GROUPS),
                                     L.ERR_OUT_OF_RANGE)
                self._pending_groups.setdefault(prefix, {})[(group, full)] = float(value)
        return self

    def get_group(self, group, name):
        prefix, full = self._group_name(name)
        reg = self.regularizers.get(prefix)
        if reg is not None:
            return reg.get_group(group, full)
        v = self._pending_groups.get(prefix, {}).get((c_int(group, "group", INT32), full))
        return v if v is not None else key_info(full).default

    # -- regularizers ------------------------------------------------------
    def add(self, regularizer, **options):
        """Attach a regularizer: add('sam', rho=0.05) creates one (a handle
        of its own) and attaches it; add(SAM(rho=0.05)) attaches that one.
        Returns the Regularizer; the trainer keeps it alive while attached."""
        created = False
        if isinstance(regularizer, str):
            cls = REGULARIZERS.get(regularizer.lower())
            if cls is None:
                known = ", ".join(n for _, n, _ in regularizer_kinds() if n != "term")
                raise InvalidArgument("unknown regularizer %r (known: %s)"
                                      % (regularizer, known), L.ERR_INVALID_ARGUMENT)
            reg = cls(**options)  # a failing option: nothing was attached
            created = True
        elif isinstance(regularizer, Regularizer):
            reg = regularizer
            if reg._trainer is not None or reg.attached:
                raise StateError("this %s is already added to a trainer"
                                 % type(reg).__name__, L.ERR_STATE)
            reg.set(**options)
        else:
            raise TypeError("add() takes a regularizer name or a regopt.Regularizer")
        try:
            for (g, full), v in self._pending_groups.get(reg.prefix, {}).items():
                reg.set_group(g, **{full: v})
            call(self._msg, lib.regopt_trainer_attach, self._p(), reg._p())
        except BaseException:
            if created:
                reg.close()
            raise
        self._pending_groups.pop(reg.prefix, None)
        object.__setattr__(reg, "_trainer", self)
        if isinstance(reg, Term):
            object.__setattr__(reg, "_state", self.model._cbs)
            key = "term:%s" % reg.name
            n = 1
            while key in self.regularizers:
                n += 1
                key = "term:%s#%d" % (reg.name, n)
        else:
            key = reg.prefix
        self._cell.regs.append(reg._rc)
        self.regularizers[key] = reg
        return reg

    def remove(self, regularizer):
        """Detach a regularizer (by name, class or object). It stays usable
        (its options kept) and is returned."""
        if isinstance(regularizer, Regularizer):
            reg = regularizer
            keys_ = [k for k, r in self.regularizers.items() if r is reg]
        else:
            if isinstance(regularizer, str):
                cls = REGULARIZERS.get(regularizer.lower())
                if cls is None:
                    raise InvalidArgument("unknown regularizer %r" % regularizer,
                                          L.ERR_INVALID_ARGUMENT)
            else:
                cls = regularizer
            reg = self.regularizers.get(cls.prefix)
            keys_ = [cls.prefix] if reg is not None else []
        if not keys_:
            raise StateError("%s is not attached to this trainer" % (regularizer,), L.ERR_STATE)
        call(self._msg, lib.regopt_trainer_detach, self._p(), reg._p())
        for k in keys_:
            del self.regularizers[k]
        try:
            self._cell.regs.remove(reg._rc)
        except ValueError:
            pass
        object.__setattr__(reg, "_trainer", None)
        if isinstance(reg, Term):
            object.__setattr__(reg, "_state", None)
        return reg

    # -- callbacks of the trainer -----------------------------------------
    def set_loss(self, fn):
        """A user loss fn(batch: BatchView, outputs, row_loss, d_outputs):
        write each row's loss into row_loss (rows,) and its gradient into
        d_outputs (rows, width). None: back to softmax CE."""
        if fn is None:
            call(self._msg, lib.regopt_trainer_set_loss_callback, self._p(), L.LOSS_FN(), None,
                 L.USER_FREE_FN())
            self._loss_cb = None
            return
        state = self.model._cbs
        fn = _weak_callable(fn, self)

        def body(bp, outputs, rows, width, row_loss, d_outputs, user):
            c = bp.contents
            rc = fn(BatchView(c, state.data(c.data), width),
                    _view(ctypes.cast(outputs, ctypes.c_void_p).value, (rows, width),
                          readonly=True),
                    _view(ctypes.cast(row_loss, ctypes.c_void_p).value, (rows,)),
                    _view(ctypes.cast(d_outputs, ctypes.c_void_p).value, (rows, width)))
            return _int_rc(rc)

        cfn = L.LOSS_FN(trampoline(body, 1))
        self._install(lib.regopt_trainer_set_loss_callback, cfn)
        self._loss_cb = fn

    def _install(self, setter, cfn):
        """setter(trainer, cfn, user, free_user) with the binding's keep-alive."""
        token = _register_user((cfn,))
        with Call() as c:  # runs the free hook of the callback replaced
            st = setter(self._p(), cfn, token, _RELEASE_FN)
        if st != L.OK:
            _keepalive.pop(token, None)  # on failure the library does not call free_user
        c.finish(st, self._msg)

    def set_allreduce(self, fn):
        """Data-parallel all-reduce: fn(buffer) sums the float32 NumPy array
        in place over all replicas (e.g. with mpi4py). None: single process.
        A Ctrl-C held while the library ran is not delivered before fn (as it
        is before the other callbacks): the replicas must all join the
        collective, so this step completes and KeyboardInterrupt follows."""
        if fn is None:
            call(self._msg, lib.regopt_trainer_set_allreduce, self._p(), L.ALLREDUCE_FN(), None,
                 L.USER_FREE_FN())
            return

        fn = _weak_callable(fn, self)

        def body(buf, count, user):
            return _int_rc(fn(_view(ctypes.cast(buf, ctypes.c_void_p).value, (count,))))

        self._install(lib.regopt_trainer_set_allreduce,
                      L.ALLREDUCE_FN(trampoline(body, 1, deliver=False)))

    def reserve(self, max_rows):
        """Size the scratch buffers for batches of up to max_rows rows now."""
        call(self._msg, lib.regopt_trainer_reserve, self._p(),
             c_int(max_rows, "reserve max_rows", SIZE))

    def recover(self):
        """Undo a call whose C or C++ callback never returned (regopt_trainer_recover).

        Python callbacks always return to the library (their exceptions are
        re-raised by the call that ran them), so a pure-Python host never
        needs this; it is here for trainers shared with native code."""
        _check(lib.regopt_trainer_recover(self._p()), self._msg)

    # -- steps -------------------------------------------------------------
    def _prepare(self, batches):
        n = len(batches)
        arr = (L.Batch * n)()
        width, has_input = self.model.output_width, self.model.input_width
        for i, b in enumerate(batches):
            b._fill(arr, i + 1, width, has_input, i * _BATCH_BYTES)
        return arr

    def _run(self, bl, fn, *args, owner=None):
        """fn(handle, *args) -- a step, an evaluation or a recalibration of
        the batches bl -- with the batches' objects visible to the callbacks;
        handle and message are owner's (default: the trainer's); raises as
        _guard.Call.finish (a callback's exception first)."""
        owner = self if owner is None else owner
        self.model._before_call()
        state = self.model._cbs
        state.batch_objects = [b.data for b in bl]
        try:
            with Call() as c:
                st = fn(owner._p(), *args)
        finally:
            state.batch_objects = None
            self.model._after_call()
        c.finish(st, owner._msg)

    def _recalibrate(self, reg, batches):
        """regopt_regularizer_recalibrate over batches, the batches' objects
        visible to the callbacks (Average.recalibrate)."""
        bl = _as_batches(batches, {})
        self._run(bl, lib.regopt_regularizer_recalibrate, self._prepare(bl), len(bl), owner=reg)

    def step(self, batches=None, **fields):
        """One optimizer step over one Batch, a list of micro-batches, or the
        fields of one batch: step(data=x, labels=y). Returns stat.loss.
        An exception raised in a callback -- KeyboardInterrupt included --
        aborts the step (the library restores everything) and is re-raised
        here, traceback intact, the library's error as its .regopt_error.
        A Ctrl-C that arrives while the library itself runs is held until the
        next callback (which then fails: the step is rolled back) or, when no
        callback is left (or only the all-reduce), raised once the step has
        completed."""
        if batches.__class__ is Batch and not fields:  # one Batch: no list to build
            bl = (batches,)
            arr = _ONE_BATCH()
            batches._fill(arr, 1, self.model.output_width, self.model.input_width)
        else:
            bl = _as_batches(batches, fields)
            arr = self._prepare(bl)
        # _run, inline (one frame less on a small model's step)
        model = self.model
        model._before_call()
        state = model._cbs
        state.batch_objects = [b.data for b in bl]
        try:
            with Call() as c:
                st = lib.regopt_trainer_step(self._p(), arr, len(bl))
        finally:
            state.batch_objects = None
            model._after_call()
        c.finish(st, self._msg)
        # stat("loss") without its name lookups, into a box kept for it (a
        # step on a small model pays for every object made on its path)
        box = self.__dict__.get("_loss_box")
        if box is None:
            v = ctypes.c_double()
            box = self._loss_box = (v, ctypes.byref(v))
        st = lib.regopt_trainer_get_double(self._p(), _STAT_LOSS, box[1])
        if st:
            _check(st, self._msg)
        return box[0].value

    def evaluate(self, batch=None, *, outputs=True, loss=None, **fields):
        """Forward pass without training (dropout off). Returns (loss,
        outputs): loss is None when the batch has no labels/targets (and the
        loss is not a callback), outputs a (rows, output_width) float32 array
        (or None with outputs=False)."""
        b = _as_batches(batch, fields)
        if len(b) != 1:
            raise ValueError("evaluate takes one batch")
        b = b[0]
        arr = self._prepare([b])
        out = None
        if outputs:
            out = _need_numpy().empty((b.rows, self.model.output_width), dtype=_np.float32)
        if loss is None:
            loss = b.labels is not None or b.targets is not None or self._loss_cb is not None
        lv = ctypes.c_double()
        self._run([b], lib.regopt_trainer_evaluate, arr, ctypes.byref(lv) if loss else None,
                  out.ctypes.data_as(L.c_float_p) if out is not None else None)
        return (lv.value if loss else None), out

    def flatness(self, batches, *, measures=None, **options):
        """Measure flatness around the current weights on one Batch or a
        list of batches (regopt_trainer_flatness; include/regopt.h,
        "Measuring flatness"): measures is a name or a list of names among
        "worst_case", "average_case", "eigenvalue", "trace" (None: all);
        options are the request's fields (rho, norm="l2"/"linf", adaptive,
        worst_iterations, sigma, average_samples, eigen_iterations,
        eigen_tolerance, trace_samples, trace_tolerance, fd_scale, seed).
        Returns a regopt.Flatness dataclass. Changes no training state; the
        gradient buffers are left undefined. A bad option raises as the
        library refuses it (OutOfRange, InvalidArgument)."""
        r = _flatness.request(measures, options)
        bl = _as_batches(batches, {})
        arr = self._prepare(bl)
        out = L.Flatness()
        out.size = ctypes.sizeof(out)
        self._run(bl, lib.regopt_trainer_flatness, arr, len(bl), ctypes.byref(r),
                  ctypes.byref(out))
        return _flatness.result(r, out)

    # -- lifetime ----------------------------------------------------------
    def close(self):
        """Free the trainer now (its model and optimizer stay usable)."""
        c = self.__dict__.get("_cell")
        if c is None or not c.ptr:
            return
        _free_trainer_cell(c)
        for h in (self.model, self.optimizer):
            try:
                h._trainer_cells.remove(c)
            except ValueError:
                pass
        for reg in self.regularizers.values():  # detached by regopt_trainer_free
            object.__setattr__(reg, "_trainer", None)

    def _count(self, delta):
        with _live_lock:
            _live["trainer"] += delta

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError("Trainer has no attribute %r (options: t.get(%r) or t[%r])"
                             % (name, name, name))

    def __repr__(self):
        if not self._ptr:
            return "<regopt.Trainer closed>"
        return "<regopt.Trainer steps=%d regularizers=%s>" % (self.steps,
                                                              list(self.regularizers))
