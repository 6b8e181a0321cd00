"""Low-level ctypes declarations of libregopt (include/regopt.h).

Everything here mirrors the C header one to one; the Pythonic layer lives in
the modules regopt/_core.py re-exports. The library is located, in this
order, through

  1. the environment variable REGOPT_LIBRARY (a path to libregopt.so.N),
  2. the repository's lib/ directory (python/regopt/../../lib/libregopt.so.1,
     .so.0 or libregopt.so),
  3. pkg-config's libdir of regopt (an install under any prefix named by
     PKG_CONFIG_PATH, e.g. make install PREFIX=$HOME/.local),
  4. the system (ctypes.util.find_library('regopt')),

and refused when its major version differs from the one this binding was
written for, or when its descriptor structs are smaller than ours.
"""
import ctypes
import ctypes.util
import os

# The version of include/regopt.h this binding was written against.
BINDING_VERSION = (1, 0, 0)
BINDING_VERSION_NUMBER = BINDING_VERSION[0] * 10000 + BINDING_VERSION[1] * 100 + BINDING_VERSION[2]


class LibraryNotFound(ImportError):
    """libregopt.so.1 could not be located or loaded."""


class LibraryVersionError(ImportError):
    """The loaded libregopt is not ABI-compatible with this binding."""


# --------------------------------------------------------------------------
# Structs (field for field as in regopt.h; fields are only ever appended)
# --------------------------------------------------------------------------

c_size_t = ctypes.c_size_t
c_float_p = ctypes.POINTER(ctypes.c_float)


class Pass(ctypes.Structure):
    """struct regopt_pass."""
    _fields_ = [
        ("size", c_size_t),
        ("batch", ctypes.c_void_p),
        ("rows", c_size_t),
        ("row_offset", c_size_t),
        ("slot", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
        ("seed", ctypes.c_uint64),
        ("micro_batch", c_size_t),
        ("output_width", c_size_t),
        ("outputs", c_float_p),
        ("d_outputs", c_float_p),
        ("input_perturbation", c_float_p),
        ("d_input", c_float_p),
        ("input_rows", c_size_t),
        ("input_width", c_size_t),
        ("seed2", ctypes.c_uint64),
        ("loss_scale", ctypes.c_double),
        ("task_scale", ctypes.c_double),
        # REGOPT_CAP_PASS_WEIGHTS teacher passes: one float* per tensor
        ("weights", ctypes.POINTER(c_float_p)),
    ]


class Batch(ctypes.Structure):
    """struct regopt_batch."""
    _fields_ = [
        ("size", c_size_t),
        ("data", ctypes.c_void_p),
        ("rows", c_size_t),
        ("labels", ctypes.POINTER(ctypes.c_int32)),
        ("targets", c_float_p),
        ("mask", ctypes.POINTER(ctypes.c_uint8)),
        ("weights", c_float_p),
        ("input_rows", c_size_t),
        ("task_mask", ctypes.POINTER(ctypes.c_uint8)),  # 1 = labelled, 0 = unlabelled
    ]


ALLOC_FN = ctypes.CFUNCTYPE(ctypes.c_void_p, c_size_t, ctypes.c_void_p)
FREE_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


class Allocator(ctypes.Structure):
    """struct regopt_allocator."""
    _fields_ = [
        ("size", c_size_t),
        ("alloc", ALLOC_FN),
        ("free", FREE_FN),
        ("user", ctypes.c_void_p),
    ]


PASS_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(Pass), ctypes.c_void_p)
USER_FREE_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
LOSS_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(Batch), c_float_p, c_size_t,
                           c_size_t, c_float_p, c_float_p, ctypes.c_void_p)
ALLREDUCE_FN = ctypes.CFUNCTYPE(ctypes.c_int, c_float_p, c_size_t, ctypes.c_void_p)
WRITE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, c_size_t, ctypes.c_void_p)
READ_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, c_size_t, ctypes.c_void_p)

