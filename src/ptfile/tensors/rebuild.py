"""torch's tensor rebuild functions, re-implemented over :class:`~ptfile.tensors.views.TensorSpec`.

Each function takes the engine context and the arguments the pickle passed, checks
every one of them, and returns ``context.tensor(spec)``: a numpy view when loading,
the spec itself when a lazy handle is only listing tensors.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ..errors import CorruptFileError, UnsupportedFormatError
from ..pickle.values import Global, brief
from . import dtypes
from .dtypes import DtypeInfo
from .views import StorageRef, TensorSpec, check_view

__all__ = ["TorchDtype", "rebuild_tensor", "rebuild_tensor_v2", "rebuild_tensor_v3", "rebuild_parameter"]

_METADATA_KEYS = frozenset({"conj", "neg"})


class TorchDtype(Global):
    """A ``torch.<dtype>`` global: a value naming an element type."""

    __slots__ = ("info",)

    def __init__(self, name: str) -> None:
        super().__init__("torch", name)
        self.info: DtypeInfo | None = dtypes.by_torch_name(name)


def _storage(value: Any) -> StorageRef:
    if type(value) is not StorageRef:
        raise CorruptFileError(f"tensor rebuilt from {type(value).__name__}, not from a storage")
    return value


def _hooks(value: Any) -> None:
    # Backward hooks are code: torch saves an empty OrderedDict, torch 0.4 saved None, and
    # torch assigns either to the tensor as is.  Anything else would carry hook functions.
    if value is not None and (not isinstance(value, dict) or value):
        raise CorruptFileError(f"tensor backward hooks must be None or an empty OrderedDict, got {brief(value)}")


def _flags(metadata: Any) -> tuple[bool, bool]:
    if metadata is None:
        return False, False
    if type(metadata) is not dict or not set(metadata) <= _METADATA_KEYS:
        raise CorruptFileError(f"tensor metadata {brief(metadata)} is not a dict of 'conj' / 'neg' flags")
    conj, neg = metadata.get("conj", False), metadata.get("neg", False)
    if type(conj) is not bool or type(neg) is not bool:
        raise CorruptFileError(f"tensor metadata flags must be booleans, got {brief(metadata)}")
    return conj, neg


def _bool(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise CorruptFileError(f"tensor {what} must be a bool, got {brief(value)}")
    return value


def _make(context: Any, storage: StorageRef, dtype: DtypeInfo, offset: Any, size: Any, stride: Any,
          requires_grad: bool = False, conj: bool = False, neg: bool = False) -> Any:
    # every caller has checked ``storage`` with _storage() already; arguments go by position,
    # which costs less than keywords once per tensor
    offset, size, stride = check_view(storage, dtype, offset, size, stride)
    return context.tensor(TensorSpec(storage, dtype, size, stride, offset, requires_grad, False, conj, neg))


def _storage_dtype(storage: StorageRef) -> DtypeInfo:
    # An untyped storage read by a v1/v2 rebuild holds bytes: torch gives a uint8 tensor.
    if storage.dtype is not None:
        return storage.dtype
    uint8 = dtypes.by_torch_name("uint8")
    assert uint8 is not None  # a row of dtypes' table
    return uint8


def rebuild_tensor(context: Any, storage: Any, offset: Any, size: Any, stride: Any) -> Any:
    """``torch._utils._rebuild_tensor`` (v1, old files)."""
    storage = _storage(storage)
    return _make(context, storage, _storage_dtype(storage), offset, size, stride)


def rebuild_tensor_v2(
    context: Any, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, metadata: Any = None
) -> Any:
    """``torch._utils._rebuild_tensor_v2``: a tensor of its storage's own type."""
    storage = _storage(storage)
    _hooks(hooks)
    conj, neg = _flags(metadata)
    grad = _bool(requires_grad, "requires_grad")
    return _make(context, storage, _storage_dtype(storage), offset, size, stride, grad, conj, neg)


def rebuild_tensor_v3(
    context: Any,
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    hooks: Any,
    dtype: Any,
    metadata: Any = None,
) -> Any:
    """``torch._utils._rebuild_tensor_v3``: the element type is passed explicitly (float8, uint16, ...)."""
    storage = _storage(storage)
    _hooks(hooks)
    conj, neg = _flags(metadata)
    grad = _bool(requires_grad, "requires_grad")
    if type(dtype) is not TorchDtype or dtype.info is None:
        raise CorruptFileError(f"_rebuild_tensor_v3 needs a torch dtype, got {brief(dtype)}")
    if storage.dtype is not None and storage.dtype is not dtype.info:
        raise CorruptFileError(
            f"storage {storage.key!r} holds {storage.dtype.torch_name} but is read as {dtype.info.torch_name}"
        )
    return _make(context, storage, dtype.info, offset, size, stride, grad, conj, neg)


def rebuild_parameter(context: Any, data: Any, requires_grad: Any, hooks: Any) -> Any:
    """``torch._utils._rebuild_parameter``: mark a rebuilt tensor as an ``nn.Parameter``."""
    _hooks(hooks)
    return context.parameter(data, _bool(requires_grad, "requires_grad"), None)


def rebuild_parameter_with_state(context: Any, data: Any, requires_grad: Any, hooks: Any, state: Any) -> Any:
    """``torch._utils._rebuild_parameter_with_state``: a parameter that carried Python attributes."""
    _hooks(hooks)
    if state is not None and (type(state) not in (dict, OrderedDict) or not all(type(k) is str for k in state)):
        raise CorruptFileError(f"parameter state must be a dict of attribute names, got {brief(state)}")
    return context.parameter(data, _bool(requires_grad, "requires_grad"), dict(state) if state else None)


def not_supported(what: str) -> Any:
    """A constructor torch allows that ptfile does not rebuild (yet): a clear error, never a guess."""

    def refuse(context: Any, *args: Any) -> Any:
        raise UnsupportedFormatError(f"{what} is not supported by this version of ptfile")

    return refuse
