"""The two pre-zip checkpoint formats: the legacy pickle stream and the ancient tar archive.

Legacy stream (torch < 1.6, or ``torch.save(..., _use_new_zipfile_serialization=False)``)
---------------------------------------------------------------------------------------
Five pickles back to back (protocol 2 unless the writer asked for another), then the
storages::

    pickle  MAGIC_NUMBER            0x1950A86A20F9469CFC6C (an int)
    pickle  PROTOCOL_VERSION        1001
    pickle  sys_info                {'protocol_version': 1001, 'little_endian': ..., 'type_sizes': {...}}
    pickle  the object tree         persistent ids ('storage', <storage type>, key, location,
                                    numel, view_metadata) and ('module', cls, file, source)
    pickle  sorted(keys)            the root storage keys, str(pointer) of each storage
    per key, in that order:
        int64le numel               elements, which must equal the numel of the persistent id
        numel * itemsize bytes      always little-endian, whatever the writer's host

``view_metadata`` is None in files of torch >= 1.0; older files may give
``(view_key, offset, size)``, in elements of the root storage: the persistent id then
stands for the slice ``[offset, offset + size)`` of the root storage, under its own key.

The byte layout of the storage section depends on each storage's element size,
which only the object pickle says.  So this module runs the object pickle once
itself (with the same restricted engine, building nothing but tensor specs) to
learn every storage, checks the key list and the section against it, and then the
:class:`~ptfile.formats.loader.Checkpoint` runs it again to build the tree.

Tar archive (torch <= 0.3)
--------------------------
A POSIX tar (ustar headers, PAX extended headers allowed) with exactly the members::

    sys_info   one pickle: a dict (torch ignores it)
    pickle     the object tree; persistent ids are str(key) of a tensor or a storage,
               or (container class, source file, source) tuples
    tensors    pickle(count); per tensor: pickle((key, storage key, tensor type)),
               int32le ndim, 4 pad bytes, ndim int64le sizes, ndim int64le strides,
               int64le storage offset
    storages   pickle(count); per storage: pickle((key, location, storage type)),
               int64le numel, numel * itemsize bytes (little-endian); then
               pickle([(view key, root key, offset, numel), ...]) in elements

Keys are Python ints (pointers).  torch's reader handed the sizes, strides and offsets
of ``tensors`` to ``Tensor.set_`` unchecked (the path ``weights_only`` had to refuse,
CVE-2025-32434); here every view is checked with :func:`~ptfile.tensors.views.check_view`.

Both formats
------------
Every pickle, the small ones included, runs through :class:`~ptfile.pickle.engine.Engine`
with :func:`~ptfile.policy.allowlist.lookup`.  The globals of the pickles other than the
object pickle are kept in ``inventory_extra`` (the checkpoint and the scanner judge
them with the object pickle's); a dangerous one is refused at once, before any value
is looked at, and a file that is both broken and dangerous is reported as dangerous.
``pickles()`` returns the object pickle only; ``persistent_load`` turns its ids into
:class:`~ptfile.tensors.views.StorageRef` (a view keeps its own key and size, its bytes a
slice of its root's), tensor specs (tar) or a module's class.  Every length read
from the file is checked against the bytes that are left before it is used, and a
pickle's extent is found by walking its opcodes (:func:`pickle_end`) without reading
anything past it.  Storages are little-endian on every host, so both containers say
``byteorder = "little"``.
"""

from __future__ import annotations

import contextlib
import re
import struct
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from ..errors import CorruptFileError, LimitExceededError, PtfileError, UnsafeGlobalError
from ..io.source import Source
from ..pickle.engine import GlobalRef
from ..pickle.inventory import GlobalUse
from ..pickle.opcodes import BY_CODE, COUNTED, LINES, byte_of, code_of
from ..pickle.values import brief
from ..policy import allowlist
from ..tensors.context import Context
from ..tensors.views import MAX_NDIM, StorageRef, StorageType, TensorSpec, check_view
from .torchzip import check_storage_key

