"""The Pythonic layer of the binding: errors, keys, Model, Optimizer,
Trainer, regularizers, batches, allocators. See regopt/__init__.py."""
import collections
import ctypes
import itertools
import os
import threading
import weakref

from . import _lib as L
from ._lib import lib

try:  # NumPy is needed for array arguments, not to import the package
    import numpy as _np
except ImportError:  # pragma: no cover - exercised only without numpy
    _np = None


# ==========================================================================
# Errors: one class per status code, carrying the library's message
# ==========================================================================

class Error(Exception):
    """A libregopt call failed. .status is the regopt_status code, .message
    the library's one-line detail, .status_string the name of the code."""
    status = None

    def __init__(self, message="", status=None):
        if status is not None:
            self.status = status
        self.message = message
        self.status_string = status_string(self.status) if self.status is not None else ""
        text = message or self.status_string
        if message and self.status_string:
            text = "%s [%s]" % (message, self.status_string.split(":")[0])
        super().__init__(text)


class NullPointer(Error):
    status = L.ERR_NULL_POINTER


class InvalidArgument(Error, ValueError):
    status = L.ERR_INVALID_ARGUMENT


class OutOfRange(Error, ValueError):
    status = L.ERR_OUT_OF_RANGE


class UnknownKey(Error, LookupError):
    status = L.ERR_UNKNOWN_KEY

    def __str__(self):  # LookupError subclasses would otherwise repr() the text
        return Exception.__str__(self)


class Unsupported(Error):
    status = L.ERR_UNSUPPORTED


class NoMemory(Error, MemoryError):
    status = L.ERR_NO_MEMORY


class StateError(Error):
    status = L.ERR_STATE


class ForwardFailed(Error):
    status = L.ERR_FORWARD


class BackwardFailed(Error):
    status = L.ERR_BACKWARD


class LossCallbackFailed(Error):
    status = L.ERR_LOSS_CALLBACK


class NonFiniteLoss(Error, ArithmeticError):
    status = L.ERR_NONFINITE_LOSS


class NonFiniteGradient(Error, ArithmeticError):
    status = L.ERR_NONFINITE_GRADIENT


class AllreduceFailed(Error):
    status = L.ERR_ALLREDUCE


class CorruptCheckpoint(Error, ValueError):
    """The checkpoint is damaged (magic, size, truncation, CRC, section)."""
    status = L.ERR_CORRUPT


class CheckpointMismatch(Error, ValueError):
    """The checkpoint belongs to another model layout, optimizer or set of
    regularizers, or lacks the parameters/options asked for."""
    status = L.ERR_MISMATCH


class CheckpointIOError(Error, OSError):
    """A file operation on a checkpoint failed."""
    status = L.ERR_IO


ERRORS = {cls.status: cls for cls in (
    NullPointer, InvalidArgument, OutOfRange, UnknownKey, Unsupported, NoMemory, StateError,
    ForwardFailed, BackwardFailed, LossCallbackFailed, NonFiniteLoss, NonFiniteGradient,
    AllreduceFailed, CorruptCheckpoint, CheckpointMismatch, CheckpointIOError)}


def _error(status, message):
    cls = ERRORS.get(status)
    if cls is None:
        return Error(message, status)
    return cls(message)


def _text(b):
    return b.decode("utf-8", "replace") if b else ""


def status_string(status):
    """regopt_status_string: the static name of a status code."""
    return _text(lib.regopt_status_string(int(status)))


def last_error_message():
    """regopt_last_error_message: detail of this thread's last handle-less failure."""
    return _text(lib.regopt_last_error_message())


def version():
    """Version string of the loaded library ("0.1.0")."""
    return _text(lib.regopt_version_string())


def version_number():
    """MAJOR*10000 + MINOR*100 + PATCH of the loaded library."""
    return int(lib.regopt_version_number())


# ==========================================================================
# Keys
# ==========================================================================

KeyInfo = collections.namedtuple("KeyInfo", "key name type min max default flags")
KeyInfo.read_only = property(lambda self: bool(self.flags & L.KEY_READ_ONLY))
KeyInfo.is_int = property(lambda self: self.type == L.TYPE_INT)

_key_cache = {}
_info_cache = {}


def key_from_name(name):
    """regopt_key_from_name: "optimizer.lr" -> 100. UnknownKey if unknown."""
    k = _key_cache.get(name)
    if k is not None:
        return k
    out = ctypes.c_int(-1)
    st = lib.regopt_key_from_name(name.encode(), ctypes.byref(out))
    if st != L.OK:
        raise UnknownKey("unknown key name %r" % (name,))
    _key_cache[name] = out.value
    return out.value


def key_info(key):
    """regopt_key_info for a key number or name -> KeyInfo."""
    if isinstance(key, str):
        key = key_from_name(key)
    info = _info_cache.get(key)
    if info is not None:
        return info
    name = ctypes.c_char_p()
    typ = ctypes.c_int()
    lo, hi, dflt = ctypes.c_double(), ctypes.c_double(), ctypes.c_double()
    flags = ctypes.c_uint32()
    st = lib.regopt_key_info(int(key), ctypes.byref(name), ctypes.byref(typ), ctypes.byref(lo),
                             ctypes.byref(hi), ctypes.byref(dflt), ctypes.byref(flags))
    if st != L.OK:
        raise UnknownKey("unknown key %d" % int(key))
    info = KeyInfo(int(key), _text(name.value), typ.value, lo.value, hi.value, dflt.value,
                   flags.value)
    _info_cache[int(key)] = info
    return info


_all_keys = None


