"""Passes and batches as seen by Python callbacks, and the Batch given
to Trainer.step / Trainer.evaluate."""
import ctypes
import struct
import sys

from . import _lib as L
from ._arrays import _need_numpy, _np, _view
from ._ints import SIZE, c_int

Pass_loss_scale_offset = L.Pass.loss_scale.offset
Pass_task_scale_offset = L.Pass.task_scale.offset


class _BatchAddr(ctypes.Structure):
    """struct regopt_batch with its pointers as integers: _fill writes the
    addresses over the descriptor (from_buffer) instead of building ctypes
    pointer objects (numpy's .ctypes.data_as costs a cast per field)."""
    _fields_ = [(n, ctypes.c_size_t if t is ctypes.c_void_p or issubclass(t, ctypes._Pointer)
                 else t) for n, t in L.Batch._fields_]


_BATCH_SIZE = ctypes.sizeof(L.Batch)  # what regopt_batch_init writes into .size


class Pass:
    """What one forward/backward invocation is about (regopt_pass). Array
    attributes are NumPy views over library memory, valid during the call:
      outputs            (rows, output_width) float32; forward writes it
      d_outputs          (rows, output_width), read-only; backward only
      input_perturbation (input_rows, input_width), read-only, or None
      d_input            (input_rows, input_width), backward writes it, or None
    .data is the Python object given as Batch(data=...); rows
    [row_offset, row_offset + rows) of it are the subject of the pass."""

    __slots__ = ("_c", "data", "_cache")

    def __init__(self, c, data):
        self._c = c
        self.data = data
        self._cache = None  # the array views made, on first use

    # scalar fields
    rows = property(lambda s: s._c.rows)
    row_offset = property(lambda s: s._c.row_offset)
    slot = property(lambda s: s._c.slot)
    flags = property(lambda s: s._c.flags)
    seed = property(lambda s: s._c.seed)
    seed2 = property(lambda s: s._c.seed2)
    # mixed precision: the scale S of d_outputs (and so of the gradients the
    # backward computes); 1.0 without loss scaling (and from a library that
    # predates the field)
    loss_scale = property(lambda s: s._c.loss_scale
                          if s._c.size > Pass_loss_scale_offset else 1.0)
    # the weight of this pass's task loss in what its backward differentiates
    # (regopt_pass.task_scale): an auxiliary loss added to the task loss gets
    # task_scale x loss_scale in backward; 0 for passes not of the task loss
    task_scale = property(lambda s: s._c.task_scale
                          if s._c.size > Pass_task_scale_offset else 0.0)
    micro_batch = property(lambda s: s._c.micro_batch)
    output_width = property(lambda s: s._c.output_width)
    input_rows = property(lambda s: s._c.input_rows)
    input_width = property(lambda s: s._c.input_width)

    # flags
    train = property(lambda s: bool(s._c.flags & L.PASS_TRAIN))
    no_grad = property(lambda s: bool(s._c.flags & L.PASS_NO_GRAD))
    perturbed_weights = property(lambda s: bool(s._c.flags & L.PASS_PERTURBED_WEIGHTS))
    teacher = property(lambda s: bool(s._c.flags & L.PASS_TEACHER))
    no_param_grad = property(lambda s: bool(s._c.flags & L.PASS_NO_PARAM_GRAD))
    doubled = property(lambda s: bool(s._c.flags & L.PASS_DOUBLED))

    @property
    def update_batch_stats(self):
        """True when batch-norm running statistics may move: a training pass
        at the unperturbed weights without an input perturbation."""
        f = self._c.flags
        return bool(f & L.PASS_TRAIN) and not (f & (L.PASS_PERTURBED_WEIGHTS | L.PASS_TEACHER)) \
            and not self._c.input_perturbation

    def _arr(self, name, ptr, shape, readonly):
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        a = cache.get(name)
        if a is None and ptr:
            a = _view(ptr, shape, readonly=readonly)
            cache[name] = a
        return a

    @property
    def rows_slice(self):
        return slice(self._c.row_offset, self._c.row_offset + self._c.rows)

    @property
    def outputs(self):
        c = self._c
        return self._arr("outputs", c.outputs, (c.rows, c.output_width), False)

    @property
    def d_outputs(self):
        c = self._c
        return self._arr("d_outputs", c.d_outputs, (c.rows, c.output_width), True)

    @property
    def input_perturbation(self):
        c = self._c
        return self._arr("input_perturbation", c.input_perturbation,
                         (c.input_rows, c.input_width), True)

    @property
    def d_input(self):
        c = self._c
        return self._arr("d_input", c.d_input, (c.input_rows, c.input_width), False)

    def __repr__(self):
        names = [n for n, b in (("TRAIN", L.PASS_TRAIN), ("NO_GRAD", L.PASS_NO_GRAD),
                                ("PERTURBED_WEIGHTS", L.PASS_PERTURBED_WEIGHTS),
                                ("TEACHER", L.PASS_TEACHER),
                                ("NO_PARAM_GRAD", L.PASS_NO_PARAM_GRAD),
                                ("DOUBLED", L.PASS_DOUBLED)) if self._c.flags & b]
        return "<regopt.Pass slot=%d rows=%d+%d flags=%s seed=%d>" % (
            self.slot, self.row_offset, self.rows, "|".join(names) or "0", self.seed)


