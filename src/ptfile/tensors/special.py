"""Tensors that are not a plain strided view: quantized, sparse, meta, and tensor subclasses.

torch pickles each of them with its own rebuild function; ptfile re-implements
those functions over its own value types and never calls torch:

* ``torch._utils._rebuild_qtensor(storage, offset, size, stride, qparams, requires_grad, hooks)``
  gives a :class:`QuantizedTensor`: the integer array torch stores, plus the
  quantizer.  ``qparams`` is ``(torch.per_tensor_affine, scale, zero_point)`` or
  ``(torch.per_channel_affine[_float_qparams], scales, zero_points, axis)``.
* ``torch._utils._rebuild_sparse_tensor(layout, data)`` gives a :class:`SparseTensor`;
  the layout comes from ``torch.serialization._get_layout("torch.sparse_coo")``.
  COO data is ``(indices, values, size[, is_coalesced])``, compressed layouts
  (CSR, CSC, BSR, BSC) ``(compressed_indices, plain_indices, values, size)``.
* ``torch._utils._rebuild_meta_tensor_no_storage(dtype, size, stride, requires_grad)``
  gives a :class:`MetaTensor`: shape and type, no data.
* ``torch._tensor._rebuild_from_type_v2(func, cls, args, state)`` rebuilds a tensor
  with ``func(*args)`` (only an allowlisted tensor rebuild function), then records
  the class and the Python attributes: a :class:`TensorSubclass` array, or a
  :class:`~ptfile.pickle.values.Parameter` for ``torch.nn.Parameter``.

When a lazy handle lists tensors, every array inside these values is still a
:class:`~ptfile.tensors.views.TensorSpec`; :meth:`materialize` turns them into arrays.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from ..errors import CorruptFileError, UnsupportedFormatError
from ..pickle.engine import GlobalRef
from ..pickle.values import Global, brief
from . import dtypes
from .rebuild import TorchDtype, _bool, _hooks, _make, _storage
from .views import StorageRef, TensorSpec, check_view

__all__ = [
    "NestedTensor",
    "QScheme",
    "Layout",
    "QuantizedTensor",
    "SparseTensor",
    "MetaTensor",
    "TensorSubclass",
    "SpecialTensor",
    "rebuild_qtensor",
    "rebuild_sparse_tensor",
    "rebuild_meta_tensor",
    "rebuild_from_type_v2",
    "get_layout",
]

#: Quantization schemes torch names as ``torch.<name>`` globals.
QSCHEMES = (
    "per_tensor_affine",
    "per_channel_affine",
    "per_tensor_symmetric",
    "per_channel_symmetric",
    "per_channel_affine_float_qparams",
)
#: Tensor layouts torch names as ``torch.<name>`` and ``_get_layout("torch.<name>")``.
LAYOUTS = ("strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc", "_mkldnn", "jagged")
_COMPRESSED = ("sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc")
#: Quantized types whose elements are packed several to a byte; torch indexes them differently.
_PACKED_QUANTIZED = frozenset({"quint4x2", "quint2x4"})
#: Integer element types torch accepts for sparse indices.
_INDEX_TYPES = frozenset({"int32", "int64"})


class QScheme(Global):
    """A ``torch.<qscheme>`` global such as ``torch.per_tensor_affine``: a value."""

    __slots__ = ()

    def __init__(self, name: str) -> None:
        super().__init__("torch", name)


class Layout(Global):
    """A ``torch.<layout>`` value such as ``torch.sparse_coo``."""

    __slots__ = ()

    def __init__(self, name: str) -> None:
        super().__init__("torch", name)


_QSCHEME_VALUES = {name: QScheme(name) for name in QSCHEMES}
_LAYOUT_VALUES = {name: Layout(name) for name in LAYOUTS}


def qscheme_value(name: str) -> QScheme:
    return _QSCHEME_VALUES[name]


def layout_value(name: str) -> Layout:
    return _LAYOUT_VALUES[name]


# -- shared helpers ------------------------------------------------------------


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, (np.ndarray, TensorSpec)):
        return tuple(value.shape)
    raise CorruptFileError(f"expected a tensor, got {type(value).__name__}")


def _type_name(value: Any) -> str:
    """torch's name for the element type of an array or a spec."""
    if type(value) is TensorSpec:
        return value.dtype.torch_name
    info = dtypes.by_numpy(value.dtype)
    return info.torch_name if info is not None else value.dtype.name