def keys(prefix=None):
    """Every key the loaded library knows (scanned once with regopt_key_info),
    optionally those whose name starts with `prefix` ("sam.")."""
    global _all_keys
    if _all_keys is None:
        found = []
        for k in range(0, 4096):
            st = lib.regopt_key_info(k, None, None, None, None, None, None)
            if st == L.OK:
                found.append(key_info(k))
        _all_keys = found
    if prefix is None:
        return list(_all_keys)
    return [i for i in _all_keys if i.name.startswith(prefix)]


# Symbolic values of enumerated keys.
ENUM_VALUES = {
    "optimizer.schedule": {"constant": L.SCHEDULE_CONSTANT, "linear": L.SCHEDULE_LINEAR,
                           "cosine": L.SCHEDULE_COSINE},
    "trainer.loss": {"softmax_ce": L.LOSS_SOFTMAX_CE, "ce": L.LOSS_SOFTMAX_CE,
                     "cross_entropy": L.LOSS_SOFTMAX_CE, "mse": L.LOSS_MSE,
                     "callback": L.LOSS_CALLBACK},
    "smart.norm": {"inf": L.SMART_NORM_INF, "linf": L.SMART_NORM_INF, "l1": L.SMART_NORM_L1,
                   "l2": L.SMART_NORM_L2},
}

OPTIMIZER_KINDS = {"sgd": L.SGD, "adam": L.ADAM, "adamw": L.ADAMW, "radam": L.RADAM}
REGULARIZER_KINDS = {"sam": L.REG_SAM, "rdrop": L.REG_RDROP, "smart": L.REG_SMART,
                     "bregman": L.REG_BREGMAN}


def _full_name(prefix, name):
    """Keyword -> key name: lr -> optimizer.lr, lambda_ -> smart.lambda;
    names that already contain a dot are taken as they are."""
    if "." in name:
        return name
    return "%s.%s" % (prefix, name.rstrip("_"))


def _encode_value(name, info, value):
    if isinstance(value, str):
        table = ENUM_VALUES.get(name, {})
        v = table.get(value.lower().replace("-", "_"))
        if v is None:
            raise InvalidArgument("%s: unknown value %r (known: %s)"
                                  % (name, value, ", ".join(sorted(table)) or "none"),
                                  L.ERR_INVALID_ARGUMENT)
        return True, v
    if isinstance(value, bool):
        return True, int(value)
    if info.type == L.TYPE_INT:
        if isinstance(value, int) or (hasattr(value, "__index__") and not isinstance(value, float)):
            return True, int(value)
        f = float(value)
        if f.is_integer() and abs(f) < 2 ** 63:
            return True, int(f)
        return False, f  # let the library refuse it with its own message
    return False, float(value)


# ==========================================================================
# Handles, live counting, keep-alive of callbacks
# ==========================================================================

_live = {"model": 0, "optimizer": 0, "trainer": 0}
_live_lock = threading.Lock()


def live_handles():
    """How many library handles this binding has created and not yet freed."""
    with _live_lock:
        return dict(_live)


# Objects the library may call back into, keyed by the `user` token handed to
# it; released by the library's own free hook (regopt_free_fn), so they live
# exactly as long as the library can use them.
_keepalive = {}
_token_counter = itertools.count(1)


def _release_user(user):
    _keepalive.pop(user, None)


_RELEASE_FN = L.USER_FREE_FN(_release_user)


def pending_callbacks():
    """Number of callback sets the library still holds (0 once every handle
    that had callbacks is freed)."""
    return len(_keepalive)


def _register_user(objs):
    token = next(_token_counter)
    _keepalive[token] = objs
    return token


class _CallbackState:
    """What the trampolines of one model (and of its trainer's loss and
    all-reduce callbacks) share: the Python objects of the batches of the
    running call and the first exception raised by a callback. The
    trampolines hold this, never the Model or Trainer, so that the library's
    reference to them (kept until its free hook runs) does not keep the
    handles alive."""
    __slots__ = ("batch_objects", "exc")

    def __init__(self):
        self.batch_objects = None
        self.exc = None

    def data(self, token):
        objs = self.batch_objects
        if objs is not None and token and 0 < token <= len(objs):
            return objs[token - 1]
        return None

    def record(self, exc):
        if self.exc is None:
            self.exc = exc

    def take(self):
        exc, self.exc = self.exc, None
        return exc


def _weak_callable(fn, owner):
    """A bound method of `owner` is held weakly (so the handle can be
    collected); anything else strongly."""
    if getattr(fn, "__self__", None) is owner and hasattr(fn, "__func__"):
        ref = weakref.WeakMethod(fn)

        def call(*a):
            f = ref()
            if f is None:
                raise ReferenceError("the model of this callback was collected")
            return f(*a)
        return call
    return fn


class _Cell:
    """The raw pointer of a trainer, shared with its model and optimizer so
    that whichever is finalized first can free the trainer first."""
    __slots__ = ("ptr", "__weakref__")

    def __init__(self, ptr):
        self.ptr = ptr


class _Handle:
    _kind = "handle"

    def __init__(self):
        self._ptr = None

    def _p(self):
        if not self._ptr:
            raise NullPointer("this %s is closed" % self._kind, L.ERR_NULL_POINTER)
        return self._ptr

    @property
    def closed(self):
        return not self._ptr

    @property
    def address(self):
        """The raw handle pointer (int), for interoperating with C code."""
        return self._ptr

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self._finalize()
        except Exception:  # interpreter shutdown
            pass

    def _finalize(self):
        self.close()

    def _count(self, delta):
        with _live_lock:
            _live[self._kind] += delta


def _check(status, message_fn):
    if status != L.OK:
        raise _error(status, message_fn())


