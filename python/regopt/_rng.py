"""Random numbers: the library's Philox streams, and dropout masks drawn
from them like the C hosts do."""
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