class BatchView:
    """The batch rows handed to a Python loss callback (a regopt_batch view):
    .data, .rows and NumPy views of labels, targets, mask, weights, task_mask
    (or None)."""

    def __init__(self, c, data, width):
        self.data = data
        self.rows = c.rows
        n = c.rows
        self.labels = _view(ctypes.cast(c.labels, ctypes.c_void_p).value, (n,),
                            _np and _np.int32, ctypes.c_int32, True)
        self.targets = _view(ctypes.cast(c.targets, ctypes.c_void_p).value, (n, width),
                             readonly=True)
        self.mask = _view(ctypes.cast(c.mask, ctypes.c_void_p).value, (n,), _np and _np.uint8,
                          ctypes.c_uint8, True)
        self.weights = _view(ctypes.cast(c.weights, ctypes.c_void_p).value, (n,), readonly=True)
        # a smaller (older) descriptor has no task_mask
        has_tm = c.size >= type(c).task_mask.offset + ctypes.sizeof(ctypes.c_void_p)
        self.task_mask = _view(ctypes.cast(c.task_mask, ctypes.c_void_p).value, (n,),
                               _np and _np.uint8, ctypes.c_uint8, True) if has_tm else None


class Batch:
    """One (micro-)batch for Trainer.step / Trainer.evaluate.

    data     any Python object; callbacks receive it as Pass.data
    rows     number of rows; inferred from labels/targets/mask/weights/len(data)
    labels   class indices (converted to int32), softmax CE
    targets  rows x output_width regression targets (converted to float32)
    mask     1 = keep, 0 = padding (converted to uint8)
    weights  per-row weights (converted to float32)
    input_rows  embedding rows when the model has an input width (0 = rows)
    task_mask   1 = labelled (task loss), 0 = unlabelled: no task loss, the
                consistency terms (R-Drop, SMART, VAT, ...) still apply
                (converted to uint8); None = every row labelled

    Per-step arrays are converted (copied if needed) and kept alive by the
    Batch object for as long as it exists: NumPy arrays, or torch tensors
    for torch tensors given (converted with torch, on the CPU: a training
    step then touches no NumPy code, which a step on a small model paid for
    in cold caches more than anything else the binding does)."""

    __slots__ = ("data", "rows", "labels", "targets", "mask", "weights", "input_rows",
                 "task_mask")

    def __init__(self, data=None, rows=None, labels=None, targets=None, mask=None,
                 weights=None, input_rows=0, task_mask=None):
        self.data = data
        if labels.__class__ is _TORCH_TENSOR and rows is None and targets is None \
                and mask is None and weights is None and task_mask is None and not input_rows:
            lab = _torch_labels(labels)
            if lab is not None:  # class labels alone, the common torch batch
                self.labels, self.rows, self.input_rows = lab, lab.shape[0], 0
                self.targets = self.mask = self.weights = self.task_mask = None
                return
        conv = self._convert
        # the fields left out stay None without a call each (a step on a
        # small model pays for every call on its path)
        self.labels = None if labels is None else conv(labels, "labels", "int32", True)
        self.targets = None if targets is None else conv(targets, "targets", "float32")
        self.mask = None if mask is None else conv(mask, "mask", "uint8", True)
        self.weights = None if weights is None else conv(weights, "weights", "float32")
        self.task_mask = None if task_mask is None else conv(task_mask, "task_mask", "uint8",
                                                             True)
        per_row = [(n, a) for n, a in (("labels", self.labels), ("mask", self.mask),
                                       ("weights", self.weights),
                                       ("task_mask", self.task_mask)) if a is not None]
        if rows is None:
            if per_row:
                rows = per_row[0][1].shape[0]
            elif self.targets is not None:
                rows = self.targets.shape[0]
            else:
                rows = _leading_dim(data)
        if rows is None:
            raise ValueError("Batch: rows is not given and cannot be inferred")
        self.rows = c_int(rows, "Batch rows", SIZE)
        self.input_rows = c_int(input_rows, "Batch input_rows", SIZE) if input_rows else 0
        for name, a in per_row:
            if _count(a) != self.rows:
                raise ValueError("Batch: %s has %d elements for %d rows" % (name, _count(a),
                                                                           self.rows))

    @staticmethod
    def _convert(a, name, dtype, integral=False):
        """a as a C-contiguous array of dtype ("int32", "float32", "uint8")."""
        if a is None:
            return None
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(a, torch.Tensor):
            return _convert_torch(torch, a, name, dtype, integral)
        np = _need_numpy()
        dtype = getattr(np, dtype)
        if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch-like tensor
            a = a.numpy() if a.device.type == "cpu" and not a.requires_grad \
                else a.detach().cpu().numpy()
        arr = np.asarray(a)
        if integral and arr.dtype.kind not in "iub":
            raise TypeError("Batch: %s must be integers or booleans, got dtype %s"
                            % (name, arr.dtype))
        if not integral and arr.dtype.kind not in "iuf":
            raise TypeError("Batch: %s must be numbers, got dtype %s" % (name, arr.dtype))
        if name == "labels" and arr.size and (arr.min() < -2 ** 31 or arr.max() >= 2 ** 31):
            raise ValueError("Batch: labels do not fit int32")
        return np.ascontiguousarray(arr, dtype=dtype)

    def _fill(self, desc, token, width, has_input, offset=0):
        """Write the descriptor at byte offset of desc (an L.Batch or an array
        of them; what is not given is written 0). Its size is our struct's:
        what regopt_batch_init writes when the library is the one this
        binding was written for, and, with a newer library's longer struct,
        the stride the library then reads (where regopt_batch_init would
        zero its longer size past our descriptor). Written by one
        struct.pack_into when the struct is all words (every platform the
        binding runs on), else field by field through ctypes."""
        if self.targets is not None and _count(self.targets) != self.rows * width:
            raise ValueError("Batch: targets has %d elements, the model needs rows x "
                             "output_width = %d x %d" % (_count(self.targets), self.rows, width))
        lab, tg, mk, wt, tm = self.labels, self.targets, self.mask, self.weights, self.task_mask
        fields = (_BATCH_SIZE, token or 0, self.rows,
                  0 if lab is None else _address(lab), 0 if tg is None else _address(tg),
                  0 if mk is None else _address(mk), 0 if wt is None else _address(wt),
                  self.input_rows, 0 if tm is None else _address(tm))
        if _BATCH_WORDS is not None:
            _BATCH_WORDS.pack_into(desc, offset, *fields)
            return
        c = _BatchAddr.from_buffer(desc, offset)
        for (name, _), v in zip(_BatchAddr._fields_, fields):
            setattr(c, name, v)


