"""Integers handed to C: ctypes converts a Python int to a C integer type
without any check (2**64 becomes 0, -1 becomes 2**64 - 1 for an unsigned
type, 2**40 becomes 0 for an int32), so every integer the binding passes is
checked here first, against the range of the C type it is passed as."""
import ctypes
import operator

from . import _lib as L
from ._errors import OutOfRange

INT32 = (-2 ** 31, 2 ** 31 - 1)
UINT32 = (0, 2 ** 32 - 1)
INT64 = (-2 ** 63, 2 ** 63 - 1)
UINT64 = (0, 2 ** 64 - 1)
SIZE = (0, 2 ** (8 * ctypes.sizeof(ctypes.c_size_t)) - 1)
INT = (-2 ** (8 * ctypes.sizeof(ctypes.c_int) - 1), 2 ** (8 * ctypes.sizeof(ctypes.c_int) - 1) - 1)
ADDRESS = (0, 2 ** (8 * ctypes.sizeof(ctypes.c_void_p)) - 1)

_TYPE_NAMES = {INT32: "int32", UINT32: "uint32", INT64: "int64", UINT64: "uint64",
               SIZE: "size_t", INT: "int", ADDRESS: "a pointer"}


class IntegerRangeError(OutOfRange, OverflowError):
    """An integer argument does not fit the C type the library takes it as
    (an OutOfRange, so a ValueError, and an OverflowError)."""


def c_int(value, what, bounds):
    """value as a Python int within bounds (a (min, max) pair of the C type);
    TypeError for a non-integer, IntegerRangeError naming `what` outside.
    Integral floats (3.0) are accepted, as int() accepted them."""
    try:
        v = operator.index(value)
    except TypeError:
        if isinstance(value, float) and value.is_integer():
            v = int(value)
        else:
            raise TypeError("%s must be an integer, got %r" % (what, value)) from None
    lo, hi = bounds
    if not lo <= v <= hi:
        raise IntegerRangeError("%s = %d does not fit the library's %s (range [%d, %d])"
                                % (what, v, _TYPE_NAMES.get(bounds, "integer"), lo, hi),
                                L.ERR_OUT_OF_RANGE)
    return v