class _Options:
    """Keyword options mapped to keys by name; get/set by short or full name."""
    _prefix = None
    _group_prefix = "group"

    _c = None  # "optimizer" or "trainer": the regopt_<_c>_{set,get}_* functions

    def _fn(self, what):
        return getattr(lib, "regopt_%s_%s" % (self._c, what))

    def _set_raw(self, key, is_int, value):
        _check(self._fn("set_int" if is_int else "set_double")(self._p(), key, value),
               self._msg)

    def _get_raw(self, key, is_int):
        v = ctypes.c_int64() if is_int else ctypes.c_double()
        _check(self._fn("get_int" if is_int else "get_double")(self._p(), key, ctypes.byref(v)),
               self._msg)
        return v.value

    def set_group(self, group, **options):
        """Per-group keys: set_group(1, weight_decay=0.0) on an optimizer
        ("group.lr_scale", "group.weight_decay"), set_group(1, sam_adaptive=0)
        on a trainer."""
        for name, value in options.items():
            key = key_from_name(_full_name(self._group_prefix, name))
            _check(self._fn("set_group")(self._p(), int(group), key, float(value)), self._msg)
        return self

    def get_group(self, group, name):
        key = key_from_name(_full_name(self._group_prefix, name))
        v = ctypes.c_double()
        _check(self._fn("get_group")(self._p(), int(group), key, ctypes.byref(v)), self._msg)
        return v.value

    def set(self, **options):
        """Set options by keyword: lr=1e-3 -> "<prefix>.lr". Returns self."""
        for name, value in options.items():
            self.set_option(_full_name(self._prefix, name), value)
        return self

    def set_option(self, name, value):
        """Set one key by its full name ("sam.rho") or number."""
        key = key_from_name(name) if isinstance(name, str) else int(name)
        info = key_info(key)
        is_int, v = _encode_value(info.name, info, value)
        self._set_raw(key, is_int, v)

    def get(self, name):
        """Read one key by short ("lr") or full ("optimizer.lr") name."""
        key = key_from_name(_full_name(self._prefix, name)) if isinstance(name, str) else int(name)
        info = key_info(key)
        return self._get_raw(key, info.type == L.TYPE_INT)

    def __getitem__(self, name):
        return self.get(name)

    def __setitem__(self, name, value):
        self.set_option(_full_name(self._prefix, name) if isinstance(name, str) else name, value)

    def options(self):
        """Every key of this handle's prefix and its value."""
        out = {}
        for info in keys(self._prefix + "."):
            if info.flags & (L.KEY_READ_ONLY | L.KEY_GROUP):
                continue
            try:
                out[info.name] = self._get_raw(info.key, info.type == L.TYPE_INT)
            except Error:
                pass
        return out


# ==========================================================================
# Arrays
# ==========================================================================

def _need_numpy():
    if _np is None:
        raise ImportError("this call needs NumPy (python3-numpy)")
    return _np


def _check_float32_buffer(arr, what):
    """Registered buffers are used zero-copy: they must already be float32,
    C-contiguous, writable NumPy arrays (no silent copies)."""
    np = _need_numpy()
    if not isinstance(arr, np.ndarray):
        raise TypeError("%s must be a numpy.ndarray of float32, got %s"
                        % (what, type(arr).__name__))
    if arr.dtype != np.float32:
        raise TypeError("%s must have dtype float32 (registered zero-copy), got %s; "
                        "convert it once with arr.astype(numpy.float32) and keep that array"
                        % (what, arr.dtype))
    if not arr.flags.c_contiguous:
        raise ValueError("%s must be C-contiguous (numpy.ascontiguousarray), it is a "
                         "strided view" % what)
    if not arr.flags.writeable:
        raise ValueError("%s must be writable: the library updates it in place" % what)
    if arr.size == 0:
        raise ValueError("%s is empty" % what)
    return arr


def _view(ptr, shape, np_dtype=None, ctype=ctypes.c_float, readonly=False):
    """A NumPy view over library memory (valid during the callback only)."""
    if not ptr:
        return None
    n = 1
    for s in shape:
        n *= s
    if _np is None:
        return ctypes.cast(ptr, ctypes.POINTER(ctype * n)).contents
    if n == 0:
        return _np.zeros(shape, dtype=np_dtype or _np.float32)
    a = _np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctype)), shape=tuple(shape))
    if readonly:
        a.flags.writeable = False
    return a


def _ptr(arr):
    return arr.ctypes.data if arr is not None else None


# ==========================================================================
# Allocators
# ==========================================================================

class Allocator:
    """Memory hooks (regopt_allocator). Subclass and override alloc(size) ->
    address (int, 0 on failure) and free(address); pass the instance to
    Model(allocator=...) / Optimizer(..., allocator=...). The handle keeps the
    instance alive; a trainer allocates from its model's allocator."""

    def __init__(self):
        self._alloc_fn = L.ALLOC_FN(self._alloc_tramp)
        self._free_fn = L.FREE_FN(self._free_tramp)
        self._struct = L.Allocator(ctypes.sizeof(L.Allocator), self._alloc_fn, self._free_fn,
                                   None)
        self.errors = []

    def _alloc_tramp(self, size, user):
        try:
            return self.alloc(int(size)) or None
        except BaseException as exc:  # never let an exception cross into C
            self.errors.append(exc)
            return None

    def _free_tramp(self, ptr, user):
        try:
            if ptr:
                self.free(int(ptr))
        except BaseException as exc:
            self.errors.append(exc)

    def alloc(self, size):
        raise NotImplementedError

    def free(self, address):
        raise NotImplementedError


_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.restype = None
_libc.free.argtypes = [ctypes.c_void_p]


