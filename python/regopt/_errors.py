"""Errors: one class per status code, carrying the library's message;
the library's status strings and version."""
from . import _lib as L
from ._lib import lib


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


class HostUpdateFailed(Error):
    """The host's update (a REGOPT_HOST optimizer: torch.optim's step())
    failed; the library's state is as before the step, the parameters and
    the host optimizer's state are what the update left."""
    status = L.ERR_HOST_UPDATE


class Overflow(Error, ArithmeticError):
    """A loss-scaled gradient overflowed (calls other than a step, which
    skips instead)."""
    status = L.ERR_OVERFLOW


class BackendFailed(Error):
    """A backend's run (regopt_model_set_backend) failed an operation on
    parameter-sized memory; the message names the operation. A Python
    backend's exception is re-raised itself, this error attached to it as
    .regopt_error. The step is a transaction up to the update: before it
    only gradients and the library's buffers were written and SAM's move
    undone; a failed update leaves what the backend wrote."""
    status = L.ERR_BACKEND


ERRORS = {cls.status: cls for cls in (
    NullPointer, InvalidArgument, OutOfRange, UnknownKey, Unsupported, NoMemory, StateError,
    ForwardFailed, BackwardFailed, LossCallbackFailed, NonFiniteLoss, NonFiniteGradient,
    AllreduceFailed, CorruptCheckpoint, CheckpointMismatch, CheckpointIOError,
    HostUpdateFailed, Overflow, BackendFailed)}


def _error(status, message):
    cls = ERRORS.get(status)
    if cls is None:
        return Error(message, status)
    return cls(message)


def _text(b):
    return b.decode("utf-8", "replace") if b else ""


def status_string(status):
    """regopt_status_string: the static name of a status code."""
    status = int(status)
    if not -2 ** 31 <= status < 2 ** 31:  # an int for C: would wrap to another code
        return "unknown status"
    return _text(lib.regopt_status_string(status))


def last_error_message():
    """regopt_last_error_message: detail of this thread's last handle-less failure."""
    return _text(lib.regopt_last_error_message())


def version():
    """Version string of the loaded library ("0.1.0")."""
    return _text(lib.regopt_version_string())


def version_number():
    """MAJOR*10000 + MINOR*100 + PATCH of the loaded library."""
    return int(lib.regopt_version_number())


def _check(status, message_fn):
    if status != L.OK:
        raise _error(status, message_fn())