class TermView(ctypes.Structure):
    """struct regopt_term_view."""
    _fields_ = [
        ("size", c_size_t),
        ("batch", ctypes.POINTER(Batch)),
        ("micro_batch", c_size_t),
        ("row_offset", c_size_t),
        ("rows", c_size_t),
        ("output_width", c_size_t),
        ("flags", ctypes.c_uint32),
        ("n_outputs", ctypes.c_uint32),
        ("step", ctypes.c_uint64),
        ("inv_weight", ctypes.c_double),
        ("outputs", ctypes.POINTER(c_float_p)),
        ("d_outputs", ctypes.POINTER(c_float_p)),
    ]


TERM_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(TermView),
                           ctypes.POINTER(ctypes.c_double), ctypes.c_void_p)
TERM_STATE_SIZE_FN = ctypes.CFUNCTYPE(c_size_t, ctypes.c_void_p)
TERM_SAVE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, c_size_t, ctypes.c_void_p)
TERM_LOAD_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, c_size_t, ctypes.c_void_p)
TERM_COMMITTED_FN = ctypes.CFUNCTYPE(None, ctypes.c_uint64, ctypes.c_void_p)
# regopt_host_update_fn(step, lr, user)
HOST_UPDATE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint64, ctypes.c_double, ctypes.c_void_p)


class TermOps(ctypes.Structure):
    """struct regopt_term_ops."""
    _fields_ = [
        ("size", c_size_t),
        ("name", ctypes.c_char_p),
        ("passes", ctypes.c_uint32),
        ("pass_flags", ctypes.c_uint32 * 8),
        ("value", TERM_FN),
        ("state_size", TERM_STATE_SIZE_FN),
        ("save_state", TERM_SAVE_FN),
        ("load_state", TERM_LOAD_FN),
        ("committed", TERM_COMMITTED_FN),
    ]


class FlatnessRequest(ctypes.Structure):
    """struct regopt_flatness_request (since 1.0)."""
    _fields_ = [
        ("size", c_size_t),
        ("measures", ctypes.c_uint32),
        ("norm", ctypes.c_int32),
        ("adaptive", ctypes.c_int32),
        ("worst_iterations", ctypes.c_uint32),
        ("rho", ctypes.c_double),
        ("sigma", ctypes.c_double),
        ("average_samples", ctypes.c_uint32),
        ("eigen_iterations", ctypes.c_uint32),
        ("eigen_tolerance", ctypes.c_double),
        ("trace_samples", ctypes.c_uint32),
        ("reserved0", ctypes.c_uint32),
        ("trace_tolerance", ctypes.c_double),
        ("fd_scale", ctypes.c_double),
        ("seed", ctypes.c_uint64),
    ]


class Flatness(ctypes.Structure):
    """struct regopt_flatness (since 1.0)."""
    _fields_ = [
        ("size", c_size_t),
        ("loss", ctypes.c_double),
        ("worst_case", ctypes.c_double),
        ("worst_radius", ctypes.c_double),
        ("worst_iterations", ctypes.c_uint32),
        ("worst_halvings", ctypes.c_uint32),
        ("average_case", ctypes.c_double),
        ("average_stderr", ctypes.c_double),
        ("average_samples", ctypes.c_uint32),
        ("eigen_iterations", ctypes.c_uint32),
        ("eigenvalue", ctypes.c_double),
        ("eigen_change", ctypes.c_double),
        ("eigen_converged", ctypes.c_int32),
        ("trace_samples", ctypes.c_uint32),
        ("trace", ctypes.c_double),
        ("trace_stderr", ctypes.c_double),
        ("trace_converged", ctypes.c_int32),
        ("reserved0", ctypes.c_uint32),
        ("fd_step", ctypes.c_double),
        ("forward_calls", ctypes.c_uint64),
        ("backward_calls", ctypes.c_uint64),
    ]