class CountingAllocator(Allocator):
    """malloc/free that counts: allocs, frees, live (blocks not freed),
    bytes_live, peak_bytes; fail_after=N makes the (N+1)-th alloc fail."""

    def __init__(self, fail_after=None):
        super().__init__()
        self.allocs = self.frees = self.bytes_live = self.peak_bytes = 0
        self.sizes = {}
        self.fail_after = fail_after

    @property
    def live(self):
        return len(self.sizes)

    def alloc(self, size):
        if self.fail_after is not None and self.allocs >= self.fail_after:
            return 0
        p = _libc.malloc(size or 1)
        if p:
            self.allocs += 1
            self.sizes[p] = size
            self.bytes_live += size
            self.peak_bytes = max(self.peak_bytes, self.bytes_live)
        return p or 0

    def free(self, address):
        size = self.sizes.pop(address, None)
        if size is None:
            raise RuntimeError("free of an address this allocator did not return: %#x" % address)
        self.frees += 1
        self.bytes_live -= size
        _libc.free(address)


def _alloc_arg(allocator):
    if allocator is None:
        return None
    if not isinstance(allocator, Allocator):
        raise TypeError("allocator must be a regopt.Allocator")
    return ctypes.byref(allocator._struct)


# ==========================================================================
# Passes and batches as seen by Python callbacks
# ==========================================================================

class Pass:
    """What one forward/backward invocation is about (regopt_pass). Array
    attributes are NumPy views over library memory, valid during the call:
      outputs            (rows, output_width) float32; forward writes it
      d_outputs          (rows, output_width), read-only; backward only
      input_perturbation (input_rows, input_width), read-only, or None
      d_input            (input_rows, input_width), backward writes it, or None
    .data is the Python object given as Batch(data=...); rows
    [row_offset, row_offset + rows) of it are the subject of the pass."""

    __slots__ = ("_c", "data", "_cache")

    def __init__(self, c, data):
        self._c = c
        self.data = data
        self._cache = {}

    # scalar fields
    rows = property(lambda s: s._c.rows)
    row_offset = property(lambda s: s._c.row_offset)
    slot = property(lambda s: s._c.slot)
    flags = property(lambda s: s._c.flags)
    seed = property(lambda s: s._c.seed)
    seed2 = property(lambda s: s._c.seed2)
    micro_batch = property(lambda s: s._c.micro_batch)
    output_width = property(lambda s: s._c.output_width)
    input_rows = property(lambda s: s._c.input_rows)
    input_width = property(lambda s: s._c.input_width)

    # flags
    train = property(lambda s: bool(s._c.flags & L.PASS_TRAIN))
    no_grad = property(lambda s: bool(s._c.flags & L.PASS_NO_GRAD))
    perturbed_weights = property(lambda s: bool(s._c.flags & L.PASS_PERTURBED_WEIGHTS))
    teacher = property(lambda s: bool(s._c.flags & L.PASS_TEACHER))
    no_param_grad = property(lambda s: bool(s._c.flags & L.PASS_NO_PARAM_GRAD))
    doubled = property(lambda s: bool(s._c.flags & L.PASS_DOUBLED))

    @property
    def update_batch_stats(self):
        """True when batch-norm running statistics may move: a training pass
        at the unperturbed weights without an input perturbation."""
        f = self._c.flags
        return bool(f & L.PASS_TRAIN) and not (f & (L.PASS_PERTURBED_WEIGHTS | L.PASS_TEACHER)) \
            and not self._c.input_perturbation

    def _arr(self, name, ptr, shape, readonly):
        a = self._cache.get(name)
        if a is None and ptr:
            a = _view(ptr, shape, readonly=readonly)
            self._cache[name] = a
        return a

    @property
    def rows_slice(self):
        return slice(self._c.row_offset, self._c.row_offset + self._c.rows)

    @property
    def outputs(self):
        c = self._c
        return self._arr("outputs", c.outputs, (c.rows, c.output_width), False)

    @property
    def d_outputs(self):
        c = self._c
        return self._arr("d_outputs", c.d_outputs, (c.rows, c.output_width), True)

    @property
    def input_perturbation(self):
        c = self._c
        return self._arr("input_perturbation", c.input_perturbation,
                         (c.input_rows, c.input_width), True)

    @property
    def d_input(self):
        c = self._c
        return self._arr("d_input", c.d_input, (c.input_rows, c.input_width), False)

    def __repr__(self):
        names = [n for n, b in (("TRAIN", L.PASS_TRAIN), ("NO_GRAD", L.PASS_NO_GRAD),
                                ("PERTURBED_WEIGHTS", L.PASS_PERTURBED_WEIGHTS),
                                ("TEACHER", L.PASS_TEACHER),
                                ("NO_PARAM_GRAD", L.PASS_NO_PARAM_GRAD),
                                ("DOUBLED", L.PASS_DOUBLED)) if self._c.flags & b]
        return "<regopt.Pass slot=%d rows=%d+%d flags=%s seed=%d>" % (
            self.slot, self.row_offset, self.rows, "|".join(names) or "0", self.seed)


class BatchView:
    """The batch rows handed to a Python loss callback (a regopt_batch view):
    .data, .rows and NumPy views of labels, targets, mask, weights (or None)."""

    def __init__(self, c, data, width):
        self.data = data
        self.rows = c.rows
        n = c.rows
        self.labels = _view(ctypes.cast(c.labels, ctypes.c_void_p).value, (n,),
                            _np and _np.int32, ctypes.c_int32, True)
        self.targets = _view(ctypes.cast(c.targets, ctypes.c_void_p).value, (n, width),
                             readonly=True)
        self.mask = _view(ctypes.cast(c.mask, ctypes.c_void_p).value, (n,), _np and _np.uint8,
                          ctypes.c_uint8, True)
        self.weights = _view(ctypes.cast(c.weights, ctypes.c_void_p).value, (n,), readonly=True)


