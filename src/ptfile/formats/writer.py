"""Writing checkpoints torch loads: object tree -> storages -> pickle -> zip.

``save(obj, dst)`` makes one pass over the tree with a :class:`TreePickler`, which
writes ``data.pkl`` exactly as ``torch.save`` pickles the same objects and collects
the storages the tensors view; then :class:`~ptfile.containers.zipwriter.ZipRecordWriter`
streams the records in torch's order::

    data.pkl, .format_version, .storage_alignment, byteorder, data/0, data/1, ..., version,
    .data/serialization_id

**Arrays become tensors.**  Every numpy array is written as a torch tensor (a
:class:`~ptfile.pickle.values.Parameter` as ``nn.Parameter``):

* Arrays that view the same memory share one storage.  The storage of an array is
  its *root*: the last array on its ``base`` chain, i.e. the array that owns the
  memory or wraps a foreign buffer (for a checkpoint read by ptfile, exactly the
  storage it was read from).  The whole root is written, as torch writes whole
  storages, and each array becomes an offset and strides into it, so tied weights,
  transposes, slices and stride-0 broadcasts keep their sharing and layout.
* Storages are numbered 0, 1, 2, ... in the order the pickle first meets them.
* Types with a legacy storage class are written as ``torch.<X>Storage`` +
  ``_rebuild_tensor_v2`` (numel in elements); the newer ones (float8, uint16/32/64,
  complex32) as ``torch.storage.UntypedStorage`` + ``_rebuild_tensor_v3`` (numel in
  bytes), as torch 2.13 does.
* What torch cannot describe is copied into a storage of its own: negative strides,
  offsets or strides that are not whole elements, non-native byte order.  Two arrays
  of different types over the same memory cannot be saved (torch refuses that too).
* A numpy array that was a pickled numpy object in the source file is written back
  as a tensor: a loaded tree does not say which arrays were tensors.

**Other values**: dict, OrderedDict (with ``_metadata``), Counter, list, tuple, set,
frozenset, str, bytes, bytearray, int, float, complex, bool, None, numpy scalars
and dtypes of numpy's own types, ``argparse.Namespace``, :class:`~ptfile.pickle.values.Global`
(and the dtype and storage-class values a load produces), and
:class:`~ptfile.pickle.values.Record` (GLOBAL of its class, NEWOBJ with its args -- REDUCE for
``torch.device`` -- then its list items, dict items and BUILD state).  Anything else
raises :class:`~ptfile.errors.PtfileError` naming its path before a byte is written.

**Streaming and atomic.**  Storage bytes go from the arrays (or the mapped source
file) to the output in chunks; a path is written through a temporary file in the
same folder that replaces the target only when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from ..constants import (
    BYTEORDER_RECORD,
    FILE_FORMAT_VERSION,
    FORMAT_VERSION,
    FORMAT_VERSION_RECORD,
    PICKLE_RECORD,
    STORAGE_ALIGNMENT,
    STORAGE_ALIGNMENT_RECORD,
    STORAGE_FOLDER,
    VERSION_RECORD,
)
from ..containers.zipwriter import ZipRecordWriter, archive_prefix
from ..errors import PtfileError
from ..io.atomic import atomic_write
from ..pickle.engine import GlobalRef, gc_paused
from ..pickle.pickler import BINPERSID, EMPTY_TUPLE, MARK, NEWFALSE, REDUCE, TUPLE, TUPLE3, GlobalName, Pickler
from ..pickle.tree import MODULE_SLOTS
from ..pickle.values import Global, Parameter, Record
from ..tensors import dtypes
from ..tensors.dtypes import DtypeInfo
from ..tensors.views import StorageType, root_of

__all__ = ["save", "save_sharded", "parse_size", "Storage", "TreePickler", "dumps_tree"]

#: Where every storage is said to live; arrays are host memory.
LOCATION = "cpu"
#: The first item of every persistent id, one string object as in torch.
STORAGE_TAG = "storage"
#: numpy kinds of scalars and dtypes written by numpy's own reduce (numbers and bools).
_NUMPY_SCALAR_KINDS = frozenset("biufc")

_REBUILD_V2 = GlobalName("torch._utils", "_rebuild_tensor_v2")
_REBUILD_V3 = GlobalName("torch._utils", "_rebuild_tensor_v3")
_REBUILD_PARAMETER = GlobalName("torch._utils", "_rebuild_parameter")
_REBUILD_PARAMETER_STATE = GlobalName("torch._utils", "_rebuild_parameter_with_state")
_ORDERED_DICT = GlobalName("collections", "OrderedDict")
_COUNTER = GlobalName("collections", "Counter")
_NAMESPACE = GlobalName("argparse", "Namespace")
_UNTYPED_STORAGE = GlobalName("torch.storage", "UntypedStorage")
#: Record classes torch pickles with REDUCE (``cls(*args)``) rather than NEWOBJ.
_REDUCE_RECORDS = frozenset({("torch", "device")})


# -- storages ---------------------------------------------------------------------


class _Span:
    """A uint8 view of raw memory [address, address + nbytes) owned by ``owner``."""

    def __init__(self, address: int, nbytes: int, owner: Any) -> None:
        self.__array_interface__ = {
            "data": (address, True),
            "shape": (nbytes,),
            "typestr": "|u1",
            "version": 3,
        }
        self.owner = owner  # keeps the memory alive


@dataclass
class Storage:
    """One storage of the file: a byte range of a root array's memory."""

    key: str
    root: np.ndarray
    start: int  # address of its first byte
    nbytes: int
    dtype: DtypeInfo  # the type its tensors are read as (one per typed storage)
    typed: bool  # legacy typed storage (numel in elements) or untyped (numel in bytes)

    @property
    def numel(self) -> int:
        return self.nbytes // self.dtype.itemsize if self.typed else self.nbytes

    def storage_type(self) -> GlobalName:
        if not self.typed:
            return _UNTYPED_STORAGE
        assert self.dtype.legacy_storage is not None  # a storage is typed only where torch has a typed class
        return GlobalName("torch", self.dtype.legacy_storage)

    def chunks(self) -> list[memoryview]:
        if not self.nbytes:
            return []
        return [np.asarray(_Span(self.start, self.nbytes, self.root)).data]


