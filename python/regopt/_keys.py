"""Keys: lookups by name and number, their symbolic values, and the
_Options mixin that maps keyword options of a handle to keys."""
import collections
import ctypes

from . import _lib as L
from ._lib import lib
from ._errors import Error, InvalidArgument, UnknownKey, _check, _text
from ._guard import call
from ._ints import INT32, INT64, IntegerRangeError, c_int


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
    key = c_int(key, "key", INT32)
    info = _info_cache.get(key)
    if info is not None:
        return info
    name = ctypes.c_char_p()
    typ = ctypes.c_int()
    lo, hi, dflt = ctypes.c_double(), ctypes.c_double(), ctypes.c_double()
    flags = ctypes.c_uint32()
    st = lib.regopt_key_info(key, ctypes.byref(name), ctypes.byref(typ), ctypes.byref(lo),
                             ctypes.byref(hi), ctypes.byref(dflt), ctypes.byref(flags))
    if st != L.OK:
        raise UnknownKey("unknown key %d" % key)
    info = KeyInfo(key, _text(name.value), typ.value, lo.value, hi.value, dflt.value,
                   flags.value)
    _info_cache[key] = info
    return info


_all_keys = None


def keys(prefix=None):
    """Every key the loaded library knows (listed once with regopt_key_at),
    optionally those whose name starts with `prefix` ("sam.")."""
    global _all_keys
    if _all_keys is None:
        found = []
        k = ctypes.c_int32()
        i = 0
        while lib.regopt_key_at(i, ctypes.byref(k)) == L.OK:
            found.append(key_info(k.value))
            i += 1
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
    "average.mode": {"ema": L.AVERAGE_EMA, "swa": L.AVERAGE_SWA},
    "average.warmup": {"none": L.AVERAGE_WARMUP_NONE, "tf": L.AVERAGE_WARMUP_TF,
                       "timm": L.AVERAGE_WARMUP_TIMM, "first": L.AVERAGE_WARMUP_FIRST},
    "bregman.divergence": {"sym_kl": L.BREGMAN_SYM_KL, "kl_teacher": L.BREGMAN_KL_TEACHER,
                           "mesa": L.BREGMAN_KL_TEACHER},
}


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
            return True, c_int(value, name, INT64)  # set_int takes an int64
        f = float(value)
        if f.is_integer() and abs(f) < 2 ** 63:
            return True, int(f)
        return False, f  # let the library refuse it with its own message
    try:
        return False, float(value)
    except OverflowError:  # an int beyond a double
        raise IntegerRangeError("%s = %d does not fit a double" % (name, value),
                                L.ERR_OUT_OF_RANGE) from None


class _Options:
    """Keyword options mapped to keys by name; get/set by short or full name."""
    _prefix = None
    _group_prefix = "group"

    # The C functions behind the options, set by each class: operation ->
    # name of its regopt_* function, looked up in `lib` at each call (so a
    # stand-in for lib, as in the tests, sees these calls too).
    _c_functions = {}

    def _fn(self, what):
        return getattr(lib, self._c_functions[what])

    def _set_raw(self, key, is_int, value):
        if is_int:
            value = c_int(value, key_info(key).name, INT64)
        # setters may allocate (trainer.threads starts workers): a guarded call
        call(self._msg, self._fn("set_int" if is_int else "set_double"), self._p(), key, value)

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
            _check(self._fn("set_group")(self._p(), c_int(group, "group", INT32), key,
                                         float(value)), self._msg)
        return self

    def get_group(self, group, name):
        key = key_from_name(_full_name(self._group_prefix, name))
        v = ctypes.c_double()
        _check(self._fn("get_group")(self._p(), c_int(group, "group", INT32), key,
                                     ctypes.byref(v)), self._msg)
        return v.value

    def set(self, **options):
        """Set options by keyword: lr=1e-3 -> "<prefix>.lr". Returns self."""
        for name, value in options.items():
            self.set_option(_full_name(self._prefix, name), value)
        return self

    def set_option(self, name, value):
        """Set one key by its full name ("sam.rho") or number."""
        key = key_from_name(name) if isinstance(name, str) else c_int(name, "key", INT32)
        info = key_info(key)
        is_int, v = _encode_value(info.name, info, value)
        self._set_raw(key, is_int, v)

    def get(self, name):
        """Read one key by short ("lr") or full ("optimizer.lr") name."""
        key = key_from_name(_full_name(self._prefix, name)) if isinstance(name, str) \
            else c_int(name, "key", INT32)
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