class Batch:
    """One (micro-)batch for Trainer.step / Trainer.evaluate.

    data     any Python object; callbacks receive it as Pass.data
    rows     number of rows; inferred from labels/targets/mask/weights/len(data)
    labels   class indices (converted to int32), softmax CE
    targets  rows x output_width regression targets (converted to float32)
    mask     1 = keep, 0 = padding (converted to uint8)
    weights  per-row weights (converted to float32)
    input_rows  embedding rows when the model has an input width (0 = rows)

    Per-step arrays are converted (copied if needed) and kept alive by the
    Batch object for as long as it exists."""

    __slots__ = ("data", "rows", "labels", "targets", "mask", "weights", "input_rows")

    def __init__(self, data=None, rows=None, labels=None, targets=None, mask=None,
                 weights=None, input_rows=0):
        np = _need_numpy() if any(a is not None for a in (labels, targets, mask, weights)) \
            else _np
        self.data = data
        self.labels = self._convert(labels, "labels", np and np.int32, integral=True)
        self.targets = self._convert(targets, "targets", np and np.float32)
        self.mask = self._convert(mask, "mask", np and np.uint8, integral=True)
        self.weights = self._convert(weights, "weights", np and np.float32)
        if rows is None:
            for a in (self.labels, self.mask, self.weights):
                if a is not None:
                    rows = a.shape[0]
                    break
            else:
                if self.targets is not None:
                    rows = self.targets.shape[0]
                else:
                    rows = _leading_dim(data)
        if rows is None:
            raise ValueError("Batch: rows is not given and cannot be inferred")
        self.rows = int(rows)
        self.input_rows = int(input_rows or 0)
        for name in ("labels", "mask", "weights"):
            a = getattr(self, name)
            if a is not None and a.size != self.rows:
                raise ValueError("Batch: %s has %d elements for %d rows" % (name, a.size,
                                                                           self.rows))

    @staticmethod
    def _convert(a, name, dtype, integral=False):
        if a is None:
            return None
        np = _np
        if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor
            a = a.detach().cpu().numpy()
        arr = np.asarray(a)
        if integral and arr.dtype.kind not in "iub":
            raise TypeError("Batch: %s must be integers or booleans, got dtype %s"
                            % (name, arr.dtype))
        if not integral and arr.dtype.kind not in "iuf":
            raise TypeError("Batch: %s must be numbers, got dtype %s" % (name, arr.dtype))
        if name == "labels" and arr.size and (arr.min() < -2 ** 31 or arr.max() >= 2 ** 31):
            raise ValueError("Batch: labels do not fit int32")
        return np.ascontiguousarray(arr, dtype=dtype)

    def _fill(self, c, token, width, has_input):
        lib.regopt_batch_init(ctypes.byref(c))
        c.data = token
        c.rows = self.rows
        if self.targets is not None and self.targets.size != self.rows * width:
            raise ValueError("Batch: targets has %d elements, the model needs rows x "
                             "output_width = %d x %d" % (self.targets.size, self.rows, width))
        if self.labels is not None:
            c.labels = self.labels.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        if self.targets is not None:
            c.targets = self.targets.ctypes.data_as(L.c_float_p)
        if self.mask is not None:
            c.mask = self.mask.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        if self.weights is not None:
            c.weights = self.weights.ctypes.data_as(L.c_float_p)
        c.input_rows = self.input_rows


def _leading_dim(data):
    """Rows of a batch's data: shape[0] of an array, of the first array of a
    tuple/list/dict, else len(data)."""
    if data is None:
        return None
    shape = getattr(data, "shape", None)
    if shape is not None and len(shape) > 0:
        return int(shape[0])
    if isinstance(data, dict):
        return _leading_dim(next(iter(data.values()))) if data else None
    if isinstance(data, (tuple, list)) and data and getattr(data[0], "shape", None) is not None:
        return _leading_dim(data[0])
    if hasattr(data, "__len__"):
        return len(data)
    return None


def _as_batches(batches, fields):
    if batches is None:
        return [Batch(**fields)]
    if fields:
        raise TypeError("give either Batch objects or batch fields, not both")
    if isinstance(batches, Batch):
        return [batches]
    if isinstance(batches, dict):
        return [Batch(**batches)]
    out = []
    for b in batches:
        out.append(b if isinstance(b, Batch) else Batch(**b))
    if not out:
        raise ValueError("no batches")
    return out


def _int_rc(rc):
    if rc is None or rc is True:
        return 0 if rc is None else 1
    try:
        v = int(rc)
    except Exception:
        return 1
    if v == 0:
        return 0
    return v if -2 ** 31 <= v < 2 ** 31 else 1


# ==========================================================================
# Model
# ==========================================================================

