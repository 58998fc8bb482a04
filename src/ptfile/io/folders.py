"""Folders: listing them and naming the files in them, on this machine or behind an fsspec URL.

Shard folders, ``*.index.json`` indexes, DCP folders and folders holding one checkpoint
file are read through :func:`folders_for`, so that the rules for them (in
:mod:`ptfile.opener`, :mod:`ptfile.sharded`, :mod:`ptfile.dcp`) are written once for both:
a local path gets :class:`LocalFolders` (``os``), a URL gets :class:`UrlFolders`
(``fs.info`` and ``fs.ls`` of its fsspec file system; paths stay URLs, so every message
names what the user gave).  Files themselves are opened by :func:`ptfile.source.open_source`,
which reads URLs by range already.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

from ..errors import CheckpointNotFoundError, RemoteReadError
from .open import open_source
from .remote import is_url, open_remote, url_to_fs
from .source import checked_size, refuse_over

__all__ = ["Folders", "LocalFolders", "UrlFolders", "folders_for"]


class Folders:
    """What the folder formats ask of a file system: is it a folder, what is in it, how big is a file."""

    def is_dir(self, path: str) -> bool:
        raise NotImplementedError

    def is_file(self, path: str) -> bool:
        raise NotImplementedError

    def names(self, folder: str) -> list[str]:
        """The names of a folder's entries, sorted."""
        raise NotImplementedError

    def join(self, folder: str, name: str) -> str:
        raise NotImplementedError

    def parent(self, path: str) -> str:
        """The folder a file is in (where an index's shards are)."""
        raise NotImplementedError

    def checked_size(self, path: str, limit: str, what: str) -> int:
        """The size of a small file that is read whole (an index, DCP metadata), refused above the
        :class:`~ptfile.constants.Limits` field named ``limit``."""
        raise NotImplementedError

    def head(self, path: str, count: int) -> tuple[bytes, int]:
        """``(first count bytes, size)`` of a file: enough to sniff what it is."""
        source = open_source(path, mmap_file=False)
        try:
            return source.read(0, min(count, source.size), "file header"), source.size
        finally:
            source.close()

    def read_small(self, path: str, limit: str, what: str) -> bytes:
        """The whole of a small file, its size checked against the limit named ``limit`` before a byte is read."""
        size = self.checked_size(path, limit, what)
        source = open_source(path, mmap_file=False)
        try:
            return source.read(0, min(size, source.size), what)
        finally:
            source.close()


class LocalFolders(Folders):
    """Folders of this machine."""

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def is_file(self, path: str) -> bool:
        return os.path.isfile(path)

    def names(self, folder: str) -> list[str]:
        return sorted(os.listdir(folder))

    def join(self, folder: str, name: str) -> str:
        return os.path.join(folder, name)

    def parent(self, path: str) -> str:
        return os.path.dirname(os.path.abspath(path))

    def checked_size(self, path: str, limit: str, what: str) -> int:
        return checked_size(path, limit, what)


class UrlFolders(Folders):
    """Folders behind an fsspec URL (``memory://``, ``s3://``, ...): listed with ``fs.ls``.

    Whether a URL is a folder is asked with ``fs.info``, never ``fs.isdir``: HTTP's
    ``isdir`` downloads the page to look for links, which for a checkpoint is the file.
    """

    def _fs(self, url: str) -> tuple[Any, str]:
        return url_to_fs(url)

    def _type(self, url: str) -> str:
        fs, path = self._fs(url)
        try:
            return str(fs.info(path).get("type", ""))
        except Exception:  # noqa: BLE001 - missing or unreachable: not a folder; opening it says why
            return ""

    def is_dir(self, path: str) -> bool:
        return self._type(path) == "directory"

    def is_file(self, path: str) -> bool:
        return self._type(path) == "file"

    def names(self, folder: str) -> list[str]:
        fs, path = self._fs(folder)
        try:
            listed = fs.ls(path, detail=False)
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"{folder}: no such remote folder") from None
        except Exception as exc:  # noqa: BLE001 - any backend error is reported in one line
            raise RemoteReadError(f"{folder}: cannot list the remote folder: {exc}") from None
        return sorted({posixpath.basename(str(entry).rstrip("/")) for entry in listed} - {""})

    def join(self, folder: str, name: str) -> str:
        return f"{folder.rstrip('/')}/{name}"

    def parent(self, path: str) -> str:
        return path.rstrip("/").rsplit("/", 1)[0]

    def checked_size(self, path: str, limit: str, what: str) -> int:
        return refuse_over(path, open_remote(path).size, limit, what)  # a missing file: CheckpointNotFoundError


def folders_for(path: str) -> Folders:
    """The folders a path names: a URL's file system, or this machine's."""
    return UrlFolders() if is_url(path) else LocalFolders()
