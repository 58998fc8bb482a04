"""Atomic file writes: nothing already on disk is lost if a write fails midway.

Output goes to a temporary file in the destination's folder (so the final rename
never crosses file systems) and is renamed over the destination only once every
byte is written.  On any error the temporary file is removed and the destination
is left exactly as it was.  Like ``torch.save``, it does not fsync: a crash of the
process never leaves a half-written file under the final name, while surviving a
power loss is left to the file system.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import CheckpointNotFoundError, PtfileError

__all__ = ["atomic_write", "require_folder"]


def require_folder(path: str | os.PathLike[str]) -> str:
    """The folder ``path`` would be written in; refused when it does not exist, as ``cp`` refuses.

    Checked before long work starts, so a typo in an output path fails at once and
    never creates folders nobody asked for.
    """
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise CheckpointNotFoundError(f"{os.fspath(path)}: the folder {folder} does not exist")
    return folder


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` when the block ends without an error."""
    target = os.fspath(path)
    folder = require_folder(target)
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise PtfileError(f"{target}: cannot write in {folder}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
