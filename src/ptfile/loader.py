"""From a source to an object tree: container, pickle engine, storages, tensors.

``bytes -> container -> engine -> tree``: a :class:`Checkpoint` opens the
container, runs its pickle through the restricted engine once, judges the
inventory, and then serves tensors, either all at once (:func:`load`) or one by
one (:func:`open_checkpoint`, the lazy handle behind ``ptfile.open``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import allowlist, legacy, objects
from .engine import Engine
from .errors import CorruptFileError, PtfileError, UnsafeGlobalError, UnsupportedFormatError
from .inventory import GlobalUse
from .source import Source, open_source
from .tensors import StorageRef, TensorSpec, view_array
from .torchzip import TorchZip
from .tree import walk
from .values import Parameter
from .ziparchive import is_zip

__all__ = ["Checkpoint", "TensorInfo", "load", "open_checkpoint"]

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
    def of(cls, spec: TensorSpec) -> TensorInfo:
        storage = spec.storage
        numpy = spec.dtype.numpy
        return cls(
            dtype=numpy.name if numpy is not None else spec.dtype.torch_name,
            torch_dtype=spec.dtype.torch_name,
            shape=spec.shape,
            strides=spec.strides,
            offset=spec.offset,
            nbytes=spec.nbytes,
            storage=storage.key if storage else "",
            storage_nbytes=storage.nbytes if storage else 0,
            location=storage.location if storage else "meta",
            parameter=spec.parameter,
            is_contiguous=spec.is_contiguous,
        )


class Context:
    """What the engine hands every constructor: how to make tensors, what BUILD may touch."""

    build_handler = staticmethod(objects.build_handler)

    def __init__(self, checkpoint: Checkpoint, materialize: bool) -> None:
        self.fresh_arrays: dict[int, np.ndarray] = {}
        self._checkpoint = checkpoint
        self._materialize = materialize

    def tensor(self, spec: TensorSpec) -> Any:
        return self._checkpoint.array(spec) if self._materialize else spec

    def parameter(self, data: Any, requires_grad: bool, attributes: dict | None) -> Any:
        if type(data) is TensorSpec:
            return data.as_parameter(requires_grad)
        if not isinstance(data, np.ndarray):
            raise CorruptFileError(f"parameter built from a {type(data).__name__}, not a tensor")
        param = data.view(Parameter)
        param.requires_grad = requires_grad
        param.attributes = attributes
        return param


class Checkpoint:
    """An opened checkpoint: its container, its object tree, and its tensors on demand.

    A container (see :mod:`ptfile.torchzip`) offers ``format``, ``byteorder``,
    ``pickles()`` (the object pickle as ``[(record, bytes)]``), ``persistent_load(pid,
    context)`` and ``storage_bytes(storage, copy=...)``.
    """

    def __init__(self, source: Source, *, copy: bool, records: bool) -> None:
        self.source = source
        self.copy = copy
        self.records = records
        self.inventory: list[GlobalUse] = []
        self._buffers: dict[str, np.ndarray] = {}
        self.container = open_container(source)
        self.format = self.container.format

    # -- pickle -------------------------------------------------------------------

    def run(self, *, materialize: bool) -> Any:
        """Run the object pickle once and judge it; return the object tree."""
        context = Context(self, materialize)
        ((record, data),) = self.container.pickles()
        engine = Engine(
            data,
            lookup=allowlist.lookup,
            persistent_load=lambda pid: self.container.persistent_load(pid, context),
            context=context,
            record=record,
            inventory=self.inventory,
            use_factory=GlobalUse,
        )
        try:
            tree, end = engine.run()
        except PtfileError:
            self._refuse_unsafe()  # an unsafe pickle that is also broken is reported as unsafe
            raise
        self._refuse_unsafe()
        if end != len(data):
            raise CorruptFileError(f"{record}: {len(data) - end} bytes follow the pickle's STOP")
        return tree

    def _refuse_unsafe(self) -> None:
        judgement = allowlist.judge(self.inventory)
        if judgement.verdict == allowlist.CLEAN:
            return
        if judgement.verdict == allowlist.UNKNOWN_CLASS and self.records:
            return
        listed = "; ".join(f.describe() for f in judgement.findings[:8])
        more = f"; and {len(judgement.findings) - 8} more" if len(judgement.findings) > 8 else ""
        hint = " (pass records=True to read unknown classes as inert records)" if judgement.verdict != "dangerous" else ""
        raise UnsafeGlobalError(
            f"{self.source.name}: refused {judgement.verdict} globals: {listed}{more}{hint}", judgement.findings
        )

    # -- tensors ------------------------------------------------------------------

    def buffer(self, storage: StorageRef, itemsize: int) -> np.ndarray:
        """The storage's bytes as one uint8 array, shared by every tensor that views it."""
        found = self._buffers.get(storage.key)
        if found is not None:
            return found
        buf = self.container.storage_bytes(storage, copy=self.copy)
        if self.container.byteorder == "big" and itemsize > 1:
            buf = _byteswap(buf, itemsize, storage.record)
        self._buffers[storage.key] = buf
        return buf

    def array(self, spec: TensorSpec) -> np.ndarray:
        if spec.storage is None:
            raise UnsupportedFormatError("meta tensors have no data to load")
        itemsize = spec.dtype.itemsize
        if spec.dtype.numpy is not None and spec.dtype.numpy.kind == "c":
            itemsize //= 2  # complex numbers swap each half
        buffer = self.buffer(spec.storage, itemsize)
        return view_array(spec, buffer)

    # -- lazy handle API ----------------------------------------------------------

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LazyCheckpoint(Checkpoint):
    """The handle ``ptfile.open`` returns: the tree of tensor specs, tensors read on demand."""

    def __init__(self, source: Source, *, copy: bool, records: bool) -> None:
        super().__init__(source, copy=copy, records=records)
        self.tree = self.run(materialize=False)
        self._specs: dict[str, TensorSpec] = dict(walk(self.tree, lambda node: type(node) is TensorSpec))

    def keys(self) -> list[str]:
        """Dotted paths of every tensor, in the order of the checkpoint."""
        return list(self._specs)

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, key: object) -> bool:
        return key in self._specs

    def info(self, key: str) -> TensorInfo:
        """dtype, shape, strides, sizes and storage of one tensor, without reading it."""
        return TensorInfo.of(self._spec(key))

    def spec(self, key: str) -> TensorSpec:
        return self._spec(key)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.array(self._spec(key))

    def _spec(self, key: str) -> TensorSpec:
        try:
            return self._specs[key]
        except KeyError:
            raise KeyError(f"no tensor named {key!r} in {self.source.name}") from None


