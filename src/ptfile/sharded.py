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
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from .errors import CheckpointNotFoundError, CorruptFileError
from .loader import LazyCheckpoint, TensorInfo, open_checkpoint
from .source import checked_size
from .values import brief

__all__ = ["ShardedCheckpoint", "find_index", "is_sharded", "is_plain_file_name"]

#: Index files are small; a larger one is not an index.
MAX_INDEX_BYTES = 256 << 20
INDEX_SUFFIX = ".index.json"


def is_sharded(src: Any) -> bool:
    """A shard index, or a folder that is not a DCP checkpoint (see :mod:`ptfile.dcp`)."""
    from .dcp import is_dcp

    return isinstance(src, (str, os.PathLike)) and (
        (os.path.isdir(src) and not is_dcp(src)) or os.fspath(src).endswith(INDEX_SUFFIX)
    )


#: Characters no file name of a shard or DCP item may hold: a Windows separator, the C string end.
_BAD_NAME_CHARS = ("\\", "\0")


def is_plain_file_name(name: Any) -> bool:
    """A file name in the folder itself: not empty, no separator, not ``.`` or ``..``."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        return False
    return os.path.basename(name) == name and not any(c in name for c in _BAD_NAME_CHARS)


def find_index(folder: str) -> str:
    """The single ``*.index.json`` of a folder (``.bin``/``.pt`` indexes preferred over safetensors)."""
    found = sorted(name for name in os.listdir(folder) if name.endswith(INDEX_SUFFIX))
    if not found:
        raise CheckpointNotFoundError(f"{folder}: a folder without a *{INDEX_SUFFIX} shard index")
    torch_first = sorted(found, key=lambda name: "safetensors" in name)
    return os.path.join(folder, torch_first[0])


def read_index(path: str) -> dict[str, str]:
    """The weight map of an index file, checked: tensor name -> shard file name."""
    checked_size(path, MAX_INDEX_BYTES, "index file")
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptFileError(f"{path}: not valid JSON: {exc}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CorruptFileError(f"{path}: no weight_map object")
    for name, shard in weight_map.items():
        if not is_plain_file_name(shard):
            raise CorruptFileError(f"{path}: shard {brief(shard)} of {brief(name)} is not a plain file name")
    return weight_map


class ShardedCheckpoint:
    """The lazy handle for a shard index (or a folder holding one): the same API as ``ptfile.open``."""

    format = "sharded"

    def __init__(self, src: Any, *, mmap: bool = True, records: bool = False, allow: Any = None) -> None:
        path = os.fspath(src)
        self.index = find_index(path) if os.path.isdir(path) else path
        self.folder = os.path.dirname(os.path.abspath(self.index))
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
            path = os.path.join(self.folder, name)
            if name.endswith(".safetensors"):
                from .stformat import read_safetensors

                found = _SafetensorsShard(*read_safetensors(path, mmap=self._mmap))
            else:
                found = open_checkpoint(path, mmap=self._mmap, records=self._records, allow=self._allow)
            missing = [k for k, v in self.weight_map.items() if v == name and k not in found]
            if missing:
                raise CorruptFileError(f"{path}: the index places {missing[0]!r} here but the shard lacks it")
            self._open[name] = found
        return found

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def __iter__(self) -> Iterator[str]:
        return iter(self.weight_map)

    def __len__(self) -> int:
        return len(self.weight_map)

    def __contains__(self, key: object) -> bool:
        return key in self.weight_map

    def _where(self, key: str) -> Any:
        if key not in self.weight_map:
            raise KeyError(f"no tensor named {key!r} in {self.index}")
        return self.shard(self.weight_map[key])

    def info(self, key: str) -> TensorInfo:
        # storage keys are per file: qualify them so two shards' "0" are not taken for one storage
        info = self._where(key).info(key)
        return replace(info, storage=f"{self.weight_map[key]}:{info.storage}")

    def __getitem__(self, key: str) -> np.ndarray:
        return self._where(key)[key]

    def load(self) -> dict[str, np.ndarray]:
        """Every tensor, merged in index order."""
        return {key: self[key] for key in self.weight_map}

    def close(self) -> None:
        for shard in self._open.values():
            shard.close()

    def __enter__(self) -> ShardedCheckpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _SafetensorsShard:
    """A safetensors shard seen through the lazy-handle API."""

    def __init__(self, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
        self.tensors = tensors
        self.metadata = metadata

    def __contains__(self, key: object) -> bool:
        return key in self.tensors

    def __getitem__(self, key: str) -> np.ndarray:
        return self.tensors[key]

    def info(self, key: str) -> TensorInfo:
        array = self.tensors[key]
        itemsize = array.dtype.itemsize
        return TensorInfo(
            dtype=array.dtype.name, torch_dtype=array.dtype.name, shape=array.shape,
            strides=tuple(s // itemsize for s in array.strides), offset=0, nbytes=array.nbytes,
            storage=key, storage_nbytes=array.nbytes, location="cpu", parameter=False, is_contiguous=True,
        )

    def close(self) -> None:
        pass


def open_sharded(src: Any, *, mmap: bool = True, records: bool = False) -> ShardedCheckpoint:
    return ShardedCheckpoint(src, mmap=mmap, records=records)


LazyHandle = LazyCheckpoint | ShardedCheckpoint