class Model(_Handle):
    """regopt_model: the host network as the library sees it.

        m = Model(output_width=10, forward=fwd, backward=bwd)
        m.add_param("w1", w1, g1, group=0)     # float32 C-contiguous arrays

    Callbacks take one Pass and return None (or 0) on success; an exception
    aborts the step, the library rolls back, and Trainer.step re-raises it.
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
        st = ctypes.c_int(0)
        ptr = lib.regopt_model_create(_alloc_arg(allocator), ctypes.byref(st))
        if not ptr:
            raise _error(st.value, last_error_message())
        self._ptr = ptr
        self._count(+1)
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
    def add_param(self, name, data, grad=None, group=0):
        """Register a float32 C-contiguous writable array (updated in place)
        and its gradient buffer (same size; None = frozen tensor)."""
        _check_float32_buffer(data, "parameter %r data" % name)
        if grad is not None:
            _check_float32_buffer(grad, "parameter %r grad" % name)
            if grad.size != data.size:
                raise ValueError("parameter %r: grad has %d elements, data %d"
                                 % (name, grad.size, data.size))
        self.add_param_address(name, data.ctypes.data, grad.ctypes.data if grad is not None
                               else None, data.size, group, keepalive=(data, grad))
        self._params[name] = (data, grad)

    def add_param_address(self, name, data_address, grad_address, count, group=0,
                          dtype=L.DTYPE_FLOAT32, keepalive=None):
        """Register raw buffers by address (for other array libraries); the
        objects in `keepalive` are kept alive until the model is closed."""
        st = lib.regopt_model_add_param(self._p(), name.encode(), data_address, grad_address,
                                        int(count), int(dtype), int(group))
        _check(st, self._msg)
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

    # -- shape -------------------------------------------------------------
    @property
    def output_width(self):
        return self._output_width

    @output_width.setter
    def output_width(self, width):
        _check(lib.regopt_model_set_output_width(self._p(), int(width)), self._msg)
        self._output_width = int(width)

    @property
    def input_width(self):
        return self._input_width

    @input_width.setter
    def input_width(self, width):
        _check(lib.regopt_model_set_input_width(self._p(), int(width)), self._msg)
        self._input_width = int(width)

    @property
    def slots(self):
        return getattr(self, "_slots", 1)

    @slots.setter
    def slots(self, n):
        _check(lib.regopt_model_set_slots(self._p(), int(n)), self._msg)
        self._slots = int(n)

    def set_capabilities(self, caps):
        """REGOPT_CAP_* bits (regopt.CAP_DOUBLED_BATCH)."""
        _check(lib.regopt_model_set_capabilities(self._p(), int(caps)), self._msg)
        self._caps = int(caps)

    # -- callbacks ---------------------------------------------------------
    def forward(self, p):
        raise NotImplementedError("give Model(forward=...) or override Model.forward")

    def backward(self, p):
        raise NotImplementedError("give Model(backward=...) or override Model.backward")

    def _trampoline(self, fn):
        state = self._cbs
        fn = _weak_callable(fn, self)

        def tramp(pp, user):
            try:
                c = pp.contents
                return _int_rc(fn(Pass(c, state.data(c.batch))))
            except BaseException as exc:  # never let an exception cross into C
                state.record(exc)
                return 1
        return tramp

    def set_callbacks(self, forward, backward):
        """Install the forward and backward callables (each takes a Pass)."""
        if forward is None or backward is None or not callable(forward) \
                or not callable(backward):
            raise TypeError("set_callbacks needs two callables, forward and backward")
        cf = L.PASS_FN(self._trampoline(forward))
        cb = L.PASS_FN(self._trampoline(backward))
        token = _register_user((cf, cb))
        st = lib.regopt_model_set_callbacks(self._p(), cf, cb, token, _RELEASE_FN)
        if st != L.OK:
            _keepalive.pop(token, None)  # on failure the library does not call free_user
            raise _error(st, self._msg())
        self._callbacks_set = True

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
        lib.regopt_model_free(self._ptr)
        self._ptr = None
        self._count(-1)
        self._arrays = []
        self._params.clear()
        self._trainer_cells = []

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


# ==========================================================================
# Optimizer
# ==========================================================================

class Optimizer(_Handle, _Options):
    """regopt_optimizer: Optimizer('adamw', lr=1e-3, weight_decay=0.01).
    Keywords map to "optimizer.<name>" keys; opt.lr reads, opt.lr = x sets;
    opt.set_group(1, weight_decay=0.0) sets "group.<name>" for a group."""

    _kind = "optimizer"
    _prefix = "optimizer"
    _c = "optimizer"

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
        st = ctypes.c_int(0)
        ptr = lib.regopt_optimizer_create(int(kind), _alloc_arg(allocator), ctypes.byref(st))
        if not ptr:
            raise _error(st.value, last_error_message())
        self._ptr = ptr
        self._count(+1)
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

    @property
    def kind(self):
        """'sgd', 'adam', 'adamw' or 'radam'."""
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
        lib.regopt_optimizer_free(self._ptr)
        self._ptr = None
        self._count(-1)
        self._trainer_cells = []

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


# ==========================================================================
# Regularizers
# ==========================================================================

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


# ==========================================================================
# Trainer
# ==========================================================================

def _free_trainer_cell(cell):
    if cell.ptr:
        lib.regopt_trainer_free(cell.ptr)
        cell.ptr = None
        with _live_lock:
            _live["trainer"] -= 1


def _reraise(exc, err):
    """Re-raise a callback's exception (its traceback intact) with the
    library's message attached."""
    try:
        exc.regopt_error = err
    except Exception:
        pass
    if hasattr(exc, "add_note"):
        try:
            exc.add_note("regopt: the step was aborted and rolled back (%s)" % err)
        except Exception:
            pass
    raise exc.with_traceback(exc.__traceback__)


