"""Allocators: memory hooks (regopt_allocator) written in Python."""
import ctypes
import operator

from . import _lib as L
from ._guard import trampoline

_MAX_ADDRESS = 2 ** (8 * ctypes.sizeof(ctypes.c_void_p)) - 1


class Allocator:
    """Memory hooks (regopt_allocator). Subclass and override alloc(size) ->
    address (int, 0 on failure) and free(address); pass the instance to
    Model(allocator=...) / Optimizer(..., allocator=...). The handle keeps the
    instance alive; a trainer allocates from its model's allocator.

    An exception raised by alloc or free (KeyboardInterrupt too) is appended
    to .errors and re-raised by the binding call that ran the hook (an alloc
    that raises fails as NULL: the library reports no memory and rolls back)."""

    def __init__(self):
        self._alloc_fn = L.ALLOC_FN(trampoline(self._alloc_body, None))
        self._free_fn = L.FREE_FN(trampoline(self._free_body, None, deliver=False))
        self._struct = L.Allocator(ctypes.sizeof(L.Allocator), self._alloc_fn, self._free_fn,
                                   None)
        self.errors = []

    def _alloc_body(self, size, user):
        try:
            p = self.alloc(int(size))
            if p is None:
                return None
            # checked here: ctypes converts the result after we return, out of any try
            try:
                p = operator.index(p)
            except TypeError:
                raise TypeError("%s.alloc returned %r, not an address (int) or 0"
                                % (type(self).__name__, p)) from None
            if not 0 <= p <= _MAX_ADDRESS:
                raise ValueError("%s.alloc returned %d, not an address"
                                 % (type(self).__name__, p))
            return p or None
        except BaseException as exc:
            self.errors.append(exc)
            raise

    def _free_body(self, ptr, user):
        try:
            if ptr:
                self.free(int(ptr))
        except BaseException as exc:
            self.errors.append(exc)
            raise

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
