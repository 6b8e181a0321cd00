"""NumPy buffer helpers: checks of registered buffers and views over
library memory."""
import ctypes

try:  # NumPy is needed for array arguments, not to import the package
    import numpy as _np
except ImportError:  # pragma: no cover - exercised only without numpy
    _np = None


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


def _check_param_buffer(arr, what, dtype=None):
    """A registered parameter buffer: float32 (FLOAT32), float16 (FLOAT16),
    or uint16 holding bfloat16 bit patterns (dtype=DTYPE_BFLOAT16; NumPy has
    no bfloat16). Returns the regopt dtype."""
    np = _need_numpy()
    from . import _lib as L
    if not isinstance(arr, np.ndarray):
        raise TypeError("%s must be a numpy.ndarray, got %s" % (what, type(arr).__name__))
    want = {np.dtype(np.float32): L.DTYPE_FLOAT32, np.dtype(np.float16): L.DTYPE_FLOAT16,
            np.dtype(np.uint16): L.DTYPE_BFLOAT16}.get(arr.dtype)
    if want is None or (dtype is not None and dtype != want) or \
            (want == L.DTYPE_BFLOAT16 and dtype != L.DTYPE_BFLOAT16):
        raise TypeError("%s must have dtype float32, float16, or uint16 with "
                        "dtype=DTYPE_BFLOAT16 (registered zero-copy), got %s%s"
                        % (what, arr.dtype, "" if dtype is None else " for dtype %d" % dtype))
    if arr.dtype == np.float32:
        _check_float32_buffer(arr, what)
    elif not arr.flags.c_contiguous or not arr.flags.writeable or arr.size == 0:
        raise ValueError("%s must be a non-empty, C-contiguous, writable array" % what)
    return want


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