def _byteswap(buf: np.ndarray, itemsize: int, what: str) -> np.ndarray:
    if len(buf) % itemsize:
        raise CorruptFileError(f"{what}: {len(buf)} bytes is not a whole number of {itemsize}-byte elements")
    return buf.view(f"u{itemsize}").byteswap().view(np.uint8)


def open_container(source: Source) -> Any:
    """The container reader for the source's format, chosen as torch chooses it."""
    head = source.read(0, min(source.size, legacy.TAR_BLOCK), "file header")
    if legacy.is_tar(head):  # torch tries the tar reader first
        return legacy.LegacyTar(source)
    if is_zip(head):
        return TorchZip(source)
    stream = legacy.open_stream(source, head)
    if stream is not None:
        return stream
    raise _unsupported_kind(source.name, head[:16])


def _unsupported_kind(name: str, head: bytes) -> PtfileError:
    if head.startswith(b"PYTORCH1"):
        return UnsupportedFormatError(f"{name}: a PyTorch preview-release file, which torch itself refuses")
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]"):
        return UnsupportedFormatError(f"{name}: a bare pickle, not a torch checkpoint; not supported yet")
    if not head:
        return CorruptFileError(f"{name}: the file is empty")
    return CorruptFileError(f"{name}: not a PyTorch checkpoint (starts with {head[:8]!r})")


def open_checkpoint(src: Any, *, mmap: bool = True, records: bool = False) -> LazyCheckpoint:
    source = open_source(src, mmap_file=mmap)
    try:
        return LazyCheckpoint(source, copy=not mmap, records=records)
    except BaseException:
        source.close()
        raise


def load(src: Any, *, mmap: bool = True, records: bool = False) -> Any:
    source = open_source(src, mmap_file=mmap)
    try:
        return Checkpoint(source, copy=not mmap, records=records).run(materialize=True)
    finally:
        source.close()
