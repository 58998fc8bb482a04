"""A streaming zip writer that lays records out exactly as torch's writer (miniz) does.

torch.save writes a zip through ``caffe2::serialize::PyTorchStreamWriter``, which
drives miniz in ZIP64 mode (``MZ_ZIP_FLAG_WRITE_ZIP64``).  Every byte below follows
that writer, because ``torch.load(mmap=True)`` may *compute* record offsets from the
layout instead of reading them::

    local header   PK\\3\\4, version 0, flags 0x0808 (0x0800 for an empty record),
                   method 0 (stored), time/date 0, crc 0, sizes 0, name, extra
    extra field    [ZIP64 0x0001: size, 0 (comp), only if size >= 0xFFFFFFFF;
                    header offset, only if the offset >= 0xFFFFFFFF]
                   then b"FB" + u16 n + b"Z" * n, n putting the data on a multiple of 64
    data           the record's bytes
    descriptor     PK\\7\\8, crc32, sizes as u32 (16 bytes) or, when the ZIP64 field
                   was written, as u64 (24 bytes); absent for empty records
    central dir    one entry per record: version made by / needed 0, same flags,
                   crc, sizes and offset capped at 0xFFFFFFFF with the real values
                   in a ZIP64 field (sizes, then offset), no other extra field
    end            ZIP64 end record (made by 0x031E, needed 0x2D), ZIP64 locator,
                   classic end record with the counts and offsets capped

Record names are ``<prefix>/<name>``; torch's reader takes the prefix from the first
entry.  Data is streamed: each record's bytes are written from the buffers given,
in chunks, with the CRC-32 computed on the way, so nothing is held in memory.  A
large chunk's CRC is computed by a helper thread while this one writes the same
bytes (both release the GIL), so the CRC costs no time beyond the write; headers
and small records are gathered and written in large blocks, not one call each.

The last record torch writes, ``.data/serialization_id``, is a hash of the record
names and CRCs; :class:`SerializationId` reproduces it bit for bit on a 64-bit
libstdc++ build of torch (see its docstring).
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

from ..constants import (
    DEFAULT_ARCHIVE_PREFIX,
    SERIALIZATION_ID_RECORD,
    STORAGE_ALIGNMENT,
    ZIP64_END_MAGIC,
    ZIP64_LOCATOR_MAGIC,
    ZIP_CENTRAL_MAGIC,
    ZIP_DESCRIPTOR_MAGIC,
    ZIP_END_MAGIC,
    ZIP_LOCAL_MAGIC,
)

__all__ = ["ZipRecordWriter", "SerializationId", "archive_prefix"]

#: Sizes and offsets at or above this need ZIP64 fields (miniz compares with >=).
ZIP32_LIMIT = 0xFFFFFFFF
#: Bytes written per call when streaming a record: large enough for full disk speed,
#: small enough that a mapped source is never paged in all at once.
CHUNK = 16 << 20
#: Chunks at least this large get their CRC from a helper thread while they are written;
#: below it, starting a thread costs more than the CRC (about 6 GB/s) saves.
PARALLEL_CRC = 1 << 20
#: Headers and small records are gathered up to this many bytes before one write.
GATHER = 1 << 20

# The signatures as the little-endian u32 the header structs pack.
_LOCAL_SIG = int.from_bytes(ZIP_LOCAL_MAGIC, "little")
_CENTRAL_SIG = int.from_bytes(ZIP_CENTRAL_MAGIC, "little")
_DESCRIPTOR_SIG = int.from_bytes(ZIP_DESCRIPTOR_MAGIC, "little")
_ZIP64_END_SIG = int.from_bytes(ZIP64_END_MAGIC, "little")
_ZIP64_LOCATOR_SIG = int.from_bytes(ZIP64_LOCATOR_MAGIC, "little")
_END_SIG = int.from_bytes(ZIP_END_MAGIC, "little")
_FLAG_DESCRIPTOR = 0x0008  # sizes and crc follow the data
_FLAG_UTF8 = 0x0800  # names are UTF-8
_ZIP64_FIELD = 0x0001
_ZIP64_MADE_BY = 0x031E  # what miniz writes: unix, spec 3.0
_ZIP64_NEEDED = 0x2D  # spec 4.5, ZIP64
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # 30 bytes
_CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")  # 46 bytes
_ZIP64_END = struct.Struct("<IQHHIIQQQQ")  # 56 bytes
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_END = struct.Struct("<IHHHHIIH")
_MASK64 = (1 << 64) - 1


def archive_prefix(filename: str | None) -> str:
    """The record prefix torch uses for a file of this name (``archive`` for streams).

    torch takes the basename, drops the last extension, and falls back to
    ``archive`` when writing to a stream or to a non-ASCII name.
    """
    if filename is None:
        return DEFAULT_ARCHIVE_PREFIX
    try:
        filename.encode("ascii")
    except UnicodeEncodeError:
        return DEFAULT_ARCHIVE_PREFIX
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    dot = base.rfind(".")
    return base if dot < 0 else base[:dot]


def padding_extra(cursor: int, name_size: int, size: int, alignment: int = STORAGE_ALIGNMENT) -> bytes:
    """torch's ``FB`` extra field that puts a record's data on an ``alignment`` boundary."""
    start = cursor + _LOCAL_HEADER.size + name_size + 4
    if size >= ZIP32_LIMIT or cursor >= ZIP32_LIMIT:
        start += 4 + (16 if size >= ZIP32_LIMIT else 0) + (8 if cursor >= ZIP32_LIMIT else 0)
    pad = -start % alignment
    return b"FB" + struct.pack("<H", pad) + b"Z" * pad


def _zip64_field(values: list[int]) -> bytes:
    return struct.pack("<HH", _ZIP64_FIELD, 8 * len(values)) + b"".join(struct.pack("<Q", v) for v in values)


@dataclass(slots=True)
class _Entry:
    name: bytes
    offset: int
    size: int
    crc: int
    flags: int


class ZipRecordWriter:
    """Writes records to a binary file object in torch's layout; offsets count from 0."""

    def __init__(self, file: IO[bytes], prefix: str, alignment: int = STORAGE_ALIGNMENT) -> None:
        self._file = file
        self._prefix = prefix
        self._alignment = alignment
        self._entries: list[_Entry] = []
        self.cursor = 0
        self.serialization_id = SerializationId()
        self._pending = bytearray()  # small writes not yet handed to the file

    def _write(self, data: Any) -> None:
        """Append bytes to the output: gathered while small, written through when large."""
        size = len(data) if not isinstance(data, memoryview) else data.nbytes
        self.cursor += size
        if size < GATHER:
            self._pending += data
            if len(self._pending) >= GATHER:
                self._flush()
            return
        self._flush()
        self._file.write(data)

    def _flush(self) -> None:
        if self._pending:
            self._file.write(self._pending)
            self._pending = bytearray()

    def write_record(self, name: str, data: bytes | Iterable[Any], size: int | None = None) -> None:
        """Write one record from bytes, or from an iterable of buffers totalling ``size`` bytes."""
        if isinstance(data, (bytes, bytearray)):
            chunks: Iterable[Any] = (data,)
            size = len(data)
        else:
            chunks = data
        if size is None:
            raise ValueError("size is required when data is streamed")
        full_name = f"{self._prefix}/{name}".encode()
        offset = self.cursor
        flags = _FLAG_UTF8 | (_FLAG_DESCRIPTOR if size else 0)
        big = size >= ZIP32_LIMIT or offset >= ZIP32_LIMIT
        zip64 = b""
        if big:
            zip64 = _zip64_field(([size, 0] if size >= ZIP32_LIMIT else []) + ([offset] if offset >= ZIP32_LIMIT else []))
        extra = zip64 + padding_extra(offset, len(full_name), size, self._alignment)
        self._write(_LOCAL_HEADER.pack(_LOCAL_SIG, 0, flags, 0, 0, 0, 0, 0, 0, len(full_name), len(extra))
                    + full_name + extra)
        crc, written, head = self._stream(chunks)
        if written != size:
            raise ValueError(f"record {name}: {written} bytes given, {size} declared")
        if size:
            if big:
                self._write(struct.pack("<IIQQ", _DESCRIPTOR_SIG, crc, size, size))
            else:
                self._write(struct.pack("<IIII", _DESCRIPTOR_SIG, crc, size, size))
        self._entries.append(_Entry(full_name, offset, size, crc, flags))
        self.serialization_id.add(name, size, crc, head)

    def _stream(self, chunks: Iterable[Any]) -> tuple[int, int, bytes]:
        crc = 0
        written = 0
        head = b""
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            if len(view) < PARALLEL_CRC:  # small tensors, the many-tensor case: one piece, no thread
                if len(head) < 8:
                    head += bytes(view[: 8 - len(head)])
                crc = zlib.crc32(view, crc)
                self._write(view)
                written += len(view)
                continue
            for start in range(0, len(view), CHUNK):
                piece = view[start : start + CHUNK]
                if len(head) < 8:
                    head += bytes(piece[: 8 - len(head)])
                if len(piece) >= PARALLEL_CRC:
                    crc = self._write_with_crc(piece, crc)
                else:
                    crc = zlib.crc32(piece, crc)
                    self._write(piece)
                written += len(piece)
        return crc, written, head

    def _write_with_crc(self, piece: memoryview, crc: int) -> int:
        """Write ``piece`` while a helper thread extends ``crc`` over it; the CRC is the same."""
        result: list[int] = []
        helper = threading.Thread(target=lambda: result.append(zlib.crc32(piece, crc)), daemon=True)
        helper.start()
        try:
            self._write(piece)
        finally:
            helper.join()
        if not result:  # the helper failed (it cannot, short of memory): compute it here
            return zlib.crc32(piece, crc)
        return result[0]

    def finish(self) -> None:
        """Write ``.data/serialization_id``, the central directory and the end records."""
        self.write_record(SERIALIZATION_ID_RECORD, self.serialization_id.value().encode())
        central_start = self.cursor
        for entry in self._entries:
            self._write(_central_entry(entry))
        central_size = self.cursor - central_start
        zip64_end = self.cursor
        count = len(self._entries)
        self._write(
            _ZIP64_END.pack(
                _ZIP64_END_SIG, _ZIP64_END.size - 12, _ZIP64_MADE_BY, _ZIP64_NEEDED, 0, 0, count, count, central_size,
                central_start,
            )
        )
        self._write(_ZIP64_LOCATOR.pack(_ZIP64_LOCATOR_SIG, 0, zip64_end, 1))
        short = min(count, 0xFFFF)
        self._write(
            _END.pack(_END_SIG, 0, 0, short, short, min(central_size, ZIP32_LIMIT), min(central_start, ZIP32_LIMIT), 0)
        )
        self._flush()


