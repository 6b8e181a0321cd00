"""regopt — Python binding of libregopt (ctypes, standard library only).

    import numpy as np, regopt

    def forward(p):                 # p: regopt.Pass
        x = p.data[p.rows_slice]
        p.outputs[:] = x @ w
    def backward(p):
        x = p.data[p.rows_slice]
        gw += x.T @ p.d_outputs     # ADD into the registered gradient

    with regopt.Model(output_width=10, forward=forward, backward=backward) as m, \\
         regopt.Optimizer('adamw', lr=1e-3, weight_decay=0.01) as opt, \\
         regopt.Trainer(m, opt, seed=1) as t:
        m.add_param(...)            # before the trainer is created
        t.add('sam', rho=0.05)
        loss = t.step(data=x, labels=y)

The shared library is found through $REGOPT_LIBRARY, then the repository's
lib/libregopt.so.1 (or .so.0), then the system; see regopt._lib.
"""
from . import _lib
from ._lib import (BINDING_VERSION, LibraryNotFound, LibraryVersionError, library_path,
                   PASS_TRAIN, PASS_NO_GRAD, PASS_PERTURBED_WEIGHTS, PASS_TEACHER,
                   PASS_NO_PARAM_GRAD, PASS_DOUBLED, PASS_PROBE, PASS_RECALIBRATE, CAP_DOUBLED_BATCH,
                   CAP_PASS_WEIGHTS,
                   MAX_GROUPS, MAX_NAME,
                   CHECKPOINT_PARAMS, CHECKPOINT_OPTIONS,
                   DTYPE_FLOAT32, DTYPE_FLOAT16, DTYPE_BFLOAT16, DTYPE_FLOAT64,
                   TERM_PASS_FRESH_SEED, TERM_PASS_EVAL, TERM_PASS_NO_GRAD, TERM_PASS_TEACHER)
from ._core import (
    Error, NullPointer, InvalidArgument, OutOfRange, UnknownKey, Unsupported, NoMemory,
    StateError, ForwardFailed, BackwardFailed, LossCallbackFailed, NonFiniteLoss,
    NonFiniteGradient, AllreduceFailed, CorruptCheckpoint, CheckpointMismatch, Overflow,
    CheckpointIOError, HostUpdateFailed, BackendFailed, ERRORS,
    status_string, last_error_message, version, version_number,
    KeyInfo, key_from_name, key_info, keys,
    live_handles, pending_callbacks,
    Allocator, CountingAllocator,
    Pass, Batch, BatchView,
    Model, CpuBackend, Optimizer, Trainer, Flatness,
    Regularizer, SAM, RDrop, SMART, Bregman, Adversarial, Term, TermView, regularizer_kinds,
    Average, mesa, MESA_PRESET,
    random_uniform, random_normal, dropout_mask, convert,
)

__version__ = "%d.%d.%d" % BINDING_VERSION

__all__ = [
    "Error", "NullPointer", "InvalidArgument", "OutOfRange", "UnknownKey", "Unsupported",
    "NoMemory", "StateError", "ForwardFailed", "BackwardFailed", "LossCallbackFailed",
    "NonFiniteLoss", "NonFiniteGradient", "AllreduceFailed", "CorruptCheckpoint", "Overflow",
    "CheckpointMismatch", "CheckpointIOError", "HostUpdateFailed", "BackendFailed",
    "LibraryNotFound",
    "LibraryVersionError", "status_string", "last_error_message", "version", "version_number",
    "KeyInfo", "key_from_name", "key_info", "keys", "live_handles", "pending_callbacks",
    "Allocator", "CountingAllocator", "Pass", "Batch", "BatchView", "Model", "CpuBackend",
    "Optimizer",
    "Trainer", "Flatness", "Regularizer", "SAM", "RDrop", "SMART", "Bregman", "Adversarial",
    "Term", "TermView", "Average", "mesa", "MESA_PRESET", "PASS_RECALIBRATE",
    "regularizer_kinds", "TERM_PASS_FRESH_SEED", "TERM_PASS_EVAL", "TERM_PASS_NO_GRAD",
    "TERM_PASS_TEACHER",
    "random_uniform",
    "random_normal", "dropout_mask", "convert", "PASS_TRAIN", "PASS_NO_GRAD", "PASS_PERTURBED_WEIGHTS",
    "PASS_TEACHER", "PASS_NO_PARAM_GRAD", "PASS_DOUBLED", "PASS_PROBE", "CAP_DOUBLED_BATCH", "CAP_PASS_WEIGHTS",
    "MAX_GROUPS",
    "MAX_NAME", "library_path", "CHECKPOINT_PARAMS", "CHECKPOINT_OPTIONS",
]
