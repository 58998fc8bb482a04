"""The torch zip checkpoint: which records hold the pickle and the storages.

Layout written by ``torch.save`` (torch >= 1.6), every record under one prefix::

    <prefix>/data.pkl                 the object pickle (protocol 2)
    <prefix>/.format_version          "1": storages numbered in write order
    <prefix>/.storage_alignment       "64": data offsets are multiples of it
    <prefix>/byteorder                "little" or "big": byte order of the storages
    <prefix>/data/<key>               raw storage bytes, one record per storage
    <prefix>/version                  "3\\n" (readers accept 1..10; also .data/version)
    <prefix>/.data/serialization_id   40 digits, a hash of the records

The pickle refers to storages by persistent ids
``('storage', <storage class>, key, location, numel)``; ``numel`` counts elements
of a typed storage and bytes of ``torch.storage.UntypedStorage``.  A record's size
MUST equal the storage's byte size: torch once trusted ``numel`` and read past the
record (CVE-2026-24747).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..constants import (
    BYTEORDER_RECORD,
    CONSTANTS_RECORD,
    DATA_VERSION_RECORD,
    FORMAT_VERSION_RECORD,
    LAYOUT_RECORDS,
    PICKLE_RECORD,
    SERIALIZATION_ID_RECORD,
    STORAGE_ALIGNMENT_RECORD,
    STORAGE_FOLDER,
    SUPPORTED_VERSIONS,
    VERSION_RECORD,
)
from ..containers.ziparchive import STORED, ZipArchive, ZipEntry
from ..errors import CorruptFileError, PtfileError, UnsupportedFormatError
from ..io.source import ByteSource
from ..pickle.values import brief
from ..tensors.views import StorageRef, StorageType

__all__ = ["TorchZip", "check_storage_key"]

#: Storage keys are plain names under data/; anything else could escape the archive.
_KEY_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")


def check_storage_key(key: Any) -> str:
    if type(key) is not str or not key or not set(key) <= _KEY_CHARS:
        raise CorruptFileError(f"storage key {brief(key)} is not a plain name")
    return key


def parse_storage_pid(pid: Any) -> tuple[StorageType, str, str, int]:
    """Check a ``('storage', type, key, location, numel)`` id; return its fields."""
    if type(pid) is not tuple or len(pid) != 5 or pid[0] != "storage":
        raise CorruptFileError(f"persistent id {brief(pid)} is not a ('storage', ...) tuple")
    _, storage_type, key, location, numel = pid
    if type(storage_type) is not StorageType:
        raise CorruptFileError(f"persistent id names {brief(storage_type)}, not a storage class")
    if type(location) is not str or type(numel) is not int or numel < 0:
        raise CorruptFileError(f"persistent id {brief(pid)} has a bad location or element count")
    return storage_type, check_storage_key(key), location, numel


def detached_storage(pid: Any) -> StorageRef:
    """A storage reference checked for form only, for pickles whose storages are never read."""
    storage_type, key, location, numel = parse_storage_pid(pid)
    dtype = storage_type.dtype
    return StorageRef(key, dtype, numel * dtype.itemsize if dtype else numel, location, "")


class TorchZip:
    """A torch zip checkpoint, as a container of one pickle and its storages."""

    format = "zip"
    #: A subclass reading TorchScript archives sets this; a plain reader refuses them.
    torchscript = False

    def __init__(self, source: ByteSource, archive: ZipArchive | None = None) -> None:
        self.source = source
        self.name = source.name
        self.archive = archive = archive if archive is not None else ZipArchive(source)
        self._storages: dict[str, StorageRef] = {}
        if archive.lists(CONSTANTS_RECORD) and not self.torchscript:
            # torch.load hands such files to torch.jit.load; they need the TorchScript reader.
            raise UnsupportedFormatError(f"{self.name}: a TorchScript archive; open it with ptfile.formats.torchscript")
        pickle_entry = archive.get(PICKLE_RECORD)
        if pickle_entry is None:
            raise CorruptFileError(f"{self.name}: zip archive has no {archive.prefix}/{PICKLE_RECORD} record")
        self.pickle_entry = pickle_entry
        self.version = self._read_version()
        self.byteorder = self._read_byteorder()
        self._read_other_layout_records()

    def _read_version(self) -> int | None:
        entry = self.archive.get(DATA_VERSION_RECORD) or self.archive.get(VERSION_RECORD)
        if entry is None:
            return None
        text = self.archive.read(entry).strip()
        if not text.isdigit() or int(text) not in SUPPORTED_VERSIONS:
            raise UnsupportedFormatError(f"{self.name}: zip format version {text[:20]!r} is not supported")
        return int(text)

    def _read_byteorder(self) -> str:
        entry = self.archive.get(BYTEORDER_RECORD)
        if entry is None:
            return "little"  # torch 2.13 reads a missing record as little-endian
        value = self.archive.read(entry)
        if value not in (b"little", b"big"):
            raise CorruptFileError(f"{self.name}: byteorder record holds {value[:20]!r}")
        return value.decode()

    def _read_other_layout_records(self) -> None:
        """Read the layout records torch reads on every load, so that one it cannot read fails here too.

        torch's reader reads ``.data/serialization_id`` when it opens the archive, and
        ``torch.load`` reads ``.format_version`` and parses ``.storage_alignment`` with ``int()``;
        ptfile needs none of their values.
        """
        for name in (SERIALIZATION_ID_RECORD, FORMAT_VERSION_RECORD):
            entry = self.archive.get(name)
            if entry is not None:
                self.archive.check_readable(entry)
        entry = self.archive.get(STORAGE_ALIGNMENT_RECORD)
        if entry is not None:
            text = self.archive.read(entry)
            try:
                int(text)  # what torch.load does with it; a ValueError there fails the load
            except ValueError:
                raise CorruptFileError(f"{self.name}: .storage_alignment record holds {text[:20]!r}, not an integer") from None

    def check_records(self) -> None:
        """Every record must be readable, also those torch never reads.

        Another consumer (``zipfile`` plus ``pickle``) may read any of them, and a record
        ptfile cannot read (a compression method miniz lacks, bytes past the archive) is one
        whose content no verdict can vouch for; ``load`` and ``scan`` both call this.
        """
        for entry in self.archive.entries.values():
            self.archive.check_readable(entry)

    #: Folders whose records are raw storage bytes, never pickles.
    storage_folders: tuple[str, ...] = (STORAGE_FOLDER,)

    def object_entries(self) -> list[ZipEntry]:
        """The records torch unpickles, the object pickle first."""
        return [self.pickle_entry]

    def pickles(self) -> Iterable[tuple[str, bytes]]:
        """The object pickle: ``[(record name, bytes)]``."""
        return [(self.pickle_entry.name, self.archive.read(self.pickle_entry))]

    def combine(self, trees: list[Any]) -> Any:
        return trees[0]

    def origin(self, record: str) -> int:
        """Where a stored record's data starts in the file, so that its offsets are file offsets.

        A compressed record's offsets can only count within its inflated bytes (0 here).
        """
        entry = self.archive.entries.get(record)
        if entry is None or entry.method != STORED:
            return 0
        return self.archive.data_offset(entry)

    def side_pickles(self) -> list[tuple[str, bytes]]:
        """Every other record that is or may be a pickle, wherever it lies in the archive.

        Torch never loads these, but another tool might, so a scanner must judge them.
        Storage records are raw tensor bytes and are skipped.
        """
        found = []
        storage_dirs = tuple(self.archive.full_name(folder) for folder in self.storage_folders)
        known = {self.archive.full_name(name) for name in LAYOUT_RECORDS} | {e.name for e in self.object_entries()}
        for name, entry in self.archive.entries.items():
            if name in known or name.startswith(storage_dirs) or entry.size == 0:
                continue
            try:
                data = self.archive.read(entry)
            except PtfileError:
                continue  # check_records() refuses the archive for it; the other records are still judged
            if name.lower().endswith(".pkl") or data[:1] == b"\x80":
                found.append((name, data))
        return found

    def persistent_load(self, pid: Any, context: Any) -> StorageRef:
        storage_type, key, location, numel = parse_storage_pid(pid)
        return self._storage(key, f"{STORAGE_FOLDER}{key}", storage_type, location, numel)

    def _storage(self, key: str, record: str, storage_type: StorageType, location: str, numel: int) -> StorageRef:
        """The storage ``key`` held by ``record`` (relative to the archive folder), checked once."""
        dtype = storage_type.dtype
        nbytes = numel * dtype.itemsize if dtype is not None else numel
        known = self._storages.get(key)
        if known is not None:
            if known.dtype is not dtype or known.nbytes != nbytes:
                raise CorruptFileError(f"storage {key!r} is used with two different types or sizes")
            return known
        entry = self.archive.get(record)
        if entry is None:
            raise CorruptFileError(f"{self.name}: storage {key!r} has no record {self.archive.full_name(record)}")
        if entry.size != nbytes:
            raise CorruptFileError(f"{self.name}: storage {key!r} declares {nbytes} bytes but its record holds {entry.size}")
        ref = StorageRef(key, dtype, nbytes, location, entry.name)
        self._storages[key] = ref
        return ref

    def storage_range(self, storage: StorageRef) -> tuple[int, int] | None:
        """``(file offset, length)`` of a storage's bytes; None when its record is compressed."""
        return self.archive.stored_range(self.archive.entry(storage.record))

    def storage_bytes(self, storage: StorageRef, *, copy: bool) -> np.ndarray:
        """The storage's bytes as a uint8 array: a view of the file, or an owned copy."""
        where = self.storage_range(storage)
        if where is not None:
            return self.source.array(where[0], where[1], storage.record, copy=copy)
        data = np.frombuffer(self.archive.read(self.archive.entry(storage.record)), np.uint8)
        return data.copy() if copy else data