__all__ = ["LegacyStream", "LegacyTar", "open_stream", "is_tar", "tar_members", "walk_tar", "TarMember", "pickle_end", "MAGIC_NUMBER",
           "PROTOCOL_VERSION"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

#: The magic, version and sys_info pickles are a few dozen bytes; anything longer is not one.
MAX_HEADER_PICKLE_BYTES = 64 * 1024
#: Bytes read at a time while walking a pickle's opcodes: the first window is small because the
#: storage data follows the pickle; later windows double up to the largest.
WALK_FIRST_WINDOW = 64 * 1024
WALK_WINDOW = 1 << 20
#: Element counts in legacy storages are int64 on disk.
INT64_MAX = (1 << 63) - 1
#: Tar blocks and records (tarfile pads an archive to whole 20-block records).
TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK
#: The members torch's tar writer adds, each exactly once, in this order.
TAR_MEMBERS = ("sys_info", "pickle", "tensors", "storages")
#: Headers a torch tar may hold: one per member, each possibly preceded by a PAX header.
MAX_TAR_HEADERS = 2 * len(TAR_MEMBERS)
#: PAX headers of torch's writer carry a path, a size or a fractional mtime: a few dozen bytes.
MAX_PAX_BYTES = 64 * 1024
#: After the end-of-archive block: the second zero block and the padding to a whole record.
MAX_TAR_TRAILER = 2 * TAR_BLOCK + TAR_RECORD
#: Smallest tar storage record: a 2-byte pickle (PROTO-less EMPTY_TUPLE STOP) and the int64 numel.
MIN_TAR_STORAGE_RECORD = 2 + 8
#: Smallest tar tensor record: a 2-byte pickle, int32 ndim, 4 pad bytes, int64 offset.
MIN_TAR_TENSOR_RECORD = 2 + 8 + 8
#: A persistent id naming a tar object: the decimal digits of a pointer.
_TAR_ID = re.compile(r"[0-9]{1,30}")

_int64 = struct.Struct("<q")
_int32 = struct.Struct("<i")


# -- where a pickle ends -------------------------------------------------------

_STOP = code_of("STOP")


class _Window:
    """Bytes of ``[.., limit)`` of a source, read a window at a time."""

    def __init__(self, source: Source, limit: int, what: str) -> None:
        self.source = source
        self.limit = limit
        self.what = what
        self.base = 0
        self.buf = b""
        self.size = min(WALK_FIRST_WINDOW, WALK_WINDOW)

    def _load(self, pos: int, need: int) -> None:
        size = min(max(need, self.size), self.limit - pos)
        self.size = min(2 * self.size, WALK_WINDOW)
        if size < need:
            raise CorruptFileError(f"{self.what}: the pickle runs past byte {self.limit} without a STOP")
        self.buf = self.source.read(pos, size, self.what)
        self.base = pos

    def get(self, pos: int, n: int) -> bytes:
        start = pos - self.base
        if start < 0 or start + n > len(self.buf):
            self._load(pos, n)
            start = 0
        return self.buf[start : start + n]

    def newline(self, pos: int) -> int:
        """Offset of the first newline at or after ``pos``."""
        need = 1
        while True:
            self.get(pos, 1)
            found = self.buf.find(b"\n", pos - self.base)
            if found >= 0:
                return self.base + found
            if self.base + len(self.buf) >= self.limit:
                raise CorruptFileError(f"{self.what}: text argument at byte {pos} has no end of line")
            need = min(2 * max(need, len(self.buf)), self.limit - pos)
            self._load(pos, need)


def pickle_end(source: Source, start: int, limit: int, what: str, seen: set[int] | None = None) -> int:
    """The offset just after the STOP of the pickle at ``start``, found by walking its opcodes.

    Only opcode lengths are read (the restricted engine interprets the bytes later and
    must end at the same STOP); nothing at or past ``limit`` is read.  ``seen`` collects
    every opcode walked, also when the walk fails.
    """
    window = _Window(source, limit, what)
    pos = start
    while True:
        op = window.get(pos, 1)[0]
        if seen is not None:
            seen.add(op)
        spec = BY_CODE.get(op)
        if spec is None:
            raise CorruptFileError(f"{what}: unknown pickle opcode 0x{op:02x} at byte {pos}")
        pos += 1
        if op == _STOP:
            return pos
        if spec.arg == LINES:
            for _ in range(spec.size):
                pos = window.newline(pos) + 1
        elif spec.arg == COUNTED:
            n = spec.size
            length = int.from_bytes(window.get(pos, n), "little", signed=spec.signed)
            if length < 0:
                raise CorruptFileError(f"{what}: negative length {length} at byte {pos}")
            pos += n + length
        else:  # no argument, or one of a fixed size
            pos += spec.size
        if pos > limit:
            raise CorruptFileError(f"{what}: the pickle runs past byte {limit} without a STOP")


# -- running the small pickles ---------------------------------------------------


def _inert_context() -> Any:
    """An engine context that builds tensor specs, never arrays."""
    return Context(None, materialize=False)


def _refuse_dangerous(inventory: list[GlobalUse], name: str) -> None:
    """Refuse a file whose pickles would call or name code; unknown classes are the checkpoint's call."""
    judgement = allowlist.judge(inventory)
    if judgement.verdict != allowlist.DANGEROUS:
        return
    findings = [f for f in judgement.findings if f.severity == allowlist.DANGEROUS]
    listed = "; ".join(f.describe() for f in findings[:8])
    raise UnsafeGlobalError(f"{name}: refused dangerous globals: {listed}", findings)


def _run(data: bytes, record: str, inventory: list, persistent_load: Any, context: Any, origin: int = 0) -> Any:
    """Run one whole pickle (at file offset ``origin``) through the engine; it must end exactly at its end."""
    engine = allowlist.new_engine(data, record, inventory, context, persistent_load, origin)
    value, end = engine.run()
    if end != len(data):
        raise CorruptFileError(f"{record}: {len(data) - end} bytes follow the pickle's STOP")
    return value


def _scan_for_danger(source: Source, start: int, limit: int, count: int, name: str) -> None:
    """Best effort after a failure: refuse if the next pickles name dangerous globals.

    A file that is both unsafe and broken is reported as unsafe, as the checkpoint
    does for its object pickle.  Errors here are ignored: the caller re-raises its own.
    """
    inventory: list[GlobalUse] = []
    pos = start
    for index in range(count):
        try:
            end = pickle_end(source, pos, limit, name)
        except PtfileError:
            break
        with contextlib.suppress(PtfileError):  # the globals seen before a failure stay in the inventory
            _run(source.read(pos, end - pos, name), f"pickle {index}", inventory, lambda pid: None, _inert_context(),
                 pos)
        pos = end
    _refuse_dangerous(inventory, name)


class _Cursor:
    """Sequential reads over ``[pos, end)`` of a source, each length checked first."""

    def __init__(self, source: Source, pos: int, end: int, part: str, inventory: list) -> None:
        self.source = source
        self.pos = pos
        self.end = end
        self.part = part
        self.inventory = inventory

    @property
    def left(self) -> int:
        return self.end - self.pos

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.left:
            raise CorruptFileError(
                f"{self.source.name}: {self.part}: {what} needs {n} bytes at byte {self.pos}; {self.left} are left"
            )

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        data = self.source.read(self.pos, n, f"{self.part}: {what}")
        self.pos += n
        return data

    def int64(self, what: str) -> int:
        return _int64.unpack(self.take(8, what))[0]

    def int32(self, what: str) -> int:
        return _int32.unpack(self.take(4, what))[0]

    def skip(self, n: int, what: str) -> int:
        """Skip ``n`` bytes; return where they start."""
        self.need(n, what)
        start = self.pos
        self.pos += n
        return start

    def pickle_bytes(self, what: str, max_bytes: int | None = None) -> bytes:
        limit = self.end if max_bytes is None else min(self.end, self.pos + max_bytes)
        end = pickle_end(self.source, self.pos, limit, f"{self.source.name}: {self.part}: {what}")
        return self.take(end - self.pos, what)

    def pickle(self, what: str, max_bytes: int | None = None) -> Any:
        """Run the next pickle through the engine and return its value; dangerous globals are refused."""
        record = what if what == self.part else f"{self.part}/{what}@{self.pos}"
        origin = self.pos
        data = self.pickle_bytes(what, max_bytes)
        seen = len(self.inventory)  # earlier uses were judged already: judging only new ones keeps this linear
        try:
            value = _run(data, record, self.inventory, None, _inert_context(), origin)
        except PtfileError:
            _refuse_dangerous(self.inventory[seen:], self.source.name)
            raise
        _refuse_dangerous(self.inventory[seen:], self.source.name)
        return value


# -- storages --------------------------------------------------------------------


def _itemsize(storage_type: StorageType) -> int:
    # An untyped storage counts bytes.
    return storage_type.dtype.itemsize if storage_type.dtype is not None else 1


def _int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise CorruptFileError(f"{what} {brief(value)} is not a non-negative integer")
    return value


class _Slice(NamedTuple):  # NamedTuples, not dataclasses: building a dataclass costs about a millisecond at import
    """Where a storage's bytes are: a byte range of a root storage."""

    root: str
    offset: int  # bytes from the start of the root
    nbytes: int


class _Storages:
    """The storages of a file: roots with their data offset, and views into them.

    ``StorageRef.key`` is the key the file uses (root or view), so the checkpoint caches one
    buffer per key; a view's buffer is a slice of its root's bytes, sharing memory with it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.refs: dict[str, StorageRef] = {}
        self.slices: dict[str, _Slice] = {}
        self.types: dict[str, StorageType] = {}
        self.data_offsets: dict[str, int] = {}  # root key -> file offset of its bytes
        self.has_views: set[str] = set()  # roots some view slices
        self.sealed = False

    def root(self, key: str, storage_type: StorageType, location: str, numel: int) -> StorageRef:
        known = self.refs.get(key)
        if known is not None:
            slice_ = self.slices[key]
            if slice_.root != key or self.types[key] is not storage_type or known.nbytes != numel * _itemsize(storage_type):
                raise CorruptFileError(f"{self.name}: storage {key!r} is used with two different types or sizes")
            return known
        self._new(key)
        ref = StorageRef(key, storage_type.dtype, numel * _itemsize(storage_type), location, f"storage {key}")
        self.refs[key], self.types[key], self.slices[key] = ref, storage_type, _Slice(key, 0, ref.nbytes)
        return ref

    def view(self, key: str, root: str, offset: int, numel: int) -> StorageRef:
        """The slice ``[offset, offset + numel)`` (elements) of root storage ``root``, under its own key."""
        base = self.refs.get(root)
        if base is None or self.slices[root].root != root:
            raise CorruptFileError(f"{self.name}: storage view {key!r} names {root!r}, which is not a root storage")
        storage_type = self.types[root]
        size = _itemsize(storage_type)
        if offset + numel > base.nbytes // size:
            raise CorruptFileError(
                f"{self.name}: storage view {key!r} covers elements [{offset}, {offset + numel}) "
                f"of storage {root!r}, which holds {base.nbytes // size}"
            )
        slice_ = _Slice(root, offset * size, numel * size)
        known = self.refs.get(key)
        if known is not None:
            if self.slices[key] != slice_ or self.types[key] is not storage_type:
                raise CorruptFileError(f"{self.name}: storage view {key!r} is declared twice differently")
            return known
        self._new(key)
        ref = StorageRef(key, storage_type.dtype, slice_.nbytes, base.location, f"storage {root} view {key}")
        self.refs[key], self.types[key], self.slices[key] = ref, storage_type, slice_
        self.has_views.add(root)
        return ref

    def _new(self, key: str) -> None:
        if self.sealed:
            raise CorruptFileError(f"{self.name}: storage {key!r} was not seen when the file was opened")

    def roots(self) -> list[str]:
        return [key for key, where in self.slices.items() if where.root == key]

    def byte_range(self, storage: StorageRef) -> tuple[str, int, int]:
        """``(root key, file offset, length)`` of a storage's bytes."""
        where = self.slices.get(storage.key)
        if where is None or self.refs[storage.key] != storage:
            raise CorruptFileError(f"{self.name}: storage {storage.key!r} is not one of this file's")
        return where.root, self.data_offsets[where.root] + where.offset, where.nbytes


class _Container:
    """What both formats share: little-endian storages served from the source."""

    byteorder = "little"  # legacy writers swapped big-endian data on write
    format = ""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.name = source.name
        self.inventory_extra: list[GlobalUse] = []
        self.storages = _Storages(source.name)
        self._root_copies: dict[str, np.ndarray] = {}

    def side_pickles(self) -> list[tuple[str, bytes]]:
        """None: every pickle of these formats is run while opening or as the object pickle."""
        return []

    def combine(self, trees: list[Any]) -> Any:
        return trees[0]

    def storage_range(self, storage: StorageRef) -> tuple[int, int]:
        """``(file offset, length)`` of a storage's bytes."""
        return self.storages.byte_range(storage)[1:]

    def storage_bytes(self, storage: StorageRef, *, copy: bool) -> np.ndarray:
        """The storage's bytes as a uint8 array: a view of the file, or an owned copy.

        With ``copy``, a root that views slice is copied once and its views are slices
        of that copy, so they share memory as in torch.
        """
        root, offset, nbytes = self.storages.byte_range(storage)
        if not copy or root not in self.storages.has_views:
            return self.source.array(offset, nbytes, storage.record, copy=copy)
        whole = self._root_copies.get(root)
        if whole is None:
            ref = self.storages.refs[root]
            whole = self.source.array(self.storages.data_offsets[root], ref.nbytes, ref.record, copy=True)
            self._root_copies[root] = whole
        start = offset - self.storages.data_offsets[root]
        return whole[start : start + nbytes]


def _container_class(cls: Any, source_file: Any, source: Any) -> GlobalRef:
    """A pickled nn.Module class (``('module', cls, file, source)``): the class itself, never its source."""
    if type(cls) is not GlobalRef:
        raise CorruptFileError(f"module persistent id names {brief(cls)}, not a class")
    for value in (source_file, source):
        if value is not None and type(value) is not str:
            raise CorruptFileError(f"module persistent id carries a {type(value).__name__}, not source text")
    return cls


# -- the legacy stream -----------------------------------------------------------


_STREAM_STARTS = tuple(byte_of(name) for name in ("PROTO", "LONG1", "LONG4", "LONG", "INT", "GLOBAL"))


def looks_like_pickle_stream(head: bytes) -> bool:
    """Could the file start with the magic-number pickle: PROTO, LONG1/LONG4 without it, a protocol 0/1
    LONG or INT (``pickle.load`` reads a plain INT of any size), or GLOBAL."""
    return head[:1] in _STREAM_STARTS


def open_stream(source: Source, head: bytes) -> LegacyStream | None:
    """A :class:`LegacyStream` if the file's first pickle is the magic number, else None.

    The first pickle runs through the engine like every other; a dangerous one is
    refused here (a forged magic number computed by ``eval``), whatever its value.
    """
    inventory: list[GlobalUse] = []
    cursor = _magic_cursor(source, head, inventory)
    return None if cursor is None else LegacyStream(source, cursor, inventory)


def has_magic_number(source: Source, head: bytes) -> bool:
    """Whether the file starts with the legacy magic number, so torch reads it as a legacy stream."""
    try:
        return _magic_cursor(source, head, []) is not None
    except PtfileError:
        return False


def _magic_cursor(source: Source, head: bytes, inventory: list[GlobalUse]) -> _Cursor | None:
    """A cursor just past the magic-number pickle, or None if the file does not start with one."""
    if not looks_like_pickle_stream(head):
        return None
    cursor = _Cursor(source, 0, source.size, "magic number", inventory)
    try:
        magic = cursor.pickle("magic number", MAX_HEADER_PICKLE_BYTES)
    except UnsafeGlobalError:
        raise
    except PtfileError:
        return None  # not a pickle this short: another kind of file
    if type(magic) is not int:
        return None
    if magic != MAGIC_NUMBER:
        raise CorruptFileError(f"{source.name}: legacy magic number is 0x{magic:X}, expected 0x{MAGIC_NUMBER:X}")
    return cursor


class LegacyStream(_Container):
    """A legacy (pre-1.6, non-zip) checkpoint: five pickles and the storages."""

    format = "legacy"

    def __init__(self, source: Source, cursor: _Cursor, inventory: list[GlobalUse]) -> None:
        super().__init__(source)
        self.inventory_extra = inventory
        after_magic = cursor.pos
        try:
            self._read(cursor)
        except UnsafeGlobalError:
            raise
        except PtfileError:
            _scan_for_danger(source, after_magic, source.size, 4, self.name)
            raise

    def _read(self, cursor: _Cursor) -> None:
        cursor.part = "protocol version"
        version = cursor.pickle("protocol version", MAX_HEADER_PICKLE_BYTES)
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise CorruptFileError(f"{self.name}: legacy protocol version {brief(version)}, expected {PROTOCOL_VERSION}")
        cursor.part = "sys_info"
        sys_info = cursor.pickle("sys_info", MAX_HEADER_PICKLE_BYTES)
        if not isinstance(sys_info, dict):
            raise CorruptFileError(f"{self.name}: legacy sys_info is a {type(sys_info).__name__}, not a dict")
        cursor.part = "pickle"
        self.pickle_offset = cursor.pos
        self.pickle_data = cursor.pickle_bytes("object pickle")
        cursor.part = "storage keys"
        keys = cursor.pickle("storage keys")
        self._probe()
        self._locate(cursor, keys)

    def _probe(self) -> None:
        """Run the object pickle once to learn every storage it names; refuse it if dangerous."""
        inventory: list[GlobalUse] = []
        try:
            _run(self.pickle_data, "pickle", inventory, self._storage_of, _inert_context(), self.pickle_offset)
        except PtfileError:
            _refuse_dangerous(inventory, self.name)
            raise
        _refuse_dangerous(inventory, self.name)
        self.storages.sealed = True

    def _locate(self, cursor: _Cursor, keys: Any) -> None:
        """Check the key list against the object pickle and find each root storage's bytes."""
        if type(keys) is not list or not all(type(k) is str for k in keys):
            raise CorruptFileError(f"{self.name}: legacy storage key list is not a list of strings")
        listed = set(keys)
        if len(listed) != len(keys):
            raise CorruptFileError(f"{self.name}: legacy storage key list names a storage twice")
        used = set(self.storages.roots())
        if listed != used:
            missing, extra = sorted(used - listed)[:4], sorted(listed - used)[:4]
            raise CorruptFileError(
                f"{self.name}: legacy storage key list does not match the pickle: "
                f"missing {missing}, not used by the pickle {extra}"
            )
        for key in keys:
            ref = self.storages.refs[key]
            size = _itemsize(self.storages.types[key])
            numel = cursor.int64(f"element count of storage {key}")
            if numel < 0 or numel > cursor.left // size:
                raise CorruptFileError(
                    f"{self.name}: storage {key!r} declares {numel} elements of {size} bytes; {cursor.left} bytes are left"
                )
            if numel * size != ref.nbytes:
                raise CorruptFileError(
                    f"{self.name}: storage {key!r} holds {numel * size} bytes but the pickle says {ref.nbytes}"
                )
            self.storages.data_offsets[key] = cursor.skip(ref.nbytes, f"storage {key}")
        if cursor.left:
            raise CorruptFileError(f"{self.name}: {cursor.left} bytes follow the last legacy storage")

    def pickles(self) -> list[tuple[str, bytes]]:
        """The object pickle: ``[(name, bytes)]``."""
        return [("pickle", self.pickle_data)]

    def origin(self, record: str) -> int:
        """Where the object pickle starts in the file: its offsets are reported as file offsets."""
        return self.pickle_offset

    def persistent_load(self, pid: Any, context: Any) -> Any:
        return self._storage_of(pid)

    def _storage_of(self, pid: Any) -> Any:
        if type(pid) is not tuple or not pid:
            raise CorruptFileError(f"{self.name}: persistent id {brief(pid)} is not a tuple")
        if pid[0] == "module" and len(pid) == 4:
            return _container_class(*pid[1:])
        if pid[0] != "storage" or len(pid) != 6:
            raise CorruptFileError(f"{self.name}: persistent id {brief(pid)} is not a legacy ('storage', ...) tuple")
        _, storage_type, key, location, numel, view = pid
        if type(storage_type) is not StorageType:
            raise CorruptFileError(f"{self.name}: persistent id names {brief(storage_type)}, not a storage class")
        if type(location) is not str:
            raise CorruptFileError(f"{self.name}: storage location {brief(location)} is not a string")
        numel = _int(numel, "storage element count")
        if numel > INT64_MAX:
            raise CorruptFileError(f"{self.name}: storage element count {numel} does not fit an int64")
        root = self.storages.root(check_storage_key(key), storage_type, location, numel)
        if view is None:
            return root
        if type(view) is not tuple or len(view) != 3:
            raise CorruptFileError(f"{self.name}: storage view metadata {brief(view)} is not (key, offset, size)")
        view_key, offset, size = view
        return self.storages.view(
            check_storage_key(view_key), root.key, _int(offset, "view offset"), _int(size, "view size")
        )


# -- the tar archive -----------------------------------------------------------
#
# torch opens a file that is not a zip with ``tarfile.open(mode="r:", format=PAX_FORMAT)``
# and, on any ``tarfile.TarError`` (at open, while it lists the members, or while it reads
# one), runs ``pickle.load`` from byte 0 instead.  So a file is a tar here exactly when
# tarfile's ``TarInfo.frombuf`` accepts its first block, and a tar is read only when tarfile
# reads it to the same members, on every Python, without an error: anything else is refused,
# never read another way.  The forms newer tarfile versions refuse (CVE-2024-6232 rewrote
# the PAX parser) are refused here too, and every length is bounded before it is parsed.

#: Header types, with tarfile's names for them.
_AREGTYPE, _REGTYPE, _DIRTYPE, _CONTTYPE = b"\0", b"0", b"5", b"7"
_PAX_LOCAL_TYPES = (b"x", b"X")  # XHDTYPE, SOLARIS_XHDTYPE: records for the next member
_PAX_GLOBAL_TYPE = b"g"  # XGLTYPE: records for every later member
_GNU_TYPES = (b"L", b"K", b"S")  # long name, long link name, sparse
_SUPPORTED_TYPES = (_REGTYPE, _AREGTYPE, b"1", b"2", b"3", b"4", _DIRTYPE, b"6", _CONTTYPE, *_GNU_TYPES)
#: Types whose data blocks follow the header (tarfile: ``isreg() or type not in SUPPORTED_TYPES``).
_REGULAR_TYPES = (_REGTYPE, _AREGTYPE, _CONTTYPE, b"S")
#: What torch's tar writer gives each member.
_TORCH_MEMBER_TYPES = (_REGTYPE, _AREGTYPE)
#: Permission bits a member's mode may hold, and the one it must: torch reads each member back from disk.
MAX_TAR_MODE = 0o7777
OWNER_READ = 0o400
#: Digits of a PAX record's length: newer tarfile reads at most 20 (a 64-bit length).
MAX_PAX_LENGTH_DIGITS = 20
#: Records in one PAX header: torch's writer gives a member two or three (path, size, mtime).
MAX_PAX_RECORDS = 64
#: A PAX number longer than this would be read by ``int`` subject to the reader's digit limit.
MAX_PAX_NUMBER_CHARS = 64
#: tarfile decodes names with the file system encoding (UTF-8) and this error handler.
_TAR_NAME_ERRORS = "surrogateescape"
_LOW_BYTES = bytes(range(128))


def _tar_number(field: bytes) -> int:
    """A numeric header field exactly as tarfile's ``nti`` reads it.

    GNU base-256 (a first byte 0x80, or 0xff for a negative number), else the text up to
    the first NUL, stripped, read by ``int(text, 8)``: so ``0o17``, ``+17``, ``1_7`` and
    tabs pass, as they do for tarfile.  A negative result is the caller's to refuse.
    """
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0o377 else value
    try:
        return int(field.split(b"\0", 1)[0].decode("ascii").strip() or "0", 8)
    except ValueError:  # UnicodeDecodeError is a ValueError too
        raise CorruptFileError(f"tar header number {brief(field)} is not one tarfile reads") from None


def _tar_checksums(block: bytes) -> tuple[int, int]:
    """The header checksum counted with unsigned and with signed bytes, the chksum field as spaces."""
    rest = block[:148] + block[156:]
    unsigned = 8 * ord(" ") + sum(rest)
    high = len(rest.translate(None, _LOW_BYTES))  # bytes a signed char reads as negative
    return unsigned, unsigned - 256 * high


def _tar_text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", _TAR_NAME_ERRORS)


class TarHeader(NamedTuple):
    """One 512-byte header block as ``TarInfo.frombuf`` reads it."""

    name: str  # with the ustar prefix, and without a directory's trailing slashes
    type: bytes  # an AREGTYPE whose name ends in "/" is already DIRTYPE, as in tarfile
    size: int
    mode: int
    v7_directory: bool  # the type field said a file, and the name's trailing slash a directory


def _parse_tar_header(block: bytes, pos: int) -> TarHeader:
    """``TarInfo.frombuf``: the checksum, then every numeric field, each as tarfile reads it."""
    if len(block) != TAR_BLOCK:
        raise CorruptFileError(f"tar header at byte {pos} is cut short at {len(block)} bytes")
    if _tar_number(block[148:156]) not in _tar_checksums(block):
        raise CorruptFileError(f"tar header at byte {pos} has a bad checksum")
    mode, _uid, _gid, size, _mtime = (_tar_number(block[start : start + width]) for start, width in
                                      ((100, 8), (108, 8), (116, 8), (124, 12), (136, 12)))
    _tar_number(block[329:337])  # devmajor and devminor: tarfile refuses the header if they are not numbers
    _tar_number(block[337:345])
    kind = block[156:157]
    if kind == b"S":  # old GNU sparse headers carry four (offset, size) pairs and the real size
        for start in range(386, 482, 12):
            _tar_number(block[start : start + 12])
        _tar_number(block[483:495])
    name = _tar_text(block[:100])
    v7_directory = kind == _AREGTYPE and name.endswith("/")
    if v7_directory:
        kind = _DIRTYPE
    if kind == _DIRTYPE:
        name = name.rstrip("/")
    prefix = _tar_text(block[345:500])
    if prefix and kind not in _GNU_TYPES:  # joined whatever the magic field says, as tarfile does
        name = prefix + "/" + name
    return TarHeader(name, kind, size, mode, v7_directory)


def is_tar(head: bytes) -> bool:
    """True when tarfile would read the file's first block as a header, so torch reads a tar first."""
    block = head[:TAR_BLOCK]
    if len(block) != TAR_BLOCK or block == bytes(TAR_BLOCK):
        return False
    try:
        _parse_tar_header(block, 0)
    except CorruptFileError:
        return False
    return True


def _blocks(size: int) -> int:
    return -(-size // TAR_BLOCK) * TAR_BLOCK


def _pax_records(data: bytes, name: str, pos: int) -> dict[str, str]:
    """The ``"<length> <keyword>=<value>\\n"`` records of a PAX header, in their strict form only.

    Python 3.11.9 and older read records loosely (no newline needed, a length may stop inside a
    record, trailing bytes are ignored) with a quadratic regex; newer versions refuse those
    forms.  Only records both read alike pass, parsed here in one linear pass over at most
    :data:`MAX_PAX_BYTES` and :data:`MAX_PAX_RECORDS`; the caller checks that the block's
    padding is NUL, where both stop.  Text is decoded as tarfile's ``_decode_pax_field`` does
    (UTF-8, else UTF-8 with surrogate escapes, which is the same thing).
    """
    if b"GNU.sparse" in data or b"hdrcharset" in data:
        # sparse members and raw-byte names are read differently by different tarfile versions
        raise CorruptFileError(f"{name}: PAX header at byte {pos} describes a sparse member or raw-byte names")
    records: dict[str, str] = {}
    at = count = 0
    while at < len(data):
        count += 1
        if count > MAX_PAX_RECORDS:
            raise LimitExceededError(f"{name}: PAX header at byte {pos} has more than {MAX_PAX_RECORDS} records "
                                     "(MAX_PAX_RECORDS)")
        space = data.find(b" ", at, at + MAX_PAX_LENGTH_DIGITS + 1)
        digits = data[at:space]
        if space < 0 or not digits.isdigit():  # bytes.isdigit: ASCII digits only, as tarfile's [0-9]
            raise CorruptFileError(f"{name}: PAX header at byte {pos}: record at byte {at} has no length")
        end = at + int(digits)
        equals = data.find(b"=", space + 1, end)
        if end > len(data) or equals <= space + 1 or data[end - 1] != 0x0A:
            raise CorruptFileError(f"{name}: PAX header at byte {pos}: record at byte {at} is malformed")
        keyword = data[space + 1 : equals].decode("utf-8", _TAR_NAME_ERRORS)
        records[keyword] = data[equals + 1 : end - 1].decode("utf-8", _TAR_NAME_ERRORS)
        at = end
    return records


def _pax_number(value: str, keyword: str, name: str) -> int:
    """A PAX number as ``_apply_pax_info`` reads it: ``int(value)``, or 0 when that fails."""
    if len(value) > MAX_PAX_NUMBER_CHARS:
        raise LimitExceededError(f"{name}: PAX {keyword} of {len(value)} characters; at most "
                                 f"{MAX_PAX_NUMBER_CHARS} are read (MAX_PAX_NUMBER_CHARS)")
    try:
        return int(value)
    except ValueError:
        return 0


class TarMember(NamedTuple):
    """One archive member as tarfile lists it: its name and type after PAX records, and its data."""

    name: str
    type: bytes
    header: int  # offset of its first header (a PAX header's, if it has one)
    data: int
    size: int
    mode: int

    @property
    def has_data(self) -> bool:
        """Whether tarfile reads data blocks for it (regular files, and types tarfile does not know)."""
        return self.type in _REGULAR_TYPES or self.type not in _SUPPORTED_TYPES


class _TarWalk:
    """The headers of a tar from byte 0, as ``TarFile.next`` meets them, every length checked."""

    def __init__(self, source: Source, max_headers: int | None) -> None:
        self.source = source
        self.name = source.name
        self.max_headers = max_headers
        self.headers = 0
        self.end: int | None = None  # where the end-of-archive block starts, or the file ends

    def _header(self, pos: int, after: str = "") -> TarHeader | None:
        """The header at ``pos``, or None at the end of the archive (the end of the file or a zero block)."""
        left = self.source.size - pos
        block = self.source.read(pos, min(left, TAR_BLOCK), "tar header") if left > 0 else b""
        if block == bytes(len(block)):
            if after:  # tarfile raises SubsequentHeaderError, and torch reads the file as a pickle
                raise CorruptFileError(f"{self.name}: {after} is not followed by a member header at byte {pos}")
            return None
        self.headers += 1
        if self.max_headers is not None and self.headers > self.max_headers:
            raise LimitExceededError(f"{self.name}: more than {self.max_headers} tar headers (MAX_TAR_HEADERS); "
                                     f"torch writes {len(TAR_MEMBERS)}")
        # A header tarfile refuses after the first ends its listing silently, or (after a PAX
        # header) raises: either way its reading is not this one's, so it is refused.
        return _parse_tar_header(block, pos)

    def _data_end(self, data: int, size: int, what: str) -> int:
        """Where the next header starts; tarfile raises ReadError (torch then reads a pickle) past the end."""
        if size < 0:
            raise CorruptFileError(f"{self.name}: {what} at byte {data - TAR_BLOCK} has a negative size {size}")
        self.source.check(data, _blocks(size), f"{what} and its padding")
        return data + _blocks(size)

    def _pax(self, pos: int, header: TarHeader) -> tuple[dict[str, str], int]:
        """The records of the PAX header at ``pos`` and the offset just after its data."""
        if header.size > MAX_PAX_BYTES:
            raise LimitExceededError(f"{self.name}: PAX header of {header.size} bytes at byte {pos}; "
                                     f"at most {MAX_PAX_BYTES} are read (MAX_PAX_BYTES)")
        end = self._data_end(pos + TAR_BLOCK, header.size, "PAX header")
        data = self.source.read(pos + TAR_BLOCK, end - pos - TAR_BLOCK, "PAX header")
        if data[header.size :] != bytes(len(data) - header.size):  # old tarfile reads records from the padding
            raise CorruptFileError(f"{self.name}: PAX header at byte {pos} has bytes in its padding")
        return _pax_records(data[: header.size], self.name, pos), end

    def members(self) -> Iterator[TarMember]:
        pos = 0
        after = ""  # tarfile reads the header after a PAX header as part of it: it must be there
        while True:
            header = self._header(pos, after)
            if header is None:
                self.end = pos
                return
            start, after = pos, ""
            if header.type == _PAX_GLOBAL_TYPE:
                records, pos = self._pax(pos, header)
                if "path" in records or "size" in records:  # tarfile applies them to every later member
                    raise CorruptFileError(f"{self.name}: global PAX header at byte {start} renames or resizes members")
                after = "global PAX header"
                continue
            records: dict[str, str] = {}
            if header.type in _PAX_LOCAL_TYPES:
                records, pos = self._pax(pos, header)
                header = self._header(pos, "PAX header")
                assert header is not None
                if header.type in (*_PAX_LOCAL_TYPES, _PAX_GLOBAL_TYPE):
                    raise CorruptFileError(f"{self.name}: two PAX headers in a row at byte {pos}")
                if header.v7_directory:
                    # Python <= 3.12 makes it a directory before the PAX path applies, newer ones do not
                    raise CorruptFileError(f"{self.name}: member at byte {pos} is a file or a directory by Python version")
            if header.type in _GNU_TYPES:
                raise CorruptFileError(f"{self.name}: GNU long-name or sparse header at byte {pos} is not read")
            name, size = header.name, header.size
            if "path" in records:
                name = records["path"].rstrip("/")
            if "size" in records:
                size = _pax_number(records["size"], "size", self.name)
            member = TarMember(name, header.type, start, pos + TAR_BLOCK, size, header.mode)
            if size < 0:  # Python <= 3.11.9 reads it as no data, newer versions refuse it
                raise CorruptFileError(f"{self.name}: tar member {brief(name)} has a negative size {size}")
            pos = self._data_end(member.data, size, f"tar member {brief(name)}") if member.has_data else member.data
            yield member


def walk_tar(source: Source, max_headers: int | None = None) -> Iterator[TarMember]:
    """Every member of a tar as tarfile lists it; a header tarfile would read another way is refused."""
    return _TarWalk(source, max_headers).members()


def tar_members(source: Source) -> dict[str, tuple[int, int]]:
    """``member name -> (data offset, size)`` for a torch tar, every header and range checked."""
    name = source.name
    members: dict[str, tuple[int, int]] = {}
    walk = _TarWalk(source, MAX_TAR_HEADERS)
    for member in walk.members():
        if member.type not in _TORCH_MEMBER_TYPES:
            raise CorruptFileError(f"{name}: tar member at byte {member.header} has type {brief(member.type)}; "
                                   "torch writes regular files only")
        if member.name not in TAR_MEMBERS:
            raise CorruptFileError(f"{name}: tar member {brief(member.name)} is not one torch writes")
        if not 0 <= member.mode <= MAX_TAR_MODE or not member.mode & OWNER_READ:
            # torch extracts the member and opens it again: os.chmod overflows past MAX_TAR_MODE,
            # and a file its owner may not read opens only for root
            raise CorruptFileError(f"{name}: tar member {member.name!r} has mode {member.mode:#o}, not a file "
                                   "torch can extract and read back as any user")
        if member.name in members:  # tarfile takes the last, torch's writer never repeats one
            raise CorruptFileError(f"{name}: tar member {member.name!r} appears twice")
        members[member.name] = (member.data, member.size)
    assert walk.end is not None
    if walk.end < source.size:
        _check_tar_trailer(source, walk.end)
    missing = [m for m in TAR_MEMBERS if m not in members]
    if missing:
        raise CorruptFileError(f"{name}: tar archive lacks the members {missing}")
    return members


def _check_tar_trailer(source: Source, pos: int) -> None:
    left = source.size - pos
    if left > MAX_TAR_TRAILER or source.read(pos, left, "tar trailer") != bytes(left):
        raise CorruptFileError(f"{source.name}: {left} bytes after the end of the tar archive are not its zero padding")


class LegacyTar(_Container):
    """An ancient tar checkpoint (torch <= 0.3): its four members, checked as they are read."""

    format = "tar"

    def __init__(self, source: Source) -> None:
        super().__init__(source)
        self.members = tar_members(source)
        self.tensors: dict[str, TensorSpec] = {}
        try:
            self._read_sys_info()
            self._read_storages()
            self._read_tensors()
        except UnsafeGlobalError:
            raise
        except PtfileError:
            start, size = self.members["pickle"]
            _scan_for_danger(source, start, start + size, 1, self.name)
            raise
        start, size = self.members["pickle"]
        self.pickle_data = source.read(start, size, "tar member pickle")
        self.pickle_offset = start

    def origin(self, record: str) -> int:
        """Where the ``pickle`` member's data starts in the file: its offsets are reported as file offsets."""
        return self.pickle_offset

    def _cursor(self, member: str) -> _Cursor:
        start, size = self.members[member]
        return _Cursor(self.source, start, start + size, member, self.inventory_extra)

    def _end(self, cursor: _Cursor) -> None:
        if cursor.left:
            raise CorruptFileError(f"{self.name}: {cursor.left} bytes follow the data of tar member {cursor.part}")

    def _read_sys_info(self) -> None:
        cursor = self._cursor("sys_info")
        if not isinstance(cursor.pickle("sys_info", MAX_HEADER_PICKLE_BYTES), dict):
            raise CorruptFileError(f"{self.name}: tar member sys_info is not a dict")
        self._end(cursor)

    def _count(self, cursor: _Cursor, smallest: int) -> int:
        count = cursor.pickle("count")
        if type(count) is not int or count < 0 or count > cursor.left // smallest:
            raise CorruptFileError(
                f"{self.name}: tar member {cursor.part} declares {brief(count)} records in {cursor.left} bytes"
            )
        return count

    def _key(self, value: Any, what: str) -> str:
        key = str(_int(value, what))
        if key in self.storages.refs or key in self.tensors:
            raise CorruptFileError(f"{self.name}: key {key} names two objects")
        return key

    def _read_storages(self) -> None:
        cursor = self._cursor("storages")
        for _ in range(self._count(cursor, MIN_TAR_STORAGE_RECORD)):
            header = cursor.pickle("storage header")
            if type(header) is not tuple or len(header) != 3:
                raise CorruptFileError(f"{self.name}: tar storage header {brief(header)} is not (key, location, type)")
            key, location, storage_type = header
            key = self._key(key, "tar storage key")
            if type(location) is not str or type(storage_type) is not StorageType:
                raise CorruptFileError(f"{self.name}: tar storage {key} has a bad location or storage type")
            size = _itemsize(storage_type)
            numel = cursor.int64(f"element count of storage {key}")
            if numel < 0 or numel > cursor.left // size:
                raise CorruptFileError(
                    f"{self.name}: storage {key} declares {numel} elements of {size} bytes; {cursor.left} bytes are left"
                )
            self.storages.root(key, storage_type, location, numel)
            self.storages.data_offsets[key] = cursor.skip(numel * size, f"storage {key}")
        views = cursor.pickle("storage views")
        if type(views) is not list:
            raise CorruptFileError(f"{self.name}: tar storage views are a {type(views).__name__}, not a list")
        for view in views:
            if type(view) is not tuple or len(view) != 4:
                raise CorruptFileError(f"{self.name}: tar storage view {brief(view)} is not (key, root, offset, numel)")
            key, root, offset, numel = view
            root = str(_int(root, "tar storage view root"))
            self.storages.view(self._key(key, "tar storage view key"), root, _int(offset, "view offset"),
                               _int(numel, "view size"))
        self._end(cursor)

    def _read_tensors(self) -> None:
        cursor = self._cursor("tensors")
        for _ in range(self._count(cursor, MIN_TAR_TENSOR_RECORD)):
            header = cursor.pickle("tensor header")
            if type(header) is not tuple or len(header) != 3:
                raise CorruptFileError(f"{self.name}: tar tensor header {brief(header)} is not (key, storage, type)")
            key = self._key(header[0], "tar tensor key")
            storage = self.storages.refs.get(str(_int(header[1], "tar tensor storage key")))
            if storage is None:
                raise CorruptFileError(f"{self.name}: tar tensor {key} names storage {brief(header[1])}, which is absent")
            ndim = cursor.int32(f"dimensions of tensor {key}")
            if not 0 <= ndim <= MAX_NDIM:
                raise CorruptFileError(f"{self.name}: tar tensor {key} has {ndim} dimensions")
            cursor.skip(4, "padding")  # ndim was once written as 8 bytes
            size = tuple(cursor.int64("size") for _ in range(ndim))
            stride = tuple(cursor.int64("stride") for _ in range(ndim))
            offset = cursor.int64("storage offset")
            dtype = self.storages.types[storage.key].dtype
            if dtype is None:
                raise CorruptFileError(f"{self.name}: tar tensor {key} views an untyped storage")
            offset, size, stride = check_view(storage, dtype, offset, size, stride)
            self.tensors[key] = TensorSpec(storage, dtype, size, stride, offset)
        self._end(cursor)

    def pickles(self) -> list[tuple[str, bytes]]:
        """The object pickle (the ``pickle`` member): ``[(name, bytes)]``."""
        return [("pickle", self.pickle_data)]

    def persistent_load(self, pid: Any, context: Any) -> Any:
        if type(pid) is tuple and len(pid) == 3:
            return _container_class(*pid)
        if type(pid) is not str or not _TAR_ID.fullmatch(pid):
            raise CorruptFileError(f"{self.name}: tar persistent id {brief(pid)} is not an object key")
        key = str(int(pid))
        spec = self.tensors.get(key)
        if spec is not None:
            return context.tensor(spec)
        storage = self.storages.refs.get(key)
        if storage is None:
            raise CorruptFileError(f"{self.name}: tar persistent id {brief(pid)} names no tensor or storage")
        return storage