def _central_entry(entry: _Entry) -> bytes:
    large = [entry.size, entry.size] if entry.size >= ZIP32_LIMIT else []
    if entry.offset >= ZIP32_LIMIT:
        large.append(entry.offset)
    extra = _zip64_field(large) if large else b""
    header = _CENTRAL_HEADER.pack(
        _CENTRAL_SIG, 0, 0, entry.flags, 0, 0, 0, entry.crc,
        min(entry.size, ZIP32_LIMIT), min(entry.size, ZIP32_LIMIT),
        len(entry.name), len(extra), 0, 0, 0, 0, min(entry.offset, ZIP32_LIMIT),
    )
    return header + entry.name + extra


# -- .data/serialization_id ------------------------------------------------------

_GOLDEN = 0x9E3779B9
_MUL = (0xC6A4A793 << 32) + 0x5BD1E995  # libstdc++ _Hash_bytes multiplier
_SEED = 0xC70F6907  # std::hash<std::string> seed in libstdc++

# libstdc++'s __prime_list up to 2**32 (hashtable-aux.cc): bucket counts of unordered_set.
_PRIMES = (
    2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 103, 109,
    113, 127, 137, 139, 149, 157, 167, 179, 193, 199, 211, 227, 241, 257, 277, 293, 313, 337, 359, 383, 409, 439,
    467, 503, 541, 577, 619, 661, 709, 761, 823, 887, 953, 1031, 1109, 1193, 1289, 1381, 1493, 1613, 1741, 1879,
    2029, 2179, 2357, 2549, 2753, 2971, 3209, 3469, 3739, 4027, 4349, 4703, 5087, 5503, 5953, 6427, 6949, 7517,
    8123, 8783, 9497, 10273, 11113, 12011, 12983, 14033, 15173, 16411, 17749, 19183, 20753, 22447, 24281, 26267,
    28411, 30727, 33223, 35933, 38873, 42043, 45481, 49201, 53201, 57557, 62233, 67307, 72817, 78779, 85229,
    92203, 99733, 107897, 116731, 126271, 136607, 147793, 159871, 172933, 187091, 202409, 218971, 236897, 256279,
    277261, 299951, 324503, 351061, 379787, 410857, 444487, 480881, 520241, 562841, 608903, 658753, 712697,
    771049, 834181, 902483, 976369, 1056323, 1142821, 1236397, 1337629, 1447153, 1565659, 1693859, 1832561,
    1982627, 2144977, 2320627, 2510653, 2716249, 2938679, 3179303, 3439651, 3721303, 4026031, 4355707, 4712381,
    5098259, 5515729, 5967347, 6456007, 6984629, 7556579, 8175383, 8844859, 9569143, 10352717, 11200489,
    12117689, 13109983, 14183539, 15345007, 16601593, 17961079, 19431899, 21023161, 22744717, 24607243,
    26622317, 28802401, 31160981, 33712729, 36473443, 39460231, 42691603, 46187573, 49969847, 54061849,
    58488943, 63278561, 68460391, 74066549, 80131819, 86693767, 93793069, 101473717, 109783337, 118773397,
    128499677, 139022417, 150406843, 162723577, 176048909, 190465427, 206062531, 222936881, 241193053,
    260944219, 282312799, 305431229, 330442829, 357502601, 386778277, 418451333, 452718089, 489790921,
    529899637, 573292817, 620239453, 671030513, 725980837, 785430967, 849749479, 919334987, 994618837,
    1076067617, 1164186217, 1259520799, 1362662261, 1474249943, 1594975441, 1725587117, 1866894511, 2019773507,
    2185171673, 2364114217, 2557710269, 2767159799, 2993761039, 3238918481, 3504151727, 3791104843, 4101556399,
    4294967291,
)
_FAST_BUCKETS = (2, 2, 2, 3, 5, 5, 7, 7, 11, 11, 11, 11, 13, 13)
_FIRST_BUCKETS = 11  # libstdc++ sizes an empty table for 11 elements on first insert