class Vop(ctypes.Structure):
    """struct regopt_vop: one operation of a backend (since 1.0)."""
    _fields_ = [
        ("size", c_size_t),
        ("code", ctypes.c_int32),
        ("variant", ctypes.c_int32),
        ("x", ctypes.c_int32),
        ("y", ctypes.c_int32),
        ("z", ctypes.c_int32),
        ("u", ctypes.c_int32),
        ("v", ctypes.c_int32),
        ("tensors", c_size_t),
        ("tensor", c_size_t),
        ("data", ctypes.POINTER(ctypes.c_void_p)),
        ("grad", ctypes.POINTER(ctypes.c_void_p)),
        ("counts", ctypes.POINTER(c_size_t)),
        ("flags", ctypes.POINTER(ctypes.c_int32)),
        ("per_tensor", ctypes.POINTER(ctypes.c_double)),
        ("s", ctypes.c_double * 16),
        ("out", ctypes.c_double * 4),
        # since 1.1: checkpoints' transfers, and the frozen tensors at BIND
        ("host", ctypes.POINTER(ctypes.c_float)),
        ("first", c_size_t),
        ("count", c_size_t),
        ("frozen", c_size_t),
        ("frozen_data", ctypes.POINTER(ctypes.c_void_p)),
        ("frozen_counts", ctypes.POINTER(c_size_t)),
    ]


BACKEND_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(Vop))


class Backend(ctypes.Structure):
    """struct regopt_backend: the backend table (since 1.0)."""
    _fields_ = [
        ("size", c_size_t),
        ("run", BACKEND_FN),
        ("user", ctypes.c_void_p),
    ]


# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

OK = 0
ERR_NULL_POINTER = -1
ERR_INVALID_ARGUMENT = -2
ERR_OUT_OF_RANGE = -3
ERR_UNKNOWN_KEY = -4
ERR_UNSUPPORTED = -5
ERR_NO_MEMORY = -6
ERR_STATE = -7
ERR_FORWARD = -8
ERR_BACKWARD = -9
ERR_LOSS_CALLBACK = -10
ERR_NONFINITE_LOSS = -11
ERR_NONFINITE_GRADIENT = -12
ERR_ALLREDUCE = -13
ERR_CORRUPT = -14
ERR_MISMATCH = -15
ERR_IO = -16
ERR_HOST_UPDATE = -17
ERR_OVERFLOW = -18
ERR_BACKEND = -19

# backends (regopt_vop)
VEC_NONE = -1
VEC_WEIGHTS = 0
VEC_GRADS = 1
VEC_BUFFER0 = 2
VEC_FROZEN = -2
VOP_BIND = 1
VOP_ALLOC = 2
VOP_FREE = 3
VOP_ZERO = 4
VOP_COPY = 5
VOP_SUM_SQUARES = 6
VOP_ABS_MAX = 7
VOP_UPDATE = 8
VOP_UPDATE_CHECK = 9
VOP_SAM_PERTURB = 10
VOP_SAM_SQUARES = 11
VOP_SWAP = 12
VOP_EMA = 13
VOP_SWA = 14
VOP_SCALE = 15
VOP_AXPBY = 16
VOP_DOT = 17
VOP_READ = 18
VOP_WRITE = 19
(VOP_S_GRAD_SCALE, VOP_S_MOMENTUM, VOP_S_ONE_MINUS_DAMPENING, VOP_S_NESTEROV, VOP_S_FIRST,
 VOP_S_BETA1, VOP_S_BETA2, VOP_S_EPS, VOP_S_ONE_MINUS_BETA1, VOP_S_ONE_MINUS_BETA2,
 VOP_S_BC2_SQRT, VOP_S_AMSGRAD, VOP_S_RECTIFIED) = range(13)

CHECKPOINT_PARAMS = 0x1
CHECKPOINT_OPTIONS = 0x2

TYPE_DOUBLE = 1
TYPE_INT = 2
KEY_MIN_EXCLUSIVE = 0x1
KEY_MAX_EXCLUSIVE = 0x2
KEY_READ_ONLY = 0x4
KEY_GROUP = 0x8

