"""Every fact ptfile keeps about the formats it reads and writes, and every word it reports, once.

The reader and the writer of a format import the same names from here, so that the two can
never spell a record or a version differently:

- torch's zip layout: record names, versions and the storage alignment;
- the zip and legacy magic numbers;
- :class:`Verdict`, the words a scan reports (in its output and its JSON);
- :class:`Limits`, the limits a user may raise, with their defaults.

**Limits.**  The limits a legitimate file can reach (a large safetensors header, a deeply
nested pickle, a big DCP ``.metadata``) are fields of :class:`Limits`, passed as ``limits=``
to ``ptfile.load``, ``ptfile.open`` and ``ptfile.scan``.  The entry point puts them in force
for the call with :func:`applying` (a context variable, so that every layer reads the same
value without each signature in between carrying it); a reader that reads lazily after the
call returns (the zip archive under a handle) keeps the limits it was opened under.  The
limits that guard ptfile itself (CPython's hash and recursion hazards, torch's own maxima)
stay module constants next to the code they guard.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from contextvars import ContextVar
from typing import NamedTuple

__all__ = ["Verdict", "Limits", "limits_in_force", "applying", "over_limit"]

# -- torch's zip checkpoint ------------------------------------------------------

#: The record prefix torch writes to a stream or under a non-ASCII name.
DEFAULT_ARCHIVE_PREFIX = "archive"
#: The object pickle of a checkpoint (and of a TorchScript archive's module tree).
PICKLE_RECORD = "data.pkl"
#: The constants pickle only TorchScript archives hold; torch.load tells them apart by it.
CONSTANTS_RECORD = "constants.pkl"
VERSION_RECORD = "version"
DATA_VERSION_RECORD = ".data/version"
BYTEORDER_RECORD = "byteorder"
FORMAT_VERSION_RECORD = ".format_version"
STORAGE_ALIGNMENT_RECORD = ".storage_alignment"
SERIALIZATION_ID_RECORD = ".data/serialization_id"
#: The folder of storage records (``data/0``, ``data/1``, ...).
STORAGE_FOLDER = "data/"
#: The folder of the storages ``constants.pkl`` refers to, in a TorchScript archive.
CONSTANTS_FOLDER = "constants/"
#: The layout records torch writes or reads beside the pickle and the storages.
LAYOUT_RECORDS = (VERSION_RECORD, DATA_VERSION_RECORD, BYTEORDER_RECORD, FORMAT_VERSION_RECORD,
                  STORAGE_ALIGNMENT_RECORD, SERIALIZATION_ID_RECORD)
#: The ``version`` torch 2.13 writes, and the versions its reader accepts.
FILE_FORMAT_VERSION = 3
SUPPORTED_VERSIONS = range(1, 11)
#: The ``.format_version`` torch writes: storages numbered in write order.
FORMAT_VERSION = 1
#: Record data starts on a multiple of this (torch's ``kFieldAlignment`` default).
STORAGE_ALIGNMENT = 64

# -- arrays ----------------------------------------------------------------------

#: numpy cannot hold more dimensions than this (NPY_MAXDIMS in numpy 2); neither does any real tensor.
MAX_NDIM = 64

# -- magic numbers ---------------------------------------------------------------

ZIP_LOCAL_MAGIC = b"PK\x03\x04"
ZIP_CENTRAL_MAGIC = b"PK\x01\x02"
ZIP_DESCRIPTOR_MAGIC = b"PK\x07\x08"
ZIP_END_MAGIC = b"PK\x05\x06"
ZIP64_END_MAGIC = b"PK\x06\x06"
ZIP64_LOCATOR_MAGIC = b"PK\x06\x07"
#: The first pickle of a legacy (torch < 1.6) stream holds this int, the second this one.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


# -- verdicts ----------------------------------------------------------------------


class Verdict(str, enum.Enum):
    """What a scan calls a file, worst first; the values are the words users see and JSON holds."""

    DANGEROUS = "dangerous"
    UNKNOWN_CALL = "unknown-call"
    INVALID = "invalid"
    UNKNOWN_CLASS = "unknown-class"
    CLEAN = "clean"

    # The word itself wherever it is printed or formatted, on every Python version.
    __str__ = str.__str__

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)


# -- limits --------------------------------------------------------------------------


class Limits(NamedTuple):
    """The limits a legitimate file can reach, each with its default; raise one with ``Limits(name=...)``.

    Every error or scan fault caused by one of them names the field and how to raise it.
    """

    #: A compressed zip record is inflated into memory up to this many bytes (torch never compresses).
    max_inflated_record_bytes: int = 1 << 30
    #: The JSON header of a safetensors file.
    max_safetensors_header_bytes: int = 100_000_000
    #: The header of a ``.npy`` file or ``.npz`` member (numpy's own ``max_header_size`` default).
    max_npy_header_bytes: int = 10_000
    #: MARKs open at once in one pickle: how deeply its lists, tuples and dicts nest.
    max_pickle_nesting: int = 10_000
    #: TorchScript code records of one archive together.
    max_code_bytes: int = 64 << 20
    #: A shard index (``*.index.json``).
    max_index_bytes: int = 256 << 20
    #: A DCP folder's ``.metadata`` file.
    max_dcp_metadata_bytes: int = 1 << 30
    #: Scanning only: one member of a compressed wrapper (gzip, bzip2, xz, 7z) read into memory.
    max_member_bytes: int = 32 << 20
    #: Scanning only: all members of one such archive together.
    max_archive_bytes: int = 64 << 20
    #: Scanning only: pickles back to back in a file that is no checkpoint.
    max_stream_pickles: int = 1_000


DEFAULT_LIMITS = Limits()

_IN_FORCE: ContextVar[Limits] = ContextVar("ptfile_limits", default=DEFAULT_LIMITS)


def limits_in_force() -> Limits:
    """The limits of the ``load``, ``open`` or ``scan`` call running now (the defaults outside one)."""
    return _IN_FORCE.get()


@contextlib.contextmanager
def applying(limits: Limits | None) -> Iterator[Limits]:
    """Put ``limits`` in force for the block (``None`` keeps those in force)."""
    if limits is None:
        yield _IN_FORCE.get()
        return
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a ptfile.Limits, not {type(limits).__name__}")
    token = _IN_FORCE.set(limits)
    try:
        yield limits
    finally:
        _IN_FORCE.reset(token)


def over_limit(field: str, limits: Limits | None = None) -> str:
    """The end of every message about a raisable limit: which one, its value, and how to raise it.

    ``limits`` are those the check ran under (by default, those in force).
    """
    value = getattr(limits if limits is not None else limits_in_force(), field)
    return (f"over {field} ({_size(value)}); pass limits=ptfile.Limits({field}=...) to raise it "
            f"(ptfile --limit {field}=N on the command line)")


def _size(value: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if value >= 1 << shift and value % (1 << shift) == 0:
            return f"{value >> shift} {unit}"
    return str(value)
