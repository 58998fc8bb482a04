"""From a source to an object tree: container, pickle engine, storages, tensors.

``bytes -> container -> engine -> tree``: a :class:`CheckpointReader` opens the
container, runs its pickle through the restricted engine once, judges the
inventory, and then serves tensors, either all at once (:func:`load`) or one by
one (:func:`open_checkpoint`, the lazy handle behind ``ptfile.open``).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..constants import CONSTANTS_RECORD, ZIP_LOCAL_MAGIC, Verdict, applying, limits_in_force
from ..containers.ziparchive import ZipArchive, is_zip
from ..errors import CorruptFileError, PtfileError, UnsupportedFormatError
from ..io.open import open_source
from ..io.slicing import Placement
from ..io.source import ByteSource, read_whole
from ..pickle.engine import gc_paused
from ..pickle.inventory import GlobalUse
from ..pickle.tree import walk
from ..pickle.values import brief
from ..policy import allowlist
from ..policy.allowlist import new_engine
from ..tensors.context import Context
from ..tensors.special import NestedTensor, QuantizedTensor, SparseTensor, SpecialTensor
from ..tensors.views import StorageRef, TensorSpec, view_array
from . import consumers
from .handle import Handle, TensorInfo
from .torchzip import TorchZip, detached_storage

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

__all__ = ["CheckpointReader", "TensorInfo", "load", "open_checkpoint", "open_zip", "refuse_unsafe"]

#: The byte order of numpy's native dtypes, which every tensor is read as.
NATIVE_BYTEORDER = "little" if np.little_endian else "big"
#: How pickles start: PROTO (protocol 2+), or the protocol 0/1 containers and GLOBAL line.
_PICKLE_START = re.compile(rb"\x80[\x00-\x05]|[(}\])]|c[\w.]+\n\w+\n")
def refuse_unsafe(judgement: allowlist.Judgement, *, records: bool, name: str) -> None:
    """Raise unless the judgement is clean, or only holds what ``records=True`` reads as records."""
    if judgement.verdict == Verdict.CLEAN or (judgement.verdict in allowlist.RECORDED_LEVELS and records):
        return
    allowlist.refuse(judgement, name)


class CheckpointReader:
    """An opened checkpoint: its container, its object tree, and its tensors on demand.

    A container (see :mod:`ptfile.formats.torchzip`) offers ``format``, ``byteorder``,
    ``pickles()`` (``[(record, bytes)]`` of the pickles torch loads, the object pickle first),
    ``combine(trees)`` (the checkpoint from their trees), ``side_pickles()`` (every other
    pickle it holds, which torch never loads but a scanner must see), ``persistent_load(pid,
    context)`` and ``storage_bytes(storage, copy=...)``; optionally ``inert_classes(module,
    name)`` (classes that are data in this container, such as TorchScript's ``__torch__``)
    and ``origin(record)`` (the file offset of a pickle cut out of a stream, so that every
    offset reported is a file offset).
    """

    def __init__(self, source: ByteSource, *, copy: bool, records: bool, container: Any = None,
                 allow: allowlist.Allow | None = None) -> None:
        self.source = source
        self.copy = copy
        self.records = records
        self.allow = allow  # third-party globals the caller accepts (never a dangerous one)
        self.limits = limits_in_force()  # kept for the pickles a lazy handle runs after open returns
        self.inventory: list[GlobalUse] = []
        self._buffers: dict[str, np.ndarray] = {}
        # A caller that knows what the bytes are (a DCP .metadata) brings its own container.
        self.container = container if container is not None else open_container(source)
        self.format = self.container.format
        # legacy files run their small pickles (magic, version, sys_info, keys) while opening
        self.inventory.extend(getattr(self.container, "inventory_extra", ()))
        # What other consumers of the whole file would read (a DCP item's container is told, not found).
        self.reading_faults = [] if container is not None else consumers.other_readings(
            source, self.format, self.inventory, Context(self, False))

    # -- pickle -------------------------------------------------------------------

    def run(self, *, materialize: bool) -> Any:
        """Run every pickle of the container, judge them together, return the object tree."""
        with applying(self.limits):
            return self._run_judged(materialize)

    def _run_judged(self, materialize: bool) -> Any:
        try:
            tree = self._run_objects(materialize)
            for record, data in self.container.side_pickles():
                self._run_side(record, data)
            self._check_records()
        except PtfileError:
            self._refuse_unsafe()  # an unsafe pickle that is also broken is reported as unsafe
            raise
        self._refuse_unsafe()
        if self.reading_faults:  # consumers would read this file differently: refuse rather than pick one
            raise CorruptFileError(self.reading_faults[0])
        return tree

    def examine(self) -> list[str]:
        """Run every pickle dry, never raising for what it finds; return the faults met."""
        faults = list(self.reading_faults)
        try:
            self._run_objects(materialize=False)
        except PtfileError as exc:
            faults.append(str(exc))
        for record, data in self.container.side_pickles():
            try:
                self._run_side(record, data)
            except PtfileError as exc:
                faults.append(str(exc))
        try:
            self._check_records()
        except PtfileError as exc:
            faults.append(str(exc))
        return faults

    def _check_records(self) -> None:
        """The container's own check that every record it holds can be read (zip archives)."""
        check = getattr(self.container, "check_records", None)
        if check is not None:
            check()

    def _run_objects(self, materialize: bool) -> Any:
        context = Context(self, materialize, storages_readable=True)
        # A TorchScript archive has two such pickles (data.pkl, constants.pkl); the container combines them.
        trees = [self._run_object(record, data, context) for record, data in self.container.pickles()]
        return trees[0] if len(trees) == 1 else self.container.combine(trees)

    def _run_object(self, record: str, data: bytes, context: Context) -> Any:
        return allowlist.run_whole_pickle(data, record, self.inventory, context,
                                          lambda pid: self.container.persistent_load(pid, context), self._origin(record))

    def _origin(self, record: str) -> int:
        """The file offset of a pickle the container cut out of the file (0 when it has none)."""
        return self.container.origin(record) if hasattr(self.container, "origin") else 0

    def _run_side(self, record: str, data: bytes) -> None:
        """A pickle torch itself would not load (an extra record): examined, never used."""
        engine = new_engine(data, record, self.inventory, Context(self, False), detached_storage, self._origin(record))
        pos = 0
        while pos < len(data):
            _, pos = engine.run(pos)

    def judgement(self) -> allowlist.Judgement:
        """The verdict on every global the pickles used, with this container's inert classes."""
        return allowlist.judge(self.inventory, inert_classes=getattr(self.container, "inert_classes", None),
                               allow=self.allow)

    def _refuse_unsafe(self) -> None:
        refuse_unsafe(self.judgement(), records=self.records, name=self.source.name)

    # -- tensors ------------------------------------------------------------------

    def buffer(self, storage: StorageRef, itemsize: int) -> np.ndarray:
        """The storage's bytes as one uint8 array, shared by every tensor that views it."""
        found = self._buffers.get(storage.key)
        if found is not None:
            return found
        buf = self.container.storage_bytes(storage, copy=self.copy)
        if self.container.byteorder != NATIVE_BYTEORDER and itemsize > 1:
            buf = _byteswap(buf, itemsize, storage.record)
            buf.flags.writeable = self.copy  # a swapped copy of a mapped file stays read-only like the rest
        self._buffers[storage.key] = buf
        return buf

    def array(self, spec: TensorSpec) -> np.ndarray:
        if spec.storage is None:
            raise UnsupportedFormatError("meta tensors have no data to load")
        buffer = self.buffer(spec.storage, _swap_unit(spec))
        return view_array(spec, buffer)

    def placement(self, spec: Any) -> Placement | None:
        """Where a plain tensor in a stored storage of native byte order lies; flagged, special and swapped ones are read whole."""
        if type(spec) is not TensorSpec or spec.storage is None or spec.conj or spec.neg or spec.dtype.numpy is None:
            return None
        if self.container.byteorder != NATIVE_BYTEORDER and spec.dtype.itemsize > 1:
            return None
        where = getattr(self.container, "storage_range", lambda storage: None)(spec.storage)
        if where is None:
            return None
        return Placement(self.source, where[0], where[1], np.dtype(spec.dtype.numpy), spec.shape, spec.strides,
                         spec.offset)

    def check_swappable(self, spec: TensorSpec) -> None:
        """Refuse, without reading, a storage of foreign byte order that :meth:`buffer` could not swap for ``spec``."""
        if self.container.byteorder != NATIVE_BYTEORDER and spec.storage is not None:
            _check_whole_units(spec.storage.nbytes, _swap_unit(spec), spec.storage.record)

    # -- lazy handle API ----------------------------------------------------------

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LazyCheckpoint(CheckpointReader, Handle):
    """The handle ``ptfile.open`` returns for torch's formats: the tree of tensor specs, tensors read on demand."""

    def __init__(self, source: ByteSource, *, copy: bool, records: bool, allow: allowlist.Allow | None = None) -> None:
        super().__init__(source, copy=copy, records=records, allow=allow)
        self.name = source.name
        self._tree_of_specs = self.run(materialize=False)
        named = getattr(self.container, "named_tensors", None)  # TorchScript: state_dict() names
        # A plain pickle has no torch storages: its numpy arrays are its tensors.
        is_tensor = _is_tensor_or_array if isinstance(self.container, RawPickle) else _is_tensor
        found = named(self._tree_of_specs, is_tensor) if named is not None else walk(self._tree_of_specs, is_tensor)
        self._specs: dict[str, TensorSpec | SpecialTensor | np.ndarray] = dict(found)
        # Arrays have no storage key of their own: one per distinct array object, as pickle memoizes them.
        self._array_storages: dict[int, str] = {}
        for node in self._specs.values():
            if type(node) is np.ndarray:
                self._array_storages.setdefault(id(node), f"array{len(self._array_storages)}")

    @property
    def code(self) -> dict[str, str]:
        """TorchScript source records (name -> text), never run; empty for other formats."""
        return dict(getattr(self.container, "code", {}))

    @property
    def constants(self) -> Any:
        """The tuple of a TorchScript archive's ``constants.pkl``; empty for other formats."""
        return getattr(self.container, "constants", ())

    def _names(self) -> Collection[str]:
        return self._specs.keys()

    def _info(self, key: str) -> TensorInfo:
        node = self._specs[key]
        if isinstance(node, np.ndarray):  # a plain pickle's array (specs are never arrays)
            return TensorInfo.of_array(node, self._array_storages[id(node)])
        return _info(node)

    def _tensor(self, key: str) -> Any:
        node = self._specs[key]
        if isinstance(node, np.ndarray):
            return node
        if isinstance(node, SpecialTensor):
            return node.materialize(self.array)
        return self.array(node)

    def _tree(self) -> Any:
        return self._tree_of_specs

    def _placement(self, key: str) -> Placement | None:
        node = self._specs[key]
        return None if type(node) is np.ndarray else self.placement(node)  # an array is in memory already

    def _metadata(self) -> dict[str, str]:
        found = getattr(self._tree_of_specs, "_metadata", None)
        return {str(k): repr(v) for k, v in found.items()} if isinstance(found, dict) else {}

    def _close(self) -> None:
        CheckpointReader.close(self)

    def close(self) -> None:
        Handle.close(self)

    def spec(self, key: str) -> TensorSpec | SpecialTensor | np.ndarray:
        """How a tensor is laid out in its storage (a plain pickle's array is its own)."""
        self.info(key)
        return self._specs[key]


def _is_tensor(node: Any) -> bool:
    return type(node) is TensorSpec or isinstance(node, SpecialTensor)


def _is_tensor_or_array(node: Any) -> bool:
    return _is_tensor(node) or (type(node) is np.ndarray and not node.dtype.hasobject)


def _info(node: TensorSpec | SpecialTensor) -> TensorInfo:
    """A quantized tensor is described by its integers; a sparse one by its values and dense shape."""
    if type(node) is TensorSpec:
        return TensorInfo.of(node)
    if isinstance(node, QuantizedTensor):  # its integers, under torch's quantized type name
        return replace(TensorInfo.of(node.data), torch_dtype=node.dtype)
    if isinstance(node, SparseTensor) and type(node.values) is TensorSpec:
        values = TensorInfo.of(node.values)
        nbytes = sum(spec.nbytes for spec in node.specs())
        return replace(values, shape=node.shape, strides=(), offset=0, nbytes=nbytes, is_contiguous=False)
    if isinstance(node, NestedTensor) and type(node.buffer) is TensorSpec:
        buffer = TensorInfo.of(node.buffer)
        return replace(buffer, nbytes=sum(spec.nbytes for spec in node.specs()), is_contiguous=False)
    raise TypeError(f"no tensor information for {type(node).__name__}")


def _swap_unit(spec: TensorSpec) -> int:
    """The bytes swapped as one value: the element, or each half of a complex number."""
    return spec.dtype.itemsize // 2 if spec.dtype.is_complex else spec.dtype.itemsize


def _check_whole_units(nbytes: int, itemsize: int, what: str) -> None:
    if itemsize > 1 and nbytes % itemsize:
        raise CorruptFileError(f"{what}: {nbytes} bytes is not a whole number of {itemsize}-byte elements")


def _byteswap(buf: np.ndarray, itemsize: int, what: str) -> np.ndarray:
    _check_whole_units(len(buf), itemsize, what)
    return buf.view(f"u{itemsize}").byteswap().view(np.uint8)


def looks_like_pickle(head: bytes) -> bool:
    """Whether bytes start the way a pickle does (PROTO, or a protocol 0/1 container or GLOBAL)."""
    return _PICKLE_START.match(head) is not None


def open_zip(source: ByteSource) -> TorchZip:
    """The reader of a zip checkpoint: a TorchScript archive when it holds ``constants.pkl``."""
    archive = ZipArchive(source)
    if archive.lists(CONSTANTS_RECORD):  # torch.load's own test, exact: see ZipArchive.lists
        from .torchscript import TorchScriptArchive  # lazy: TorchScript archives only; a zip checkpoint never needs it

        return TorchScriptArchive(source, archive=archive)
    return TorchZip(source, archive=archive)


def open_container(source: ByteSource) -> Any:
    """The container reader for the source's format, chosen as torch chooses it."""
    # torch.load tests for a zip first, then tries the tar reader, then the pickle stream
    if is_zip(source.read(0, min(source.size, len(ZIP_LOCAL_MAGIC)), "file header")):
        return open_zip(source)
    from . import legacy  # lazy: the pre-1.6 formats only; a zip checkpoint never needs them

    head = source.read(0, min(source.size, legacy.TAR_BLOCK), "file header")
    if legacy.is_tar(head):
        return legacy.LegacyTar(source)
    stream = legacy.open_stream(source, head)
    if stream is not None:
        return stream
    if looks_like_pickle(head):
        return RawPickle(source)
    raise _unsupported_kind(source.name, head[:16])


class RawPickle:
    """A plain pickle file (``pickle.dump`` output, any extension): one pickle, no storages."""

    format = "pickle"
    byteorder = "little"

    def __init__(self, source: ByteSource) -> None:
        self.source = source

    def pickles(self) -> list[tuple[str, bytes]]:
        return [("pickle", self.source.read(0, self.source.size, "pickle"))]

    def side_pickles(self) -> list[tuple[str, bytes]]:
        return []

    def persistent_load(self, pid: Any, context: Any) -> StorageRef:
        raise CorruptFileError(f"{self.source.name}: a plain pickle refers to external storage {brief(pid)}")

    def storage_bytes(self, storage: StorageRef, *, copy: bool) -> np.ndarray:
        raise CorruptFileError(f"{self.source.name}: a plain pickle has no storages")


def _unsupported_kind(name: str, head: bytes) -> PtfileError:
    if head.startswith(b"PYTORCH1"):
        return UnsupportedFormatError(f"{name}: a PyTorch preview-release file, which torch itself refuses")
    if head[:1] == b"\x80":
        return UnsupportedFormatError(f"{name}: a pickle of protocol {head[1:2].hex() or '?'}, above the 5 ptfile reads")
    if not head:
        return CorruptFileError(f"{name}: the file is empty")
    return CorruptFileError(f"{name}: not a PyTorch checkpoint (starts with {head[:8]!r})")


def open_checkpoint(src: Any, *, mmap: bool = True, records: bool = False,
                    allow: allowlist.Allow | None = None) -> LazyCheckpoint:
    source = open_source(src, mmap_file=mmap)
    try:
        with gc_paused():
            return LazyCheckpoint(source, copy=not mmap, records=records, allow=allow)
    except BaseException:
        source.close()
        raise


def load(src: Any, *, mmap: bool = True, records: bool = False, allow: allowlist.Allow | None = None) -> Any:
    return load_source(open_source(src, mmap_file=mmap), mmap=mmap, records=records, allow=allow)


def load_source(source: ByteSource, *, mmap: bool, records: bool, allow: allowlist.Allow | None = None) -> Any:
    """The object tree of a torch checkpoint; the source is closed when done."""
    if not mmap:
        # Everything gets read anyway: one read of the whole file beats one read per storage,
        # and the storages become views of that one copy (never a second copy).
        try:
            source = read_whole(source)
        except BaseException:
            source.close()
            raise
    try:
        with gc_paused():
            return CheckpointReader(source, copy=not mmap, records=records, allow=allow).run(materialize=True)
    finally:
        source.close()