def _materialize(value: Any, array: Callable[[TensorSpec], Any]) -> Any:
    return array(value) if type(value) is TensorSpec else value


def _need_arrays(*values: Any) -> None:
    if any(type(v) is TensorSpec for v in values):
        raise UnsupportedFormatError("this tensor was listed lazily; read it with handle[key] first")


class SpecialTensor:
    """Base of the tensor values that are not one numpy array."""

    __slots__ = ()

    def materialize(self, array: Callable[[TensorSpec], Any]) -> SpecialTensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def specs(self) -> list[TensorSpec]:
        """The lazily listed tensors inside this value (empty once materialized)."""
        return [v for v in self._parts() if type(v) is TensorSpec]

    def _parts(self) -> tuple:  # pragma: no cover - abstract
        return ()


# -- quantized -----------------------------------------------------------------


class QuantizedTensor(SpecialTensor):
    """A quantized tensor: the integers torch stores and the quantizer that maps them to floats.

    Attributes:
        data: the integer array (``int_repr()``): int8 for ``qint8``, uint8 for ``quint8``,
            int32 for ``qint32``; a view of the file like any tensor.
        dtype: torch's quantized type name: ``qint8``, ``quint8`` or ``qint32``.
        qscheme: ``per_tensor_affine``, ``per_channel_affine`` or ``per_channel_affine_float_qparams``.
        scale, zero_point: a float and an int for per-tensor schemes, else None.
        scales, zero_points, axis: 1-D arrays along ``axis`` for per-channel schemes, else None.
        requires_grad: as saved.
    """

    __slots__ = ("data", "dtype", "qscheme", "scale", "zero_point", "scales", "zero_points", "axis", "requires_grad")

    def __init__(self, data: Any, dtype: str, qscheme: str, *, scale: float | None = None,
                 zero_point: int | None = None, scales: Any = None, zero_points: Any = None,
                 axis: int | None = None, requires_grad: bool = False) -> None:
        self.data = data
        self.dtype = dtype
        self.qscheme = qscheme
        self.scale = scale
        self.zero_point = zero_point
        self.scales = scales
        self.zero_points = zero_points
        self.axis = axis
        self.requires_grad = requires_grad

    @property
    def shape(self) -> tuple[int, ...]:
        return _shape(self.data)

    def _parts(self) -> tuple:
        return (self.data, self.scales, self.zero_points)

    def materialize(self, array: Callable[[TensorSpec], Any]) -> QuantizedTensor:
        copy = QuantizedTensor(
            _materialize(self.data, array), self.dtype, self.qscheme, scale=self.scale, zero_point=self.zero_point,
            scales=_materialize(self.scales, array), zero_points=_materialize(self.zero_points, array),
            axis=self.axis, requires_grad=self.requires_grad,
        )
        if copy.scales is not None:
            copy.scales, copy.zero_points = _channel_params(copy.qscheme, copy.scales, copy.zero_points)
        return copy

    def int_repr(self) -> np.ndarray:
        """The stored integers, as torch's ``int_repr()`` gives them."""
        _need_arrays(self.data)
        return self.data

    def dequantize(self) -> np.ndarray:
        """The float32 values, computed in the same order and precision as torch's CPU kernels."""
        _need_arrays(*self._parts())
        q = np.asarray(self.data)
        if self.qscheme == "per_tensor_affine":
            # (float)(int32)(q - (int32)zero_point) * (float)scale; the int32 difference wraps as in C++.
            zp = np.array(self.zero_point, np.int64).astype(np.int32)
            diff = (q.astype(np.int64) - zp).astype(np.int32)
            return diff.astype(np.float32) * np.float32(self.scale)
        assert self.axis is not None  # a per-channel scheme always has its axis (see _per_channel)
        shape = [1] * q.ndim
        shape[self.axis] = -1
        scales = self.scales.reshape(shape)
        zero_points = self.zero_points.reshape(shape)
        if self.qscheme == "per_channel_affine":
            # (double)((float)q - (float)zp) * scale(double), rounded to float.
            diff = q.astype(np.float32) - zero_points.astype(np.float32)
            return (diff.astype(np.float64) * scales).astype(np.float32)
        # per_channel_affine_float_qparams: float arithmetic throughout.
        return (q.astype(np.float32) - zero_points) * scales

    def __repr__(self) -> str:
        if self.scales is None:
            params = f"scale={self.scale!r}, zero_point={self.zero_point!r}"
        else:
            params = f"axis={self.axis}"
        return f"<QuantizedTensor {self.dtype} shape={self.shape} {self.qscheme} {params}>"


