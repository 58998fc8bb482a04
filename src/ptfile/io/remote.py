"""Remote checkpoints through fsspec (``pip install ptfile[remote]``).

Any URL fsspec understands (``s3://``, ``gs://``, ``http(s)://``, ``hf://``, ``memory://``)
becomes a :class:`RemoteSource`: every read is one range request for exactly the
bytes asked for, so opening a checkpoint moves only the zip end records, the
central directory and the pickle, and a tensor's bytes move when it is read.

A read that fails is retried a few times; a read that still returns fewer bytes
than asked (a connection cut mid-transfer) raises :class:`ptfile.errors.RemoteReadError`:
nothing partial is ever returned as if it were whole.  ``bytes_read`` and
``requests`` count what moved, for tests and for users watching their bill.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np

from ..errors import CheckpointNotFoundError, PtfileError, RemoteReadError
from .source import ByteSource

__all__ = ["RemoteSource", "is_url", "open_remote", "url_to_fs"]

#: Attempts per range request before giving up; remote stores fail transiently.
MAX_ATTEMPTS = 3
#: Seconds before the second attempt; doubled for each later one.
RETRY_DELAY = 0.2


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(src: Any) -> bool:
    """``scheme://...``: a URL for fsspec (``file://`` included), not a local path."""
    return isinstance(src, str) and _URL.match(src) is not None


class RemoteSource(ByteSource):
    """A file on an fsspec file system, read by exact byte ranges."""

    def __init__(self, fs: Any, path: str, name: str) -> None:
        self.fs = fs
        self.path = path
        self.name = name
        self.bytes_read = 0
        self.requests = 0
        try:
            self.size = int(fs.size(path))
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"{name}: no such remote file") from None
        except Exception as exc:  # noqa: BLE001 - any backend error is reported in one line
            raise RemoteReadError(f"{name}: cannot reach the remote file: {exc}") from None

    def _fetch(self, offset: int, length: int, what: str) -> bytes:
        if length == 0:
            return b""
        last: Exception | None = None
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                time.sleep(RETRY_DELAY * 2 ** (attempt - 1))
            try:
                self.requests += 1
                data = self.fs.cat_file(self.path, start=offset, end=offset + length)
            except FileNotFoundError:
                raise CheckpointNotFoundError(f"{self.name}: the remote file disappeared") from None
            except Exception as exc:  # noqa: BLE001 - retried, then reported
                last = exc
                continue
            self.bytes_read += len(data)
            if len(data) == length:
                return bytes(data)
            last = RemoteReadError(f"got {len(data)} of {length} bytes")
        raise RemoteReadError(f"{self.name}: {what}: reading bytes [{offset}, {offset + length}) failed "
                              f"after {MAX_ATTEMPTS} attempts: {last}")

    def read(self, offset: int, length: int, what: str = "read") -> bytes:
        self.check(offset, length, what)
        return self._fetch(offset, length, what)

    def read_ranges(self, ranges: list[tuple[int, int]], what: str = "read") -> list[bytes]:
        """Several ranges through ``fs.cat_ranges`` (concurrent on async file systems); a range that
        comes back failed or short is asked for again alone, with the retries of :meth:`read`."""
        for offset, length in ranges:
            self.check(offset, length, what)
        try:
            pieces = list(self.fs.cat_ranges([self.path] * len(ranges), [offset for offset, _ in ranges],
                                             [offset + length for offset, length in ranges], on_error="return"))
        except Exception:  # noqa: BLE001 - every range is then fetched alone, with retries
            pieces = []
        if len(pieces) != len(ranges):
            pieces = [None] * len(ranges)
        out = []
        for (offset, length), piece in zip(ranges, pieces, strict=True):
            if isinstance(piece, (bytes, bytearray)) and len(piece) == length:
                self.requests += 1
                self.bytes_read += length
                out.append(bytes(piece))
            else:
                out.append(self._fetch(offset, length, what))
        return out

    def array(self, offset: int, length: int, what: str, *, copy: bool) -> np.ndarray:
        self.check(offset, length, what)
        data = np.frombuffer(bytearray(self._fetch(offset, length, what)), np.uint8)
        if not copy:
            data.flags.writeable = False  # as with a memory map: arrays of a lazy read are read-only
        return data


def url_to_fs(url: str) -> tuple[Any, str]:
    """``(file system, path in it)`` of an fsspec URL; fsspec is imported only here."""
    try:
        import fsspec  # lazy: optional dependency (ptfile[remote])
    except ImportError:
        raise PtfileError(f"{url}: reading URLs needs fsspec (pip install 'ptfile[remote]')") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as exc:
        raise PtfileError(f"{url}: {exc}") from None


def open_remote(url: str) -> RemoteSource:
    """A source for an fsspec URL."""
    fs, path = url_to_fs(url)
    return RemoteSource(fs, path, url)
