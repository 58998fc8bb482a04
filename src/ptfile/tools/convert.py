"""Converting between checkpoint formats, chosen by file extension.

Inputs: torch checkpoints (``.pt .pth .bin .ckpt`` and any other name ptfile reads),
``.safetensors``, ``.npz``, shard indexes or folders of either, and
``torch.distributed.checkpoint`` folders (consolidated by :func:`consolidate`).  Outputs:
``.safetensors`` (optionally sharded, with an index), ``.npz``, and torch checkpoints.

A checkpoint is flattened to ``dotted name -> tensor``; ``key`` picks a nested
state dict first (``model``, ``state_dict``, ``module.encoder``).  Values that are
not tensors cannot go into safetensors or npz: they are listed in the report,
never dropped silently, and so are aliases of shared memory that safetensors
cannot express (they are recorded in its metadata, as the safetensors converter does).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

from ..errors import UnsupportedFormatError
from ..formats.dcp import DcpCheckpoint
from ..formats.npformat import write_npz
from ..formats.opener import load_tree, open_handle, resolve
from ..formats.sharded import INDEX_SUFFIX
from ..formats.stformat import ALIASES_KEY, alias_views, remove_shared, write_safetensors
from ..formats.writer import AcrossShards, parse_size, plan_shards, save, save_sharded
from ..io.atomic import atomic_write, require_folder
from ..pickle.tree import walk
from ..pickle.values import Record

__all__ = ["convert", "read_tensors", "write_tensors", "select", "cast", "ConvertReport"]

#: Formats whose tree is already a flat ``name -> tensor`` mapping.
FLAT_FORMATS = frozenset({"safetensors", "npz", "npy", "sharded"})
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
FLOAT_TYPES = frozenset({"float16", "float32", "float64", "bfloat16", "float8_e5m2", "float8_e4m3fn",
                         "float8_e5m2fnuz", "float8_e4m3fnuz", "float8_e8m0fnu"})


@dataclass
class ConvertReport:
    written: list[str] = field(default_factory=list)
    tensors: int = 0
    skipped_values: list[str] = field(default_factory=list)  # non-tensor values left out
    dropped_aliases: dict[str, str] = field(default_factory=dict)  # alias -> tensor kept in its place


def select(tree: Any, key: str | None) -> Any:
    """The sub-tree at a dotted key (``model`` or ``state_dict`` or ``a.b``)."""
    if not key:
        return tree
    node = tree
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(f"no entry {key!r} in the checkpoint (stopped at {part!r})")
    return node


def _is_tensor(node: Any) -> bool:
    return isinstance(node, np.ndarray)


def flatten(tree: Any) -> tuple[dict[str, np.ndarray], list[str]]:
    """``dotted name -> array`` for every tensor, and the names of the values that are not tensors."""
    tensors: dict[str, np.ndarray] = OrderedDict()
    skipped: list[str] = []
    containers = (dict, list, tuple, Record)
    for path, leaf in walk(tree, lambda node: not isinstance(node, containers)):
        if _is_tensor(leaf):
            tensors[path or "tensor"] = leaf
        else:
            skipped.append(path)
    return tensors, skipped


def read_tensors(src: Any, *, key: str | None = None, records: bool = False) -> tuple[dict[str, np.ndarray], list[str]]:
    """The tensors of anything ptfile reads, and the names of non-tensor values skipped."""
    with open_handle(src, records=records) as handle:
        nested = handle.format not in FLAT_FORMATS
    tree = load_tree(src, records=records)
    if not nested:
        return _subset(tree, key), []
    return flatten(select(tree, key))


def _subset(tensors: dict[str, np.ndarray], key: str | None) -> dict[str, np.ndarray]:
    if not key:
        return tensors
    prefix = key + "."
    found = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not found:
        raise KeyError(f"no tensors under {key!r}")
    return found


def float_dtype(name: str) -> np.dtype:
    """The floating-point type ``name`` means (``float32``, ``bfloat16``, ``float8_e4m3fn``...)."""
    try:
        target = np.dtype(getattr(ml_dtypes, name, None) or name)
    except TypeError:
        target = None
    if target is None or target.name not in FLOAT_TYPES:
        raise UnsupportedFormatError(f"dtype must be one of {', '.join(sorted(FLOAT_TYPES))}; got {name!r}")
    return target


def cast(tensors: dict[str, np.ndarray], dtype: str | None,
         progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Floating-point tensors cast to ``dtype`` (``float32``, ``bfloat16``...); others untouched.

    ``progress(bytes read, bytes to cast)`` is called after each tensor cast.
    """
    if not dtype:
        return tensors
    target = float_dtype(dtype)
    total, done = sum(v.nbytes for v in tensors.values() if v.dtype.name in FLOAT_TYPES), 0
    result = {}
    for key, value in tensors.items():
        if value.dtype.name in FLOAT_TYPES:
            value = value.astype(target)
            done += tensors[key].nbytes
            if progress is not None:
                progress(done, total)
        result[key] = value
    return result