def hash_combine(seed: int, value: int) -> int:
    """``c10::hash_combine`` on 64-bit ``size_t``."""
    return (seed ^ (value + _GOLDEN + (seed << 6) + (seed >> 2))) & _MASK64


def _shift_mix(value: int) -> int:
    return value ^ (value >> 47)


def std_string_hash(data: bytes) -> int:
    """libstdc++'s ``std::hash<std::string>`` (``_Hash_bytes``, 64-bit)."""
    size = len(data)
    aligned = size & ~7
    result = (_SEED ^ (size * _MUL)) & _MASK64
    for start in range(0, aligned, 8):
        word = _shift_mix(int.from_bytes(data[start : start + 8], "little") * _MUL & _MASK64) * _MUL & _MASK64
        result = (result ^ word) * _MUL & _MASK64
    if size & 7:
        result = (result ^ int.from_bytes(data[aligned:], "little")) * _MUL & _MASK64
    result = _shift_mix(result) * _MUL & _MASK64
    return _shift_mix(result)


class _UnorderedSet:
    """Iteration order of libstdc++'s ``std::unordered_set<std::string>`` (GCC >= 11).

    Nodes form one singly linked list; a node whose bucket is empty goes to the front
    of the list, otherwise to the front of its bucket; a rehash relinks the nodes in
    list order by the same rule.  Growth follows ``_Prime_rehash_policy``.

    A bucket's nodes are always adjacent in that list, so the list is kept as groups:
    ``_groups[bucket]`` holds the bucket's nodes and ``_group_order`` the buckets, both in
    insertion order (the list reads each backwards).  An insert is then O(1) where a
    literal list would cost O(n), which made saving 20,000 storages quadratic.
    """

    def __init__(self) -> None:
        self._groups: dict[int, list[tuple[bytes, int]]] = {}
        self._group_order: list[int] = []
        self._count = 0
        self._buckets = 1
        self._next_resize = 0

    def _next_bucket_count(self, wanted: int) -> int:
        if wanted < len(_FAST_BUCKETS):
            self._next_resize = _FAST_BUCKETS[wanted]
            return _FAST_BUCKETS[wanted]
        for prime in _PRIMES[6:]:
            if prime >= wanted:
                self._next_resize = prime
                return prime
        raise OverflowError("too many records to reproduce torch's serialization id")

    def _order(self) -> list[tuple[bytes, int]]:
        """The nodes in list order: newest bucket first, newest node first within it."""
        return [node for bucket in reversed(self._group_order) for node in reversed(self._groups[bucket])]

    def _relink(self, nodes: list[tuple[bytes, int]]) -> None:
        # libstdc++'s rehash walks the list in order and inserts each node by the same rule.
        self._groups = {}
        self._group_order = []
        for node in nodes:
            self._insert(node)

    def _insert(self, node: tuple[bytes, int]) -> None:
        bucket = node[1] % self._buckets
        group = self._groups.get(bucket)
        if group is None:
            self._groups[bucket] = [node]
            self._group_order.append(bucket)
        else:
            group.append(node)

    def add(self, name: bytes) -> None:
        count = self._count
        if count + 1 > self._next_resize:
            wanted = max(count + 1, 0 if self._next_resize else _FIRST_BUCKETS)
            if wanted >= self._buckets:
                nodes = self._order()
                self._buckets = self._next_bucket_count(max(wanted + 1, self._buckets * 2))
                self._relink(nodes)
            else:
                self._next_resize = self._buckets
        self._insert((name, std_string_hash(name)))
        self._count = count + 1

    def hashes(self) -> list[int]:
        return [h for _, h in self._order()]


class SerializationId:
    """torch's ``.data/serialization_id``: 20 digits of name hashes, 20 of CRCs.

    The CRC half folds, in write order, the CRC of every record that has a data
    descriptor (non-empty records), read back from the descriptor bytes torch's
    write callback sees; a record whose own data starts with the descriptor
    signature is folded a second time, as that callback mistakes it for one.  The
    name half folds ``std::hash`` of each record name in ``unordered_set`` order.
    """

    def __init__(self) -> None:
        self._names = _UnorderedSet()
        self._crc = 0

    def add(self, name: str, size: int, crc: int, head: bytes) -> None:
        if len(head) >= 8 and head[:4] == ZIP_DESCRIPTOR_MAGIC:
            self._crc = hash_combine(self._crc, int.from_bytes(head[4:8], "little"))
        if size:
            self._crc = hash_combine(self._crc, crc)
        self._names.add(name.encode())

    def value(self) -> str:
        combined = 0
        for name_hash in self._names.hashes():
            combined = hash_combine(combined, name_hash)
        return f"{combined:020d}{self._crc:020d}"
