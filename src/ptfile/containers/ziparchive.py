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
* refuse every archive that torch's reader (miniz) and Python's ``zipfile`` (what
  a hand-written extraction script, ``numpy.load`` and DCP's tools use) could read
  differently, so that what ptfile judges is what each of them reads:

  - names that miniz cannot tell apart: miniz looks names up ignoring ASCII case,
    so ``archive/DATA.PKL`` beside ``archive/data.pkl`` is refused, and a lone
    ``archive/DATA.PKL`` is found by :meth:`ZipArchive.get` as torch finds it;
  - names ``zipfile`` rewrites: it cuts a name at its first NUL and, on Windows,
    turns ``\\`` into ``/``; an empty name is refused as well;
  - an end record the two readers find in different places (miniz takes the last
    signature with room for the record, whatever its comment length says;
    ``zipfile`` tries the last 22 bytes first, then the last signature);
  - a central directory they place differently: miniz follows the ZIP64 locator's
    pointer, and only when the end record is at byte 76 or later; ``zipfile``
    reads the ZIP64 end record just before the locator, and shifts every offset
    by the bytes it believes were prepended to the archive;
  - a central directory with bytes after its last record (``zipfile`` reads
    records until the directory's end, miniz reads the count the end record gives);
* remember anomalies (local name differing from the central name, flag bits over
  plain data, CRC mismatches when verified) for the scanner to report.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

from ..errors import CorruptFileError, LimitExceededError, UnsupportedFormatError
from ..io.source import Source

__all__ = ["zipfile_directory", "ZipEntry", "ZipArchive", "LOCAL_MAGIC", "is_zip"]

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
#: First look: the end record, its ZIP64 locator and a short comment.
FIRST_END_SEARCH = 1024
#: torch's reader (miniz) scans back from the end for the end record in blocks of this many bytes,
MINIZ_SEARCH_BLOCK = 4096
#: stepping back this much (blocks overlap by 3 bytes); a step below byte 0 fails its read,
MINIZ_SEARCH_STEP = MINIZ_SEARCH_BLOCK - 3
#: and gives up after the block that reaches this far back from the end.
MINIZ_SEARCH_REACH = 0xFFFF + END_SIZE
#: Python's zipfile looks for the end record's signature in this many bytes at the end.
ZIPFILE_END_SEARCH = (1 << 16) + END_SIZE
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

#: Bytes Python's zipfile rewrites in names (``ZipInfo._sanitize_filename``), so that it reads
#: such a record by another name than torch does.
_REWRITTEN_BY_ZIPFILE = {
    b"\0": "a NUL byte (Python's zipfile cuts names there)",
    b"\\": "a backslash (Python's zipfile on Windows reads it as '/')",
}

_end = struct.Struct("<4sHHHHIIH")
_zip64_locator = struct.Struct("<4sIQI")
_zip64_end = struct.Struct("<4sQHHIIQQQQ")
_central = struct.Struct("<4sHHHHHHIIIHHHHHII")
_local = struct.Struct("<4sHHHHHIIIHH")


def is_zip(head: bytes) -> bool:
    """True when the file starts with a local header, the test torch itself uses."""
    return head[:4] == LOCAL_MAGIC


class ZipEntry:
    """One record of the central directory.

    A plain class, not a dataclass: building a dataclass costs about a millisecond at import.
    """

    __slots__ = ("name", "method", "flags", "crc", "compressed_size", "size", "header_offset", "central_offset",
                 "data_offset", "limit")

    def __init__(self, name: str, method: int, flags: int, crc: int, compressed_size: int, size: int,
                 header_offset: int, central_offset: int, data_offset: int = -1, limit: int = -1) -> None:
        self.name = name
        self.method = method
        self.flags = flags
        self.crc = crc
        self.compressed_size = compressed_size
        self.size = size
        self.header_offset = header_offset
        self.central_offset = central_offset
        self.data_offset = data_offset  # resolved from the local header on first use
        self.limit = limit  # where the next record (or the central directory) starts: the data must end before it

    def __repr__(self) -> str:
        return f"ZipEntry({self.name!r}, method={self.method}, size={self.size}, header_offset={self.header_offset})"


class ZipArchive:
    """The records of a zip file, by name.

    Names are looked up as torch looks them up: under the archive folder that the raw bytes
    of the first record name, ignoring ASCII case (miniz's ``mz_zip_reader_locate_file``
    without flags compares names that way).

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
        self._by_key: dict[bytes, ZipEntry] = {}  # miniz's view: the raw name, ASCII case folded
        self._key_prefix = b""
        self._read_directory()
        first = self.order[0] if self.order else ""
        if folder and "/" not in first:
            raise CorruptFileError(f"{self.name}: first zip record {first!r} is not inside an archive folder")
        self.prefix = first.split("/", 1)[0] if folder else ""

    # -- end record --------------------------------------------------------------

    def _find_end(self) -> tuple[int, tuple]:
        """The end record torch's reader takes, refused unless Python's zipfile takes the same one."""
        size = self.source.size
        if size < END_SIZE:
            raise CorruptFileError(f"{self.name}: {size} bytes is too short for a zip archive")
        # Torch writes no comment, so the record is the last 22 bytes, where both readers settle at
        # once: a small tail is enough (a remote source pays for every byte); else both windows.
        start = max(0, size - FIRST_END_SEARCH)
        tail = self.source.read(start, size - start, "zip end record")
        if not _is_bare_end(tail):
            start = min(_miniz_search_start(size), max(0, size - ZIPFILE_END_SEARCH))
            tail = self.source.read(start, size - start, "zip end record")
        torch_end = _miniz_end(tail, start, size)
        if torch_end is None:
            raise CorruptFileError(f"{self.name}: no zip end record; the file is truncated or not a zip archive")
        zipfile_end = _zipfile_end(tail, start, size)
        if zipfile_end != torch_end:
            other = "none" if zipfile_end is None else f"the one at byte {zipfile_end}"
            raise CorruptFileError(
                f"{self.name}: torch's zip reader takes the end record at byte {torch_end}, Python's zipfile "
                f"{other}; readers that disagree on it can read different records"
            )
        return torch_end, _end.unpack_from(tail, torch_end - start)

    def _locator(self, end_offset: int) -> tuple | None:
        """The ZIP64 locator just before the end record, when its signature is there."""
        at = end_offset - ZIP64_LOCATOR_SIZE
        if at < 0 or self.source.read(at, 4, "zip64 locator") != ZIP64_LOCATOR_MAGIC:
            return None
        return _zip64_locator.unpack(self.source.read(at, ZIP64_LOCATOR_SIZE, "zip64 locator"))

    def _torch_directory(self, end_offset: int, end: tuple) -> tuple[int, int, int]:
        """``(records, size, offset)`` of the central directory as miniz takes them.

        miniz looks for a ZIP64 locator only when the end record is at byte 76 or later (room
        for the locator and a ZIP64 end record), reads the ZIP64 end record where the locator
        points, and keeps the end record's own fields when no ZIP64 signature is there.
        """
        _, disk, cd_disk, disk_count, count, cd_size, cd_offset, _ = end
        zip64 = False
        locator = self._locator(end_offset) if end_offset >= ZIP64_LOCATOR_SIZE + ZIP64_END_SIZE else None
        if locator is not None:
            _, _, z64_offset, disks = locator
            if z64_offset > self.source.size - ZIP64_END_SIZE:
                raise CorruptFileError(
                    f"{self.name}: zip64 locator points at byte {z64_offset}, where no zip64 end record fits"
                )
            record = _zip64_end.unpack(self.source.read(z64_offset, ZIP64_END_SIZE, "zip64 end record"))
            if record[0] == ZIP64_END_MAGIC:
                if disks != 1 or record[1] < ZIP64_END_SIZE - 12:
                    raise CorruptFileError(f"{self.name}: zip64 end record at byte {z64_offset} is malformed "
                                           f"({disks} disks, {record[1]} bytes declared)")
                _, _, _, _, disk, cd_disk, disk_count, count, cd_size, cd_offset = record
                zip64 = True
        if disk or cd_disk or disk_count != count:
            raise CorruptFileError(f"{self.name}: zip archive spans several disks")
        if not zip64 and (0xFFFFFFFF in (cd_size, cd_offset) or count == 0xFFFF):
            raise CorruptFileError(f"{self.name}: zip end record needs a zip64 record that is missing")
        return count, cd_size, cd_offset

    def _check_zipfile_agrees(self, end_offset: int, end: tuple, cd_size: int, cd_offset: int) -> None:
        """Refuse a central directory Python's zipfile places elsewhere than torch's reader.

        ``zipfile._EndRecData64`` reads the ZIP64 end record right before the locator, not where
        the locator points; ``_RealGetContents`` then shifts the directory and every record by
        ``concat``, the bytes it takes to be prepended to the archive (the end records' position
        less the directory's size and offset).  miniz shifts nothing.
        """
        z_size, z_offset, z64_bytes = end[5], end[6], 0
        locator = self._locator(end_offset)
        if locator is not None:
            _, locator_disk, _, disks = locator
            at = end_offset - ZIP64_LOCATOR_SIZE - ZIP64_END_SIZE
            if locator_disk != 0 or disks > 1 or at < 0:  # zipfile fails, or on a file object reads on
                raise CorruptFileError(f"{self.name}: Python's zipfile cannot use the zip64 locator at byte "
                                       f"{end_offset - ZIP64_LOCATOR_SIZE} (multi-disk, or no room before it)")
            record = _zip64_end.unpack(self.source.read(at, ZIP64_END_SIZE, "zip64 end record"))
            if record[0] == ZIP64_END_MAGIC:
                z_size, z_offset, z64_bytes = record[8], record[9], ZIP64_END_SIZE + ZIP64_LOCATOR_SIZE
        concat = end_offset - z64_bytes - z_size - z_offset
        if (z_size, z_offset) != (cd_size, cd_offset):
            raise CorruptFileError(
                f"{self.name}: torch's zip reader takes the central directory at byte {cd_offset} ({cd_size} bytes), "
                f"Python's zipfile at byte {z_offset + concat} ({z_size} bytes)"
            )
        if concat:
            raise CorruptFileError(
                f"{self.name}: Python's zipfile shifts every zip offset by {concat} bytes (the central directory "
                f"does not end where the end records start); torch's reader does not"
            )

    # -- directory ---------------------------------------------------------------

    def _read_directory(self) -> None:
        end_offset, end = self._find_end()
        count, cd_size, cd_offset = self._torch_directory(end_offset, end)
        self.source.check(cd_offset, cd_size, "zip central directory")
        self._check_zipfile_agrees(end_offset, end, cd_size, cd_offset)
        if count * CENTRAL_SIZE > cd_size:
            raise CorruptFileError(f"{self.name}: central directory of {cd_size} bytes cannot hold {count} records")
        directory = self.source.read(cd_offset, cd_size, "zip central directory")
        pos = 0
        raw_names: list[bytes] = []
        for _ in range(count):
            pos = self._read_central(directory, pos, cd_offset, raw_names)
        if pos != cd_size:
            # zipfile reads records up to the directory's end, miniz the count of the end record
            raise CorruptFileError(
                f"{self.name}: central directory of {cd_size} bytes has {cd_size - pos} bytes after its {count} "
                "records, which Python's zipfile reads as more records and torch's reader ignores"
            )
        self._index_names(raw_names)
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

    def _read_central(self, directory: bytes, pos: int, cd_offset: int, raw_names: list[bytes]) -> int:
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
        if not nlen:
            raise CorruptFileError(f"{self.name}: zip record at byte {cd_offset + pos} has an empty name")
        if name in self.entries:
            raise CorruptFileError(f"{self.name}: zip record {name!r} appears twice")
        if flags & _SUSPICIOUS_FLAGS:
            self.anomalies.append(f"record {name!r} has flag bits 0x{flags:04x} set")
        self.entries[name] = ZipEntry(name, method, flags, crc, csize, size, offset, cd_offset + pos)
        self.order.append(name)
        raw_names.append(raw_name)
        return after

    def _index_names(self, raw_names: list[bytes]) -> None:
        """Index the records by their names as torch's reader compares them; refuse names readers confuse.

        All names at once, in a few passes over their bytes: a large checkpoint's directory
        holds tens of thousands.  They are joined by NUL, which no name may hold.
        """
        joined = b"\0".join(raw_names)
        keys = _fold(joined).split(b"\0") if raw_names else []
        if len(keys) != len(raw_names) or b"\\" in joined:
            self._refuse_rewritten(raw_names)
        self._by_key = dict(zip(keys, self.entries.values(), strict=True))
        if len(self._by_key) != len(keys):
            self._refuse_case_twins(keys)
        self._key_prefix = keys[0].split(b"/", 1)[0] if keys else b""  # torch's archive folder: the first name's

    def _refuse_rewritten(self, raw_names: list[bytes]) -> None:
        """Refuse the first name Python's zipfile rewrites: it would read that record by another name than torch."""
        for raw_name, name in zip(raw_names, self.order, strict=True):
            for byte, why in _REWRITTEN_BY_ZIPFILE.items():
                if byte in raw_name:
                    raise CorruptFileError(f"{self.name}: zip record name {name!r} holds {why}")

    def _refuse_case_twins(self, keys: list[bytes]) -> None:
        """Refuse two names torch's reader cannot tell apart: it compares them ignoring ASCII case."""
        seen: dict[bytes, str] = {}
        for key, name in zip(keys, self.order, strict=True):
            twin = seen.setdefault(key, name)
            if twin != name:
                raise CorruptFileError(f"{self.name}: zip records {twin!r} and {name!r} differ only in case; "
                                       "torch's reader ignores case and may take either")

    # -- records -----------------------------------------------------------------

    def full_name(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def get(self, name: str) -> ZipEntry | None:
        """The record ``name`` of the archive folder, found as torch finds it (ASCII case ignored)."""
        return self._by_key.get(self._key_prefix + b"/" + _fold(name.encode("utf-8", "surrogateescape")))

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def lists(self, name: str) -> bool:
        """True when a record of the archive folder is named exactly ``name``.

        ``torch.load`` asks this, not a lookup, to tell TorchScript archives
        (``"constants.pkl" in get_all_records()``), so there case matters.
        """
        return self.full_name(name) in self.entries

    def entry(self, full_name: str) -> ZipEntry:
        """The record named ``full_name`` (archive folder included), ASCII case ignored as by torch."""
        found = self.entries.get(full_name) or self._by_key.get(_fold(full_name.encode("utf-8", "surrogateescape")))
        if found is None:
            raise CorruptFileError(f"{self.name}: record {full_name!r} is missing")
        return found

    def records_under(self, folder: str, suffix: str = "") -> list[tuple[str, ZipEntry]]:
        """``(name inside the archive folder, record)`` of each record under ``folder`` ending in ``suffix``.

        Matched ignoring ASCII case, as torch's lookups would find them; in directory order.
        """
        head = self._key_prefix + b"/" + _fold(folder.encode("utf-8", "surrogateescape"))
        tail = _fold(suffix.encode("utf-8", "surrogateescape"))
        return [(entry.name.split("/", 1)[1], entry) for key, entry in self._by_key.items()
                if key.startswith(head) and key.endswith(tail)]

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

    def check_readable(self, entry: ZipEntry) -> None:
        """Raise what :meth:`read` would raise for the record, reading only compressed data."""
        if self.stored_range(entry) is None:
            self._inflate(entry)

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


def _fold(raw_name: bytes) -> bytes:
    """A raw name as miniz compares it: ASCII letters lower-cased, every other byte kept."""
    return raw_name.lower()


def _is_bare_end(tail: bytes) -> bool:
    """True when the last 22 bytes are an end record without a comment, as torch writes it."""
    return tail[-END_SIZE : -END_SIZE + len(END_MAGIC)] == END_MAGIC and tail[-2:] == b"\0\0"


def _miniz_search_start(size: int) -> int:
    """The lowest byte miniz's backward scan for the end record reaches in a file of ``size`` bytes.

    It reads blocks from the end until one reaches :data:`MINIZ_SEARCH_REACH` bytes back or
    byte 0; a step back from a block that starts before :data:`MINIZ_SEARCH_STEP` would read
    below byte 0 and fails, so the scan ends there too.
    """
    start = max(size - MINIZ_SEARCH_BLOCK, 0)
    while start >= MINIZ_SEARCH_STEP and size - start < MINIZ_SEARCH_REACH:
        start -= MINIZ_SEARCH_STEP
    return start


def _miniz_end(tail: bytes, tail_start: int, size: int) -> int | None:
    """Where torch's reader (miniz) finds the end record in the file's last bytes ``tail``.

    The last signature with room for the 22-byte record after it; the comment length is not
    checked, so a record whose comment runs past the end of the file still wins.
    """
    low = max(_miniz_search_start(size) - tail_start, 0)
    pos = tail.rfind(END_MAGIC, low, len(tail) - END_SIZE + len(END_MAGIC))
    return tail_start + pos if pos >= 0 else None


def _zipfile_end(tail: bytes, tail_start: int, size: int) -> int | None:
    """Where Python's zipfile finds the end record (``zipfile._EndRecData``), or None.

    It tries the last 22 bytes as a record without a comment, then the last signature of
    its window, and finds none when that signature has no room for a record after it.
    """
    if _is_bare_end(tail):
        return size - END_SIZE
    pos = tail.rfind(END_MAGIC, max(size - ZIPFILE_END_SEARCH - tail_start, 0))
    if pos < 0 or pos + END_SIZE > len(tail):
        return None
    return tail_start + pos


def zipfile_directory(source: Source) -> tuple[int, int] | None:
    """``(offset, size)`` of the central directory Python's zipfile reads in the file, or None.

    ``zipfile._EndRecData`` finds the end record (:func:`_zipfile_end`); a ZIP64 end record
    is read right before the locator; the directory then starts ``size`` bytes before the
    end records, wherever the recorded offset says (``_RealGetContents`` shifts by ``concat``).
    Any file this finds a directory in is a zip to zipfile, whatever its first bytes are.
    """
    size = source.size
    start = max(0, size - ZIPFILE_END_SEARCH)
    tail = source.read(start, size - start, "zip end record search")
    end = _zipfile_end(tail, start, size)
    if end is None:
        return None
    cd_size = _end.unpack_from(tail, end - start)[5]
    directory_end = end
    z64 = end - ZIP64_LOCATOR_SIZE - ZIP64_END_SIZE
    if z64 >= 0 and source.read(end - ZIP64_LOCATOR_SIZE, 4, "zip64 locator") == ZIP64_LOCATOR_MAGIC:
        record = _zip64_end.unpack(source.read(z64, ZIP64_END_SIZE, "zip64 end record"))
        if record[0] == ZIP64_END_MAGIC:
            cd_size, directory_end = record[8], z64
    at = directory_end - cd_size
    if cd_size <= 0 or at < 0 or source.read(at, 4, "central directory") != CENTRAL_MAGIC:
        return None
    return at, cd_size


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