class Phases:
    """One ``progress(done, total)`` over a cast and then a write: the write's bytes follow the cast's."""

    def __init__(self, progress: Callable[[int, int], None] | None, cast_bytes: int, write_bytes: int) -> None:
        self.progress, self.cast_bytes, self.write_bytes = progress, cast_bytes, write_bytes

    def casting(self, done: int, _: int) -> None:
        if self.progress is not None:
            self.progress(done, self.cast_bytes + self.write_bytes)

    def writing(self, done: int, total: int) -> None:
        if self.progress is not None:  # the writer knows the exact total once shared storages are counted
            self.progress(self.cast_bytes + done, self.cast_bytes + total)


def write_tensors(tensors: dict[str, np.ndarray], dst: str, *, max_shard_size: int | str | None = None,
                  metadata: dict[str, str] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> ConvertReport:
    """Write tensors to ``dst`` in the format its extension names, into a folder that exists.

    ``progress(bytes written, bytes to write)`` is called as tensor data is written (not for ``.npz``).
    """
    report = ConvertReport(tensors=len(tensors))
    require_folder(dst)
    if dst.endswith(".safetensors"):
        kept, report.dropped_aliases = remove_shared(tensors)
        meta = {"format": "pt", **report.dropped_aliases, **(metadata or {})}
        views = alias_views(tensors, report.dropped_aliases)
        if views:  # ptfile restores these as views on the way back; other readers see safetensors' own note
            meta[ALIASES_KEY] = json.dumps(views, separators=(",", ":"))
        tensors = kept
        if max_shard_size is None:
            write_safetensors(tensors, dst, meta, progress=progress)
            report.written.append(dst)
        else:
            report.written.extend(_write_sharded_safetensors(tensors, dst, parse_size(max_shard_size), meta, progress))
    elif dst.endswith(".npz"):
        write_npz(tensors, dst)
        report.written.append(dst)
    elif dst.endswith(TORCH_SUFFIXES):
        if max_shard_size is None:
            save(OrderedDict(tensors), dst, progress=progress)
            report.written.append(dst)
        else:
            folder = os.path.dirname(dst) or "."
            names = save_sharded(OrderedDict(tensors), folder, max_shard_size=max_shard_size, progress=progress)
            report.written.extend(os.path.join(folder, name) for name in names)
    else:
        raise UnsupportedFormatError(f"{dst}: cannot tell the output format from its extension "
                                     "(use .safetensors, .npz, .pt, .pth or .bin)")
    return report


def _write_sharded_safetensors(tensors: dict[str, np.ndarray], dst: str, max_size: int,
                               metadata: dict[str, str], progress: Callable[[int, int], None] | None) -> list[str]:
    shards, total = plan_shards(tensors, max_size)
    if len(shards) == 1:
        write_safetensors(tensors, dst, metadata, progress=progress)
        return [dst]
    folder, stem = os.path.dirname(dst) or ".", os.path.basename(dst)[: -len(".safetensors")]
    written, weight_map = [], {}
    across = AcrossShards(total, progress)
    for number, keys in enumerate(shards, 1):
        name = f"{stem}-{number:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors({k: tensors[k] for k in keys}, os.path.join(folder, name), metadata, progress=across)
        across.next_shard()
        weight_map.update(dict.fromkeys(keys, name))
        written.append(os.path.join(folder, name))
    index = os.path.join(folder, stem + ".safetensors" + INDEX_SUFFIX)
    document = {"metadata": {"total_size": sum(a.nbytes for a in tensors.values())}, "weight_map": weight_map}
    with atomic_write(index) as out:
        out.write(json.dumps(document, indent=2).encode() + b"\n")
    written.append(index)
    return written


def convert(src: Any, dst: str, *, dtype: str | None = None, key: str | None = None, records: bool = False,
            max_shard_size: int | str | None = None,
            progress: Callable[[int, int], None] | None = None) -> ConvertReport:
    """Convert ``src`` into the format ``dst``'s extension names; see the module docstring.

    ``dst``'s folder must exist and ``dtype`` must name a floating-point type: both are
    checked before anything is read.  ``progress(bytes written, bytes to write)`` follows the writing.
    """
    require_folder(dst)
    if dtype:
        float_dtype(dtype)
    if resolve(src)[0] == "dcp" and dtype is None and key is None and max_shard_size is None and \
            dst.endswith((".safetensors", *TORCH_SUFFIXES)):
        # one tensor at a time; other options go the general way
        return consolidate(src, dst, records=records, progress=progress)
    tensors, skipped = read_tensors(src, key=key, records=records)
    if not tensors:
        raise UnsupportedFormatError(f"{src}: no tensors to convert")
    cast_bytes = sum(v.nbytes for v in tensors.values() if dtype and v.dtype.name in FLOAT_TYPES)
    phases = Phases(progress, cast_bytes, sum(v.nbytes for v in tensors.values()))
    report = write_tensors(cast(tensors, dtype, phases.casting), dst, max_shard_size=max_shard_size,
                           progress=phases.writing)
    report.skipped_values = skipped
    return report


# -- DCP consolidation ---------------------------------------------------------------


class _Scratch:
    """Tensors assembled from several chunks, in a memory-mapped temporary file next to the output.

    Each tensor is its own ``np.memmap`` (so a writer sees one storage per tensor); the file
    is unlinked from the start and gone when closed.
    """

    def __init__(self, folder: str) -> None:
        self.file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - closed by close()
        self.size = 0

    def array(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        nbytes = math.prod(shape) * dtype.itemsize
        if not nbytes:
            return np.empty(shape, dtype)
        offset, self.size = self.size, self.size + nbytes
        self.file.truncate(self.size)
        raw = np.memmap(self.file, dtype=np.uint8, mode="r+", offset=offset, shape=(nbytes,))
        return raw.view(dtype).reshape(shape)

    def close(self) -> None:
        self.file.close()


def consolidate(folder: Any, out: str | os.PathLike[str], *, records: bool = False,
                progress: Callable[[int, int], None] | None = None) -> Any:
    """Write a DCP folder as one ``.pt`` (``.pth``, ``.bin``...) or ``.safetensors`` file.

    ``.pt`` gets the whole nested state dict, non-tensor values included (what torch's
    ``dcp_to_torch_save`` writes); ``.safetensors`` gets every tensor under its fqn and
    lists the non-tensor values as skipped.  Tensors are assembled one at a time:

    * for ``.safetensors`` only the tensor being written is held;
    * for ``.pt`` the writer needs the whole tree at once, so what is held are views:
      a tensor stored as one chunk is a view of the mapped ``.distcp`` file, a tensor
      stored as several is assembled into a memory-mapped temporary file beside ``out``
      (as large as those tensors together), and the non-tensor values.

    ``out``'s folder must exist.  ``progress(bytes written, bytes to write)`` follows the writing.
    Returns a :class:`ConvertReport`.
    """
    target = os.fspath(out)
    if not target.endswith((".safetensors", *TORCH_SUFFIXES)):
        raise UnsupportedFormatError(f"{target}: a DCP folder consolidates to .safetensors or "
                                     f"{', '.join(TORCH_SUFFIXES)}")
    require_folder(target)
    with DcpCheckpoint(folder, mmap=True, records=records) as checkpoint:
        report = ConvertReport(written=[target], tensors=len(checkpoint))
        if target.endswith(".safetensors"):
            _write_safetensors(checkpoint, target, progress)
            report.skipped_values = checkpoint.value_names()
        else:
            _write_torch(checkpoint, target, progress)
    return report


def _write_safetensors(checkpoint: DcpCheckpoint, target: str,
                       progress: Callable[[int, int], None] | None) -> None:
    # Zero-stride placeholders describe each tensor; the bytes come one tensor at a time.
    shapes = {key: np.broadcast_to(np.zeros((), checkpoint.entry(key).numpy), checkpoint.entry(key).shape)
              for key in checkpoint}
    write_safetensors(shapes, target, {"format": "pt"}, fetch=checkpoint.assemble, progress=progress)


def _write_torch(checkpoint: DcpCheckpoint, target: str, progress: Callable[[int, int], None] | None) -> None:
    scratch = _Scratch(os.path.dirname(os.path.abspath(target)))
    try:
        def tensor(key: str) -> np.ndarray:
            entry = checkpoint.entry(key)
            if len(entry.chunks) == 1:
                return checkpoint.assemble(key)
            return checkpoint.assemble(key, out=scratch.array(entry.numpy, entry.shape))

        save(checkpoint.load(tensor=tensor), target, progress=progress)
    finally:
        scratch.close()