class Trainer(_Handle, _Options):
    """regopt_trainer: binds a Model and an Optimizer (kept alive by the
    trainer) and runs steps.

        t = Trainer(model, opt, seed=1, loss='mse')    # "trainer.*" keys
        sam = t.add('sam', rho=0.05)                    # "sam.rho"
        loss = t.step(Batch(data=x, labels=y))
        t.stats()['sam_sharpness']
    """

    _kind = "trainer"
    _prefix = "trainer"
    _c = "trainer"

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
        self._loss_cb = None
        model._install_methods_if_needed()
        st = ctypes.c_int(0)
        ptr = lib.regopt_trainer_create(model._p(), optimizer._p(), ctypes.byref(st))
        if not ptr:
            raise _error(st.value, last_error_message())
        self._cell = _Cell(ptr)
        self._ptr = ptr
        self._count(+1)
        model._trainer_cells.append(self._cell)
        optimizer._trainer_cells.append(self._cell)
        try:
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

    # -- options -----------------------------------------------------------
    # -- statistics --------------------------------------------------------
    def stat(self, name):
        """One statistic by short ("loss") or full ("stat.loss") name."""
        key = key_from_name(_full_name("stat", name))
        return self._get_raw(key, key_info(key).type == L.TYPE_INT)

    def stats(self):
        """Every statistic of the last successful step: {'loss': ..., ...}."""
        out = {}
        for info in keys("stat."):
            out[info.name[5:]] = self._get_raw(info.key, info.type == L.TYPE_INT)
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

    # -- regularizers ------------------------------------------------------
    def add(self, regularizer, **options):
        """Switch a regularizer on: add('sam', rho=0.05) or add(SAM(rho=0.05)).
        Returns the Regularizer object, whose attributes are its options."""
        if isinstance(regularizer, str):
            cls = REGULARIZERS.get(regularizer.lower())
            if cls is None:
                raise InvalidArgument("unknown regularizer %r (known: sam, rdrop, smart, "
                                      "bregman)" % regularizer, L.ERR_INVALID_ARGUMENT)
            reg = cls(**options)
        elif isinstance(regularizer, Regularizer):
            reg = regularizer
            if reg._trainer is not None:
                raise StateError("this %s is already added to a trainer"
                                 % type(reg).__name__, L.ERR_STATE)
            reg._options.update(options)
        else:
            raise TypeError("add() takes a regularizer name or a regopt.Regularizer")
        _check(lib.regopt_trainer_add_regularizer(self._p(), reg.kind), self._msg)
        try:
            for name, value in reg._options.items():
                self.set_option(_full_name(reg.prefix, name), value)
        except BaseException:
            lib.regopt_trainer_remove_regularizer(self._p(), reg.kind)
            raise
        object.__setattr__(reg, "_trainer", self)
        self.regularizers[reg.prefix] = reg
        return reg

    def remove(self, regularizer):
        """Switch a regularizer off (by name, class or object)."""
        if isinstance(regularizer, str):
            cls = REGULARIZERS.get(regularizer.lower())
            if cls is None:
                raise InvalidArgument("unknown regularizer %r" % regularizer,
                                      L.ERR_INVALID_ARGUMENT)
        elif isinstance(regularizer, Regularizer):
            cls = type(regularizer)
        else:
            cls = regularizer
        _check(lib.regopt_trainer_remove_regularizer(self._p(), cls.kind), self._msg)
        reg = self.regularizers.pop(cls.prefix, None)
        if reg is not None:
            object.__setattr__(reg, "_trainer", None)

    # -- callbacks of the trainer -----------------------------------------
    def set_loss(self, fn):
        """A user loss fn(batch: BatchView, outputs, row_loss, d_outputs):
        write each row's loss into row_loss (rows,) and its gradient into
        d_outputs (rows, width). None: back to softmax CE."""
        if fn is None:
            st = lib.regopt_trainer_set_loss_callback(self._p(), L.LOSS_FN(), None, L.USER_FREE_FN())
            _check(st, self._msg)
            self._loss_cb = None
            return
        state = self.model._cbs
        fn = _weak_callable(fn, self)

        def tramp(bp, outputs, rows, width, row_loss, d_outputs, user):
            try:
                c = bp.contents
                rc = fn(BatchView(c, state.data(c.data), width),
                        _view(ctypes.cast(outputs, ctypes.c_void_p).value, (rows, width),
                              readonly=True),
                        _view(ctypes.cast(row_loss, ctypes.c_void_p).value, (rows,)),
                        _view(ctypes.cast(d_outputs, ctypes.c_void_p).value, (rows, width)))
                return _int_rc(rc)
            except BaseException as exc:
                state.record(exc)
                return 1

        cfn = L.LOSS_FN(tramp)
        token = _register_user((cfn,))
        st = lib.regopt_trainer_set_loss_callback(self._p(), cfn, token, _RELEASE_FN)
        if st != L.OK:
            _keepalive.pop(token, None)
            raise _error(st, self._msg())
        self._loss_cb = fn

    def set_allreduce(self, fn):
        """Data-parallel all-reduce: fn(buffer) sums the float32 NumPy array
        in place over all replicas (e.g. with mpi4py). None: single process."""
        if fn is None:
            _check(lib.regopt_trainer_set_allreduce(self._p(), L.ALLREDUCE_FN(), None, L.USER_FREE_FN()),
                   self._msg)
            return

        state = self.model._cbs
        fn = _weak_callable(fn, self)

        def tramp(buf, count, user):
            try:
                return _int_rc(fn(_view(ctypes.cast(buf, ctypes.c_void_p).value, (count,))))
            except BaseException as exc:
                state.record(exc)
                return 1

        cfn = L.ALLREDUCE_FN(tramp)
        token = _register_user((cfn,))
        st = lib.regopt_trainer_set_allreduce(self._p(), cfn, token, _RELEASE_FN)
        if st != L.OK:
            _keepalive.pop(token, None)
            raise _error(st, self._msg())

    def reserve(self, max_rows):
        """Size the scratch buffers for batches of up to max_rows rows now."""
        _check(lib.regopt_trainer_reserve(self._p(), int(max_rows)), self._msg)

    # -- checkpoints -------------------------------------------------------
    @staticmethod
    def _ck_flags(params, options):
        return (L.CHECKPOINT_PARAMS if params else 0) | (L.CHECKPOINT_OPTIONS if options else 0)

    def to_bytes(self, *, params=True, options=True):
        """The whole training state as a checkpoint (bytes): step, seed,
        optimizer moments, the Bregman teacher, statistics, and by default
        the model's tensors and every option. See regopt.h, "Checkpoints"."""
        flags = self._ck_flags(params, options)
        size = ctypes.c_size_t(0)
        _check(lib.regopt_trainer_checkpoint_size(self._p(), flags, ctypes.byref(size)),
               self._msg)
        buf = ctypes.create_string_buffer(max(size.value, 1))
        written = ctypes.c_size_t(0)
        _check(lib.regopt_trainer_save_buffer(self._p(), flags, buf, size.value,
                                              ctypes.byref(written)), self._msg)
        return buf.raw[:written.value]

    def from_bytes(self, data, *, params=True, options=True):
        """Restore a checkpoint made by to_bytes() (or save()). Everything is
        validated first: on any error (CorruptCheckpoint, CheckpointMismatch,
        OutOfRange, ...) the trainer and the tensors are unchanged."""
        data = bytes(data)
        _check(lib.regopt_trainer_load_buffer(self._p(), self._ck_flags(params, options),
                                              data, len(data)), self._msg)

    def save(self, path, *, params=True, options=True):
        """Write a checkpoint to path atomically (temporary file, fsync, rename)."""
        _check(lib.regopt_trainer_save_file(self._p(), self._ck_flags(params, options),
                                            os.fsencode(path)), self._msg)

    def load(self, path, *, params=True, options=True):
        """Restore a checkpoint file written by save() or regopt_trainer_save_file."""
        _check(lib.regopt_trainer_load_file(self._p(), self._ck_flags(params, options),
                                            os.fsencode(path)), self._msg)

    def write_to(self, fileobj, *, params=True, options=True):
        """Stream a checkpoint to a binary file-like object (anything with
        write()), through regopt_trainer_save's write callback: for hosts that
        keep checkpoints in their own containers. An exception raised by
        write() aborts the save and is re-raised here."""
        failure = []

        def write(data, size, user):
            try:
                view = memoryview(ctypes.string_at(data, size))
                while view:  # raw streams may write less than asked
                    n = fileobj.write(view)
                    if n is None:  # non-blocking stream that would block
                        return 1
                    view = view[n:]
                return 0
            except BaseException as e:  # re-raised below, after the C call returns
                failure.append(e)
                return 1
        cb = L.WRITE_FN(write)
        st = lib.regopt_trainer_save(self._p(), self._ck_flags(params, options), cb, None)
        if failure:
            raise failure[0]
        _check(st, self._msg)

    def read_from(self, fileobj, *, params=True, options=True):
        """Restore a checkpoint from a binary file-like object (anything with
        read(n)), through regopt_trainer_load's read callback. Reads exactly
        the checkpoint's bytes; a short read is CheckpointIOError."""
        failure = []

        def read(dst, size, user):
            try:
                got = 0
                while got < size:  # raw streams and pipes may return less
                    chunk = fileobj.read(size - got)
                    if not chunk:  # end of data (or would block)
                        return 1
                    ctypes.memmove(dst + got, chunk, len(chunk))
                    got += len(chunk)
                return 0
            except BaseException as e:
                failure.append(e)
                return 1
        cb = L.READ_FN(read)
        st = lib.regopt_trainer_load(self._p(), self._ck_flags(params, options), cb, None)
        if failure:
            raise failure[0]
        _check(st, self._msg)

    # -- steps -------------------------------------------------------------
    def _prepare(self, batches):
        n = len(batches)
        arr = (L.Batch * n)()
        width = self.model.output_width
        for i, b in enumerate(batches):
            b._fill(arr[i], i + 1, width, self.model.input_width)
        return arr

    def _raise_failure(self, st):
        err = _error(st, self._msg())
        exc = self.model._cbs.take()
        if exc is not None:
            _reraise(exc, err)
        raise err

    def step(self, batches=None, **fields):
        """One optimizer step over one Batch, a list of micro-batches, or the
        fields of one batch: step(data=x, labels=y). Returns stat.loss.
        An exception raised in a callback aborts the step (the library
        restores everything) and is re-raised here, traceback intact."""
        bl = _as_batches(batches, fields)
        arr = self._prepare(bl)
        state = self.model._cbs
        state.batch_objects = [b.data for b in bl]
        state.exc = None
        try:
            st = lib.regopt_trainer_step(self._p(), arr, len(bl))
        finally:
            state.batch_objects = None
        if st != L.OK:
            self._raise_failure(st)
        return self.stat("loss")

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
        state = self.model._cbs
        state.batch_objects = [b.data]
        state.exc = None
        try:
            st = lib.regopt_trainer_evaluate(self._p(), arr, ctypes.byref(lv) if loss else None,
                                             out.ctypes.data_as(L.c_float_p)
                                             if out is not None else None)
        finally:
            state.batch_objects = None
        if st != L.OK:
            self._raise_failure(st)
        return (lv.value if loss else None), out

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
        for reg in self.regularizers.values():
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


