"""How the files of each format start, told from their first bytes without importing their readers.

The opener asks these questions of every file it opens; the readers themselves
(:mod:`ptfile.formats.stformat`, :mod:`ptfile.formats.npformat`, :mod:`ptfile.formats.sharded`)
import ``json`` and ``ml_dtypes`` and are imported only when a file is of their format.
"""

from __future__ import annotations

import struct

from ..containers.ziparchive import is_zip

__all__ = ["INDEX_SUFFIX", "NPY_MAGIC", "is_npy", "is_npz", "is_safetensors"]

#: How shard index files end (``pytorch_model.bin.index.json``, ``model.safetensors.index.json``).
INDEX_SUFFIX = ".index.json"
NPY_MAGIC = b"\x93NUMPY"
NPY_SUFFIX = ".npy"
#: A zip's local header is 30 bytes, then the first record's name.
_ZIP_LOCAL_HEADER = 30


def is_safetensors(head: bytes, size: int) -> bool:
    """Whether bytes start like a safetensors file: a header length that fits, then a JSON object."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (length,) = struct.unpack_from("<Q", head)
    return 8 + length <= size


def is_npy(head: bytes) -> bool:
    return head.startswith(NPY_MAGIC)


def is_npz(head: bytes) -> bool:
    """A zip whose first record is a ``.npy`` member at the top level (torch's records sit in a folder)."""
    if not is_zip(head) or len(head) < _ZIP_LOCAL_HEADER:
        return False
    name_length = int.from_bytes(head[26:28], "little")
    name = head[_ZIP_LOCAL_HEADER : _ZIP_LOCAL_HEADER + name_length]
    return name.endswith(NPY_SUFFIX.encode()) and b"/" not in name
