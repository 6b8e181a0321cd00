"""Regularizers: handles of their own (libregopt 1.0). A Regularizer owns a
regopt_regularizer created from its kind; its attributes are its keys
("<kind>.<name>"), its statistics come from stats(). A Trainer attaches it
(Trainer.add) and keeps it alive while attached: the library refuses to free
an attached regularizer."""
import contextlib
import ctypes
import weakref

from . import _lib as L
from ._lib import lib
from ._arrays import _view
from ._batch import BatchView
from ._errors import Error, StateError, UnknownKey, _check, _text, last_error_message
from ._guard import Call, trampoline
from ._handles import _RELEASE_FN, _NoCopy, _RegCell, _keepalive, _register_user
from ._ints import INT32, UINT32, c_int
from ._keys import _Options, _full_name, key_from_name, key_info, keys


REGULARIZER_KINDS = {"sam": L.REG_SAM, "rdrop": L.REG_RDROP, "smart": L.REG_SMART,
                     "bregman": L.REG_BREGMAN, "average": L.REG_AVERAGE,
                     "adv": L.REG_ADVERSARIAL}

# Statistics whose 0.x trainer-level names differ from "<kind>_<short name>".
_OLD_STAT_NAMES = {"sam.rho_used": "sam_rho", "bregman.beta_used": "bregman_beta"}


def regularizer_kinds():
    """regopt_regularizer_kind_info: [(kind, name, flags), ...] for every
    kind the loaded library knows."""
    out = []
    i = 0
    kind, name, flags = ctypes.c_int(), ctypes.c_char_p(), ctypes.c_uint32()
    while lib.regopt_regularizer_kind_info(i, ctypes.byref(kind), ctypes.byref(name),
                                           ctypes.byref(flags)) == L.OK:
        out.append((kind.value, _text(name.value), flags.value))
        i += 1
    return out


def _stat_alias(full_name):
    """"sam.sharpness" -> "sam_sharpness" (the trainer.stats() name of 0.x)."""
    old = _OLD_STAT_NAMES.get(full_name)
    return old if old is not None else full_name.replace(".", "_", 1)


