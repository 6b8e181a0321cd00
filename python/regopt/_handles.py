"""Handles: live counting, keep-alive of the callbacks the library holds,
the state the trampolines share, and the base class of every handle."""
import itertools
import os
import threading
import weakref

from . import _lib as L
from ._lib import lib
from ._errors import NullPointer, StateError
from ._guard import Call, record


_live = {"model": 0, "optimizer": 0, "trainer": 0}
_live_lock = threading.Lock()


def _reinit_after_fork():
    # Another thread may have held the lock at fork(); that thread does not
    # exist in the child, whose finalizers take the lock: they would block.
    if hasattr(_live_lock, "_at_fork_reinit"):
        _live_lock._at_fork_reinit()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)


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
    # A free hook: no trampoline (which would deliver a kept signal first);
    # the pop runs before anything can be raised here.
    try:
        _keepalive.pop(user, None)
    except BaseException as exc:
        record(exc)


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
    all-reduce callbacks and its terms) share: the Python objects of the
    batches of the running call. (The first exception a callback raises is
    kept per thread by _guard.Call.) The trampolines hold this, never the
    Model or Trainer, so that the library's reference to them (kept until
    its free hook runs) does not keep the handles alive."""
    __slots__ = ("batch_objects",)

    def __init__(self):
        self.batch_objects = None

    def data(self, token):
        objs = self.batch_objects
        if objs is not None and token and 0 < token <= len(objs):
            return objs[token - 1]
        return None


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
    __slots__ = ("ptr", "regs", "__weakref__")

    def __init__(self, ptr):
        self.ptr = ptr
        self.regs = []  # _RegCell of the regularizers attached to it


class _RegCell:
    """The raw pointer of a regularizer. While it is attached the library
    refuses to free it: a Regularizer collected while attached marks its
    cell orphaned, and the trainer frees it once it has detached it."""
    __slots__ = ("ptr", "orphan", "__weakref__")

    def __init__(self, ptr):
        self.ptr = ptr
        self.orphan = False

    def free(self):
        if self.ptr:
            with Call() as c:  # runs a term's free hook
                lib.regopt_regularizer_free(self.ptr)
            self.ptr = None
            c.finish()


def _free_trainer_cell(cell):
    if cell.ptr:
        with Call() as c:  # allocator and free hooks
            st = lib.regopt_trainer_free(cell.ptr)  # detaches every regularizer
        if st == L.ERR_STATE:  # from inside one of its callbacks: nothing was freed
            c.finish()
            raise StateError("cannot close a trainer from inside one of its callbacks "
                             "(%s)" % lib.regopt_last_error_message().decode(), st)
        cell.ptr = None
        with _live_lock:
            _live["trainer"] -= 1
        regs, cell.regs = cell.regs, []
        try:
            for rc in regs:
                if rc.orphan:
                    rc.free()
        finally:
            c.finish()


class _NoCopy:
    """Handles own library memory: a copy (copy.copy, copy.deepcopy, pickle)
    would share it and free it a second time. Refuse with a clear error."""

    def _no_copy(self, what):
        raise TypeError("a regopt.%s cannot be %s: it owns a library handle that a copy "
                        "would share and free twice; create a new one (and move training "
                        "state with Trainer.to_bytes()/from_bytes())"
                        % (type(self).__name__, what))

    def __copy__(self):
        self._no_copy("copied (copy.copy)")

    def __deepcopy__(self, memo):
        self._no_copy("copied (copy.deepcopy)")

    def __reduce_ex__(self, protocol):
        self._no_copy("pickled")

    def __reduce__(self):
        self._no_copy("pickled")


class _Handle(_NoCopy):
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
