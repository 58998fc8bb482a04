"""The safetensors format, read and written with numpy (no safetensors package needed).

Layout::

    u64le N | N bytes of JSON header, padded with spaces to a multiple of 8 | data

The header maps each tensor name to ``{"dtype": "BF16", "shape": [...], "data_offsets":
[begin, end]}`` (offsets relative to the data section) and may hold ``"__metadata__"``,
a str -> str map.  A reader MUST check that every tensor's byte range lies inside the
data, that its size is ``prod(shape) * itemsize``, and that the ranges cover the data
exactly once (no overlap, no hole): that is what the safetensors project enforces.
Writers order tensors by decreasing alignment, then name, as safetensors does.

Shared storage: safetensors cannot express it.  :func:`remove_shared` follows the
safetensors project's own converter: among tensors that overlap in memory, keep one
that covers the whole buffer, drop the others and record ``dropped -> kept`` in the
metadata; a lone partial view is copied; anything else is an error rather than a
silently lost tied weight.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
from numpy.lib.array_utils import byte_bounds

from ..errors import CorruptFileError, LimitExceededError, UnsupportedFormatError
from ..io.open import open_source
from ..io.slicing import Placement
from ..io.source import Source
from ..tensors.views import root_of
from .handle import Handle
from .loader import TensorInfo
from .sniff import is_safetensors

__all__ = ["read_safetensors", "write_safetensors", "remove_shared", "alias_views", "SafetensorsCheckpoint",
           "is_safetensors", "DTYPE_CODES", "ALIASES_KEY"]

#: safetensors' own cap on the header; a larger one is refused before it is parsed.
MAX_HEADER_SIZE = 100_000_000
HEADER_ALIGNMENT = 8

DTYPE_CODES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16", "float16": "F16",
    "bfloat16": "BF16", "int32": "I32", "uint32": "U32", "float32": "F32", "float64": "F64", "int64": "I64",
    "uint64": "U64", "complex64": "C64", "float8_e5m2": "F8_E5M2", "float8_e4m3fn": "F8_E4M3",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ", "float8_e8m0fnu": "F8_E8M0",
}
_NUMPY_BY_CODE = {code: np.dtype(getattr(ml_dtypes, name, None) or name) for name, code in DTYPE_CODES.items()}


def _code(array: np.ndarray, name: str) -> str:
    code = DTYPE_CODES.get(array.dtype.name)
    if code is None:
        raise UnsupportedFormatError(f"tensor {name!r}: safetensors has no {array.dtype.name} type")
    return code


def read_safetensors(src: Any, *, mmap: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors (views of the mapped file, or copies) and the metadata of a safetensors file."""
    with SafetensorsCheckpoint(open_source(src, mmap_file=mmap), copy=not mmap, aliases=False) as handle:
        return {key: handle[key] for key in handle.keys()}, handle.metadata()