def _channel_params(qscheme: str, scales: Any, zero_points: Any) -> tuple[np.ndarray, np.ndarray]:
    """Scales and zero points in the types torch's quantizer keeps them."""
    want: tuple[type[np.generic], type[np.generic], str, str]
    if qscheme == "per_channel_affine":
        want = (np.float64, np.int64, "fiV", "iu")
    else:
        want = (np.float32, np.float32, "fiV", "fV")
    out = []
    for value, dtype, kinds, what in ((scales, want[0], want[2], "scales"), (zero_points, want[1], want[3], "zero points")):
        arr = np.asarray(value)
        if arr.dtype.kind not in kinds:
            raise CorruptFileError(f"quantizer {what} of type {arr.dtype} do not fit {qscheme}")
        out.append(arr.astype(dtype))
    if not np.all(np.isfinite(out[0])):
        raise CorruptFileError("quantizer scales must be finite")
    return out[0], out[1]


def _number_list(value: Any, kinds: tuple[type, ...], what: str) -> np.ndarray:
    if not all(type(v) in kinds for v in value):
        raise CorruptFileError(f"quantizer {what} list holds something that is not a number")
    return np.array(value, np.float64 if float in kinds else np.int64)


#: Element types that make torch's per-channel quantizer use float zero points.
_FLOAT_TYPES = frozenset({"float16", "bfloat16", "float32", "float64"})


def _channel_scheme(zero_points: Any) -> str:
    """torch picks the per-channel quantizer by the zero points' type, whatever qscheme the file names.

    ``torch.save`` writes ``per_channel_affine`` for both per-channel schemes; float
    zero points make ``_empty_per_channel_affine_quantized`` build a float-qparams quantizer.
    """
    return "per_channel_affine_float_qparams" if _type_name(zero_points) in _FLOAT_TYPES else "per_channel_affine"


def _per_channel(qparams: tuple, shape: tuple[int, ...]) -> tuple[Any, Any, int]:
    if len(qparams) != 4:
        raise CorruptFileError(f"per-channel quantizer parameters must be (qscheme, scales, zero_points, axis), got {len(qparams)} items")
    _, scales, zero_points, axis = qparams
    if type(axis) is not int or not 0 <= axis < len(shape):
        raise CorruptFileError(f"per-channel axis {brief(axis)} is out of range for size {shape}")
    if type(scales) is list:
        scales = _number_list(scales, (float, int), "scales")
    if type(zero_points) is list:
        # torch turns lists into (double, long) tensors, or (float, float) ones for float qparams
        kinds = (int, float) if qparams[0].name == "per_channel_affine_float_qparams" else (int,)
        zero_points = _number_list(zero_points, kinds, "zero points")
    for value, what in ((scales, "scales"), (zero_points, "zero points")):
        if not isinstance(value, (np.ndarray, TensorSpec)) or len(_shape(value)) != 1:
            raise CorruptFileError(f"per-channel {what} must be a 1-D tensor or a list")
        if _shape(value)[0] != shape[axis]:
            raise CorruptFileError(f"per-channel {what} hold {_shape(value)[0]} values for size[{axis}]={shape[axis]}")
    return scales, zero_points, axis


def _per_tensor(qparams: tuple, info: dtypes.DtypeInfo) -> tuple[float, int]:
    if len(qparams) != 3:
        raise CorruptFileError(f"per-tensor quantizer parameters must be (qscheme, scale, zero_point), got {len(qparams)} items")
    _, scale, zero_point = qparams
    if type(scale) not in (float, int) or not math.isfinite(scale):
        raise CorruptFileError(f"quantizer scale {brief(scale)} is not a finite number")
    if type(zero_point) is not int:
        raise CorruptFileError(f"quantizer zero point {brief(zero_point)} is not an integer")
    limits = np.iinfo(info.numpy)
    if not limits.min <= zero_point <= limits.max:
        raise CorruptFileError(f"quantizer zero point {zero_point} is out of range for {info.torch_name}")
    return float(scale), zero_point


