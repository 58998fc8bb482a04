"""The one handle ``ptfile.open`` returns, whatever the format.

A :class:`Handle` is a read-only ``Mapping[str, ndarray]`` over the checkpoint's tensors
(``keys``, ``items``, ``values``, ``get``, ``len``, ``in``, iteration), plus:

* ``info(key)``: a :class:`TensorInfo` (dtype, shape, strides, storage)
  without reading the tensor;
* ``get_slice(key)[...]``: a basic slice of a tensor, reading only the bytes it covers
  (tensors are views of the mapped file; over a URL or an unmapped file the format's
  ``_placement`` says where the elements lie and :mod:`ptfile.slicing` reads their ranges);
* ``metadata()``: the safetensors header metadata, torch's ``_metadata`` of the root
  ``OrderedDict`` where present (as ``{module: repr(dict)}``), else empty;
* ``tree``: the whole object tree, non-tensor values included (tensors in it are
  described, not read), and ``value(path)`` for any value in it by dotted path
  (``value("epoch")``, ``value("optimizer.param_groups.0.lr")``);
* ``format``, ``name``, ``close()`` and the context manager; any use after ``close()``
  raises :class:`~ptfile.errors.PtfileError`;
* ``framework``: what tensors come out as (``"numpy"``, ``"pt"``, ``"jax"``, ``"mlx"``; see
  :mod:`ptfile.tensors.frameworks`), for the handle or one ``get_tensor``/``get_slice`` call.

Each format supplies five small methods (``_names``, ``_info``, ``_tensor``, ``_tree``,
``_close``; optionally ``_metadata`` and ``_placement``); everything else is here, once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import PtfileError
from ..io.slicing import Placement, is_basic_index, read_slice
from ..tensors.dtypes import by_numpy
from ..tensors.frameworks import converter, framework_name
from ..tensors.views import TensorSpec

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

__all__ = ["Handle", "TensorInfo", "TensorSlice"]


@dataclass(frozen=True)
class TensorInfo:
    """What a lazy handle knows about a tensor without reading its bytes."""

    dtype: str  # numpy dtype name (``bfloat16``); torch's name when numpy has none
    torch_dtype: str  # torch's name: ``float16``
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # in elements
    offset: int  # in elements, from the start of the storage
    nbytes: int  # bytes of the tensor's own elements
    storage: str  # storage key; tensors with the same key share memory
    storage_nbytes: int
    location: str
    parameter: bool
    is_contiguous: bool

    @classmethod
    def of_array(cls, array: np.ndarray, storage: str) -> TensorInfo:
        """A numpy array read from a plain pickle: its own storage, in memory."""
        found = by_numpy(array.dtype)
        itemsize = array.itemsize or 1
        return cls(
            dtype=array.dtype.name,
            torch_dtype=found.torch_name if found else array.dtype.name,
            shape=array.shape,
            strides=tuple(stride // itemsize for stride in array.strides),
            offset=0,
            nbytes=array.nbytes,
            storage=storage,
            storage_nbytes=array.nbytes,
            location="cpu",
            parameter=False,
            is_contiguous=bool(array.flags.c_contiguous),
        )

    @classmethod
    def of(cls, spec: TensorSpec) -> TensorInfo:
        # by position, in the order of the fields: built once per tensor of a listing, where keywords cost more
        storage, dtype = spec.storage, spec.dtype
        return cls(
            dtype.numpy_name,
            dtype.torch_name,
            spec.shape,
            spec.strides,
            spec.offset,
            spec.nbytes,
            storage.key if storage else "",
            storage.nbytes if storage else 0,
            storage.location if storage else "meta",
            spec.parameter,
            spec.is_contiguous,
        )


class Handle(Mapping[str, Any]):
    """The tensors of one checkpoint, read on demand; see the module docstring."""

    format = ""
    name = ""
    framework = "numpy"
    device: Any = None
    private = False  # tensors' memory is a copy-on-write map of this handle's alone
    _closed = False
    _converters: dict[str, Any] | None = None

    # -- what a format supplies -------------------------------------------------------

    def _names(self) -> Collection[str]:
        """The tensor names in order, with a fast ``in`` (a dict's keys)."""
        raise NotImplementedError

    def _info(self, key: str) -> TensorInfo:
        raise NotImplementedError

    def _tensor(self, key: str) -> Any:
        raise NotImplementedError

    def _tree(self) -> Any:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _metadata(self) -> dict[str, str]:
        return {}

    def _placement(self, key: str) -> Placement | None:
        """Where the tensor's elements lie in a source, for slices read by range; None where they cannot be."""
        return None

    # -- the mapping --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise PtfileError(f"{self.name}: the checkpoint handle is closed")

    def keys(self) -> list[str]:  # type: ignore[override]  # a list, as safetensors' handle returns
        """Dotted names of every tensor, in the order of the checkpoint."""
        self._check_open()
        return list(self._names())

    def __iter__(self) -> Iterator[str]:
        self._check_open()
        return iter(self._names())

    def __len__(self) -> int:
        self._check_open()
        return len(self._names())

    def __contains__(self, key: object) -> bool:
        self._check_open()
        return key in self._names()

    def __getitem__(self, key: str) -> Any:
        """The tensor in the handle's framework (numpy: quantized and sparse tensors as ptfile values)."""
        return self.get_tensor(key)

    def use_framework(self, framework: str, device: Any = None) -> Self:
        """Make ``framework`` the handle's default for tensors, on ``device``; importing it now."""
        self.device = device
        self._converters = None
        self.framework = self._converter(framework).name
        return self

    def _converter(self, framework: str | None) -> Any:
        """The handle's converter to ``framework`` (its default for None), one per framework."""
        name = framework_name(self.framework if framework is None else framework)
        if self._converters is None:
            self._converters = {}
        if name not in self._converters:  # one converter, so one torch storage per storage of the file
            self._converters[name] = converter(name, self.device, private=self.private)
        return self._converters[name]

    def _missing(self, key: str) -> str:
        hint = ""
        try:
            self.value(key)
            hint = f"; it is a value, not a tensor: use .value({key!r})"
        except (KeyError, PtfileError):
            pass
        return f"no tensor named {key!r} in {self.name}{hint}"

    def get_tensor(self, key: str, framework: str | None = None) -> Any:
        """One tensor, in ``framework`` (the handle's own by default), as safetensors' handle names it."""
        self._check_open()
        if key not in self._names():
            raise KeyError(self._missing(key))
        if framework is None and self.framework == "numpy":
            return self._tensor(key)
        return self._converter(framework).tensor(self._tensor(key))

    def info(self, key: str) -> TensorInfo:
        """dtype, shape, strides, sizes and storage of one tensor, without reading it."""
        self._check_open()
        if key not in self._names():
            raise KeyError(self._missing(key))
        return self._info(key)

    def get_slice(self, key: str, framework: str | None = None) -> TensorSlice:
        """A lazy slice: ``handle.get_slice(key)[0:2, :]`` reads only the bytes it covers."""
        self.info(key)
        return TensorSlice(self, key, framework)

    def metadata(self) -> dict[str, str]:
        self._check_open()
        return dict(self._metadata())

    @property
    def tree(self) -> Any:
        """The whole object tree; tensors in it are described, not read."""
        self._check_open()
        return self._tree()

    def value(self, path: str) -> Any:
        """Any value of the tree by dotted path (list items by index); a tensor is read."""
        self._check_open()
        if path in self._names():
            return self.get_tensor(path)
        node = self._tree()
        for part in path.split(".") if path else ():
            node = _child(node, part, path, self.name)
        return node

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._close()
            self._converters = None  # a torch converter holds one storage per storage it handed out
            self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _child(node: Any, part: str, path: str, name: str) -> Any:
    if isinstance(node, Mapping) and part in node:
        return node[part]
    if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    state = getattr(node, "state", None)  # a record's attributes
    if isinstance(state, Mapping) and part in state:
        return state[part]
    raise KeyError(f"no value at {path!r} in {name} (stopped at {part!r})")


class TensorSlice:
    """What ``get_slice`` returns: ``shape``, ``dtype`` and basic indexing of one tensor."""

    def __init__(self, handle: Handle, key: str, framework: str | None = None) -> None:
        self._handle = handle
        self._key = key
        self._framework = framework
        info = handle.info(key)
        self.shape = info.shape
        self.dtype = info.dtype

    def get_shape(self) -> list[int]:
        return list(self.shape)

    def get_dtype(self) -> str:
        return str(self.dtype)

    def __getitem__(self, index: Any) -> Any:
        self._handle._check_open()
        place = self._handle._placement(self._key) if is_basic_index(index) else None
        if place is not None and not place.source.mapped:
            part = read_slice(place, index, f"{self._handle.name}: tensor {self._key!r}")
        else:  # a view of the mapped file: indexing it touches only the slice's pages
            part = self._handle.get_tensor(self._key, "numpy")[index]
        if self._framework is None and self._handle.framework == "numpy":
            return part
        # another framework gets the slice's own bytes, as safetensors' slices are: never the whole storage
        return self._handle._converter(self._framework).tensor(np.array(part))
