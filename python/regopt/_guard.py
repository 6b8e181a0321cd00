"""Callbacks and the library calls that run them.

ctypes swallows an exception that leaves a callback (it prints "Exception
ignored on calling ctypes callback function") and hands C an undefined
return value, which the library may take for success. So:

  * every callback the library can call is a trampoline(): its body runs in
    try/except BaseException; the first exception is stored and C gets a
    defined failure value;
  * every library call that may run callbacks is made inside a Call(): on
    the main thread it replaces each Python-level signal handler (SIGINT's
    default_int_handler raising KeyboardInterrupt, a SIGTERM handler calling
    sys.exit, ...) by one that runs the original handler only while a
    callback's body runs -- where what it raises is caught -- and otherwise
    keeps the signal for later. A signal that arrives while the library runs
    can thus never raise at the entry of a callback, before its try, where
    nothing could catch it. A kept signal is delivered at the start of the
    next callback (which then fails, and the library rolls back) or, when no
    callback follows (or only an all-reduce, which every replica must join,
    or a free hook), once the library has returned;
  * Call.finish() then raises the stored exception (the original object,
    its traceback intact, the library's error attached as .regopt_error),
    else the error of the status.

Callbacks run on the thread that called the library (regopt.h), so the
state is per thread. Exceptions scheduled asynchronously by other means
(PyThreadState_SetAsyncExc) are not covered: only signals are deferred.
"""
import threading

try:
    import _signal as _sig  # the C module: getsignal without the enum wrapping
except ImportError:  # pragma: no cover - other interpreters
    import signal as _sig

from . import _lib as L
from ._errors import _error

_SIGNALS = tuple(sorted(int(s) for s in _sig.valid_signals())) \
    if hasattr(_sig, "valid_signals") else (2,)


class _ThreadState(threading.local):
    def __init__(self):
        self.depth = 0        # Calls in progress on this thread
        self.inside = False   # a callback's body runs: what a handler raises is caught
        self.exc = None       # the first exception of a callback of the current Call
        self.pending = []     # (signum, frame) kept while the library ran
        self.saved = {}       # signum -> the Python handler the outermost Call replaced


_state = _ThreadState()


def _deferring_handler(signum, frame):
    st = _state
    if st.inside:
        handler = st.saved.get(signum)
        if callable(handler):
            handler(signum, frame)
        return
    st.pending.append((signum, frame))


def _deliver(st):
    """Run the original handlers of the kept signals (they may raise)."""
    while st.pending:
        signum, frame = st.pending.pop(0)
        handler = st.saved.get(signum)
        if callable(handler):
            handler(signum, frame)


def trampoline(body, failure, deliver=True):
    """The function to wrap in a CFUNCTYPE: runs body(*args) and returns its
    result, or `failure` (C's defined failure value) when it raises; the
    first exception is kept for Call.finish(). body must return a value
    ctypes can convert (the conversion happens after we return). deliver:
    a signal kept while the library ran is delivered (raised) before body
    runs; False for free hooks, which must run to release memory, and for
    the all-reduce, which every replica must join."""
    st = _state

    def tramp(*args):
        try:
            outer = st.inside
            st.inside = True
            try:
                if deliver and st.pending:
                    _deliver(st)
                return body(*args)
            finally:
                st.inside = outer
        except BaseException as exc:  # never let an exception cross into C
            if st.exc is None:
                st.exc = exc
            return failure
    return tramp


def record(exc):
    """Keep exc for the running Call (the first one wins)."""
    if _state.exc is None:
        _state.exc = exc


def _reraise(exc, err):
    """Re-raise a callback's exception (its traceback intact) with the
    library's error attached."""
    if err is not None:
        try:
            exc.regopt_error = err
        except Exception:
            pass
        if hasattr(exc, "add_note"):
            try:
                exc.add_note("regopt: the call failed and was rolled back (%s)" % err)
            except Exception:
                pass
    raise exc.with_traceback(exc.__traceback__)


class Call:
    """A library call that may run Python callbacks:

        with Call() as c:
            st = lib.regopt_trainer_step(...)
        c.finish(st, self._msg)     # raises what a callback raised, or the error

    Calls nest (a callback may call the library): only the outermost one
    on the main thread touches the signal handlers."""

    __slots__ = ("exc", "_outer_exc", "_outer_inside", "_swapped")

    def __enter__(self):
        st = _state
        # a nested Call (from a callback) keeps the outer one's exception;
        # at the top level an old one (of a callback run outside any Call) goes
        self._outer_exc = st.exc if st.depth else None
        st.exc = None
        self._outer_inside, st.inside = st.inside, False
        self._swapped = ()
        if st.depth == 0:
            st.pending = []
            st.saved = {}
            if threading.current_thread() is threading.main_thread():
                self._swapped = self._defer(st)
        st.depth += 1
        return self

    # The handlers seen by the last scan and the signals among them with a
    # Python handler: a step scans ~64 signals, and reading them all through
    # map() and comparing with the last scan (identity first, in C) costs a
    # fraction of testing each one in a Python loop.
    _last_scan = None
    _last_found = ()

    @staticmethod
    def _defer(st):
        swapped = []
        try:
            handlers = list(map(_sig.getsignal, _SIGNALS))
            if handlers != Call._last_scan:
                # SIG_DFL and SIG_IGN are ints, None: set from outside Python
                Call._last_found = tuple(
                    (s, h) for s, h in zip(_SIGNALS, handlers)
                    if h is not None and h.__class__ is not int and callable(h)
                    and h is not _deferring_handler)
                Call._last_scan = handlers
            for s, h in Call._last_found:
                st.saved[s] = h
                _sig.signal(s, _deferring_handler)
                swapped.append(s)
        except (ValueError, OSError):  # not the main interpreter, or a signal refused
            pass
        return tuple(swapped)

    def __exit__(self, et, ev, tb):
        st = _state
        st.depth -= 1
        self.exc, st.exc = st.exc, self._outer_exc
        st.inside = self._outer_inside
        for s in self._swapped:
            if _sig.getsignal(s) is _deferring_handler:  # a callback may have set its own
                _sig.signal(s, st.saved[s])
        if et is not None:  # the call itself raised: still deliver the kept signals
            self._signals(st)
        return False

    @staticmethod
    def _signals(st):
        """Deliver the kept signals once the outermost Call is over (a nested
        one -- from a callback, or a finalizer that the garbage collector ran
        there -- leaves them to it)."""
        if st.depth:
            return
        try:
            _deliver(st)
        finally:
            st.pending = []
            st.saved = {}

    def finish(self, status=None, message=None):
        """Raise what the call left to raise, in this order: a kept signal's
        exception, the exception of a callback (with the library's error as
        .regopt_error), the error of `status` (a regopt_status; None or OK:
        none). message() gives the library's detail message."""
        st = _state
        err = None
        if status is not None and status != L.OK:
            err = _error(status, message() if message is not None else "")
        exc, self.exc = self.exc, None
        try:
            self._signals(st)
        except BaseException as sig_exc:
            if exc is not None and sig_exc.__context__ is None:
                sig_exc.__context__ = exc
            if err is not None:
                try:
                    sig_exc.regopt_error = err
                except Exception:
                    pass
            raise
        if exc is not None:
            _reraise(exc, err)
        if err is not None:
            raise err


def call(message, fn, *args):
    """fn(*args) -- a library function returning a regopt_status -- inside
    a Call; raises as Call.finish."""
    with Call() as c:
        st = fn(*args)
    c.finish(st, message)
    return st

