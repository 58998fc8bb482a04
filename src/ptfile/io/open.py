"""Opening a source: a path, a URL, a binary file object or a bytes-like object.

Above both :mod:`ptfile.io.source` (local files, maps, buffers) and :mod:`ptfile.io.remote`
(byte ranges over fsspec), so neither of them needs the other.
"""

from __future__ import annotations

import io
import mmap
import os
from typing import Any

from ..errors import CheckpointNotFoundError, PtfileError
from .remote import is_url, open_remote
from .source import ByteSource, FileSource, MappedSource

__all__ = ["open_source"]


def open_source(src: Any, *, mmap_file: bool) -> ByteSource:
    """A source for a path, a binary file object, or a bytes-like object.

    Files are memory-mapped when ``mmap_file`` is true and read with positioned reads
    otherwise; bytes-like objects are always used in place.
    """
    if isinstance(src, ByteSource):
        return src
    if isinstance(src, (bytes, bytearray, memoryview)):
        return MappedSource(src, "<bytes>")
    if isinstance(src, str) and "://" in src and is_url(src):
        return open_remote(src)
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        try:
            file = open(path, "rb")  # noqa: SIM115 - the source owns and closes it
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise CheckpointNotFoundError(f"{path}: is a directory, not a checkpoint file") from None
        except OSError as exc:
            raise CheckpointNotFoundError(f"{path}: cannot open: {exc.strerror}") from None
        return _from_file(file, path, owned=True, mmap_file=mmap_file)
    if hasattr(src, "read"):
        return _from_file(src, getattr(src, "name", "<file>") or "<file>", owned=False, mmap_file=mmap_file)
    raise TypeError(f"expected a path, a binary file or bytes, got {type(src).__name__}")


def _from_file(file: Any, name: Any, *, owned: bool, mmap_file: bool) -> ByteSource:
    name = str(name)
    if isinstance(file, io.TextIOBase):
        if owned:
            file.close()
        raise PtfileError(f"{name}: the file object must be opened in binary mode")
    seekable = getattr(file, "seekable", lambda: False)()
    if not seekable:  # pipes and sockets: read it all once
        data = file.read()
        if owned:
            file.close()
        if not isinstance(data, (bytes, bytearray)):
            raise PtfileError(f"{name}: the file object must be opened in binary mode")
        return MappedSource(data, name)
    if mmap_file:
        try:
            fd = file.fileno()
            mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
            mapped = None  # in-memory file objects, empty files
        if mapped is not None:
            if owned:
                file.close()  # the map keeps its own reference to the file
            source = MappedSource(mapped, name)
            source.read_only_map = True
            return source
        if isinstance(file, io.BytesIO):
            return MappedSource(file.getvalue(), name)
    return FileSource(file, name, owned)
