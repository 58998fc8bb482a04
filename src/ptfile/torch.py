"""``torch.load`` and ``torch.save`` through ptfile: real torch tensors, no code from the file run.

>>> import ptfile.torch                                   # doctest: +SKIP
>>> model.load_state_dict(ptfile.torch.load("model.pt"))  # doctest: +SKIP

:func:`load` reads any file ptfile reads (torch's zip and legacy files, TorchScript
archives, safetensors, ``.npz``, shard folders, DCP folders) with ptfile's restricted
pickle engine and returns torch tensors viewing the bytes read: dtypes, strides, storage
offsets and shared storages as ``torch.load`` gives them, ``nn.Parameter`` with
``requires_grad`` as saved, quantized, sparse, nested and meta tensors as torch's own,
and ``OrderedDict._metadata`` kept for ``load_state_dict(strict=True)``.

Where ptfile's reading differs from ``torch.load`` (each is tested against torch):

* a plain tensor (not a parameter) saved with ``requires_grad=True`` comes back with
  ``requires_grad=False``: ptfile's arrays carry the flag for parameters only;
* numpy arrays pickled in a ``weights_only=False`` checkpoint come back as tensors;
* conjugate and negative views come back resolved, in memory of their own (same values,
  bit for bit, no lazy flag);
* an empty view at a storage offset comes back at offset 0;
* tensors of types without arithmetic (``bits8``, ``bits16``, ``bits1x8``, ``bits2x4``,
  ``bits4x2``, ``float4_e2m1fn_x2``), where ptfile reads them, come back as unsigned
  integers of their width with the same bits;
* ``map_location`` as a dict or callable is given the location ``"cpu"``, where ptfile read
  the bytes; tensors saved on a GPU come back in host memory unless moved.

Importing this module imports torch; ``import ptfile`` alone never does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Union

import numpy as np

from .constants import Limits, applying
from .errors import PtfileError, UnsupportedFormatError
from .formats.opener import load_tree
from .formats.writer import save as _save
from .pickle.values import Parameter
from .tensors.dtypes import by_torch_name
from .tensors.frameworks import import_framework, map_tree

torch = import_framework("torch")

__all__ = ["load", "save"]

if TYPE_CHECKING:  # the name only: torch itself is imported through ptfile's framework layer below
    from torch import device as TorchDevice

MapLocation = Union[None, str, "TorchDevice", dict[str, Any], Callable[..., Any]]


def load(
    f: Any,
    map_location: MapLocation = None,
    pickle_module: Any = None,
    *,
    weights_only: bool | None = True,
    mmap: bool | None = None,
    records: bool = False,
    allow: Any = None,
    limits: Limits | None = None,
) -> Any:
    """``torch.load(f, map_location, weights_only=..., mmap=...)``, read by ptfile.

    Args:
        f: a path, URL, binary file object or bytes; a folder of shards or a DCP folder.
        map_location: where tensors go, as for ``torch.load``: None or ``"cpu"`` leaves them
            in host memory where ptfile read them; a device or device string moves them;
            a dict maps a saved location to a device and a callable ``(storage, location)``
            returns a storage (or None to keep it).  ptfile reads every storage into host
            memory first, so the location a dict or callable is given is ``"cpu"``.
        pickle_module: accepted for torch's signature; must be None (ptfile has its own).
        weights_only: accepted for torch's signature.  ``False`` does NOT run code from the
            file: it asks for whole pickled objects, which come back as inert
            :class:`ptfile.Record` values (as ``records=True``); known code-execution gadgets
            are refused either way.
        mmap: as ``torch.load``: with True a path is mapped copy-on-write (tensors may be
            written, the file never is); otherwise the file is read into memory once and
            tensors view that buffer.
        records, allow, limits: as for :func:`ptfile.load`.

    Raises:
        PtfileError: for every malformed, unsupported or unsafe input, with the reason.
    """
    if pickle_module is not None:
        raise PtfileError("ptfile.torch.load reads pickles with ptfile's own engine: pickle_module must be None")
    with applying(limits):
        return load_tree(f, mmap=bool(mmap), records=records or weights_only is False, allow=allow,
                         framework="torch", device=_target_device(map_location))


def _target_device(map_location: MapLocation) -> Any:
    """The one device every tensor goes to, or None to leave them in host memory."""
    if map_location is None:
        return None
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    if isinstance(map_location, dict):
        return torch.device(map_location.get("cpu", "cpu"))
    if callable(map_location):
        moved = map_location(torch.UntypedStorage(0), "cpu")
        return None if moved is None else moved.device
    raise PtfileError(f"map_location must be a device, a string, a dict or a callable, not {type(map_location).__name__}")


def save(obj: Any, f: Union[str, os.PathLike[str], IO[bytes]]) -> None:
    """``torch.save(obj, f)``: torch tensors, parameters and state dicts written as torch writes them.

    Tensors are handed to ptfile's writer as numpy views of their own storages (nothing is
    copied), so storages shared in memory are shared in the file, with offsets and
    strides kept.  Only dense CPU tensors are written; a conjugate or negative view is
    written with its values resolved, and ``requires_grad`` is written for parameters only.

    Raises:
        PtfileError: for a value that cannot be saved, before anything is written.
    """
    _save(map_tree(obj, lambda node: isinstance(node, torch.Tensor), _NumpyViews().array), f)


class _NumpyViews:
    """torch tensors as numpy arrays over their storages, one array per storage."""

    def __init__(self) -> None:
        self._roots: dict[int, tuple[Any, np.ndarray]] = {}  # storage identity -> (uint8 tensor, its array)

    def array(self, tensor: Any) -> np.ndarray:
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_nested:
            raise UnsupportedFormatError(f"ptfile.torch.save writes dense tensors, not {tensor.layout} "
                                         f"{'quantized ' if tensor.is_quantized else ''}tensors")
        if tensor.device.type != "cpu":
            raise UnsupportedFormatError(f"ptfile.torch.save writes CPU tensors; this one is on {tensor.device}")
        if tensor.is_conj() or tensor.is_neg():
            tensor = tensor.resolve_conj().resolve_neg()
        info = by_torch_name(str(tensor.dtype).removeprefix("torch."))
        if info is None or info.numpy is None or info.is_quantized:
            raise UnsupportedFormatError(f"ptfile.torch.save cannot write {tensor.dtype} tensors")
        root = self._root(tensor.untyped_storage())
        itemsize = info.itemsize
        strides = tuple(s * itemsize for s in tensor.stride())
        array: np.ndarray
        if 0 in tensor.shape:
            array = np.ndarray(tuple(tensor.shape), info.numpy, buffer=root[:0], offset=0, strides=strides)
        else:
            array = np.ndarray(tuple(tensor.shape), info.numpy, buffer=root, offset=tensor.storage_offset() * itemsize,
                               strides=strides)
        if isinstance(tensor, torch.nn.Parameter):
            parameter = array.view(Parameter)
            parameter.requires_grad = tensor.requires_grad
            parameter.attributes = dict(vars(tensor)) or None
            return parameter
        return array

    def _root(self, storage: Any) -> np.ndarray:
        key = storage._cdata  # the storage's identity, as torch.save keys its storages
        if key not in self._roots:
            whole = torch.empty(0, dtype=torch.uint8).set_(storage)
            self._roots[key] = (whole, whole.numpy())
        return self._roots[key][1]