class _Entry(NamedTuple):
    """One tensor of the header: where its bytes lie in the file."""

    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def read_header(source: Source) -> tuple[dict[str, _Entry], dict[str, str]]:
    """The header of a safetensors file, every tensor's range checked: ``name -> entry``, and its metadata."""
    (size,) = struct.unpack("<Q", source.read(0, 8, "safetensors header size"))
    if size > MAX_HEADER_SIZE:
        raise LimitExceededError(f"{source.name}: safetensors header of {size} bytes is over {MAX_HEADER_SIZE}")
    try:
        header = json.loads(source.read(8, size, "safetensors header"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{source.name}: safetensors header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{source.name}: safetensors header is not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptFileError(f"{source.name}: safetensors metadata is not a map of strings")
    return _entries(source, header, 8 + size), dict(metadata)


def _entries(source: Source, header: dict, start: int) -> dict[str, _Entry]:
    spans = []
    result = {}
    for name, spec in header.items():
        if not isinstance(spec, dict) or spec.get("dtype") not in _NUMPY_BY_CODE:
            raise CorruptFileError(f"{source.name}: tensor {name!r} has no known dtype")
        shape, offsets = spec.get("shape"), spec.get("data_offsets")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise CorruptFileError(f"{source.name}: tensor {name!r} has a bad shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise CorruptFileError(f"{source.name}: tensor {name!r} has bad data offsets")
        dtype = _NUMPY_BY_CODE[spec["dtype"]]
        begin, end = offsets
        count = math.prod(shape)
        if begin < 0 or end < begin or end - begin != count * dtype.itemsize:
            raise CorruptFileError(f"{source.name}: tensor {name!r} needs {count * dtype.itemsize} bytes, spans {offsets}")
        source.check(start + begin, end - begin, f"tensor {name!r}")
        result[name] = _Entry(dtype, tuple(shape), start + begin, end - begin)
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise CorruptFileError(f"{source.name}: safetensors data has a hole or overlap at byte {position}")
        position = end
    if start + position != source.size:
        raise CorruptFileError(f"{source.name}: {source.size - start - position} bytes follow the last tensor")
    return result


class SafetensorsCheckpoint(Handle):
    """A safetensors file as a :class:`~ptfile.formats.handle.Handle`: the header read once, tensors on demand.

    With ``aliases`` (the default), tensors that ptfile's writer dropped as aliases of shared
    memory (see :func:`remove_shared`, recorded under :data:`ALIASES_KEY`) come back as views
    of the tensor they shared, so a round trip through safetensors keeps tied weights tied.
    """

    format = "safetensors"

    def __init__(self, source: Source, *, copy: bool = False, aliases: bool = True) -> None:
        self.source = source
        self.name = source.name
        self._copy = copy
        try:
            self._entries, self._meta = read_header(source)
            self._aliases = _read_aliases(self._meta, self._entries, source.name) if aliases else {}
        except BaseException:
            source.close()
            raise
        self._order = {**dict.fromkeys(self._entries), **dict.fromkeys(self._aliases)}
        self._arrays: dict[str, np.ndarray] = {}

    def _names(self) -> Collection[str]:
        return self._order.keys()

    def _tensor(self, key: str) -> np.ndarray:
        alias = self._aliases.get(key)
        if alias is not None:
            return alias.view_of(self._tensor(alias.target), key)
        found = self._arrays.get(key)
        if found is None:
            entry = self._entries[key]
            raw = self.source.array(entry.offset, entry.nbytes, f"tensor {key!r}", copy=self._copy)
            found = self._arrays[key] = raw.view(entry.dtype).reshape(entry.shape)
        return found

    def _placement(self, key: str) -> Placement:
        alias = self._aliases.get(key)
        entry = self._entries[alias.target if alias is not None else key]
        shape, strides, offset = (alias.shape, alias.strides, alias.offset) if alias else (entry.shape, _contiguous(entry.shape), 0)
        return Placement(self.source, entry.offset, entry.nbytes, entry.dtype, shape, strides, offset)

    def _info(self, key: str) -> TensorInfo:
        alias = self._aliases.get(key)
        if alias is not None:
            target = self._info(alias.target)
            nbytes = math.prod(alias.shape) * self._entries[alias.target].dtype.itemsize
            return TensorInfo(dtype=target.dtype, torch_dtype=target.torch_dtype, shape=alias.shape,
                              strides=alias.strides, offset=alias.offset, nbytes=nbytes, storage=alias.target,
                              storage_nbytes=target.storage_nbytes, location="cpu", parameter=False,
                              is_contiguous=alias.strides == _contiguous(alias.shape))
        entry = self._entries[key]
        return TensorInfo(dtype=entry.dtype.name, torch_dtype=entry.dtype.name,
                          shape=entry.shape, strides=_contiguous(entry.shape), offset=0, nbytes=entry.nbytes,
                          storage=key, storage_nbytes=entry.nbytes, location="cpu", parameter=False,
                          is_contiguous=True)

    def _tree(self) -> dict[str, Any]:
        return {key: self._tensor(key) for key in self._order}

    def _metadata(self) -> dict[str, str]:
        return self._meta

    def _close(self) -> None:
        self._arrays.clear()
        self.source.close()

    def __enter__(self) -> SafetensorsCheckpoint:
        return self


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))


class _Alias(NamedTuple):
    """A tensor stored as a view of another: ``target``'s elements from ``offset`` with ``shape``/``strides``."""

    target: str
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    def view_of(self, array: np.ndarray, name: str) -> np.ndarray:
        flat = array.reshape(-1)
        itemsize = array.dtype.itemsize
        try:  # numpy checks the view against the buffer's bounds itself
            return np.ndarray(self.shape, array.dtype, buffer=flat, offset=self.offset * itemsize,
                              strides=tuple(s * itemsize for s in self.strides))
        except (TypeError, ValueError) as exc:
            raise CorruptFileError(f"alias {name!r} of {self.target!r} lies outside it: {exc}") from None


#: Metadata key under which ptfile records the views it dropped (JSON: name -> [target, offset, shape, strides]).
ALIASES_KEY = "ptfile.aliases"


def _read_aliases(metadata: dict[str, str], entries: dict[str, _Entry], name: str) -> dict[str, _Alias]:
    text = metadata.get(ALIASES_KEY)
    if text is None:
        return {}
    try:
        document = json.loads(text)
        aliases = {key: _Alias(target, offset, tuple(shape), tuple(strides))
                   for key, (target, offset, shape, strides) in document.items()}
    except (ValueError, TypeError) as exc:
        raise CorruptFileError(f"{name}: metadata {ALIASES_KEY!r} is not a map of views: {exc}") from None
    for key, alias in aliases.items():
        fields_ok = (type(alias.offset) is int and alias.offset >= 0
                     and all(type(d) is int and d >= 0 for d in alias.shape)
                     and len(alias.strides) == len(alias.shape) and all(type(d) is int and d >= 0 for d in alias.strides))
        if key in entries or alias.target not in entries or not fields_ok or not _inside(alias, entries[alias.target]):
            raise CorruptFileError(f"{name}: metadata {ALIASES_KEY!r} holds a bad view {key!r} of {alias.target!r}")
    return aliases


def _inside(alias: _Alias, target: _Entry) -> bool:
    """Whether every element of the view lies inside the target tensor (exact integers)."""
    if 0 in alias.shape:
        return True
    last = alias.offset + sum((size - 1) * stride for size, stride in zip(alias.shape, alias.strides, strict=True))
    return last < math.prod(target.shape)


def _header(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None) -> tuple[bytes, list[str]]:
    order = sorted(tensors, key=lambda k: (-tensors[k].dtype.alignment, k))
    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise UnsupportedFormatError("safetensors metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name in order:
        array = tensors[name]
        header[name] = {"dtype": _code(array, name), "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % HEADER_ALIGNMENT)
    return struct.pack("<Q", len(text)) + text, order


def write_safetensors(tensors: Mapping[str, np.ndarray], path: str | os.PathLike[str],
                      metadata: Mapping[str, str] | None = None, *,
                      fetch: Callable[[str], np.ndarray] | None = None,
                      progress: Callable[[int, int], None] | None = None) -> None:
    """Write tensors as safetensors, streaming each one, atomically (temporary file + rename).

    Tensors must not share memory (see :func:`remove_shared`); they are written in
    little-endian order, contiguous, one at a time, so memory stays independent of the file size.
    With ``fetch``, ``tensors`` only describes each tensor (its dtype and shape; a
    zero-stride placeholder will do) and ``fetch(name)`` gives the tensor when it is
    written, so that only one is held at a time.
    ``progress(bytes written, bytes to write)`` is called after each tensor.
    """
    from ..io.atomic import atomic_write  # lazy: writing only; its tempfile import is not for readers

    for name, array in tensors.items():
        if not isinstance(array, np.ndarray):
            raise UnsupportedFormatError(f"{name!r} is a {type(array).__name__}, not a tensor")
        _code(array, name)
    header, order = _header(tensors, metadata)
    total, done = sum(tensors[name].size * tensors[name].dtype.itemsize for name in order), 0
    with atomic_write(path) as out:
        out.write(header)
        for name in order:
            _write_tensor(out, tensors[name] if fetch is None else _fetched(fetch, name, tensors[name]))
            done += tensors[name].size * tensors[name].dtype.itemsize
            if progress is not None:
                progress(done, total)


def _write_tensor(out: Any, array: np.ndarray) -> None:
    """One tensor's bytes, little-endian and contiguous (a fetched tensor is let go as soon as it is written)."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    # ml_dtypes types cannot export a buffer; their bytes can, through a uint8 view
    out.write(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))


def _fetched(fetch: Callable[[str], np.ndarray], name: str, described: np.ndarray) -> np.ndarray:
    array = fetch(name)
    if not isinstance(array, np.ndarray) or array.dtype != described.dtype or array.shape != described.shape:
        raise CorruptFileError(f"tensor {name!r} is not the {described.dtype.name} {described.shape} it was described as")
    return array


def byte_range(array: np.ndarray) -> tuple[int, int, int]:
    """(id of the root buffer, first byte, one past the last byte) of an array's memory."""
    root = root_of(array)
    low, high = byte_bounds(array)
    return id(root), low - byte_bounds(root)[0], high - byte_bounds(root)[0]


def remove_shared(tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Drop aliases of shared memory the way safetensors' converter does; return (tensors, dropped -> kept)."""
    groups: dict[int, list[tuple[str, int, int]]] = {}
    sizes: dict[int, int] = {}
    for name, array in tensors.items():
        root, low, high = byte_range(array)
        if array.size:
            groups.setdefault(root, []).append((name, low, high))
        sizes[root] = root_of(array).nbytes
    result = dict(tensors)
    dropped: dict[str, str] = {}
    for root, members in groups.items():
        for overlapping in _overlapping_sets(members):
            if len(overlapping) == 1:
                continue
            complete = sorted(n for n, low, high in overlapping if low == 0 and high == sizes[root])
            if not complete:
                names = ", ".join(sorted(n for n, _, _ in overlapping))
                raise UnsupportedFormatError(f"tensors {names} share memory and none covers it whole; "
                                             "safetensors cannot store them without losing the sharing")
            keep = complete[0]
            for name, _, _ in overlapping:
                if name != keep:
                    dropped[name] = keep
                    del result[name]
    for name, array in result.items():
        if not array.flags.c_contiguous or (isinstance(array.base, np.ndarray) and array.base.nbytes != array.nbytes):
            result[name] = np.ascontiguousarray(array).copy()
    return result, dropped


def alias_views(tensors: Mapping[str, np.ndarray], dropped: Mapping[str, str]) -> dict[str, list]:
    """For :data:`ALIASES_KEY`: each dropped tensor as ``[kept, offset, shape, strides]`` in elements of the kept one.

    Only views of the kept tensor's dtype with non-negative strides can be described so; any
    other dropped tensor keeps only safetensors' ``dropped -> kept`` note.
    """
    views: dict[str, list] = {}
    for name, kept in dropped.items():
        array, target = tensors[name], tensors[kept]
        itemsize = array.dtype.itemsize
        start = byte_range(array)[1] - byte_range(target)[1]
        if (array.dtype != target.dtype or start % itemsize or any(s < 0 or s % itemsize for s in array.strides)):
            continue
        views[name] = [kept, start // itemsize, list(array.shape), [s // itemsize for s in array.strides]]
    return views


def _overlapping_sets(members: list[tuple[str, int, int]]) -> list[list[tuple[str, int, int]]]:
    sets: list[list[tuple[str, int, int]]] = []
    end = -1
    for member in sorted(members, key=lambda m: (m[1], m[2])):
        if sets and member[1] < end:
            sets[-1].append(member)
            end = max(end, member[2])
        else:
            sets.append([member])
            end = member[2]
    return sets