class Regularizer(_NoCopy, _Options):
    """A regularizer handle; its options are its keys "<prefix>.<name>":
    sam = SAM(rho=0.05); sam.rho = 0.1; trainer.add(sam); sam.stats().

    While attached to a trainer it cannot be closed (StateError); the trainer
    keeps it alive and detaches it in Trainer.remove or when it is closed."""

    kind = None
    prefix = None
    _kind = "regularizer"
    _c_functions = {
        "set_int": "regopt_regularizer_set_int", "get_int": "regopt_regularizer_get_int",
        "set_double": "regopt_regularizer_set_double",
        "get_double": "regopt_regularizer_get_double",
        "set_group": "regopt_regularizer_set_group",
        "get_group": "regopt_regularizer_get_group",
    }

    def __init__(self, **options):
        object.__setattr__(self, "_rc", None)
        object.__setattr__(self, "_trainer", None)
        self._create()
        try:
            self.set(**options)
        except BaseException:
            self.close()
            raise

    @property
    def _prefix(self):
        return self.prefix

    def _create(self):
        st = ctypes.c_int(0)
        with Call() as c:
            ptr = lib.regopt_regularizer_create(self.kind, None, ctypes.byref(st))
        if ptr:
            object.__setattr__(self, "_rc", _RegCell(ptr))
        c.finish(None if ptr else st.value, last_error_message)

    # -- the handle ------------------------------------------------------------
    @property
    def _ptr(self):
        rc = self.__dict__.get("_rc")
        return rc.ptr if rc is not None else None

    def _p(self):
        p = self._ptr
        if not p:
            raise StateError("this %s is closed" % type(self).__name__, L.ERR_NULL_POINTER)
        return p

    def _msg(self):
        p = self._ptr
        return _text(lib.regopt_regularizer_message(p)) if p else ""

    @property
    def message(self):
        """regopt_regularizer_message: detail of the last failure of an option."""
        return self._msg()

    @property
    def closed(self):
        return not self._ptr

    @property
    def address(self):
        return self._ptr

    @property
    def kind_value(self):
        """regopt_regularizer_get_kind."""
        return int(lib.regopt_regularizer_get_kind(self._p()))

    @property
    def attached(self):
        """True while a trainer holds it (regopt_regularizer_get_trainer)."""
        p = self._ptr
        return bool(p and lib.regopt_regularizer_get_trainer(p))

    @property
    def trainer(self):
        return self._trainer

    def close(self):
        """Free the handle. Refused (StateError) while attached: remove it
        from its trainer, or close the trainer, first."""
        rc = self.__dict__.get("_rc")
        if rc is None or not rc.ptr:
            return
        if lib.regopt_regularizer_get_trainer(rc.ptr):
            raise StateError("this %s is attached to a trainer: remove it (or close the "
                             "trainer) before closing it" % type(self).__name__, L.ERR_STATE)
        rc.free()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            rc = self.__dict__.get("_rc")
            if rc is None or not rc.ptr:
                return
            if lib.regopt_regularizer_get_trainer(rc.ptr):
                rc.orphan = True  # the trainer frees it once detached
            else:
                rc.free()
        except Exception:  # interpreter shutdown
            pass

    # -- options ---------------------------------------------------------------
    def _key_name(self, name):
        full = _full_name(self.prefix, name)
        if not full.startswith(self.prefix + "."):
            raise UnknownKey("%s is not a key of %s (its keys are %s.*)"
                             % (full, type(self).__name__, self.prefix), L.ERR_UNKNOWN_KEY)
        return full

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            full = self._key_name(name)
            key = key_from_name(full)
        except UnknownKey:
            raise AttributeError("%s has no option %r" % (type(self).__name__, name)) from None
        return self._get_raw(key, key_info(key).type == L.TYPE_INT)

    def __setattr__(self, name, value):
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        self.set_option(self._key_name(name), value)

    def _group_key(self, name):
        if "." in name:
            return key_from_name(name)
        short = name if name.startswith("group_") else "group_" + name
        return key_from_name("%s.%s" % (self.prefix, short.rstrip("_")))

    def set_group(self, group, **options):
        """Per-group keys: sam.set_group(1, adaptive=0) ("sam.group_adaptive")."""
        for name, value in options.items():
            _check(lib.regopt_regularizer_set_group(self._p(), c_int(group, "group", INT32),
                                                    self._group_key(name), float(value)),
                   self._msg)
        return self

    def get_group(self, group, name):
        v = ctypes.c_double()
        _check(lib.regopt_regularizer_get_group(self._p(), c_int(group, "group", INT32),
                                                self._group_key(name), ctypes.byref(v)),
               self._msg)
        return v.value

    def options(self):
        """Every option (not statistic, not per-group) by short name."""
        out = {}
        for info in keys(self.prefix + "."):
            if info.flags & (L.KEY_READ_ONLY | L.KEY_GROUP):
                continue
            out[info.name.split(".", 1)[1]] = self._get_raw(info.key, info.type == L.TYPE_INT)
        return out

    def stats(self):
        """The statistics of the trainer's last successful step, by short
        name: SAM(...).stats()['sharpness']."""
        out = {}
        for info in keys(self.prefix + "."):
            if info.flags & L.KEY_READ_ONLY:
                out[info.name.split(".", 1)[1]] = self._get_raw(info.key,
                                                                info.type == L.TYPE_INT)
        return out

    def stat(self, name):
        key = key_from_name(self._key_name(name))
        return self._get_raw(key, key_info(key).type == L.TYPE_INT)

    def _trainer_stats(self):
        """stats() under the 0.x trainer names ('sam_sharpness', 'sam_rho')."""
        out = {}
        for info in keys(self.prefix + "."):
            if info.flags & L.KEY_READ_ONLY:
                out[_stat_alias(info.name)] = self._get_raw(info.key, info.type == L.TYPE_INT)
        return out

    def __repr__(self):
        if self.closed:
            return "<regopt.%s closed>" % type(self).__name__
        state = "attached" if self.attached else "not attached"
        try:
            opts = self.options()
        except Error:
            opts = {}
        return "<regopt.%s %s %s>" % (type(self).__name__, state, opts)


