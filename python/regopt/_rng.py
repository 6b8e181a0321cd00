"""Random numbers: the library's Philox streams, and dropout masks drawn
from them like the C hosts do; and the library's float16/bfloat16
conversions (the bits it writes into 16-bit parameter buffers)."""
from . import _lib as L
from ._lib import lib
from ._arrays import _check_float32_buffer, _need_numpy
from ._errors import _check, last_error_message
from ._ints import SIZE, UINT64, c_int


def _random(fn, seed, n, offset, out):
    np = _need_numpy()
    seed = c_int(seed, "seed", UINT64)  # no silent wrap: -1 and 2**64 are refused
    offset = c_int(offset, "offset", UINT64)
    if out is None:
        out = np.empty(c_int(n, "n", SIZE), dtype=np.float32)
    else:
        _check_float32_buffer(out, "out")
    st = fn(seed, offset, out.ctypes.data_as(L.c_float_p), out.size)
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


def convert(src, dtype=None):
    """regopt_convert, rounding to nearest even: a float32 array to float16
    (dtype=DTYPE_FLOAT16, a numpy.float16 array) or to bfloat16 bits
    (dtype=DTYPE_BFLOAT16, a numpy.uint16 array); a float16 array, or a
    uint16 array of bfloat16 bits, back to float32."""
    np = _need_numpy()
    src = np.ascontiguousarray(src)
    if src.dtype == np.float32:
        if dtype not in (L.DTYPE_FLOAT16, L.DTYPE_BFLOAT16):
            raise ValueError("convert: float32 input needs dtype=DTYPE_FLOAT16 or "
                             "DTYPE_BFLOAT16")
        src_dt, dst_dt = L.DTYPE_FLOAT32, dtype
        out = np.empty(src.shape, np.float16 if dtype == L.DTYPE_FLOAT16 else np.uint16)
    elif src.dtype in (np.float16, np.uint16):
        src_dt = L.DTYPE_FLOAT16 if src.dtype == np.float16 else L.DTYPE_BFLOAT16
        dst_dt = L.DTYPE_FLOAT32
        out = np.empty(src.shape, np.float32)
    else:
        raise TypeError("convert: input must be float32, float16 or uint16 (bfloat16 bits), "
                        "got %s" % src.dtype)
    _check(lib.regopt_convert(src.ctypes.data, src_dt, out.ctypes.data, dst_dt, src.size),
           last_error_message)
    return out