PASS_TRAIN = 0x1
PASS_NO_GRAD = 0x2
PASS_PERTURBED_WEIGHTS = 0x4
PASS_TEACHER = 0x8
PASS_NO_PARAM_GRAD = 0x10
PASS_DOUBLED = 0x20
PASS_PROBE = 0x40
PASS_RECALIBRATE = 0x80

FLAT_WORST_CASE = 0x1
FLAT_AVERAGE_CASE = 0x2
FLAT_EIGENVALUE = 0x4
FLAT_TRACE = 0x8
FLAT_ALL = 0xf
FLAT_NORM_L2 = 2
FLAT_NORM_INF = 0

CAP_DOUBLED_BATCH = 0x1
CAP_PASS_WEIGHTS = 0x2

DTYPE_FLOAT32 = 1
DTYPE_FLOAT16 = 2
DTYPE_BFLOAT16 = 3
DTYPE_FLOAT64 = 4

MAX_GROUPS = 64
MAX_NAME = 255

SGD, ADAM, ADAMW, RADAM, HOST = 1, 2, 3, 4, 5
SCHEDULE_CONSTANT, SCHEDULE_LINEAR, SCHEDULE_COSINE = 0, 1, 2
LOSS_SOFTMAX_CE, LOSS_MSE, LOSS_CALLBACK = 0, 1, 2
REG_SAM, REG_RDROP, REG_SMART, REG_BREGMAN, REG_TERM, REG_AVERAGE = 1, 2, 3, 4, 5, 6
AVERAGE_EMA, AVERAGE_SWA = 0, 1
AVERAGE_WARMUP_NONE, AVERAGE_WARMUP_TF, AVERAGE_WARMUP_TIMM, AVERAGE_WARMUP_FIRST = 0, 1, 2, 3
BREGMAN_SYM_KL, BREGMAN_KL_TEACHER = 0, 1
REG_ADVERSARIAL = 7
REG_WEIGHT_SIDE = 0x1
REG_SINGLE = 0x2
TERM_MAX_PASSES = 8
TERM_PASS_FRESH_SEED = 0x1
TERM_PASS_EVAL = 0x2
TERM_PASS_NO_GRAD = 0x4
TERM_PASS_TEACHER = 0x8
SMART_NORM_INF, SMART_NORM_L1, SMART_NORM_L2 = 0, 1, 2

# --------------------------------------------------------------------------
# Function prototypes: name -> (restype, argtypes)
# --------------------------------------------------------------------------

_vp = ctypes.c_void_p
_st = ctypes.c_int  # regopt_status (an int-sized enum)
_key = ctypes.c_int32  # regopt_key is int32_t since 1.0
_d = ctypes.c_double
_i64 = ctypes.c_int64
_i32 = ctypes.c_int32
_dp = ctypes.POINTER(ctypes.c_double)
_i64p = ctypes.POINTER(ctypes.c_int64)
_stp = ctypes.POINTER(ctypes.c_int)
_cs = ctypes.c_char_p