# ==========================================================================
# Random numbers
# ==========================================================================

def _random(fn, seed, n, offset, out):
    np = _need_numpy()
    if out is None:
        out = np.empty(int(n), dtype=np.float32)
    else:
        _check_float32_buffer(out, "out")
    st = fn(int(seed) & 0xFFFFFFFFFFFFFFFF, int(offset), out.ctypes.data_as(L.c_float_p),
            out.size)
    _check(st, last_error_message)
    return out


def random_uniform(seed, n=None, offset=0, out=None):
    """regopt_random_uniform: n floats in [0, 1) from stream `seed` at
    `offset` (the library's Philox generator), or fill `out`."""
    return _random(lib.regopt_random_uniform, seed, n if out is None else out.size, offset, out)


def random_normal(seed, n=None, offset=0, out=None):
    """regopt_random_normal: n standard normal floats from stream `seed`."""
    return _random(lib.regopt_random_normal, seed, n if out is None else out.size, offset, out)


def dropout_mask(seed, shape, p, offset=0):
    """Inverted-dropout multiplier drawn like the C hosts do: keep unit k when
    uniform[k] >= p, scaled by 1/(1-p)."""
    np = _need_numpy()
    n = 1
    for s in shape:
        n *= s
    u = random_uniform(seed, n, offset).reshape(shape)
    return (u >= p).astype(np.float32) / np.float32(1.0 - p)
