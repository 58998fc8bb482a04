"""What is in a checkpoint, as one plain dictionary (the data behind ``ptfile inspect``).

It reads the container directory and the pickle, never a tensor byte, and it
is the documented shape of ``ptfile inspect --json``.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

from . import allowlist
from .loader import TensorInfo
from .special import SpecialTensor
from .tensors import TensorSpec
from .tree import walk
from .values import Global, Record

__all__ = ["describe", "summarize"]

#: Longest text kept when summarizing a non-tensor value.
MAX_SUMMARY = 80
#: Longest string given whole as a JSON value; longer ones are only summarized.
MAX_JSON_STRING = 4096


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


def plain_value(value: Any) -> dict[str, Any]:
    """``{"type": ..., "value": ...}`` for a value JSON holds as itself (number, string, bool, null).

    Other values (and non-finite floats, which JSON cannot hold, and very long strings)
    get only their type: the summary describes them.
    """
    if value is None or type(value) in (bool, int, str):  # exact types: a subclass is not plain data
        if type(value) is not str or len(value) <= MAX_JSON_STRING:
            return {"type": type(value).__name__, "value": value}
    elif type(value) is float and math.isfinite(value):
        return {"type": "float", "value": value}
    return {"type": type(value).__name__}


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
    """Describe anything ptfile reads (see :mod:`ptfile.opener`) without reading tensor data."""
    from .opener import open_handle
    from .scanner import scan

    with open_handle(src, records=records) as handle:
        rows = _tensor_rows(handle)
        values = [{"name": path, "summary": summarize(value), **plain_value(value)}
                  for path, value in walk(handle.tree, lambda node: not _is_container(node))
                  if not _is_tensor_like(value)]
        container = _container(handle)
        name, fmt = handle.name, handle.format
    verdict = scan(src)
    return {
        "path": str(name),
        "format": fmt,
        "container": container,
        "tensors": rows,
        "values": values,
        "totals": _totals(rows),
        "unknown_classes": sorted({f.path for f in verdict.findings if f.severity == allowlist.UNKNOWN_CLASS}),
        "unknown_calls": sorted({f.path for f in verdict.findings if f.severity == allowlist.UNKNOWN_CALL}),
        "scan": {"verdict": verdict.verdict, "findings": len(verdict.findings)},
    }


def _is_tensor_like(value: Any) -> bool:
    """Tensors as the trees of the formats hold them: specs, special tensors, arrays, DCP's described tensors."""
    return value is None or isinstance(value, (TensorSpec, SpecialTensor, np.ndarray, TensorInfo))


def _container(handle: Any) -> dict[str, Any]:
    """What holds the tensors: a torch zip's version and records, a shard or DCP folder's files."""
    container = getattr(handle, "container", None)
    archive = getattr(container, "archive", None)
    if archive is not None:
        parts = list(archive.order)
    elif hasattr(handle, "shards"):
        parts = list(handle.shards)
    elif hasattr(handle, "layout"):
        parts = sorted({item.file for item in handle.layout.items})
    else:
        parts = []
    return {
        "version": getattr(container, "version", None) or getattr(handle, "version", None),
        "byteorder": getattr(container, "byteorder", None),
        "prefix": archive.prefix if archive is not None else None,
        "records": parts,
    }