PROTOTYPES = {
    "regopt_version_number": (ctypes.c_uint, []),
    "regopt_version_string": (_cs, []),
    "regopt_status_string": (_cs, [_st]),
    "regopt_last_error_message": (_cs, []),
    "regopt_key_info": (_st, [_key, ctypes.POINTER(_cs), ctypes.POINTER(ctypes.c_int), _dp, _dp,
                              _dp, ctypes.POINTER(ctypes.c_uint32)]),
    "regopt_key_from_name": (_st, [_cs, ctypes.POINTER(ctypes.c_int)]),
    "regopt_key_at": (_st, [c_size_t, ctypes.POINTER(ctypes.c_int)]),
    "regopt_random_uniform": (_st, [ctypes.c_uint64, ctypes.c_uint64, c_float_p, c_size_t]),
    "regopt_random_normal": (_st, [ctypes.c_uint64, ctypes.c_uint64, c_float_p, c_size_t]),
    "regopt_convert": (_st, [_vp, ctypes.c_int, _vp, ctypes.c_int, c_size_t]),
    "regopt_batch_init": (None, [ctypes.POINTER(Batch)]),
    "regopt_sizeof_batch": (c_size_t, []),
    "regopt_sizeof_pass": (c_size_t, []),
    "regopt_sizeof_allocator": (c_size_t, []),
    # model
    "regopt_model_create": (_vp, [ctypes.POINTER(Allocator), _stp]),
    "regopt_model_free": (_st, [_vp]),
    "regopt_model_add_param": (_st, [_vp, _cs, _vp, _vp, c_size_t, ctypes.c_int, _i32]),
    "regopt_model_set_output_width": (_st, [_vp, c_size_t]),
    "regopt_model_set_input_width": (_st, [_vp, c_size_t]),
    "regopt_model_set_slots": (_st, [_vp, _i32]),
    "regopt_model_set_capabilities": (_st, [_vp, ctypes.c_uint32]),
    "regopt_model_set_callbacks": (_st, [_vp, PASS_FN, PASS_FN, _vp, USER_FREE_FN]),
    "regopt_model_param_count": (c_size_t, [_vp]),
    "regopt_model_element_count": (c_size_t, [_vp]),
    "regopt_model_message": (_cs, [_vp]),
    "regopt_model_set_backend": (_st, [_vp, ctypes.POINTER(Backend)]),
    "regopt_backend_cpu_create": (_st, [ctypes.POINTER(Backend)]),
    "regopt_backend_cpu_free": (_st, [ctypes.POINTER(Backend)]),
    # optimizer
    "regopt_optimizer_create": (_vp, [ctypes.c_int, ctypes.POINTER(Allocator), _stp]),
    "regopt_optimizer_free": (_st, [_vp]),
    "regopt_optimizer_get_kind": (ctypes.c_int, [_vp]),
    "regopt_optimizer_set_double": (_st, [_vp, _key, _d]),
    "regopt_optimizer_set_int": (_st, [_vp, _key, _i64]),
    "regopt_optimizer_get_double": (_st, [_vp, _key, _dp]),
    "regopt_optimizer_get_int": (_st, [_vp, _key, _i64p]),
    "regopt_optimizer_set_group": (_st, [_vp, _i32, _key, _d]),
    "regopt_optimizer_get_group": (_st, [_vp, _i32, _key, _dp]),
    "regopt_optimizer_message": (_cs, [_vp]),
    "regopt_optimizer_set_host_update": (_st, [_vp, HOST_UPDATE_FN, _vp, USER_FREE_FN]),
    # trainer
    "regopt_trainer_create": (_vp, [_vp, _vp, _stp]),
    "regopt_trainer_free": (_st, [_vp]),
    "regopt_trainer_recover": (_st, [_vp]),
    "regopt_trainer_set_double": (_st, [_vp, _key, _d]),
    "regopt_trainer_set_int": (_st, [_vp, _key, _i64]),
    "regopt_trainer_get_double": (_st, [_vp, _key, _dp]),
    "regopt_trainer_get_int": (_st, [_vp, _key, _i64p]),
    "regopt_trainer_set_loss_callback": (_st, [_vp, LOSS_FN, _vp, USER_FREE_FN]),
    # regularizers (handles since 1.0)
    "regopt_regularizer_create": (_vp, [ctypes.c_int, ctypes.POINTER(Allocator), _stp]),
    "regopt_regularizer_create_term": (_vp, [ctypes.POINTER(TermOps), _vp, USER_FREE_FN,
                                             ctypes.POINTER(Allocator), _stp]),
    "regopt_regularizer_free": (_st, [_vp]),
    "regopt_regularizer_get_kind": (ctypes.c_int, [_vp]),
    "regopt_regularizer_get_trainer": (_vp, [_vp]),
    "regopt_regularizer_set_double": (_st, [_vp, _key, _d]),
    "regopt_regularizer_set_int": (_st, [_vp, _key, _i64]),
    "regopt_regularizer_get_double": (_st, [_vp, _key, _dp]),
    "regopt_regularizer_get_int": (_st, [_vp, _key, _i64p]),
    "regopt_regularizer_set_group": (_st, [_vp, _i32, _key, _d]),
    "regopt_regularizer_get_group": (_st, [_vp, _i32, _key, _dp]),
    "regopt_regularizer_message": (_cs, [_vp]),
    "regopt_regularizer_swap_average": (_st, [_vp]),
    "regopt_regularizer_average_swapped": (ctypes.c_int, [_vp]),
    "regopt_regularizer_recalibrate": (_st, [_vp, ctypes.POINTER(Batch), c_size_t]),
    "regopt_trainer_attach": (_st, [_vp, _vp]),
    "regopt_trainer_detach": (_st, [_vp, _vp]),
    "regopt_trainer_regularizer_count": (c_size_t, [_vp]),
    "regopt_trainer_regularizer_at": (_vp, [_vp, c_size_t]),
    "regopt_regularizer_kind_info": (_st, [c_size_t, ctypes.POINTER(ctypes.c_int),
                                           ctypes.POINTER(_cs), ctypes.POINTER(ctypes.c_uint32)]),
    "regopt_sizeof_term_ops": (c_size_t, []),
    "regopt_sizeof_term_view": (c_size_t, []),
    "regopt_trainer_set_allreduce": (_st, [_vp, ALLREDUCE_FN, _vp, USER_FREE_FN]),
    "regopt_trainer_reserve": (_st, [_vp, c_size_t]),
    "regopt_trainer_step": (_st, [_vp, ctypes.POINTER(Batch), c_size_t]),
    "regopt_trainer_evaluate": (_st, [_vp, ctypes.POINTER(Batch), _dp, c_float_p]),
    "regopt_trainer_message": (_cs, [_vp]),
    # measuring flatness
    "regopt_flatness_request_init": (None, [ctypes.POINTER(FlatnessRequest)]),
    "regopt_trainer_flatness": (_st, [_vp, ctypes.POINTER(Batch), c_size_t,
                                      ctypes.POINTER(FlatnessRequest), ctypes.POINTER(Flatness)]),
    "regopt_sizeof_flatness_request": (c_size_t, []),
    "regopt_sizeof_flatness": (c_size_t, []),
    # checkpoints
    "regopt_trainer_checkpoint_size": (_st, [_vp, ctypes.c_uint32, ctypes.POINTER(c_size_t)]),
    "regopt_trainer_save_buffer": (_st, [_vp, ctypes.c_uint32, _vp, c_size_t,
                                         ctypes.POINTER(c_size_t)]),
    "regopt_trainer_save": (_st, [_vp, ctypes.c_uint32, WRITE_FN, _vp]),
    "regopt_trainer_load": (_st, [_vp, ctypes.c_uint32, READ_FN, _vp]),
    "regopt_trainer_save_file": (_st, [_vp, ctypes.c_uint32, _cs]),
    "regopt_trainer_load_buffer": (_st, [_vp, ctypes.c_uint32, _vp, c_size_t]),
    "regopt_trainer_load_file": (_st, [_vp, ctypes.c_uint32, _cs]),
}


