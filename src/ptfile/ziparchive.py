"""The zip container torch writes, read as leniently as torch and as strictly as safety needs.

Layout (see the project's format notes for every byte)::

    [local header "PK\\x03\\x04" | name | extra ("FB" padding) | data | descriptor] * N
    [central directory "PK\\x01\\x02" entries] * N
    [ZIP64 end record "PK\\x06\\x06" | ZIP64 locator "PK\\x06\\x07"]   (torch always writes them)
    end record "PK\\x05\\x06"

Torch's reader (miniz) is lenient, and a reader that refuses what torch accepts
is useless, so this reader:

* takes every record from the central directory, in any order, and the archive
  prefix from the text before the first ``/`` of the first entry;
* ignores CRCs (torch writes 0 when asked to) unless asked to verify them, and
  then streams each record through the check in chunks, never holding it whole;
* accepts ZIP64 sizes and offsets, data descriptors, any extra fields;
* reads STORED records in place and DEFLATED ones into memory up to a cap.

And for safety it MUST:

* check every offset and size against the real file size before use;
* refuse duplicate names (readers disagree on which copy wins), records that
  share bytes (many central entries over one local record would multiply a
  compressed record's memory), encrypted records,
  compression methods other than stored and deflate, and a local header whose
  signature is wrong;
* remember anomalies (local name differing from the central name, flag bits over
  plain data, CRC mismatches when verified) for the scanner to report.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import CorruptFileError, LimitExceededError, UnsupportedFormatError
from .source import Source

__all__ = ["ZipEntry", "ZipArchive", "LOCAL_MAGIC", "is_zip"]

LOCAL_MAGIC = b"PK\x03\x04"
CENTRAL_MAGIC = b"PK\x01\x02"
END_MAGIC = b"PK\x05\x06"
ZIP64_END_MAGIC = b"PK\x06\x06"
ZIP64_LOCATOR_MAGIC = b"PK\x06\x07"

END_SIZE = 22
ZIP64_LOCATOR_SIZE = 20
ZIP64_END_SIZE = 56
CENTRAL_SIZE = 46
LOCAL_SIZE = 30
#: The end record may be followed by a comment of at most 65535 bytes.
MAX_END_SEARCH = END_SIZE + 0xFFFF
#: First look: the end record, its ZIP64 locator and a short comment.
FIRST_END_SEARCH = 1024
#: Deflated records are inflated into memory.  Torch never compresses, so a large
#: compressed record comes from some other tool or an attacker; this bounds the memory.
MAX_INFLATED_RECORD = 1 << 30
#: CRC verification reads a record in pieces of this size (views of a mapped file, no copies),
#: so verifying a 2 GB storage costs one piece of memory, not 2 GB.
CRC_CHUNK_BYTES = 1 << 22

STORED = 0
DEFLATED = 8
FLAG_ENCRYPTED = 0x1
FLAG_UTF8 = 0x800
_SUSPICIOUS_FLAGS = 0x1 | 0x20 | 0x40  # encryption-related bits

_end = struct.Struct("<4sHHHHIIH")
_zip64_locator = struct.Struct("<4sIQI")
_zip64_end = struct.Struct("<4sQHHIIQQQQ")
_central = struct.Struct("<4sHHHHHHIIIHHHHHII")
_local = struct.Struct("<4sHHHHHIIIHH")


def is_zip(head: bytes) -> bool:
    """True when the file starts with a local header, the test torch itself uses."""
    return head[:4] == LOCAL_MAGIC


@dataclass(slots=True)
class ZipEntry:
    """One record of the central directory."""

    name: str
    method: int
    flags: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int
    central_offset: int
    data_offset: int = -1  # resolved from the local header on first use
    limit: int = -1  # where the next record (or the central directory) starts: the data must end before it


class ZipArchive:
    """The records of a zip file, by name.

    Args:
        source: the bytes of the file.
        folder: torch's layout, every record under one archive folder (an ``.npz`` has none).
    """

    def __init__(self, source: Source, *, folder: bool = True) -> None:
        self.source = source
        self.name = source.name
        self.anomalies: list[str] = []
        self.entries: dict[str, ZipEntry] = {}
        self.order: list[str] = []
        self._read_directory()
        first = self.order[0] if self.order else ""
        if folder and "/" not in first:
            raise CorruptFileError(f"{self.name}: first zip record {first!r} is not inside an archive folder")
        self.prefix = first.split("/", 1)[0] if folder else ""

    # -- directory ---------------------------------------------------------------

    def _find_end(self) -> tuple[int, tuple]:
        size = self.source.size
        if size < END_SIZE:
            raise CorruptFileError(f"{self.name}: {size} bytes is too short for a zip archive")
        # Torch writes no comment, so the record is at the very end: look at a small tail first
        # (a remote source pays for every byte) and at the whole comment window only if needed.
        for window in (FIRST_END_SEARCH, MAX_END_SEARCH):
            start = max(0, size - window)
            tail = self.source.read(start, size - start, "zip end record")
            pos = tail.rfind(END_MAGIC)
            while pos >= 0:
                if pos + END_SIZE <= len(tail):
                    fields = _end.unpack_from(tail, pos)
                    if pos + END_SIZE + fields[7] <= len(tail):
                        return start + pos, fields
                pos = tail.rfind(END_MAGIC, 0, pos)
            if start == 0:
                break
        raise CorruptFileError(f"{self.name}: no zip end record; the file is truncated or not a zip archive")

    def _read_directory(self) -> None:
        end_offset, (_, _, _, _, count, cd_size, cd_offset, _) = self._find_end()
        locator_at = end_offset - ZIP64_LOCATOR_SIZE
        if locator_at >= 0 and self.source.read(locator_at, 4, "zip64 locator") == ZIP64_LOCATOR_MAGIC:
            _, _, z64_offset, _ = _zip64_locator.unpack(self.source.read(locator_at, ZIP64_LOCATOR_SIZE))
            record = self.source.read(z64_offset, ZIP64_END_SIZE, "zip64 end record")
            fields = _zip64_end.unpack(record)
            if fields[0] != ZIP64_END_MAGIC:
                raise CorruptFileError(f"{self.name}: zip64 locator points at byte {z64_offset}, not at a zip64 end record")
            count, cd_size, cd_offset = fields[7], fields[8], fields[9]
        elif 0xFFFFFFFF in (cd_size, cd_offset) or count == 0xFFFF:
            raise CorruptFileError(f"{self.name}: zip end record needs a zip64 record that is missing")
        if count * CENTRAL_SIZE > cd_size:
            raise CorruptFileError(f"{self.name}: central directory of {cd_size} bytes cannot hold {count} records")
        directory = self.source.read(cd_offset, cd_size, "zip central directory")
        pos = 0
        for _ in range(count):
            pos = self._read_central(directory, pos, cd_offset)
        self._assign_limits(cd_offset)

    def _assign_limits(self, cd_offset: int) -> None:
        """Give each record the bytes up to the next local header; refuse records that overlap.

        Writers lay records out one after another, then the central directory.  Two
        central entries over the same bytes would let a small file read (or inflate)
        one record many times, so each record must fit before the next one starts.
        """
        ordered = sorted(self.entries.values(), key=lambda entry: entry.header_offset)
        limits = [entry.header_offset for entry in ordered[1:]] + [cd_offset]
        for entry, limit in zip(ordered, limits[: len(ordered)], strict=True):
            if entry.header_offset + LOCAL_SIZE > limit:
                raise CorruptFileError(
                    f"{self.name}: zip record {entry.name!r} at byte {entry.header_offset} overlaps "
                    f"the next record or the central directory at byte {limit}"
                )
            entry.limit = limit

    def _read_central(self, directory: bytes, pos: int, cd_offset: int) -> int:
        if pos + CENTRAL_SIZE > len(directory):
            raise CorruptFileError(f"{self.name}: central directory ends inside record at byte {cd_offset + pos}")
        (magic, _, _, flags, method, _, _, crc, csize, size, nlen, elen, clen, _, _, _, offset) = _central.unpack_from(
            directory, pos
        )
        if magic != CENTRAL_MAGIC:
            raise CorruptFileError(f"{self.name}: bad central directory signature at byte {cd_offset + pos}")
        name_at = pos + CENTRAL_SIZE
        after = name_at + nlen + elen + clen
        if after > len(directory):
            raise CorruptFileError(f"{self.name}: central directory record at byte {cd_offset + pos} is truncated")
        raw_name = directory[name_at : name_at + nlen]
        name = raw_name.decode("utf-8" if flags & FLAG_UTF8 else "cp437", "replace")
        if 0xFFFFFFFF in (csize, size, offset):
            size, csize, offset = _zip64_extra(directory[name_at + nlen : name_at + nlen + elen], size, csize, offset)
        if name in self.entries:
            raise CorruptFileError(f"{self.name}: zip record {name!r} appears twice")
        if flags & _SUSPICIOUS_FLAGS:
            self.anomalies.append(f"record {name!r} has flag bits 0x{flags:04x} set")
        self.entries[name] = ZipEntry(name, method, flags, crc, csize, size, offset, cd_offset + pos)
        self.order.append(name)
        return after

    # -- records -----------------------------------------------------------------

    def full_name(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def has(self, name: str) -> bool:
        return self.full_name(name) in self.entries

    def get(self, name: str) -> ZipEntry | None:
        return self.entries.get(self.full_name(name))

    def entry(self, full_name: str) -> ZipEntry:
        found = self.entries.get(full_name)
        if found is None:
            raise CorruptFileError(f"{self.name}: record {full_name!r} is missing")
        return found

    def data_offset(self, entry: ZipEntry) -> int:
        """Where the record's data starts, from its local header (checked once)."""
        if entry.data_offset >= 0:
            return entry.data_offset
        # views, not copies: a file of 20,000 storages reads 20,000 local headers; the header and the
        # name it should hold come in one request where the file allows (a remote source pays per request)
        expected = LOCAL_SIZE + len(entry.name.encode("utf-8", "replace"))
        ahead = expected if entry.header_offset + expected <= self.source.size else LOCAL_SIZE
        header = self.source.view(entry.header_offset, ahead, f"local header of {entry.name!r}")
        magic, _, _, _, _, _, _, _, _, nlen, elen = _local.unpack_from(header)
        if magic != LOCAL_MAGIC:
            raise CorruptFileError(f"{self.name}: record {entry.name!r} points at byte {entry.header_offset}, not at a local header")
        if LOCAL_SIZE + nlen == len(header):
            raw_name = header[LOCAL_SIZE:]
        else:
            raw_name = self.source.view(entry.header_offset + LOCAL_SIZE, nlen, f"local name of {entry.name!r}")
        local_name = str(raw_name, "utf-8", "replace")
        if local_name != entry.name:
            self.anomalies.append(f"record {entry.name!r} has local name {local_name!r}")
        start = entry.header_offset + LOCAL_SIZE + nlen + elen
        self.source.check(start, entry.compressed_size, f"data of zip record {entry.name!r}")
        if start + entry.compressed_size > entry.limit:
            raise CorruptFileError(
                f"{self.name}: data of zip record {entry.name!r} ends at byte {start + entry.compressed_size}, "
                f"past the start of the next record or the central directory at byte {entry.limit}"
            )
        entry.data_offset = start
        return start

    def check_entry(self, entry: ZipEntry) -> None:
        """Refuse what the central directory alone shows wrong with a record (no byte of it is read)."""
        self._check_method(entry)
        if entry.method == STORED and entry.compressed_size != entry.size:
            raise CorruptFileError(
                f"{self.name}: stored record {entry.name!r} has size {entry.size} but {entry.compressed_size} stored bytes"
            )

    def stored_range(self, entry: ZipEntry) -> tuple[int, int] | None:
        """``(offset, size)`` of a stored record's bytes in the file, or None when it is compressed."""
        self.check_entry(entry)
        if entry.method != STORED:
            return None
        return self.data_offset(entry), entry.size

    def read(self, entry: ZipEntry) -> bytes:
        """The whole content of a record, inflated if it is compressed."""
        where = self.stored_range(entry)
        if where is not None:
            return self.source.read(where[0], where[1], f"zip record {entry.name!r}")
        return self._inflate(entry)

    def _check_method(self, entry: ZipEntry) -> None:
        if entry.flags & FLAG_ENCRYPTED:
            raise UnsupportedFormatError(f"{self.name}: record {entry.name!r} is encrypted")
        if entry.method not in (STORED, DEFLATED):
            raise UnsupportedFormatError(f"{self.name}: record {entry.name!r} uses compression method {entry.method}")

    def _check_inflated_size(self, entry: ZipEntry) -> None:
        if entry.size > MAX_INFLATED_RECORD:
            raise LimitExceededError(
                f"{self.name}: compressed record {entry.name!r} inflates to {entry.size} bytes, "
                f"over the {MAX_INFLATED_RECORD}-byte limit MAX_INFLATED_RECORD for compressed records"
            )

    def _wrong_inflated_size(self, entry: ZipEntry, produced: int) -> CorruptFileError:
        found = f"more than {entry.size}" if produced > entry.size else str(produced)
        return CorruptFileError(
            f"{self.name}: compressed record {entry.name!r} inflates to {found} bytes, not the declared {entry.size}"
        )

    def _corrupt_deflate(self, entry: ZipEntry, exc: zlib.error) -> CorruptFileError:
        return CorruptFileError(f"{self.name}: compressed record {entry.name!r} is corrupt: {exc}")

    def _inflate(self, entry: ZipEntry) -> bytes:
        self._check_inflated_size(entry)
        raw = self.source.read(self.data_offset(entry), entry.compressed_size, f"zip record {entry.name!r}")
        inflater = zlib.decompressobj(-15)
        try:
            data = inflater.decompress(raw, entry.size + 1)
        except zlib.error as exc:
            raise self._corrupt_deflate(entry, exc) from None
        if len(data) != entry.size:
            raise self._wrong_inflated_size(entry, len(data))
        return data

    def chunks(self, entry: ZipEntry) -> Iterator[bytes | memoryview]:
        """A record's content in pieces of at most :data:`CRC_CHUNK_BYTES`, inflated if compressed.

        Stored pieces are views of the source where it allows (a mapped file: no copy);
        a compressed record is inflated piece by piece, so memory stays one piece whatever it declares.
        """
        where = self.stored_range(entry)
        if where is not None:
            offset, size = where
            for start in range(offset, offset + size, CRC_CHUNK_BYTES):
                length = min(CRC_CHUNK_BYTES, offset + size - start)
                yield self.source.view(start, length, f"zip record {entry.name!r}")
                self.source.release(start, length)  # streamed once: the pages need not stay resident
            return
        self._check_inflated_size(entry)
        offset, inflater, produced = self.data_offset(entry), zlib.decompressobj(-15), 0
        for start in range(offset, offset + entry.compressed_size, CRC_CHUNK_BYTES):
            pending = self.source.view(start, min(CRC_CHUNK_BYTES, offset + entry.compressed_size - start),
                                       f"zip record {entry.name!r}")
            while pending:
                try:
                    piece = inflater.decompress(pending, CRC_CHUNK_BYTES)
                except zlib.error as exc:
                    raise self._corrupt_deflate(entry, exc) from None
                produced += len(piece)
                if produced > entry.size:
                    raise self._wrong_inflated_size(entry, produced)
                pending = inflater.unconsumed_tail
                yield piece
                if inflater.eof:
                    break
            if inflater.eof:
                break
        try:
            rest = inflater.flush()  # output zlib still holds once the input is consumed (at most its window)
        except zlib.error as exc:
            raise self._corrupt_deflate(entry, exc) from None
        produced += len(rest)
        if rest:
            yield rest
        if produced != entry.size:
            raise self._wrong_inflated_size(entry, produced)

    def verify_crc(self, entry: ZipEntry) -> bool:
        """True when the record's CRC-32 matches its content (torch itself never checks).

        The record is streamed through :meth:`chunks`, never read whole.
        """
        crc = 0
        for piece in self.chunks(entry):
            crc = zlib.crc32(piece, crc)
        crc &= 0xFFFFFFFF
        if crc != entry.crc:
            self.anomalies.append(f"record {entry.name!r} has CRC 0x{entry.crc:08x} but its data gives 0x{crc:08x}")
            return False
        return True


def _zip64_extra(extra: bytes, size: int, csize: int, offset: int) -> tuple[int, int, int]:
    """Replace 0xFFFFFFFF fields with their values from the ZIP64 extra field (id 0x0001)."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        if tag == 1:
            values = list(struct.unpack_from(f"<{len(body) // 8}Q", body))
            if size == 0xFFFFFFFF and values:
                size = values.pop(0)
            if csize == 0xFFFFFFFF and values:
                csize = values.pop(0)
            if offset == 0xFFFFFFFF and values:
                offset = values.pop(0)
            return size, csize, offset
        pos += 4 + length
    raise CorruptFileError("zip record has 32-bit size or offset fields of 0xFFFFFFFF without a zip64 extra field")