class SAM(Regularizer):
    """SAM family (SAM, ASAM with adaptive=1, GSAM with gsam=1, FriendlySAM and
    VaSSO with direction=1/2, WSAM with wsam=1/2, SAM-ON with
    set_group(g, perturb=0), LookSAM with looksam=1, Momentum-SAM with
    momentum=1); "sam.*"."""
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


class Adversarial(Regularizer):
    """Adversarial training on the input embeddings; "adv.*": method (0 FGM,
    1 PGD, 2 FreeLB, 3 VAT), alpha, epsilon, step, steps, init_mag, norm and
    the facets scope, objective, init, param_grad, clean_pass (-1 = the
    method's). VAT with Batch(task_mask=...) trains semi-supervised."""
    kind = L.REG_ADVERSARIAL
    prefix = "adv"


class _Averaged:
    """Evaluation on averaged weights (Average, and Bregman's EMA teacher):
    swap(), swapped, recalibrate(batches) and the context manager
    averaged(recalibrate=None)."""

    def _attached_trainer(self, what):
        t = self._trainer
        if t is None:
            raise StateError("%s: this %s is not added to a trainer"
                             % (what, type(self).__name__), L.ERR_STATE)
        return t

    def swap(self):
        """regopt_regularizer_swap_average: exchange the averaged weights and
        the model's (twice restores both bit for bit). While swapped,
        Trainer.step and checkpoints raise StateError; evaluate works."""
        _check(lib.regopt_regularizer_swap_average(self._p()), self._msg)

    @property
    def swapped(self):
        """regopt_regularizer_average_swapped."""
        p = self._ptr
        return bool(p and lib.regopt_regularizer_average_swapped(p))

    def recalibrate(self, batches):
        """regopt_regularizer_recalibrate: batch-norm recalibration for the
        swapped-in average, one forward per batch flagged TRAIN | NO_GRAD |
        PASS_RECALIBRATE (the host resets its running statistics at
        micro_batch 0 and averages them over the call, as torch's
        update_bn). Only while swapped."""
        self._attached_trainer("recalibrate")._recalibrate(self, batches)

    @contextlib.contextmanager
    def averaged(self, recalibrate=None):
        """with avg.averaged(recalibrate=batches): ... -- the averaged weights
        in the model for the block (evaluate there), batch norm recomputed
        for them over `batches` first if given; on exit the trained weights
        come back bit for bit and, when recalibrating, the model's host
        state (TorchModel: the batch-norm buffers) is restored."""
        t = self._attached_trainer("averaged")
        saved = t.model._save_host_state() if recalibrate is not None else None
        self.swap()
        try:
            if recalibrate is not None:
                self.recalibrate(recalibrate)
            yield self
        finally:
            if self.swapped:
                self.swap()
            if saved is not None:
                t.model._restore_host_state(saved)


class Bregman(_Averaged, Regularizer):
    """SMART's momentum Bregman proximal term; "bregman.*" (mu, beta, ...;
    divergence='kl_teacher', tau, start_step, end_step for MESA: see
    mesa()). Its EMA teacher can be swapped in for evaluation (swap,
    averaged)."""
    kind = L.REG_BREGMAN
    prefix = "bregman"


# MESA's preset (Du et al. 2022; include/regopt.h, "MESA").
MESA_PRESET = {"mu": 0.3, "divergence": L.BREGMAN_KL_TEACHER, "tau": 5.0, "beta": 0.9998,
               "beta_late": 0.9998}


def mesa(**options):
    """A Bregman regularizer with MESA's preset (mu 0.3, KL(teacher || student)
    at tau 5, EMA decay 0.9998); options override it (start_step=...,
    mu=0.8 for the official ImageNet script)."""
    opts = dict(MESA_PRESET)
    opts.update(options)
    return Bregman(**opts)


class Average(_Averaged, Regularizer):
    """Weight averaging; "average.*": mode ('ema' or 'swa'), decay, warmup
    ('none', 'tf', 'timm', 'first'), warmup_gamma, warmup_power, min_decay,
    start, every; statistics count, decay_used. Evaluate the average with
    `with avg.averaged(recalibrate=batches): trainer.evaluate(...)`."""
    kind = L.REG_AVERAGE
    prefix = "average"


