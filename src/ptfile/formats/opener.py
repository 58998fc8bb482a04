"""One door: what a source is, decided here alone, and the handle that reads it.

``ptfile.load``, ``ptfile.open``, ``ptfile.scan`` and every command ask this module what a
path, URL, file object or bytes is.  The answer comes from the content first and the name
second:

==================  ================================================================
format              recognised by
==================  ================================================================
``dcp``             a DCP folder (torch.distributed.checkpoint): ``.metadata``,
                    ``__{rank}.metadata`` or DCP's safetensors shards
``sharded``         a folder holding a ``*.index.json``, or that index file itself
(a folder)          a folder with exactly one checkpoint file: that file
``safetensors``     u64le header length, then ``{``, the header inside the file
``npz``             a zip whose first record is a top-level ``.npy`` member
``npy``             ``\\x93NUMPY``
``torch``           anything else: torch's zip (TorchScript included), the legacy
                    stream or tar, a plain pickle (see :func:`ptfile.formats.loader.open_container`)
==================  ================================================================

Folders and index files behind an fsspec URL follow the same rules, listed through fsspec
(:mod:`ptfile.folders`); every file behind a URL is read by range (:mod:`ptfile.remote`).

Adding a format is one module with a :class:`~ptfile.formats.handle.Handle` and one row of
:data:`FORMATS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

from ..containers.ziparchive import is_zip
from ..errors import CheckpointNotFoundError, CorruptFileError
from ..io.folders import folders_for
from ..io.open import open_source
from ..io.source import ByteSource, private_map
from ..pickle.engine import gc_paused
from ..policy import allowlist
from ..policy.allowlist import as_allow
from ..tensors.frameworks import converter, framework_name
from . import consumers
from .handle import Handle
from .loader import LazyCheckpoint, load_source, looks_like_pickle, refuse_unsafe
from .sniff import INDEX_SUFFIX, is_npy, is_npz, is_safetensors

__all__ = ["FORMATS", "Format", "detect", "open_handle", "open_file", "load_tree", "resolve", "refuse_other_readings"]

#: Bytes read to tell formats apart (a tar header is the longest test).
SNIFF_BYTES = 512


class Format(NamedTuple):
    """One readable format: how its bytes start, and how a source of it opens."""

    name: str
    sniff: Callable[[bytes, int], bool]  # (first SNIFF_BYTES bytes, file size) -> is it this format
    open: Callable[[ByteSource, bool, bool, Any], Handle]  # (source, copy, records, allow) -> handle


def _open_safetensors(source: ByteSource, copy: bool, records: bool, allow: Any) -> Handle:
    from .stformat import SafetensorsCheckpoint  # lazy: a format reader, imported for files of its format

    return SafetensorsCheckpoint(source, copy=copy)


def _open_numpy(source: ByteSource, copy: bool, records: bool, allow: Any) -> Handle:
    from .npformat import NumpyCheckpoint  # lazy: a format reader, imported for files of its format

    return NumpyCheckpoint(source, copy=copy)


def _open_torch(source: ByteSource, copy: bool, records: bool, allow: Any) -> Handle:
    with gc_paused():  # the engine only builds objects that stay reachable: a collection frees nothing
        return LazyCheckpoint(source, copy=copy, records=records, allow=allow)


def _sniff_safetensors(head: bytes, size: int) -> bool:
    return is_safetensors(head, size)


def _sniff_npz(head: bytes, size: int) -> bool:
    return is_npz(head)


def _sniff_npy(head: bytes, size: int) -> bool:
    return is_npy(head)


#: Formats of single files, tried in order; the last takes whatever is left.
FORMATS = (
    Format("safetensors", _sniff_safetensors, _open_safetensors),
    Format("npz", _sniff_npz, _open_numpy),
    Format("npy", _sniff_npy, _open_numpy),
    Format("torch", lambda head, size: True, _open_torch),
)


def _is_path(src: Any) -> bool:
    return isinstance(src, (str, os.PathLike))


def resolve(src: Any) -> tuple[str, Any]:
    """``(kind, what to open)``: ``dcp`` or ``sharded`` for folders and indexes, else ``file`` and the file.

    A folder with neither a DCP ``.metadata`` nor an index must hold exactly one checkpoint file.
    Folders behind a URL follow the same rules, listed through fsspec (see :mod:`ptfile.io.folders`).
    """
    if not _is_path(src):
        return "file", src
    path = os.fspath(src)
    folders = folders_for(path)
    if not path.endswith(INDEX_SUFFIX) and not folders.is_dir(path):
        return "file", src  # the common case imports nothing of the DCP reader
    if path.endswith(INDEX_SUFFIX) and not folders.is_dir(path):
        return "sharded", path
    from .dcp import is_dcp  # lazy: the DCP reader is for folders; loading one file never imports it

    if is_dcp(path):
        return "dcp", path
    names = folders.names(path)
    if any(name.endswith(INDEX_SUFFIX) for name in names):
        return "sharded", path
    return "file", _single_file(folders, path, names)


def _single_file(folders: Any, folder: str, names: list[str]) -> str:
    found = [name for name in names if _is_checkpoint_file(folders, folders.join(folder, name))]
    if len(found) != 1:
        listed = ", ".join(found[:8]) if found else "none"
        raise CheckpointNotFoundError(f"{folder}: a folder without a shard index must hold exactly one checkpoint "
                                      f"file; it holds {len(found)} ({listed})")
    return folders.join(folder, found[0])


def _is_checkpoint_file(folders: Any, path: str) -> bool:
    """Whether a file in a folder is something ptfile reads: sniffed by content, never judged by name."""
    if not folders.is_file(path):
        return False
    return is_readable(*folders.head(path, SNIFF_BYTES))


def is_readable(head: bytes, size: int) -> bool:
    """Whether bytes start like a format ptfile reads: torch's containers, a pickle, or a tensor file."""
    from .legacy import is_tar  # lazy: the pre-1.6 formats only; a zip checkpoint never needs them

    return (is_zip(head) or is_tar(head) or looks_like_pickle(head)
            or any(f.sniff(head, size) for f in FORMATS[:-1]))