def _words_layout():
    """A struct.Struct writing struct regopt_batch in one call when each of
    its fields is a size_t or a pointer, in order, without padding; else
    None (Batch._fill then writes through ctypes)."""
    fmt = ""
    for name, t in L.Batch._fields_:
        f = getattr(L.Batch, name)
        if ctypes.sizeof(t) != ctypes.sizeof(ctypes.c_size_t) or f.offset != struct.calcsize(
                "@" + fmt):
            return None
        fmt += "N" if t is ctypes.c_size_t else "P"
    s = struct.Struct("@" + fmt)
    return s if s.size == _BATCH_SIZE else None


_BATCH_WORDS = _words_layout()


def _count(a):
    """Elements of a converted array (a NumPy array or a torch tensor)."""
    n = getattr(a, "numel", None)
    return n() if n is not None else a.size


def _address(a):
    p = getattr(a, "data_ptr", None)
    return p() if p is not None else a.ctypes.data


def _convert_torch(torch, a, name, dtype, integral):
    """Batch._convert for a torch tensor, in torch: the CPU tensor of the
    dtype, contiguous (the same memory when it already is)."""
    kinds = _torch_kinds(torch)
    t = a.detach() if a.requires_grad else a
    if not t.is_cpu:
        t = t.cpu()
    kind = kinds.get(t.dtype)
    if integral and kind not in ("i", "u", "b"):
        raise TypeError("Batch: %s must be integers or booleans, got dtype %s" % (name, t.dtype))
    if not integral and kind not in ("i", "u", "f"):
        raise TypeError("Batch: %s must be numbers, got dtype %s" % (name, t.dtype))
    target = kinds[dtype]
    if name == "labels" and t.dtype not in kinds["narrow"]:
        n = t.numel()
        if n <= _LABELS_BY_LIST and t.dim() == 1:
            # a small batch's labels read in one call and checked in Python:
            # cheaper than torch.aminmax and two .item() (three dispatches)
            v = t.tolist()
            lo, hi = (min(v), max(v)) if v else (0, 0)
        elif n:
            lo, hi = (int(e) for e in torch.aminmax(t))
        else:
            lo = hi = 0
        if lo < -2 ** 31 or hi >= 2 ** 31:
            raise ValueError("Batch: labels do not fit int32")
    if t.dtype != target:
        t = t.to(target)
    return t if t.is_contiguous() else t.contiguous()


