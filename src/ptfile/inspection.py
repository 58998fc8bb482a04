"""What is in a checkpoint, as one plain dictionary (the data behind ``ptfile inspect``).

It reads the container directory and the pickle, never a tensor byte, and it
is the documented shape of ``ptfile inspect --json``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from . import allowlist
from .loader import TensorInfo, open_checkpoint
from .special import SpecialTensor
from .tensors import TensorSpec
from .tree import walk
from .values import Global, Record

__all__ = ["describe", "summarize"]

#: Longest text kept when summarizing a non-tensor value.
MAX_SUMMARY = 80


def summarize(value: Any) -> str:
    """A short, one-line description of a non-tensor value."""
    if isinstance(value, np.ndarray):
        return f"ndarray {value.dtype.name} {tuple(value.shape)}"
    if isinstance(value, (Record, Global)):
        text = repr(value)
    elif isinstance(value, (bytes, bytearray)):
        text = f"{type(value).__name__}[{len(value)}]"
    else:
        text = repr(value)
    return text if len(text) <= MAX_SUMMARY else text[: MAX_SUMMARY - 3] + "..."


def _is_container(node: Any) -> bool:
    return isinstance(node, (dict, list, tuple, Record, argparse.Namespace)) and type(node) is not TensorSpec


def _tensor_rows(checkpoint: Any) -> list[dict]:
    infos = {key: checkpoint.info(key) for key in checkpoint}
    by_storage: dict[str, list[str]] = {}
    for key, info in infos.items():
        if info.storage:
            by_storage.setdefault(info.storage, []).append(key)
    return [_tensor_row(key, info, by_storage.get(info.storage, [])) for key, info in infos.items()]


def _tensor_row(key: str, info: TensorInfo, group: list[str]) -> dict:
    return {
        "name": key,
        "dtype": info.dtype,
        "torch_dtype": info.torch_dtype,
        "shape": list(info.shape),
        "strides": list(info.strides),
        "contiguous": info.is_contiguous,
        "offset": info.offset,
        "nbytes": info.nbytes,
        "storage": info.storage,
        "parameter": info.parameter,
        "shared_with": [other for other in group if other != key],
    }


def _totals(rows: list[dict]) -> dict:
    by_dtype: dict[str, int] = {}
    params = 0
    for row in rows:
        count = 1
        for dim in row["shape"]:
            count *= dim
        params += count
        by_dtype[row["dtype"]] = by_dtype.get(row["dtype"], 0) + row["nbytes"]
    return {"tensors": len(rows), "parameters": params, "bytes": sum(by_dtype.values()), "bytes_by_dtype": by_dtype}


def describe(src: Any, *, records: bool = False) -> dict[str, Any]:
    """Describe a checkpoint (or a shard index or folder) without reading tensor data."""
    from .dcp import DcpCheckpoint, is_dcp
    from .scanner import scan
    from .sharded import ShardedCheckpoint, is_sharded

    if is_dcp(src):
        return _describe_dcp(DcpCheckpoint(src, records=records))
    if is_sharded(src):
        return _describe_sharded(ShardedCheckpoint(src, records=records))
    verdict = scan(src)
    with open_checkpoint(src, records=records) as checkpoint:
        rows = _tensor_rows(checkpoint)
        values = [
            {"name": path, "summary": summarize(value)}
            for path, value in walk(checkpoint.tree, lambda node: not _is_container(node))
            if type(value) is not TensorSpec and not isinstance(value, SpecialTensor)
        ]
        judgement = allowlist.judge(checkpoint.inventory)
        container = checkpoint.container
        archive = getattr(container, "archive", None)
        info = {
            "version": getattr(container, "version", None),
            "byteorder": container.byteorder,
            "prefix": archive.prefix if archive is not None else None,
            "records": list(archive.order) if archive is not None else [],
        }
        return {
            "path": str(getattr(checkpoint.source, "name", src)),
            "format": checkpoint.format,
            "container": info,
            "tensors": rows,
            "values": values,
            "totals": _totals(rows),
            "unknown_classes": sorted(f.path for f in judgement.findings if f.severity == allowlist.UNKNOWN_CLASS),
            "unknown_calls": sorted(f.path for f in judgement.findings if f.severity == allowlist.UNKNOWN_CALL),
            "scan": {"verdict": verdict.verdict, "findings": len(verdict.findings)},
        }


def _describe_sharded(shards: Any) -> dict[str, Any]:
    from .scanner import VERDICTS, scan

    with shards:
        rows = _tensor_rows(shards)
        verdicts = [scan(os.path.join(shards.folder, name)).verdict for name in shards.shards]
    worst = min(verdicts, key=VERDICTS.index) if verdicts else allowlist.CLEAN
    return {
        "path": shards.index,
        "format": "sharded",
        "container": {"version": None, "byteorder": None, "prefix": None, "records": list(shards.shards)},
        "tensors": rows,
        "values": [],
        "totals": _totals(rows),
        "unknown_classes": [],
        "scan": {"verdict": worst, "findings": 0},
    }


def _describe_dcp(folder: Any) -> dict[str, Any]:
    """A DCP folder: its tensors at their global shapes, its non-tensor values, the folder's scan verdict."""
    from .scanner import scan

    with folder:
        rows = _tensor_rows(folder)
        values = [{"name": name, "summary": summarize(folder[name])} for name in folder.value_names()]
        files = sorted({item.file for item in folder.layout.items})
    verdict = scan(folder.folder)
    return {
        "path": folder.folder,
        "format": "dcp",
        "container": {"version": folder.version, "byteorder": None, "prefix": None, "records": files},
        "tensors": rows,
        "values": values,
        "totals": _totals(rows),
        "unknown_classes": sorted({f.path for f in verdict.findings if f.severity == allowlist.UNKNOWN_CLASS}),
        "scan": {"verdict": verdict.verdict, "findings": len(verdict.findings)},
    }
