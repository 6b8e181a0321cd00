"""Measuring flatness (regopt_trainer_flatness): the request built from
keyword options and the result as a small dataclass. Trainer.flatness
(regopt/_trainer.py) runs the call; include/regopt.h, "Measuring flatness",
defines every number."""
import ctypes
import dataclasses
from typing import Optional

from . import _lib as L
from ._lib import lib
from ._ints import UINT32, UINT64, c_int

MEASURES = {"worst_case": L.FLAT_WORST_CASE, "average_case": L.FLAT_AVERAGE_CASE,
            "eigenvalue": L.FLAT_EIGENVALUE, "trace": L.FLAT_TRACE}
NORMS = {"l2": L.FLAT_NORM_L2, "linf": L.FLAT_NORM_INF}
_DOUBLES = ("rho", "sigma", "eigen_tolerance", "trace_tolerance", "fd_scale")
_COUNTS = ("worst_iterations", "average_samples", "eigen_iterations", "trace_samples")


@dataclasses.dataclass(frozen=True)
class Flatness:
    """What regopt_trainer_flatness measured; the fields of a measure that
    was not asked for are None. loss is L(w) on the batches given."""
    loss: float
    worst_case: Optional[float] = None      # max L(w + delta) - L(w), >= 0
    worst_radius: Optional[float] = None    # ||delta / T||_p of that delta
    worst_iterations: Optional[int] = None
    worst_halvings: Optional[int] = None
    average_case: Optional[float] = None    # mean L(w + delta) - L(w)
    average_stderr: Optional[float] = None
    average_samples: Optional[int] = None
    eigenvalue: Optional[float] = None      # largest-magnitude Hessian eigenvalue
    eigen_iterations: Optional[int] = None
    eigen_change: Optional[float] = None
    eigen_converged: Optional[bool] = None
    trace: Optional[float] = None           # Hutchinson estimate of tr(H)
    trace_stderr: Optional[float] = None
    trace_samples: Optional[int] = None
    trace_converged: Optional[bool] = None
    fd_step: Optional[float] = None         # h of the last Hessian-vector product
    forward_calls: int = 0
    backward_calls: int = 0


def request(measures=None, options=None):
    """A regopt_flatness_request: the library's defaults, then `measures`
    (names of MEASURES, or None for all) and the options, named as the
    struct's fields; norm is "l2" or "linf", adaptive a bool."""
    r = L.FlatnessRequest()
    lib.regopt_flatness_request_init(ctypes.byref(r))
    if measures is not None:
        if isinstance(measures, str):
            measures = [measures]
        bits = 0
        for m in measures:
            if m not in MEASURES:
                raise ValueError("unknown measure %r (one of %s)" % (m, ", ".join(MEASURES)))
            bits |= MEASURES[m]
        r.measures = bits
    for name, value in (options or {}).items():
        if name == "norm":
            if value not in NORMS:
                raise ValueError("norm must be 'l2' or 'linf', got %r" % (value,))
            r.norm = NORMS[value]
        elif name == "adaptive":
            r.adaptive = 1 if value else 0
        elif name in _DOUBLES:
            setattr(r, name, float(value))
        elif name in _COUNTS:
            setattr(r, name, c_int(value, name, UINT32))
        elif name == "seed":
            r.seed = c_int(value, name, UINT64)
        else:
            raise TypeError("unknown flatness option %r (options: norm, adaptive, %s, seed)"
                            % (name, ", ".join(_DOUBLES + _COUNTS)))
    return r


def result(r, out):
    """The dataclass of a filled regopt_flatness for request r."""
    f = {"loss": out.loss, "fd_step": None, "forward_calls": out.forward_calls,
         "backward_calls": out.backward_calls}
    if r.measures & L.FLAT_WORST_CASE:
        f.update(worst_case=out.worst_case, worst_radius=out.worst_radius,
                 worst_iterations=out.worst_iterations, worst_halvings=out.worst_halvings)
    if r.measures & L.FLAT_AVERAGE_CASE:
        f.update(average_case=out.average_case, average_stderr=out.average_stderr,
                 average_samples=out.average_samples)
    if r.measures & L.FLAT_EIGENVALUE:
        f.update(eigenvalue=out.eigenvalue, eigen_iterations=out.eigen_iterations,
                 eigen_change=out.eigen_change, eigen_converged=bool(out.eigen_converged))
    if r.measures & L.FLAT_TRACE:
        f.update(trace=out.trace, trace_stderr=out.trace_stderr,
                 trace_samples=out.trace_samples, trace_converged=bool(out.trace_converged))
    if r.measures & (L.FLAT_EIGENVALUE | L.FLAT_TRACE):
        f["fd_step"] = out.fd_step
    return Flatness(**f)