def detect(source: ByteSource) -> Format:
    """The format of a single file's bytes."""
    head = source.read(0, min(source.size, SNIFF_BYTES), "file header")
    return next(f for f in FORMATS if f.sniff(head, source.size))


def open_handle(src: Any, *, mmap: bool = True, records: bool = False, allow: Any = None,
                framework: str = "numpy", device: Any = None) -> Handle:
    """The handle for anything ptfile reads (see the module docstring), giving tensors in ``framework``."""
    private = mmap and framework_name(framework) == "torch" and _is_local_file(src)
    handle = _open_handle(src, mmap=mmap, records=records, allow=allow, private=private)
    if framework != "numpy" or device is not None:
        try:
            handle.private = private
            handle.use_framework(framework, device)
        except BaseException:
            handle.close()
            raise
    return handle


def _open_handle(src: Any, *, mmap: bool, records: bool, allow: Any, private: bool = False) -> Handle:
    accepted = as_allow(allow)
    kind, target = resolve(src)
    if kind == "dcp":
        from .dcp import DcpCheckpoint  # lazy: the DCP reader is for folders; loading one file never imports it

        return DcpCheckpoint(target, mmap=mmap, records=records, allow=accepted)
    if kind == "sharded":
        from .sharded import ShardedCheckpoint  # lazy: a format reader, imported for files of its format

        return ShardedCheckpoint(target, mmap=mmap, records=records, allow=accepted)
    source = _file_source(target, mmap=mmap, private=private)
    try:
        return open_file(source, detect(source), copy=not mmap, records=records, allow=accepted)
    except BaseException:
        source.close()
        raise


def open_file(source: ByteSource, fmt: Format, *, copy: bool, records: bool, allow: Any = None) -> Handle:
    """The handle of one file of a known format, once every other consumer's reading of it is judged.

    torch's containers judge those readings themselves (:class:`ptfile.formats.loader.CheckpointReader`);
    for the other formats it is done here, so that a safetensors or numpy file that is also
    something else (a pickle at byte 0, a zip appended) is refused as the scanner reports it.
    """
    handle = fmt.open(source, copy, records, allow)
    if fmt.name != "torch":
        refuse_other_readings(source, fmt.name, records=records, allow=allow)
    return handle


def refuse_other_readings(source: ByteSource, fmt: str, *, records: bool = False, allow: Any = None) -> None:
    """Raise when a consumer other than the format's own reader would run, or might run, something."""
    inventory: list = []
    faults = consumers.other_readings(source, fmt, inventory)
    refuse_unsafe(allowlist.judge(inventory, allow=allow), records=records, name=source.name)
    if faults:
        raise CorruptFileError(faults[0])


def load_tree(src: Any, *, mmap: bool = True, records: bool = False, allow: Any = None,
              framework: str = "numpy", device: Any = None) -> Any:
    """What ``ptfile.load`` returns, for every format, with tensors in ``framework``."""
    private = mmap and framework_name(framework) == "torch" and _is_local_file(src)
    convert = converter(framework, device, private=private)  # a missing framework fails before the file is read
    return convert.tree(_load_tree(src, mmap=mmap, records=records, allow=allow, private=private))


def _file_source(target: Any, *, mmap: bool, private: bool) -> ByteSource:
    """The source of one file; for torch tensors over a mapped path, a private (copy-on-write) map.

    torch tensors are writable: over a read-only map a write would crash the process, and over
    a caller's buffer it would change the caller's bytes.  A copy-on-write map of the file is
    what ``torch.load(mmap=True)`` uses; sources that cannot be mapped so are copied per
    storage by the converter instead.
    """
    if private:
        mapped = private_map(os.fspath(target))
        if mapped is not None:
            return mapped
    return open_source(target, mmap_file=mmap)


def _is_local_file(src: Any) -> bool:
    """A path of a file on this machine: what can be mapped copy-on-write."""
    return _is_path(src) and "://" not in os.fspath(src) and os.path.isfile(src)


def _load_tree(src: Any, *, mmap: bool, records: bool, allow: Any, private: bool) -> Any:
    accepted = as_allow(allow)
    kind, target = resolve(src)
    if kind != "file":
        with open_handle(target, mmap=mmap, records=records, allow=accepted) as handle:
            return handle.load()  # type: ignore[attr-defined]  # a DCP or shard-folder handle, each with load()
    source = _file_source(target, mmap=mmap, private=private)
    try:
        fmt = detect(source)
    except BaseException:
        source.close()
        raise
    if fmt.name == "torch":  # the fast path: one pass over the pickle, no handle
        return load_source(source, mmap=mmap, records=records, allow=accepted)
    try:
        handle = open_file(source, fmt, copy=not mmap, records=records, allow=accepted)
    except BaseException:
        source.close()
        raise
    with handle:
        return {key: handle[key] for key in handle.keys()}