def _address(array: np.ndarray) -> int:
    # ctypes.data would do, but builds a ctypes object; the interface dict is cheaper
    return array.__array_interface__["data"][0]


def _byte_extent(array: np.ndarray) -> tuple[int, int]:
    """``(lo, hi)``: the bytes the array touches, relative to its data pointer."""
    if array.size == 0:
        return 0, 0
    lo = hi = 0
    for size, stride in zip(array.shape, array.strides, strict=True):
        reach = (size - 1) * stride
        if reach < 0:
            lo += reach
        else:
            hi += reach
    return lo, hi + array.itemsize


@dataclass(frozen=True)
class _View:
    storage: Storage
    offset: int  # elements
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # elements


class StorageTable:
    """Assigns every array a storage, offset and strides; numbers storages as met."""

    def __init__(self) -> None:
        self.storages: list[Storage] = []
        self._by_root: dict[int, Storage] = {}

    def view(self, array: np.ndarray, info: DtypeInfo, where: Callable[[], str]) -> _View:
        """The storage, offset and strides of ``array``; ``where()`` names it in errors."""
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        view = self._place(array, info, where)
        if view is None:  # not expressible in torch's terms: a storage of its own
            array = np.array(array, order="C", copy=True)
            view = self._place(array, info, where)
            assert view is not None, "a fresh contiguous array always has a view"
        return view

    def _storage(self, root: np.ndarray, info: DtypeInfo, start: int, nbytes: int) -> Storage:
        """A new storage over ``root``'s bytes ``[start, start + nbytes)`` (absolute addresses)."""
        typed = info.legacy_storage is not None
        if typed:
            nbytes -= nbytes % info.itemsize
        storage = Storage(str(len(self.storages)), root, start, nbytes, info, typed)
        self.storages.append(storage)
        self._by_root[id(root)] = storage
        return storage

    def _place(self, array: np.ndarray, info: DtypeInfo, where: Callable[[], str]) -> _View | None:
        root = root_of(array)
        storage = self._by_root.get(id(root))
        if storage is not None and not _compatible(storage, info):
            raise PtfileError(
                f"{where()}: views memory already saved as torch.{storage.dtype.torch_name} "
                f"(storage {storage.key}) as torch.{info.torch_name}; torch cannot save one storage "
                "under two types: save a copy (array.copy())"
            )
        itemsize = info.itemsize
        address = _address(array)
        if storage is None:
            root_lo, root_hi = _byte_extent(root)
            root_start = (address if root is array else _address(root)) + root_lo
            if (address - root_start) % itemsize:
                return None
        strides = _element_strides(array, itemsize)
        if strides is None:
            return None
        if storage is None:
            storage = self._storage(root, info, root_start, root_hi - root_lo)
        offset_bytes = address - storage.start
        if array.size == 0:
            in_range = 0 <= offset_bytes <= storage.nbytes and offset_bytes % itemsize == 0
            return _View(storage, offset_bytes // itemsize if in_range else 0, array.shape, strides)
        if offset_bytes % itemsize or offset_bytes < 0:
            return None
        lo, hi = _byte_extent(array)
        if offset_bytes + hi > storage.nbytes:
            return None
        return _View(storage, offset_bytes // itemsize, array.shape, strides)


def _compatible(storage: Storage, info: DtypeInfo) -> bool:
    if storage.typed or info.legacy_storage is not None:
        return storage.dtype is info
    return True  # untyped storages hold bytes; torch reads them under any v3 type


def _element_strides(array: np.ndarray, itemsize: int) -> tuple[int, ...] | None:
    """Strides in elements, or None when torch cannot express them."""
    strides = []
    expected = 1
    for size, stride in reversed(list(zip(array.shape, array.strides, strict=True))):
        if size <= 1 and (stride < 0 or stride % itemsize):
            stride = expected * itemsize  # any stride addresses a dimension of size 0 or 1
        if stride < 0 and array.size:
            return None
        if stride % itemsize:
            return None
        strides.append(max(stride, 0) // itemsize)
        expected *= max(size, 1)
    return tuple(reversed(strides))


# -- the pickle -------------------------------------------------------------------


class _FreshTensor:
    """Stands for the tensor object ``Parameter.data`` gives torch's pickler: a new one each time."""


class TreePickler(Pickler):
    """Pickles a ptfile object tree as torch.save pickles the torch objects it stands for."""

    def __init__(self) -> None:
        super().__init__()
        self.table = StorageTable()

    def where(self) -> str:
        # dotted as ptfile.open names tensors: nn.Module slots (_parameters, ...) are left out
        return ".".join(key for key in self.path if key not in MODULE_SLOTS) or "<root>"

    def fail(self, what: str) -> PtfileError:
        return PtfileError(f"{self.where()}: {what}")

    def dump(self, obj: Any) -> bytes:
        try:
            return super().dump(obj)
        except RecursionError:  # the path still names the value being written
            raise self.fail("the tree is nested too deeply to save") from None

    def save(self, obj: Any) -> None:
        if type(obj) is np.ndarray:  # the most common value of a checkpoint, straight to its writer
            if not self.memo_get(id(obj)):
                self.save_array(obj)
            return
        super().save(obj)

    def save_other(self, obj: Any) -> None:  # noqa: C901 - one dispatch on the value types
        if isinstance(obj, np.ma.MaskedArray):
            raise self.fail("cannot save a masked array (torch has no mask); save .data and .mask")
        if isinstance(obj, np.ndarray):
            self.save_array(obj)
        elif type(obj) is OrderedDict:
            self.save_reduce(_ORDERED_DICT, (), obj, state=vars(obj) or None, dictitems=obj.items())
        elif type(obj) is Counter:
            self.save_reduce(_COUNTER, (dict(obj),), obj)
        elif type(obj) is Record:
            self.save_record(obj)
        elif isinstance(obj, Global) or type(obj) is GlobalRef:
            self.save_global(GlobalName(obj.module, obj.name))
        elif type(obj) is StorageType:
            self.save_global(
                GlobalName("torch", obj.name) if obj.dtype is not None else _UNTYPED_STORAGE
            )
        elif type(obj) is argparse.Namespace:
            self.save_reduce(_NAMESPACE, (), obj, state=vars(obj) or None, newobj=True)
        elif isinstance(obj, (np.generic, np.dtype)):
            self.save_numpy_value(obj)
        else:
            raise self.fail(f"cannot save a {type(obj).__module__}.{type(obj).__qualname__}")

    # -- numpy scalars and dtypes -------------------------------------------------

    def save_numpy_value(self, obj: np.generic | np.dtype) -> None:
        dtype = obj if isinstance(obj, np.dtype) else obj.dtype
        if dtype.kind not in _NUMPY_SCALAR_KINDS or dtype.type.__module__ != "numpy" or dtypes.by_numpy(dtype) is None:
            raise self.fail(f"cannot save a numpy {'dtype' if obj is dtype else 'scalar'} of type {dtype.name}")
        reduced = obj.__reduce__()
        if not isinstance(reduced, tuple):  # numpy reduces its scalars and dtypes to calls, never to a global's name
            raise self.fail(f"cannot save a numpy value that reduces to the name {reduced!r}")
        func, args, *rest = reduced
        state = rest[0] if rest else None
        self.save_reduce(GlobalName(func.__module__, func.__name__), args, obj, state=state)

    # -- records ------------------------------------------------------------------

    def save_record(self, record: Record) -> None:
        cls = record.cls
        if type(record.args) is not tuple:
            raise self.fail(f"record of {cls.path} has arguments of type {type(record.args).__name__}, not a tuple")
        newobj = (cls.module, cls.name) not in _REDUCE_RECORDS
        self.save_reduce(
            GlobalName(cls.module, cls.name),
            record.args,
            record,
            state=record.state,
            listitems=record.listitems or None,
            dictitems=record.items.items() if record.items else None,
            newobj=newobj,
        )

    # -- tensors ------------------------------------------------------------------

    def save_array(self, array: np.ndarray) -> None:
        info = dtypes.by_numpy(array.dtype)
        if info is None:
            raise self.fail(f"cannot save an array of numpy dtype {array.dtype} as a torch tensor")
        if isinstance(array, Parameter):
            self.save_parameter(array, info)
            return
        self.save_tensor(array, info, array)

    def save_parameter(self, param: Parameter, info: DtypeInfo) -> None:
        data = _FreshTensor()
        self.save_global(_REBUILD_PARAMETER_STATE if param.attributes else _REBUILD_PARAMETER)
        # the argument tuple, written by hand: its first item is the tensor, not a Python value
        count = 4 if param.attributes else 3
        self.out += MARK if count > 3 else b""
        self.save_tensor(param.view(np.ndarray), info, data)
        self.save(bool(getattr(param, "requires_grad", True)))
        self.save_reduce(_ORDERED_DICT, (), OrderedDict())
        if param.attributes:
            self.save_child("attributes", dict(param.attributes))
            self.out += TUPLE
        else:
            self.out += TUPLE3
        self.memoize(object())  # the argument tuple is a fresh object torch memoizes
        self.out += REDUCE
        self.memoize(param)

    def save_tensor(self, array: np.ndarray, info: DtypeInfo, memo_obj: Any) -> None:
        # Written opcode by opcode (what save() would write for each value, without its
        # dispatch): this runs once per tensor, tens of thousands of times for large models.
        view = self.table.view(array, info, self.where)
        storage = view.storage
        out = self.out
        self.save_global(_REBUILD_V2 if storage.typed else _REBUILD_V3)
        out += MARK + MARK  # the argument tuple has 6 or 7 items; the persistent id
        self.save_str_memoized(STORAGE_TAG)
        self.save_global(storage.storage_type())
        self.save_str_memoized(storage.key)
        self.save_str_memoized(LOCATION)
        self.save_int(storage.numel)
        out += TUPLE
        self.memoize(object())  # the persistent id tuple
        out += BINPERSID
        self.save_int(view.offset)
        self.save_int_tuple(view.shape)
        self.save_int_tuple(view.strides)
        out += NEWFALSE  # requires_grad of the tensor itself
        self.save_global(_ORDERED_DICT)  # backward hooks: always an empty OrderedDict
        out += EMPTY_TUPLE + REDUCE
        self.memoize(object())  # the fresh OrderedDict
        if not storage.typed:
            self.save_global(GlobalName("torch", info.torch_name))
        out += TUPLE
        self.memoize(object())  # the argument tuple
        out += REDUCE
        self.memoize(memo_obj)


def dumps_tree(obj: Any) -> tuple[bytes, list[Storage]]:
    """The ``data.pkl`` bytes for ``obj`` and the storages it refers to, in key order."""
    pickler = TreePickler()
    with gc_paused():  # the memo keeps every object alive: a collection could free nothing
        data = pickler.dump(obj)
    return data, pickler.table.storages


# -- files ------------------------------------------------------------------------


def write_archive(file: IO[bytes], prefix: str, data: bytes, storages: list[Storage],
                  progress: Callable[[int, int], None] | None = None) -> None:
    """Stream the records of one checkpoint to ``file`` in torch's order.

    ``progress(bytes written, bytes to write)`` is called after each storage.
    """
    writer = ZipRecordWriter(file, prefix)
    writer.write_record(PICKLE_RECORD, data)
    writer.write_record(FORMAT_VERSION_RECORD, str(FORMAT_VERSION).encode())
    writer.write_record(STORAGE_ALIGNMENT_RECORD, str(STORAGE_ALIGNMENT).encode())
    writer.write_record(BYTEORDER_RECORD, sys.byteorder.encode())
    total, done = sum(storage.nbytes for storage in storages), 0
    for storage in storages:
        writer.write_record(f"{STORAGE_FOLDER}{storage.key}", storage.chunks(), storage.nbytes)
        done += storage.nbytes
        if progress is not None:
            progress(done, total)
    writer.write_record(VERSION_RECORD, f"{FILE_FORMAT_VERSION}\n".encode())  # torch ends it with a newline
    writer.finish()


def save(obj: Any, dst: Any, *, progress: Callable[[int, int], None] | None = None) -> None:
    """Write ``obj`` as a torch checkpoint to a path (atomically) or a binary file object.

    ``progress(bytes written, bytes to write)`` is called as tensor data is written.
    """
    data, storages = dumps_tree(obj)
    if hasattr(dst, "write"):
        write_archive(dst, archive_prefix(None), data, storages, progress)
        return
    path = os.fspath(dst)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    prefix = archive_prefix(path)
    if not prefix:
        raise PtfileError(f"{path!r}: torch cannot name the archive of a file called this (empty base name)")
    with atomic_write(path) as file:
        write_archive(file, prefix, data, storages, progress)


# -- Hugging Face shards ----------------------------------------------------------

#: Multipliers of the size units ``max_shard_size`` accepts: decimal as huggingface_hub, plus binary.
SIZE_UNITS = {
    "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}
WEIGHTS_NAME = "pytorch_model.bin"
INDEX_NAME = "pytorch_model.bin.index.json"
_SHARD_NAME = re.compile(r"pytorch_model-\d{5}-of-\d{5}\.bin")


def parse_size(size: int | str) -> int:
    """``5_000_000``, ``"5GB"`` (10**9 bytes each), ``"500MB"``, ``"2GiB"`` -> bytes."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    elif isinstance(size, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]+)\s*", size)
        if match is None or match.group(2).upper() not in SIZE_UNITS:
            raise ValueError(f"max_shard_size {size!r} is not a size like '5GB', '500MB' or '2GiB'")
        value = int(float(match.group(1)) * SIZE_UNITS[match.group(2).upper()])
    else:
        raise TypeError(f"max_shard_size must be an int or a string, not {type(size).__name__}")
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


def plan_shards(state_dict: Any, limit: int) -> tuple[list[list[str]], int]:
    """Greedy shards in key order, as huggingface_hub splits a state dict.

    Returns the keys of each shard and the total size.  Sizes are storage sizes;
    tensors viewing one storage count once and follow the first of them; a storage
    larger than the limit gets a shard of its own.
    """
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = 0
    total = 0
    owner: dict[int, list[str]] = {}  # root id -> the shard holding that storage
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise PtfileError(f"{key!r}: state dict keys must be strings")
        if not isinstance(value, np.ndarray):
            raise PtfileError(f"{key}: a sharded state dict holds only arrays, got {type(value).__name__}")
        root = root_of(value)
        if id(root) in owner:
            owner[id(root)].append(key)
            continue
        lo, hi = _byte_extent(root)
        size = hi - lo
        total += size
        if size > limit:  # a shard of its own, in key order (huggingface_hub puts it before the open shard)
            if current:
                shards.append(current)
                current, current_size = [], 0
            shards.append([key])
            owner[id(root)] = shards[-1]
            continue
        if current and current_size + size > limit:
            shards.append(current)
            current, current_size = [], 0
        current.append(key)
        current_size += size
        owner[id(root)] = current
    if current:
        shards.append(current)
    order = {key: index for index, key in enumerate(state_dict)}
    return [sorted(keys, key=order.__getitem__) for keys in shards], total


def save_sharded(state_dict: Any, folder: Any, max_shard_size: int | str = "5GB", *,
                 progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Write a flat ``name -> array`` mapping as Hugging Face ``pytorch_model`` shards.

    Returns the file names written.  Several shards are named
    ``pytorch_model-00001-of-0000N.bin`` and listed in ``pytorch_model.bin.index.json``;
    one shard is written as ``pytorch_model.bin`` with no index.  Shard and index files
    of an earlier save in the folder that this save does not write are removed.
    ``progress(bytes written, bytes to write)`` is called as tensor data is written, over all shards.
    """
    limit = parse_size(max_shard_size)
    folder = os.fspath(folder)
    shards, total = plan_shards(state_dict, limit)
    os.makedirs(folder, exist_ok=True)
    if len(shards) <= 1:
        names = [WEIGHTS_NAME]
        save({key: state_dict[key] for key in (shards[0] if shards else [])}, os.path.join(folder, WEIGHTS_NAME),
             progress=progress)
    else:
        names = [f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin" for i in range(1, len(shards) + 1)]
        across = AcrossShards(total, progress)
        for name, keys in zip(names, shards, strict=True):
            save({key: state_dict[key] for key in keys}, os.path.join(folder, name), progress=across)
            across.next_shard()
        weight_map = {key: name for name, keys in zip(names, shards, strict=True) for key in keys}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        with atomic_write(os.path.join(folder, INDEX_NAME)) as file:
            file.write((json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
        names.append(INDEX_NAME)
    _remove_stale(folder, set(names))
    return names


class AcrossShards:
    """One ``progress(done, total)`` over several files, each reporting its own bytes from zero."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None) -> None:
        self.total, self.progress = total, progress
        self.before = self.current = 0

    def __call__(self, done: int, _: int) -> None:
        self.current = done
        if self.progress is not None:  # plan sizes and written sizes can differ by a shared storage's extent
            self.progress(min(self.before + done, self.total), self.total)

    def next_shard(self) -> None:
        self.before, self.current = self.before + self.current, 0


def _remove_stale(folder: str, keep: set[str]) -> None:
    for name in os.listdir(folder):
        if name in keep:
            continue
        if _SHARD_NAME.fullmatch(name) or name in (WEIGHTS_NAME, INDEX_NAME):
            os.unlink(os.path.join(folder, name))