def rebuild_qtensor(context: Any, storage: Any, offset: Any, size: Any, stride: Any, qparams: Any,
                    requires_grad: Any, hooks: Any) -> QuantizedTensor:
    """``torch._utils._rebuild_qtensor``: integers from the storage, and their quantizer."""
    storage = _storage(storage)
    _hooks(hooks)
    grad = _bool(requires_grad, "requires_grad")
    info = storage.dtype
    if info is None or not info.is_quantized:
        raise CorruptFileError(f"quantized tensor rebuilt from storage {storage.key!r}, which is not of a quantized type")
    if info.torch_name in _PACKED_QUANTIZED:
        raise UnsupportedFormatError(f"{info.torch_name} quantized tensors (packed sub-byte elements) are not supported")
    if type(qparams) is not tuple or not qparams or type(qparams[0]) is not QScheme:
        raise CorruptFileError(f"quantizer parameters {brief(qparams)} do not start with a torch qscheme")
    scheme = qparams[0].name
    data = _make(context, storage, info, offset, size, stride, requires_grad=grad)
    shape = _shape(data)
    if scheme == "per_tensor_affine":
        scale, zero_point = _per_tensor(qparams, info)
        return QuantizedTensor(data, info.torch_name, scheme, scale=scale, zero_point=zero_point, requires_grad=grad)
    if scheme in ("per_channel_affine", "per_channel_affine_float_qparams"):
        scales, zero_points, axis = _per_channel(qparams, shape)
        scheme = _channel_scheme(zero_points)
        if type(scales) is not TensorSpec and type(zero_points) is not TensorSpec:
            scales, zero_points = _channel_params(scheme, scales, zero_points)
        return _checked(context, QuantizedTensor(data, info.torch_name, scheme, scales=scales, zero_points=zero_points,
                                                 axis=axis, requires_grad=grad))
    raise CorruptFileError(f"torch cannot deserialize quantized tensors with qscheme {scheme}")


_Special = TypeVar("_Special", bound=SpecialTensor)


def _checked(context: Any, value: _Special) -> _Special:
    """The value, after the checks its parts' values need when they are still specs (a scan, a lazy listing).

    Loading checks the values of these parts (a nested tensor's sizes and offsets, a quantizer's
    scales) as it materializes them; a listing makes the same checks on a materialized copy it
    then drops, so a file ``scan`` calls clean is one ``load`` reads.
    """
    if value.specs():
        check = getattr(context, "check_parts", None)
        if check is not None:
            check(value)
    return value


# -- sparse --------------------------------------------------------------------


