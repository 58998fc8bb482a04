"""Sharded checkpoints: one lazy mapping across the files of a Hugging Face style index.

An index is JSON: ``{"metadata": {"total_size": N}, "weight_map": {"name": "shard file"}}``
(``pytorch_model.bin.index.json``, ``model.safetensors.index.json`` and friends).
Shard names MUST be plain file names in the index's folder: a name that climbs out
of it (``../x``, an absolute path) is refused.  Shards open on first use; every
name the index assigns to a shard must be in that shard.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import CheckpointNotFoundError, CorruptFileError
from ..io.folders import folders_for
from ..io.open import open_source
from ..io.slicing import Placement
from ..pickle.values import brief
from .handle import Handle
from .loader import TensorInfo, open_checkpoint
from .sniff import INDEX_SUFFIX
from .stformat import SafetensorsCheckpoint

__all__ = ["ShardedCheckpoint", "find_index", "is_plain_file_name"]

#: Index files are small; a larger one is not an index.
MAX_INDEX_BYTES = 256 << 20

#: Characters no file name of a shard or DCP item may hold: a Windows separator, the C string end.
_BAD_NAME_CHARS = ("\\", "\0")


def is_plain_file_name(name: Any) -> bool:
    """A file name in the folder itself: not empty, no separator, not ``.`` or ``..``."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        return False
    return os.path.basename(name) == name and not any(c in name for c in _BAD_NAME_CHARS)


def index_of(path: str) -> tuple[str, str]:
    """``(index file, folder of its shards)`` of a shard folder or an index file, local or behind a URL."""
    folders = folders_for(path)
    index = find_index(path) if folders.is_dir(path) else path
    return index, folders.parent(index)


def find_index(folder: str) -> str:
    """The single ``*.index.json`` of a folder (``.bin``/``.pt`` indexes preferred over safetensors)."""
    folders = folders_for(folder)
    found = [name for name in folders.names(folder) if name.endswith(INDEX_SUFFIX)]
    if not found:
        raise CheckpointNotFoundError(f"{folder}: a folder without a *{INDEX_SUFFIX} shard index")
    torch_first = sorted(found, key=lambda name: "safetensors" in name)
    return folders.join(folder, torch_first[0])


def read_index(path: str) -> dict[str, str]:
    """The weight map of an index file, checked: tensor name -> shard file name."""
    raw = folders_for(path).read_small(path, MAX_INDEX_BYTES, "index file")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path}: not valid JSON: {exc}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CorruptFileError(f"{path}: no weight_map object")
    for name, shard in weight_map.items():
        if not is_plain_file_name(shard):
            raise CorruptFileError(f"{path}: shard {brief(shard)} of {brief(name)} is not a plain file name")
    return weight_map


class ShardedCheckpoint(Handle):
    """The lazy handle for a shard index (or a folder holding one): the same API as ``ptfile.open``."""

    format = "sharded"

    def __init__(self, src: Any, *, mmap: bool = True, records: bool = False, allow: Any = None) -> None:
        self.index, self.folder = index_of(os.fspath(src))
        self.name = self.index
        self._folders = folders_for(self.folder)
        self.weight_map = read_index(self.index)
        self.shards = list(dict.fromkeys(self.weight_map.values()))
        self._mmap = mmap
        self._records = records
        self._allow = allow  # an allowlist.Allow, or None
        self._open: dict[str, Any] = {}

    def shard(self, name: str) -> Any:
        """The opened shard file (a lazy checkpoint, or safetensors tensors)."""
        found = self._open.get(name)
        if found is None:
            path = self._folders.join(self.folder, name)
            if name.endswith(".safetensors"):
                found = SafetensorsCheckpoint(open_source(path, mmap_file=self._mmap), copy=not self._mmap)
            else:
                found = open_checkpoint(path, mmap=self._mmap, records=self._records, allow=self._allow)
            missing = [k for k, v in self.weight_map.items() if v == name and k not in found]
            if missing:
                raise CorruptFileError(f"{path}: the index places {missing[0]!r} here but the shard lacks it")
            self._open[name] = found
        return found

    def _names(self) -> Collection[str]:
        return self.weight_map.keys()

    def _where(self, key: str) -> Any:
        return self.shard(self.weight_map[key])

    def _info(self, key: str) -> TensorInfo:
        # storage keys are per file: qualify them so two shards' "0" are not taken for one storage
        info = self._where(key).info(key)
        return replace(info, storage=f"{self.weight_map[key]}:{info.storage}")

    def _tensor(self, key: str) -> np.ndarray:
        return self._where(key)[key]

    def _placement(self, key: str) -> Placement | None:
        return self._where(key)._placement(key)

    def _tree(self) -> dict[str, Any]:
        return dict.fromkeys(self.weight_map)  # the index names tensors only: their values are read on demand

    def load(self) -> dict[str, np.ndarray]:
        """Every tensor, merged in index order."""
        return {key: self[key] for key in self.weight_map}

    def _close(self) -> None:
        for shard in self._open.values():
            shard.close()

    def __enter__(self) -> ShardedCheckpoint:
        return self
