"""Storages and tensors: from persistent ids and rebuild calls to numpy views.

A torch pickle refers to tensor bytes through a persistent id
``('storage', <storage type>, key, location, numel)``; the container maps the key
to its bytes.  Tensors are then rebuilt by calls such as
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``.

Here each storage becomes one :class:`StorageRef`, and each rebuild call a
:class:`TensorSpec`: dtype, shape, strides and offset, all checked in exact
integer arithmetic against the storage before any byte is touched.  A loader
turns specs into numpy views of one buffer per storage (so views and tied
weights share memory as in torch); a lazy handle keeps the specs and reads the
bytes only when asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

import numpy as np

from ..constants import MAX_NDIM
from ..errors import CorruptFileError, LimitExceededError, UnsupportedFormatError
from ..pickle.values import Parameter, brief
from .dtypes import DtypeInfo

__all__ = ["StorageType", "StorageRef", "TensorSpec", "check_view", "view_array", "root_of"]

#: numpy indexes bytes with a signed 64-bit integer; a view claiming more (a stride-0 view of
#: 2**64 elements) cannot be an array, whatever its storage.
MAX_TENSOR_BYTES = 2**63 - 1


class StorageType:
    """A storage class named by a pickle: typed (``torch.FloatStorage``) or untyped."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: DtypeInfo | None) -> None:
        self.name = name
        self.dtype = dtype  # None for torch.storage.UntypedStorage: numel counts bytes

    def __repr__(self) -> str:
        return f"<storage type {self.name}>"


@dataclass(frozen=True, slots=True)
class StorageRef:
    """One storage of the checkpoint: where its bytes live and how many there are (one per storage: slots)."""

    key: str
    dtype: DtypeInfo | None  # element type of a typed storage; None when untyped
    nbytes: int
    location: str
    record: str  # the container's name for the bytes (zip record, legacy key)


#: Set a field of a frozen :class:`TensorSpec` while building it (``object.__setattr__``, looked up once).
_set_field = object.__setattr__


@dataclass(frozen=True, slots=True, init=False)
class TensorSpec:
    """Everything about a tensor except its bytes.

    A checkpoint holds one per tensor (tens of thousands in some), so the class has slots and
    its own ``__init__``: the generated one of a frozen dataclass costs twice as much.
    """

    storage: StorageRef | None  # None for meta tensors, which have no data
    dtype: DtypeInfo
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # in elements, as torch counts them
    offset: int  # in elements
    requires_grad: bool = False
    parameter: bool = False
    conj: bool = False
    neg: bool = False
    # Python attributes of a parameter (``_rebuild_parameter_with_state``); not part of identity.
    attributes: dict | None = field(default=None, compare=False, hash=False)

    def __init__(self, storage: StorageRef | None, dtype: DtypeInfo, shape: tuple[int, ...], strides: tuple[int, ...],
                 offset: int, requires_grad: bool = False, parameter: bool = False, conj: bool = False,
                 neg: bool = False, attributes: dict | None = None) -> None:
        _set_field(self, "storage", storage)
        _set_field(self, "dtype", dtype)
        _set_field(self, "shape", shape)
        _set_field(self, "strides", strides)
        _set_field(self, "offset", offset)
        _set_field(self, "requires_grad", requires_grad)
        _set_field(self, "parameter", parameter)
        _set_field(self, "conj", conj)
        _set_field(self, "neg", neg)
        _set_field(self, "attributes", attributes)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)  # exact: Python ints; 1 for a scalar's empty shape

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def is_contiguous(self) -> bool:
        """As torch's ``is_contiguous()``: row-major, ignoring strides of size-1 dimensions; empty is contiguous."""
        shape = self.shape
        if len(shape) == 1:  # the common case: one dimension is contiguous with stride 1 (or size <= 1)
            return shape[0] <= 1 or self.strides[0] == 1
        if 0 in shape:
            return True
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.strides), strict=True):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def as_parameter(self, requires_grad: bool, attributes: dict | None = None) -> TensorSpec:
        return replace(self, parameter=True, requires_grad=requires_grad, attributes=attributes)


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if type(value) is not tuple or len(value) > MAX_NDIM:
        raise CorruptFileError(f"tensor {what} must be a tuple of at most {MAX_NDIM} integers, got {type(value).__name__}")
    for item in value:
        if type(item) is not int or item < 0:
            raise CorruptFileError(f"tensor {what} {brief(value)} holds {brief(item)}, not a non-negative integer")
    return value


def _refuse_view_form(offset: Any, shape: Any, strides: Any) -> NoReturn:
    """Raise for the first of size, stride and offset that is not of a view's form."""
    shape = _int_tuple(shape, "size")
    strides = _int_tuple(strides, "stride")
    if len(shape) != len(strides):
        raise CorruptFileError(f"tensor size {shape} and stride {strides} differ in length")
    if type(offset) is not int or offset < 0:
        raise CorruptFileError(f"tensor storage offset {brief(offset)} is not a non-negative integer")
    raise CorruptFileError(f"tensor view of size {brief(shape)}, stride {brief(strides)}, offset {brief(offset)} is malformed")