class SparseTensor(SpecialTensor):
    """A sparse tensor in one of torch's sparse layouts.

    Attributes:
        layout: ``sparse_coo``, ``sparse_csr``, ``sparse_csc``, ``sparse_bsr`` or ``sparse_bsc``.
        shape: the dense shape.
        indices: COO only: an int64 array of shape ``(sparse_dims, nnz)``.
        compressed_indices, plain_indices: compressed layouts only (``crow``/``col`` for CSR,
            ``ccol``/``row`` for CSC, the same over blocks for BSR/BSC).
        values: the stored values (``(nnz, ...)``; blocks for BSR/BSC).
        is_coalesced: COO only: what the file says, or None.
    """

    __slots__ = ("layout", "shape", "indices", "compressed_indices", "plain_indices", "values", "is_coalesced")

    def __init__(self, layout: str, shape: tuple[int, ...], values: Any, *, indices: Any = None,
                 compressed_indices: Any = None, plain_indices: Any = None, is_coalesced: bool | None = None) -> None:
        self.layout = layout
        self.shape = shape
        self.values = values
        self.indices = indices
        self.compressed_indices = compressed_indices
        self.plain_indices = plain_indices
        self.is_coalesced = is_coalesced

    @property
    def dtype(self) -> str:
        return _type_name(self.values)

    @property
    def nnz(self) -> int:
        return _shape(self.values)[0]

    def _parts(self) -> tuple:
        return (self.indices, self.compressed_indices, self.plain_indices, self.values)

    def materialize(self, array: Callable[[TensorSpec], Any]) -> SparseTensor:
        copy = SparseTensor(
            self.layout, self.shape, _materialize(self.values, array), indices=_materialize(self.indices, array),
            compressed_indices=_materialize(self.compressed_indices, array),
            plain_indices=_materialize(self.plain_indices, array), is_coalesced=self.is_coalesced,
        )
        return copy

    def validate(self) -> None:
        """Check every index against the shape; raise CorruptFileError.

        torch 2.13 loads sparse tensors without this check (``torch.load`` validates them only
        under ``torch.sparse.check_sparse_tensor_invariants``, off by default), and so does
        ptfile: indices out of range are data until something, such as :meth:`to_dense`, uses them.
        """
        _need_arrays(*self._parts())
        if self.layout == "sparse_coo":
            for dim, row in enumerate(np.asarray(self.indices)):
                if row.size and (row.min() < 0 or row.max() >= self.shape[dim]):
                    raise CorruptFileError(f"sparse COO index out of range for dimension {dim} of size {self.shape[dim]}")
            return
        compressed, plain = np.asarray(self.compressed_indices), np.asarray(self.plain_indices)
        n_compressed, n_plain = self._grid()
        if len(compressed) != n_compressed + 1 or compressed[0] != 0 or compressed[-1] != self.nnz:
            raise CorruptFileError(f"{self.layout} compressed indices must run from 0 to nnz={self.nnz} over {n_compressed + 1} entries")
        if np.any(np.diff(compressed) < 0):
            raise CorruptFileError(f"{self.layout} compressed indices decrease")
        if plain.size and (plain.min() < 0 or plain.max() >= n_plain):
            raise CorruptFileError(f"{self.layout} plain index out of range 0..{n_plain - 1}")

    def _block(self) -> tuple[int, int]:
        if self.layout in ("sparse_bsr", "sparse_bsc"):
            return _shape(self.values)[1], _shape(self.values)[2]
        return 1, 1

    def _grid(self) -> tuple[int, int]:
        """(compressed count, plain count): rows/cols, or block rows/cols."""
        bh, bw = self._block()
        rows, cols = self.shape[0] // bh, self.shape[1] // bw
        return (rows, cols) if self.layout in ("sparse_csr", "sparse_bsr") else (cols, rows)

    def to_dense(self) -> np.ndarray:
        """The dense array, as torch's ``to_dense()`` gives it (duplicate COO entries are summed)."""
        self.validate()
        values = np.asarray(self.values)
        dense = np.zeros(self.shape, values.dtype)
        if self.layout == "sparse_coo":
            np.add.at(dense, tuple(np.asarray(self.indices)), values)
            return dense
        compressed = np.asarray(self.compressed_indices).astype(np.int64)
        plain = np.asarray(self.plain_indices).astype(np.int64)
        outer = np.repeat(np.arange(len(compressed) - 1), np.diff(compressed))
        rows, cols = (outer, plain) if self.layout in ("sparse_csr", "sparse_bsr") else (plain, outer)
        bh, bw = self._block()
        if (bh, bw) == (1, 1):
            np.add.at(dense, (rows, cols), values)
            return dense
        tail = self.shape[2:]
        blocks = np.zeros((self.shape[0] // bh, self.shape[1] // bw, bh, bw, *tail), values.dtype)
        np.add.at(blocks, (rows, cols), values)
        order = (0, 2, 1, 3, *range(4, blocks.ndim))
        return np.ascontiguousarray(blocks.transpose(order)).reshape(self.shape)

    def __repr__(self) -> str:
        return f"<SparseTensor {self.layout} {self.dtype} shape={self.shape} nnz={self.nnz}>"


def get_layout(context: Any, name: Any) -> Layout:
    """``torch.serialization._get_layout("torch.sparse_coo")``: a layout by its printed name."""
    if type(name) is not str or not name.startswith("torch.") or name[6:] not in _LAYOUT_VALUES:
        raise CorruptFileError(f"_get_layout of {brief(name)}, which is not a torch layout")
    return _LAYOUT_VALUES[name[6:]]


def _index_array(value: Any, ndim: int, what: str) -> Any:
    if not isinstance(value, (np.ndarray, TensorSpec)) or len(_shape(value)) != ndim:
        raise CorruptFileError(f"sparse {what} must be a {ndim}-D tensor")
    if _type_name(value) not in _INDEX_TYPES:
        raise CorruptFileError(f"sparse {what} must be int32 or int64, not {_type_name(value)}")
    return value


def _sparse_size(size: Any) -> tuple[int, ...]:
    if type(size) is not tuple or not all(type(d) is int and d >= 0 for d in size):
        raise CorruptFileError(f"sparse tensor size {brief(size)} is not a tuple of sizes")
    return size


def _coo(data: tuple) -> SparseTensor:
    if len(data) == 3:
        (indices, values, size), coalesced = data, None
    elif len(data) == 4:
        indices, values, size, coalesced = data
    else:
        raise CorruptFileError("sparse COO data must be (indices, values, size[, is_coalesced])")
    size = _sparse_size(size)
    indices = _index_array(indices, 2, "COO indices")
    if _type_name(indices) != "int64":
        raise CorruptFileError("sparse COO indices must be int64")
    if coalesced is not None and type(coalesced) is not bool:
        raise CorruptFileError("sparse COO is_coalesced must be a bool or None")
    sparse_dims, nnz = _shape(indices)
    vshape = _shape(values)
    if not vshape or vshape[0] != nnz or sparse_dims + len(vshape) - 1 != len(size) or vshape[1:] != size[sparse_dims:]:
        raise CorruptFileError(f"sparse COO values of shape {vshape} do not fit indices {_shape(indices)} and size {size}")
    return SparseTensor("sparse_coo", size, values, indices=indices, is_coalesced=coalesced)


def _compressed(layout: str, data: tuple) -> SparseTensor:
    if len(data) != 4:
        raise CorruptFileError(f"{layout} data must be (compressed_indices, plain_indices, values, size)")
    compressed, plain, values, size = data
    size = _sparse_size(size)
    if isinstance(compressed, (np.ndarray, TensorSpec)) and len(_shape(compressed)) > 1:
        raise UnsupportedFormatError(f"batched {layout} tensors are not supported")
    compressed = _index_array(compressed, 1, f"{layout} compressed indices")
    plain = _index_array(plain, 1, f"{layout} plain indices")
    vshape = _shape(values)
    blocked = layout in ("sparse_bsr", "sparse_bsc")
    base = 3 if blocked else 1
    if len(size) < 2 or len(vshape) < base or vshape[0] != _shape(plain)[0] or len(vshape) - base != len(size) - 2:
        raise CorruptFileError(f"{layout} values of shape {vshape} do not fit size {size}")
    if vshape[base:] != size[2:]:
        raise CorruptFileError(f"{layout} dense dimensions {vshape[base:]} differ from size {size[2:]}")
    if blocked and (0 in vshape[1:3] or size[0] % vshape[1] or size[1] % vshape[2]):
        raise CorruptFileError(f"{layout} blocks of {vshape[1:3]} do not tile size {size[:2]}")
    return SparseTensor(layout, size, values, compressed_indices=compressed, plain_indices=plain)


def rebuild_sparse_tensor(context: Any, layout: Any, data: Any) -> SparseTensor:
    """``torch._utils._rebuild_sparse_tensor(layout, data)``."""
    if type(layout) is not Layout:
        raise CorruptFileError(f"sparse tensor layout {brief(layout)} is not a torch layout")
    if type(data) is not tuple:
        raise CorruptFileError("sparse tensor data must be a tuple")
    if layout.name == "sparse_coo":
        result = _coo(data)
    elif layout.name in _COMPRESSED:
        result = _compressed(layout.name, data)
    else:
        raise UnsupportedFormatError(f"sparse tensors of layout {layout.name} are not supported")
    return _checked(context, result)


# -- meta ----------------------------------------------------------------------


class NestedTensor(SpecialTensor):
    """A strided nested tensor (``torch.nested.nested_tensor``): components of different shapes in one buffer.

    Attributes:
        buffer: the 1-D array holding every component's elements.
        nested_sizes, nested_strides: int64 arrays of shape ``(components, dims)``.
        offsets: int64 array of each component's first element in ``buffer``.
    """

    __slots__ = ("buffer", "nested_sizes", "nested_strides", "offsets")

    def __init__(self, buffer: Any, nested_sizes: Any, nested_strides: Any, offsets: Any) -> None:
        self.buffer = buffer
        self.nested_sizes = nested_sizes
        self.nested_strides = nested_strides
        self.offsets = offsets

    @property
    def dtype(self) -> str:
        return _type_name(self.buffer)

    def __len__(self) -> int:
        return _shape(self.offsets)[0]

    def __repr__(self) -> str:
        return f"<NestedTensor {self.dtype} components={len(self)}>"

    def _parts(self) -> tuple:
        return (self.buffer, self.nested_sizes, self.nested_strides, self.offsets)

    def materialize(self, array: Callable[[TensorSpec], Any]) -> NestedTensor:
        copy = NestedTensor(*(_materialize(part, array) for part in self._parts()))
        copy.unbind()  # every component checked against the buffer now, not on first use
        return copy

    def unbind(self) -> list[np.ndarray]:
        """The components, each a numpy view of ``buffer`` (as ``tensor.unbind()`` gives them)."""
        _need_arrays(*self._parts())
        buffer = np.asarray(self.buffer)
        sizes, strides, offsets = (np.asarray(a) for a in (self.nested_sizes, self.nested_strides, self.offsets))
        if (buffer.ndim != 1 or sizes.shape != strides.shape or sizes.ndim != 2
                or offsets.shape != (sizes.shape[0],) or sizes.dtype.kind != "i" or offsets.dtype.kind != "i"):
            raise CorruptFileError("nested tensor buffer, sizes, strides and offsets do not describe one nested tensor")
        flat = np.ascontiguousarray(buffer)
        raw = flat.view(np.uint8)  # views through bytes: ml_dtypes types cannot be strided directly
        storage = StorageRef("nested buffer", None, flat.nbytes, "cpu", "")
        info = _buffer_dtype(flat)
        components = []
        for size, stride, offset in zip(sizes.tolist(), strides.tolist(), offsets.tolist(), strict=True):
            offset, size, stride = check_view(storage, info, offset, tuple(size), tuple(stride))
            start = offset * flat.itemsize if 0 not in size else 0
            components.append(np.ndarray(size, flat.dtype, buffer=raw, offset=start,
                                         strides=tuple(st * flat.itemsize for st in stride)))
        return components


def _buffer_dtype(buffer: np.ndarray) -> dtypes.DtypeInfo:
    info = dtypes.by_numpy(buffer.dtype)
    if info is None:
        raise UnsupportedFormatError(f"nested tensor buffer of {buffer.dtype} is not supported")
    return info


def rebuild_nested_tensor(context: Any, buffer: Any, sizes: Any, strides: Any, offsets: Any) -> NestedTensor:
    """``torch._utils._rebuild_nested_tensor(buffer, nested_sizes, nested_strides, storage_offsets)``."""
    for value, what in ((buffer, "buffer"), (sizes, "sizes"), (strides, "strides"), (offsets, "offsets")):
        if type(value) is not TensorSpec and not isinstance(value, np.ndarray):
            raise CorruptFileError(f"nested tensor {what} is a {type(value).__name__}, not a tensor")
    nested = NestedTensor(buffer, sizes, strides, offsets)
    if context.materialize:
        nested.unbind()
        return nested
    return _checked(context, nested)


class MetaTensor(SpecialTensor):
    """A tensor on torch's ``meta`` device: shape and type, and no data at all."""

    __slots__ = ("dtype", "shape", "strides", "requires_grad")

    def __init__(self, dtype: str, shape: tuple[int, ...], strides: tuple[int, ...], requires_grad: bool) -> None:
        self.dtype = dtype
        self.shape = shape
        self.strides = strides
        self.requires_grad = requires_grad

    def materialize(self, array: Callable[[TensorSpec], Any]) -> MetaTensor:
        return self

    def __repr__(self) -> str:
        return f"<MetaTensor {self.dtype} shape={self.shape}>"


def rebuild_meta_tensor(context: Any, dtype: Any, size: Any, stride: Any, requires_grad: Any) -> Any:
    """``torch._utils._rebuild_meta_tensor_no_storage``: a :class:`MetaTensor` (a spec when listing lazily)."""
    if type(dtype) is not TorchDtype or dtype.info is None:
        raise CorruptFileError(f"meta tensor needs a torch dtype, got {brief(dtype)}")
    offset, size, stride = check_view(None, dtype.info, 0, size, stride)
    grad = _bool(requires_grad, "requires_grad")
    spec = TensorSpec(None, dtype.info, size, stride, offset, requires_grad=grad)
    if getattr(context, "materialize", True):
        return MetaTensor(dtype.info.torch_name, size, stride, grad)
    return spec


# -- tensor subclasses ---------------------------------------------------------


class TensorSubclass(np.ndarray):
    """An array that torch saved as an instance of a tensor subclass, or with Python attributes.

    ``torch_class`` is the :class:`~ptfile.pickle.values.Global` naming the class (``torch.Tensor``
    when only attributes were added); ``attributes`` holds the instance ``__dict__``.
    """

    torch_class: Global | None = None
    attributes: dict | None = None

    def __array_finalize__(self, obj: Any) -> None:
        if obj is not None:
            self.torch_class = getattr(obj, "torch_class", None)
            self.attributes = getattr(obj, "attributes", None)


_TENSOR_CLASS = ("torch", "Tensor")
_PARAMETER_CLASS = ("torch.nn.parameter", "Parameter")


class _ListingContext:
    """Wraps the engine context so that the inner rebuild returns specs, whatever the mode."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self.materialize = False

    def tensor(self, spec: TensorSpec) -> TensorSpec:
        return spec

    def check_parts(self, value: SpecialTensor) -> None:
        """Nothing yet: :func:`rebuild_from_type_v2` checks what the inner rebuild returns."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _object_state(state: Any) -> dict | None:
    """torch's ``_set_obj_state`` input: None, a dict, or ``(dict, slots dict)``."""
    if state is None:
        return None
    if type(state) is tuple and len(state) == 2:
        merged: dict = {}
        for part in state:
            if part is not None:
                merged.update(_attribute_dict(part))
        return merged or None
    return _attribute_dict(state) or None


def _attribute_dict(value: Any) -> dict:
    if type(value) not in (dict, OrderedDict):
        raise CorruptFileError(f"tensor state must be a dict of attributes, got {type(value).__name__}")
    for key in value:
        if type(key) is not str or (key.startswith("__") and key.endswith("__")):
            raise CorruptFileError(f"tensor state may not set attribute {brief(key)}")
    return dict(value)


def rebuild_from_type_v2(context: Any, func: Any, cls: Any, args: Any, state: Any) -> Any:
    """``torch._tensor._rebuild_from_type_v2``: ``func(*args)``, then the class and the attributes.

    ``func`` must be one of the allowlisted tensor rebuild functions; it is run
    through the table exactly as REDUCE would run it.
    """
    entry = getattr(func, "entry", None)
    if type(func) is not GlobalRef or entry is None or entry.category != "tensor" or entry.call is None:
        raise CorruptFileError(f"_rebuild_from_type_v2 rebuilds with {brief(func)}, not a tensor rebuild function")
    if entry.call is rebuild_from_type_v2:
        raise CorruptFileError("_rebuild_from_type_v2 may not nest itself")
    if type(args) is not tuple:
        raise CorruptFileError("_rebuild_from_type_v2 arguments must be a tuple")
    if type(cls) is not GlobalRef:
        raise CorruptFileError(f"_rebuild_from_type_v2 class {brief(cls)} is not a global")
    attributes = _object_state(state)
    value = entry.call(_ListingContext(context), *args)
    if isinstance(value, SpecialTensor):
        if attributes or (cls.module, cls.name) != _TENSOR_CLASS:
            raise UnsupportedFormatError(f"{cls.module}.{cls.name} subclasses of quantized or sparse tensors are not supported")
        return value.materialize(context.tensor) if getattr(context, "materialize", True) else _checked(context, value)
    if type(value) is not TensorSpec:
        raise CorruptFileError(f"_rebuild_from_type_v2 rebuilt a {type(value).__name__}, not a tensor")
    if (cls.module, cls.name) == _PARAMETER_CLASS:
        return context.parameter(context.tensor(value), value.requires_grad, attributes)
    data = context.tensor(value)
    if (cls.module, cls.name) == _TENSOR_CLASS and not attributes:
        return data
    if type(data) is TensorSpec:
        return data  # a lazy listing keeps the tensor; the class is visible to load()
    result = data.view(TensorSubclass)
    result.torch_class = cls.as_global()
    result.attributes = attributes
    return result