class TermView:
    """What a Term's function receives: batch (a BatchView of the view's
    rows), outputs (n_outputs read-only (rows, width) arrays: [0] the clean
    pass, [p] declared pass p), d_outputs (arrays to write d value /
    d outputs[p] into; None for NO_GRAD passes), inv_weight, step, rows,
    row_offset, micro_batch, flags."""

    def __init__(self, c, data):
        width = c.output_width
        rows = c.rows
        self.rows, self.row_offset, self.micro_batch = rows, c.row_offset, c.micro_batch
        self.flags, self.step, self.inv_weight = c.flags, c.step, c.inv_weight
        self.output_width = width
        self.batch = BatchView(c.batch.contents, data, width) if c.batch else None
        self.outputs = []
        self.d_outputs = []
        for p in range(c.n_outputs):
            o = ctypes.cast(c.outputs[p], ctypes.c_void_p).value
            self.outputs.append(_view(o, (rows, width), readonly=True) if o else None)
            d = ctypes.cast(c.d_outputs[p], ctypes.c_void_p).value
            self.d_outputs.append(_view(d, (rows, width)) if d else None)


class Term(Regularizer):
    """A user-defined loss-side term (regopt_regularizer_create_term):

        def value(view):            # view: regopt.TermView
            ...; view.d_outputs[0][:] = ...; return v
        t.add(Term("my_term", value, passes=1, pass_flags=[TERM_PASS_FRESH_SEED]))

    fn returns the term's value (a weighted mean, see regopt.h); an
    exception (KeyboardInterrupt too) aborts the step and is re-raised by
    Trainer.step. passes: extra forwards per view, 0 .. TERM_MAX_PASSES;
    pass_flags: one TERM_PASS_* value per pass. Options: weight
    ("term.weight"); statistic: value ("term.value")."""
    kind = L.REG_TERM
    prefix = "term"

    def __init__(self, name, fn, *, passes=0, pass_flags=(), **options):
        object.__setattr__(self, "name", str(name))
        object.__setattr__(self, "_value_fn", fn)
        flags = list(pass_flags)
        if len(flags) > L.TERM_MAX_PASSES:
            raise ValueError("Term %r: %d pass_flags, at most %d (TERM_MAX_PASSES)"
                             % (name, len(flags), L.TERM_MAX_PASSES))
        object.__setattr__(self, "_passes", c_int(passes, "Term %r passes" % name, UINT32))
        object.__setattr__(self, "_pass_flags", [c_int(f, "Term %r pass_flags[%d]" % (name, i),
                                                       UINT32) for i, f in enumerate(flags)])
        object.__setattr__(self, "_state", None)  # the trainer's callback state once added
        Regularizer.__init__(self, **options)

    def _create(self):
        opts = self.__dict__
        fn = opts["_value_fn"]
        me = weakref.proxy(self)

        def body(view_p, value_p, user):
            try:
                state = me._state
            except ReferenceError:
                state = None
            c = view_p.contents
            data = state.data(c.batch.contents.data) if (state and c.batch) else None
            v = fn(TermView(c, data))
            value_p[0] = float(v)
            return 0

        cfn = L.TERM_FN(trampoline(body, 1))
        ops = L.TermOps()
        ops.size = ctypes.sizeof(L.TermOps)
        name_b = self.name.encode()
        ops.name = name_b
        ops.value = cfn
        ops.passes = opts["_passes"]
        for i, f in enumerate(opts["_pass_flags"]):
            ops.pass_flags[i] = f
        token = _register_user((cfn,))
        st = ctypes.c_int(0)
        with Call() as c:
            ptr = lib.regopt_regularizer_create_term(ctypes.byref(ops), token, _RELEASE_FN, None,
                                                     ctypes.byref(st))
        if ptr:
            object.__setattr__(self, "_rc", _RegCell(ptr))
        else:
            _keepalive.pop(token, None)  # free_user is not called on failure
        c.finish(None if ptr else st.value, last_error_message)



REGULARIZERS = {"sam": SAM, "rdrop": RDrop, "r-drop": RDrop, "r_drop": RDrop,
                "smart": SMART, "bregman": Bregman, "average": Average, "mesa": mesa,
                "adv": Adversarial, "adversarial": Adversarial}
