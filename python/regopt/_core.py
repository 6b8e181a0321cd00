"""The Pythonic layer of the binding, re-exported from the modules it is
split into, one concept each (the public API is regopt/__init__.py's):

  _errors        error classes, ERRORS, status strings, version
  _guard         trampolines, library calls with signals deferred, re-raising
  _ints          range checks of the integers handed to C
  _keys          KeyInfo, key lookups, ENUM_VALUES, the _Options mixin
  _handles       live counts, keep-alive of callbacks, the _Handle base
  _arrays        NumPy buffer helpers
  _allocator     Allocator, CountingAllocator
  _batch         Pass, BatchView, Batch
  _model         Model
  _optimizer     Optimizer, OPTIMIZER_KINDS
  _regularizers  Regularizer, SAM, RDrop, SMART, Bregman, REGULARIZERS
  _checkpoint    the Trainer's checkpoint methods (a mixin)
  _trainer       Trainer
  _rng           random_uniform, random_normal, dropout_mask, convert

Every name _core defined when it was one module still resolves here: the
public ones are imported below, the private ones (_check, _view,
_key_cache, ...) are looked up in those modules when asked for. Assigning a
name here (a test's `_core.lib = wrapper`) rebinds it in every one of those
modules that has it, as it did when they were one module.
"""
import sys
import types

from . import (_allocator, _arrays, _batch, _checkpoint, _errors, _flatness, _guard, _handles,
               _ints, _keys, _model, _optimizer, _regularizers, _rng, _trainer)
from . import _lib as L
from ._lib import lib
from ._errors import (
    Error, NullPointer, InvalidArgument, OutOfRange, UnknownKey, Unsupported, NoMemory,
    StateError, ForwardFailed, BackwardFailed, LossCallbackFailed, NonFiniteLoss,
    NonFiniteGradient, AllreduceFailed, CorruptCheckpoint, CheckpointMismatch, Overflow,
    CheckpointIOError, HostUpdateFailed, BackendFailed, ERRORS, status_string,
    last_error_message, version,
    version_number)
from ._keys import KeyInfo, key_from_name, key_info, keys, ENUM_VALUES
from ._handles import live_handles, pending_callbacks
from ._allocator import Allocator, CountingAllocator
from ._batch import Pass, BatchView, Batch
from ._model import CpuBackend, Model
from ._optimizer import Optimizer, OPTIMIZER_KINDS
from ._regularizers import (
    Regularizer, SAM, RDrop, SMART, Bregman, Term, TermView, REGULARIZERS, REGULARIZER_KINDS,
    regularizer_kinds, Average, mesa, MESA_PRESET)
from ._trainer import Trainer
from ._flatness import Flatness
from ._rng import random_uniform, random_normal, dropout_mask, convert

__all__ = [
    "Error", "NullPointer", "InvalidArgument", "OutOfRange", "UnknownKey", "Unsupported",
    "NoMemory", "StateError", "ForwardFailed", "BackwardFailed", "LossCallbackFailed",
    "NonFiniteLoss", "NonFiniteGradient", "AllreduceFailed", "CorruptCheckpoint", "Overflow",
    "CheckpointMismatch", "CheckpointIOError", "HostUpdateFailed", "BackendFailed", "ERRORS",
    "status_string",
    "last_error_message", "version", "version_number", "KeyInfo", "key_from_name",
    "key_info", "keys", "ENUM_VALUES", "live_handles", "pending_callbacks", "Allocator",
    "CountingAllocator", "Pass", "BatchView", "Batch", "Model", "CpuBackend", "Optimizer",
    "OPTIMIZER_KINDS",
    "Regularizer", "SAM", "RDrop", "SMART", "Bregman", "Term", "TermView", "Average", "mesa",
    "MESA_PRESET", "regularizer_kinds", "REGULARIZERS", "REGULARIZER_KINDS",
    "Trainer", "Flatness", "random_uniform", "random_normal", "dropout_mask", "convert", "L",
    "lib",
]

_MODULES = (_errors, _guard, _ints, _keys, _handles, _arrays, _allocator, _batch, _model,
            _optimizer, _regularizers, _checkpoint, _trainer, _rng, _flatness)


def __getattr__(name):
    if not name.startswith("__"):
        for m in _MODULES:
            d = vars(m)
            if name in d:
                return d[name]
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


class _CoreModule(types.ModuleType):
    def __setattr__(self, name, value):
        if name.startswith("__") and name.endswith("__"):
            return super().__setattr__(name, value)
        found = False
        for m in _MODULES:
            if name in vars(m):
                setattr(m, name, value)
                found = True
        if name in vars(self) or not found:
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _CoreModule