def _view_extent(offset: Any, shape: Any, strides: Any) -> tuple[int, int] | None:
    """``(last element, element count)`` of a well-formed view; None when its form is wrong.

    One pass over the dimensions checks every size and stride and computes both figures, as a
    checkpoint of tens of thousands of tensors needs; the caller then asks
    :func:`_refuse_view_form` which part is wrong.
    """
    if (type(shape) is not tuple or type(strides) is not tuple or len(shape) != len(strides)
            or len(shape) > MAX_NDIM or type(offset) is not int or offset < 0):
        return None
    last, numel = offset, 1
    for size, stride in zip(shape, strides, strict=True):
        if type(size) is not int or size < 0 or type(stride) is not int or stride < 0:
            return None
        last += (size - 1) * stride
        numel *= size
    return last, numel


def check_view(storage: StorageRef | None, dtype: DtypeInfo, offset: Any, shape: Any, strides: Any) -> tuple:
    """Validate a view of a storage; return ``(offset, shape, strides)``.

    The last element the view touches, ``offset + sum((size - 1) * stride)``, must lie
    inside the storage; Python integers make the arithmetic exact, so no overflow can
    hide an out-of-bounds view.
    """
    extent = _view_extent(offset, shape, strides)
    if extent is None:
        _refuse_view_form(offset, shape, strides)
    last, numel = extent
    if storage is not None and numel:  # an empty view touches no element
        capacity = storage.nbytes // dtype.itemsize
        if last >= capacity:
            raise CorruptFileError(
                f"tensor of size {shape}, stride {strides}, offset {offset} reaches element {last} "
                f"of storage {storage.key!r}, which holds {capacity} {dtype.torch_name} elements"
            )
    if numel * dtype.itemsize > MAX_TENSOR_BYTES:  # in bounds only through stride 0, or a meta tensor
        raise LimitExceededError(
            f"tensor of size {shape} would hold {numel * dtype.itemsize} bytes, more than numpy can index"
        )
    return offset, shape, strides


def _resolve_flags(view: np.ndarray, info: DtypeInfo, *, conj: bool, neg: bool) -> np.ndarray:
    """The values of a lazy conjugate / negative view, in a fresh array of the same shape.

    torch saves such a view as its base's bytes plus a flag; numpy has no lazy views,
    so the values are computed once.  For IEEE-style floats and complex numbers,
    conjugation and negation flip sign bits of the stored bytes: exact for -0.0 and
    NaN payloads, which ufuncs are not (ml_dtypes' complex32 negation goes through
    float32 and quiets signaling NaNs).  Other types use numpy's negation (integers
    wrap as in torch).  A read-only view gives a read-only result, as every other
    array of a memory-mapped load is.
    """
    out = np.empty(view.shape, view.dtype)
    np.copyto(out, view)
    if info.sign_magnitude:
        width = info.itemsize // 2 if info.is_complex else info.itemsize
        components = out.reshape(-1).view(f"u{width}")  # native order: the sign is the top bit of the value
        sign = components.dtype.type(1 << (8 * width - 1))
        if neg:
            components ^= sign
        if conj:
            components[1::2] ^= sign  # imaginary parts
    else:
        if conj and info.is_complex:
            np.conjugate(out, out=out)
        if neg:
            np.negative(out, out=out)
    if not view.flags.writeable:
        out.flags.writeable = False
    return out


def _flagged_view(spec: TensorSpec, buffer: np.ndarray, dtype: np.dtype, strides: tuple[int, ...]) -> np.ndarray:
    """A conj/neg view: the flags resolved over the elements the view spans, viewed with its strides.

    Resolving only the span (never the expanded view) keeps the cost within the storage's
    size, so a stride-0 view of one element stays one element, and the result keeps torch's
    strides and sharing among its own elements.
    """
    span = 1 + sum((size - 1) * stride for size, stride in zip(spec.shape, spec.strides, strict=True))
    segment = np.ndarray((span,), dtype, buffer=buffer, offset=spec.offset * spec.dtype.itemsize)
    resolved = _resolve_flags(segment, spec.dtype, conj=spec.conj, neg=spec.neg)
    # through a uint8 view, as for every other tensor: ml_dtypes types have no array-interface typestr
    return np.ndarray(spec.shape, dtype, buffer=resolved.view(np.uint8), offset=0, strides=strides)


def view_array(spec: TensorSpec, buffer: np.ndarray) -> np.ndarray:
    """The tensor as a numpy view of its storage's bytes (``buffer``, uint8)."""
    dtype = spec.dtype.numpy
    if dtype is None:
        raise UnsupportedFormatError(f"torch.{spec.dtype.torch_name} tensors have no exact numpy dtype")
    itemsize = spec.dtype.itemsize
    shape = spec.shape
    strides = tuple([s * itemsize for s in spec.strides])
    try:
        if 0 in shape:
            arr = np.ndarray(shape, dtype, buffer=buffer[:0], offset=0, strides=strides)
        elif spec.conj or spec.neg:
            arr = _flagged_view(spec, buffer, dtype, strides)
        else:
            arr = np.ndarray(shape, dtype, buffer=buffer, offset=spec.offset * itemsize, strides=strides)
    except ValueError as exc:  # numpy's own limits, should a view pass ours
        raise LimitExceededError(f"a tensor of size {shape} cannot be represented as a numpy array: {exc}") from None
    if spec.parameter:
        parameter = arr.view(Parameter)
        parameter.requires_grad = spec.requires_grad
        parameter.attributes = spec.attributes
        return parameter
    return arr


def root_of(array: np.ndarray) -> np.ndarray:
    """The last ndarray on the ``base`` chain: the array whose memory a storage is."""
    root = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    return root
