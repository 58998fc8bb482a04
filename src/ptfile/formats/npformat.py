"""numpy's ``.npy`` and ``.npz`` files, read and written as checkpoints.

Layout::

    .npy   "\\x93NUMPY" | major, minor | u16le (1.0) or u32le (2.0) header length |
           header: a Python dict literal {'descr': ..., 'fortran_order': ..., 'shape': (...)} |
           data: prod(shape) * itemsize bytes (C or Fortran order)
    .npz   a zip of .npy members named ``<key>.npy`` (``np.savez``: stored; ``np.savez_compressed``: deflated)

The header is parsed by numpy's own ``numpy.lib.format`` (``ast.literal_eval`` under a
bounded header size, never ``eval``); the data is then a checked view of the file (a
stored ``.npz`` member too), read only when asked for.  An object array's data is a
pickle: ptfile reads tensors, so such a member is refused (and the scanner runs its
pickle through the restricted engine to judge it, see :func:`object_pickle`).

ptfile's ``.npz`` writer stores the dtypes numpy has no code for (bfloat16, the float8
types) as unsigned integers of their size and names their real dtype in the JSON member
:data:`NPZ_DTYPES_ENTRY`; the reader views them back.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
from numpy.lib import format as npy

from ..containers.ziparchive import ZipArchive
from ..errors import CorruptFileError, UnsupportedFormatError
from ..io.slicing import Placement
from ..io.source import MappedSource, SliceSource, Source
from .handle import Handle
from .loader import TensorInfo
from .sniff import NPY_MAGIC, is_npy, is_npz
from .sniff import NPY_SUFFIX as _NPY_SUFFIX

__all__ = ["NPY_MAGIC", "NPZ_DTYPES_ENTRY", "NumpyCheckpoint", "is_npy", "is_npz", "write_npz", "read_arrays",
           "object_pickles"]

#: The member of ptfile's ``.npz`` files naming the real dtype of members stored as integers.
NPZ_DTYPES_ENTRY = "__ptfile_dtypes__"
#: numpy's own default bound on an ``.npy`` header (``max_header_size``).
MAX_NPY_HEADER = 10_000


class _Array(NamedTuple):
    """One array of the file: its header and where its data lies in ``source``."""

    source: Source
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool
    offset: int
    nbytes: int


def read_npy_header(source: Source, what: str) -> _Array:
    """The header of the ``.npy`` bytes of ``source``, its data range checked to end the bytes exactly."""
    head = source.read(0, min(source.size, MAX_NPY_HEADER + 12), f"{what}: npy header")
    stream = io.BytesIO(head)
    try:
        version = npy.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(stream, max_header_size=MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(stream, max_header_size=MAX_NPY_HEADER)
        else:
            raise UnsupportedFormatError(f"{what}: npy format version {version[0]}.{version[1]} is not read")
    except (ValueError, TypeError, SyntaxError, OverflowError) as exc:
        raise CorruptFileError(f"{what}: not a valid npy header: {exc}") from None
    offset = stream.tell()
    nbytes = math.prod(shape) * dtype.itemsize
    if not dtype.hasobject and offset + nbytes != source.size:
        raise CorruptFileError(f"{what}: {dtype} {shape} needs {nbytes} bytes after the header; "
                               f"{source.size - offset} are there")
    return _Array(source, dtype, tuple(shape), fortran, offset, nbytes)


def read_arrays(source: Source) -> dict[str, _Array]:
    """Every array of an ``.npz`` (by member name less ``.npy``) or ``.npy`` file (by the file's stem)."""
    if is_npy(source.read(0, min(source.size, len(NPY_MAGIC)), "file header")):
        return {_stem(source.name): read_npy_header(source, source.name)}
    archive = ZipArchive(source, folder=False)
    arrays = {}
    for name in archive.order:
        if not name.endswith(_NPY_SUFFIX):
            raise CorruptFileError(f"{source.name}: npz member {name!r} is not an .npy file")
        entry = archive.entries[name]
        where = archive.stored_range(entry)
        what = f"{source.name}!{name}"
        member = SliceSource(source, *where, what) if where is not None else MappedSource(archive.read(entry), what)
        arrays[name[: -len(_NPY_SUFFIX)]] = read_npy_header(member, what)
    return arrays


def object_pickles(source: Source) -> list[tuple[str, bytes]]:
    """``(where, pickle)`` of every object array: its data is ``pickle.dump(array)``, for the scanner to judge."""
    return [(array.source.name, array.source.read(array.offset, array.source.size - array.offset, "object array"))
            for array in read_arrays(source).values() if array.dtype.hasobject]


class NumpyCheckpoint(Handle):
    """An ``.npz`` file (a tensor per member) or an ``.npy`` file (one tensor, named by the file's stem) as a Handle."""

    def __init__(self, source: Source, *, copy: bool = False) -> None:
        self.source = source
        self.name = source.name
        self._copy = copy
        try:
            head = source.read(0, min(source.size, 64), "file header")
            self.format = "npy" if is_npy(head) else "npz"
            self._arrays = read_arrays(source)
            self.dtypes = self._stored_dtypes()
        except BaseException:
            source.close()
            raise
        self.objects = [key for key, array in self._arrays.items() if array.dtype.hasobject]
        if self.objects:  # ptfile reads tensors; an object array's data is a pickle (the scanner judges it)
            source.close()
            raise UnsupportedFormatError(f"{self.name}: {self.objects[0]!r} is an object array, which is a pickle, "
                                         "not a tensor")

    def _stored_dtypes(self) -> dict[str, np.dtype]:
        """Real dtypes of members ptfile stored as integers (see the module docstring)."""
        names = self._arrays.pop(NPZ_DTYPES_ENTRY, None)
        if names is None:
            return {}
        try:
            mapping = json.loads(str(self._load(names)))
            dtypes = {key: np.dtype(getattr(ml_dtypes, value)) for key, value in mapping.items()}
        except (ValueError, TypeError, AttributeError):
            raise CorruptFileError(f"{self.name}: {NPZ_DTYPES_ENTRY} is not a JSON map of ml_dtypes names") from None
        for key, dtype in dtypes.items():
            if key not in self._arrays or self._arrays[key].dtype.itemsize != dtype.itemsize:
                raise CorruptFileError(f"{self.name}: {NPZ_DTYPES_ENTRY} names {key!r} as {dtype.name} wrongly")
        return dtypes

    def _load(self, array: _Array) -> np.ndarray:
        if array.dtype.hasobject:
            raise UnsupportedFormatError(f"{array.source.name}: an object array, which is a pickle, not a tensor")
        raw = array.source.array(array.offset, array.nbytes, f"{array.source.name}: data", copy=self._copy)
        return raw.view(array.dtype).reshape(array.shape, order="F" if array.fortran else "C")

    def _names(self) -> Collection[str]:
        return self._arrays.keys()

    def _tensor(self, key: str) -> np.ndarray:
        found = self._load(self._arrays[key])
        real = self.dtypes.get(key)
        return found.view(real) if real is not None else found

    def _placement(self, key: str) -> Placement:
        array = self._arrays[key]
        info = self._info(key)
        return Placement(array.source, array.offset, array.nbytes, self.dtypes.get(key, array.dtype), array.shape,
                         info.strides, 0)

    def _info(self, key: str) -> TensorInfo:
        array = self._arrays[key]
        dtype = self.dtypes.get(key, array.dtype)
        count = math.prod(array.shape)
        order = array.shape[::-1] if array.fortran else array.shape
        strides = tuple(math.prod(order[i + 1 :]) for i in range(len(order)))
        return TensorInfo(dtype=dtype.name, torch_dtype=dtype.name, shape=array.shape,
                          strides=strides[::-1] if array.fortran else strides, offset=0,
                          nbytes=count * dtype.itemsize, storage=key, storage_nbytes=array.nbytes, location="cpu",
                          parameter=False, is_contiguous=not array.fortran or len(array.shape) < 2)

    def _tree(self) -> dict[str, Any]:
        return {key: self._tensor(key) for key in self._arrays}

    def _close(self) -> None:
        self.source.close()

    def __enter__(self) -> NumpyCheckpoint:
        return self


def _stem(name: str) -> str:
    base = os.path.basename(name)
    return base[: -len(_NPY_SUFFIX)] if base.endswith(_NPY_SUFFIX) and len(base) > len(_NPY_SUFFIX) else "array"


def write_npz(tensors: Mapping[str, np.ndarray], path: str) -> None:
    """``np.savez`` of the tensors, atomically; dtypes numpy cannot store are kept as in the module docstring."""
    from ..io.atomic import atomic_write  # lazy: writing only; its tempfile import is not for readers

    arrays: dict[str, np.ndarray] = {}
    special: dict[str, str] = {}
    for key, array in tensors.items():
        if type(array.dtype).__module__.startswith("ml_dtypes") or array.dtype.name in ("bfloat16", "complex32"):
            special[key] = array.dtype.name
            array = np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")
        arrays[key] = array
    if special:
        arrays[NPZ_DTYPES_ENTRY] = np.array(json.dumps(special))
    with atomic_write(path) as out:
        np.savez(out, **arrays)