def _candidates():
    env = os.environ.get("REGOPT_LIBRARY")
    if env:
        # An explicit choice is final: do not silently fall back to another copy.
        return [("REGOPT_LIBRARY", env)]
    out = []
    here = os.path.dirname(os.path.abspath(__file__))
    # The soname follows the major version (libregopt.so.1 for 1.x; 0.x
    # was libregopt.so.0); the unversioned link points at whichever is built.
    for name in ("libregopt.so.%d" % BINDING_VERSION[0], "libregopt.so.1", "libregopt.so.0",
                 "libregopt.so"):
        repo_lib = os.path.normpath(os.path.join(here, "..", "..", "lib", name))
        if os.path.exists(repo_lib) and ("repository lib/", repo_lib) not in out:
            out.append(("repository lib/", repo_lib))
    libdir = _pkg_config_libdir()
    if libdir:
        path = os.path.join(libdir, "libregopt.so.%d" % BINDING_VERSION[0])
        if os.path.exists(path):
            out.append(("pkg-config", path))
    found = ctypes.util.find_library("regopt")
    if found:
        out.append(("system", found))
    return out


def _pkg_config_libdir():
    """pkg-config's libdir of regopt, or None (no pkg-config, no regopt.pc)."""
    import subprocess
    try:
        run = subprocess.run([os.environ.get("PKG_CONFIG", "pkg-config"), "--variable=libdir",
                              "regopt"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    libdir = run.stdout.strip()
    return libdir if run.returncode == 0 and libdir else None


def check_version(number, binding=BINDING_VERSION):
    """Raise LibraryVersionError unless a library of version `number`
    (MAJOR*10000 + MINOR*100 + PATCH) can serve this binding."""
    major = number // 10000
    if major != binding[0]:
        raise LibraryVersionError(
            "libregopt %d.%d.%d is loaded but this binding was written for major version %d "
            "(%d.%d.%d): the ABI differs; install a libregopt %d.x or a matching binding"
            % (major, number // 100 % 100, number % 100, binding[0], binding[0], binding[1],
               binding[2], binding[0]))


def _declare(lib):
    for name, (restype, argtypes) in PROTOTYPES.items():
        fn = getattr(lib, name)  # AttributeError: a symbol this binding needs is missing
        fn.restype = restype
        fn.argtypes = argtypes


def check_struct_sizes(lib, number):
    """Our ctypes structs must match the library's: exactly when the library
    is the version we were written for, and never larger otherwise (structs
    only grow at the end, so a newer library may have a longer one)."""
    for what, ours, theirs in (("regopt_pass", ctypes.sizeof(Pass), lib.regopt_sizeof_pass()),
                               ("regopt_batch", ctypes.sizeof(Batch), lib.regopt_sizeof_batch()),
                               ("regopt_allocator", ctypes.sizeof(Allocator),
                                lib.regopt_sizeof_allocator()),
                               ("regopt_term_ops", ctypes.sizeof(TermOps),
                                lib.regopt_sizeof_term_ops()),
                               ("regopt_term_view", ctypes.sizeof(TermView),
                                lib.regopt_sizeof_term_view()),
                               ("regopt_flatness_request", ctypes.sizeof(FlatnessRequest),
                                lib.regopt_sizeof_flatness_request()),
                               ("regopt_flatness", ctypes.sizeof(Flatness),
                                lib.regopt_sizeof_flatness())):
        if ours > theirs or (number == BINDING_VERSION_NUMBER and ours != theirs):
            raise LibraryVersionError(
                "struct %s: the binding's ctypes declaration is %d bytes, the library's is %d "
                "(libregopt %s)" % (what, ours, theirs, lib.regopt_version_string().decode()))


def load(path=None):
    """Load and check libregopt; returns (CDLL, path). path None: the search
    order described in the module docstring."""
    tried = []
    cands = [("argument", path)] if path else _candidates()
    for origin, cand in cands:
        try:
            lib = ctypes.CDLL(cand)
        except OSError as exc:
            tried.append("%s %s: %s" % (origin, cand, exc))
            continue
        lib.regopt_version_number.restype = ctypes.c_uint
        lib.regopt_version_number.argtypes = []
        number = lib.regopt_version_number()
        check_version(number)
        try:
            _declare(lib)
        except AttributeError as exc:
            raise LibraryVersionError("libregopt at %s lacks a symbol this binding needs: %s"
                                      % (cand, exc)) from None
        check_struct_sizes(lib, number)
        return lib, cand
    raise LibraryNotFound(
        "libregopt not found; set REGOPT_LIBRARY=/path/to/libregopt.so.1, build the "
        "repository's lib/ (make lib), or install it. Tried: "
        + ("; ".join(tried) if tried else "nothing (no candidate exists)"))


lib, library_path = load()