# labels of at most this many elements are range-checked through .tolist()
# (faster than torch.aminmax below about this size)
_LABELS_BY_LIST = 64

_TORCH_TENSOR = None  # torch.Tensor once _torch_kinds has run (Batch's shortcut)
_INT32 = _INT64 = None


def _torch_labels(t):
    """What _convert_torch gives for class labels t (a torch.Tensor, not a
    subclass) in the common case -- a contiguous 1-D CPU tensor, int32, or
    int64 of at most _LABELS_BY_LIST rows -- with fewer calls; None for
    any other tensor (Batch then takes the general path)."""
    if t.requires_grad or not t.is_cpu or t.dim() != 1 or not t.is_contiguous():
        return None
    dt = t.dtype
    if dt == _INT32:
        return t
    if dt != _INT64 or t.shape[0] > _LABELS_BY_LIST:
        return None
    v = t.tolist()
    if v and (min(v) < -2 ** 31 or max(v) >= 2 ** 31):
        raise ValueError("Batch: labels do not fit int32")
    return t.to(_INT32)


_TORCH_KINDS = None


def _torch_kinds(torch):
    """torch dtype -> NumPy's kind letter ("i", "u", "b", "f", "c"), the
    conversion targets by name, and "narrow": the dtypes whose values all
    fit int32 (no range check for labels). Made once, on first use."""
    global _TORCH_KINDS, _TORCH_TENSOR, _INT32, _INT64
    if _TORCH_KINDS is None:
        _INT32, _INT64 = torch.int32, torch.int64
        k = {}
        for names, kind in (("int8 int16 int32 int64", "i"), ("uint8 uint16 uint32 uint64", "u"),
                            ("bool", "b"), ("float16 bfloat16 float32 float64", "f"),
                            ("complex32 complex64 complex128", "c")):
            for n in names.split():
                dt = getattr(torch, n, None)
                if isinstance(dt, torch.dtype):
                    k[dt] = kind
        for n in ("int32", "float32", "uint8"):
            k[n] = getattr(torch, n)
        k["narrow"] = (torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
        _TORCH_KINDS = k
        _TORCH_TENSOR = torch.Tensor
    return _TORCH_KINDS


def _leading_dim(data):
    """Rows of a batch's data: shape[0] of an array, of the first array of a
    tuple/list/dict, else len(data)."""
    if data is None:
        return None
    shape = getattr(data, "shape", None)
    if shape is not None and len(shape) > 0:
        return int(shape[0])
    if isinstance(data, dict):
        return _leading_dim(next(iter(data.values()))) if data else None
    if isinstance(data, (tuple, list)) and data and getattr(data[0], "shape", None) is not None:
        return _leading_dim(data[0])
    if hasattr(data, "__len__"):
        return len(data)
    return None


def _as_batches(batches, fields):
    if batches is None:
        return [Batch(**fields)]
    if fields:
        raise TypeError("give either Batch objects or batch fields, not both")
    if isinstance(batches, Batch):
        return [batches]
    if isinstance(batches, dict):
        return [Batch(**batches)]
    out = []
    for b in batches:
        out.append(b if isinstance(b, Batch) else Batch(**b))
    if not out:
        raise ValueError("no batches")
    return out


def _int_rc(rc):
    if rc is None or rc is True:
        return 0 if rc is None else 1
    try:
        v = int(rc)
    except Exception:
        return 1
    if v == 0:
        return 0
    return v if -2 ** 31 <= v < 2 ** 31 else 1
