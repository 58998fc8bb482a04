"""What is in a checkpoint, as one plain dictionary (the data behind ``ptfile inspect``).

It reads the container directory and the pickle, never a tensor byte, and it
is the documented shape of ``ptfile inspect --json``.

Totals count what the file holds, each byte once:

* ``bytes`` sums every storage once (its full size on disk, however many tensors view it:
  tied weights count once); a tensor without a storage key counts its own bytes;
* tensors are sorted into three kinds, and ``elements`` counts each kind's elements once
  per storage element (tied or transposed names over the same bytes count once; a strided
  view counts the span from its first to its last element):

  - ``optimizer``: tensors below a dict holding ``state`` and ``param_groups`` (what
    ``torch.optim.Optimizer.state_dict()`` returns), wherever it sits in the file;
  - ``parameters``: where the file marks ``nn.Parameter`` (whole pickled models,
    ``state_dict(keep_vars=True)``), exactly the marked tensors; a plain ``state_dict()``
    keeps no marks, so there every floating-point or complex tensor is a parameter unless
    its name ends in a buffer name of torch's own modules (:data:`BUFFER_NAMES`);
  - ``buffers``: every other tensor (running statistics, integer ids, masks, RNG states).

  ``parameters`` (the top-level count) is ``elements["parameters"]``.

A tensor row names the other tensors over its storage in ``shared_with``, at most
:data:`MAX_SHARED_WITH` of them, and counts them all in ``shared_count``: listing every partner
of every row would grow with the square of the tensors (a file of 5,000 views of one storage
would list 25 million names).
"""

from __future__ import annotations

import argparse
import itertools
import math
import re
from typing import Any

import numpy as np

from ..constants import Verdict
from ..errors import PtfileError
from ..formats.loader import LazyCheckpoint, TensorInfo
from ..formats.opener import open_handle
from ..pickle.tree import walk
from ..pickle.values import Global, Record
from ..scanning.scanner import scan, scan_opened
from ..tensors.special import SpecialTensor
from ..tensors.views import TensorSpec

__all__ = ["describe", "summarize", "fold_rows"]

#: Longest text kept when summarizing a non-tensor value.
MAX_SUMMARY = 80
#: Last name parts of buffers that torch's modules register (BatchNorm's running statistics and
#: step count; rotary frequencies and position ids of common transformer blocks): never parameters.
BUFFER_NAMES = frozenset({"running_mean", "running_var", "num_batches_tracked", "inv_freq", "position_ids"})
#: The kinds of tensors the totals count apart (see the module docstring).
KINDS = ("parameters", "buffers", "optimizer")
#: An optimizer state's tensors are named ``<prefix>state.<param id>.<name>``.
_OPTIMIZER_STATE = re.compile(r"(?:^|\.)state\.\d+\.")
#: Longest string given whole as a JSON value; longer ones are only summarized.
MAX_JSON_STRING = 4096
#: Names of other tensors over the same storage a tensor row lists; ``shared_count`` counts them all.
MAX_SHARED_WITH = 16


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


def _tensor_rows(infos: dict[str, TensorInfo]) -> list[dict]:
    by_storage: dict[str, list[str]] = {}
    for key, info in infos.items():
        if info.storage:
            by_storage.setdefault(info.storage, []).append(key)
    return [_tensor_row(key, info, by_storage.get(info.storage, [])) for key, info in infos.items()]


def _tensor_row(key: str, info: TensorInfo, group: list[str]) -> dict:
    """A tensor's row; ``group``: every name over its storage, ``key`` among them."""
    partners = list(itertools.islice((other for other in group if other != key), MAX_SHARED_WITH)) \
        if len(group) > 1 else []
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
        "shared_with": partners,
        "shared_count": max(len(group) - 1, 0),
    }


def _totals(infos: dict[str, TensorInfo], optimizer_prefixes: list[str]) -> dict:
    """Storage bytes once each, and elements by kind once per storage element (see the module docstring)."""
    marked = any(info.parameter for info in infos.values())
    by_dtype: dict[str, int] = {}
    elements = dict.fromkeys(KINDS, 0)
    tensors = dict.fromkeys(KINDS, 0)
    by_storage: dict[str, list[tuple[str, TensorInfo]]] = {}
    for name, info in infos.items():
        kind = _kind(name, info, marked, optimizer_prefixes)
        tensors[kind] += 1
        if info.storage:
            by_storage.setdefault(info.storage, []).append((kind, info))
        else:  # a meta tensor, or a format without storages: its own bytes and elements
            by_dtype[info.dtype] = by_dtype.get(info.dtype, 0) + info.nbytes
            elements[kind] += _numel(info.shape)
    for users in by_storage.values():
        first = users[0][1]
        # a sparse or nested tensor's parts can outgrow the storage it is keyed by: the larger counts
        size = max(first.storage_nbytes, *(info.nbytes for _, info in users))
        by_dtype[first.dtype] = by_dtype.get(first.dtype, 0) + size
        if len(users) == 1:
            elements[users[0][0]] += _numel(first.shape)
            continue
        spans: dict[str, list[tuple[int, int]]] = {}
        for kind, info in users:
            if len(info.strides) == len(info.shape):
                spans.setdefault(kind, []).append(_span(info))
            else:  # a sparse tensor, described by its dense shape: its own elements
                elements[kind] += _numel(info.shape)
        for kind, ranges in spans.items():
            elements[kind] += _union_length(ranges)
    return {"tensors": len(infos), "parameters": elements["parameters"], "bytes": sum(by_dtype.values()),
            "bytes_by_dtype": by_dtype, "elements": elements, "tensors_by_kind": tensors}


def _span(info: TensorInfo) -> tuple[int, int]:
    """The storage elements ``[first, last + 1)`` a tensor covers; empty for a tensor without elements."""
    if _numel(info.shape) == 0:
        return info.offset, info.offset
    last = sum((dim - 1) * abs(stride) for dim, stride in zip(info.shape, info.strides, strict=True))
    return info.offset, info.offset + last + 1


def _union_length(ranges: list[tuple[int, int]]) -> int:
    total, end = 0, None
    for start, stop in sorted(ranges):
        if end is None or start >= end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _kind(name: str, info: TensorInfo, marked: bool, optimizer_prefixes: list[str]) -> str:
    if optimizer_prefixes and name.startswith(tuple(optimizer_prefixes)):
        return "optimizer"
    if marked:
        return "parameters" if info.parameter else "buffers"
    floating = info.dtype.startswith(("float", "bfloat", "complex"))
    return "parameters" if floating and name.rsplit(".", 1)[-1] not in BUFFER_NAMES else "buffers"


def _optimizer_prefixes(handle: Any, names: list[str]) -> list[str]:
    """``<path>.state.`` of every optimizer state dict whose tensors are among ``names``.

    Only names that look like optimizer state are followed back to their dict, so a file
    without one costs no walk of its tree.
    """
    candidates = {name[: match.start()] for name in names if (match := _OPTIMIZER_STATE.search(name))}
    found = []
    for path in sorted(candidates):
        try:
            node = handle.value(path) if path else handle.tree
        except (KeyError, PtfileError):
            continue
        if isinstance(node, dict) and "state" in node and "param_groups" in node:
            found.append(f"{path}.state." if path else "state.")
    return found


def describe(src: Any, *, records: bool = False) -> dict[str, Any]:
    """Describe anything ptfile reads (see :mod:`ptfile.formats.opener`) without reading tensor data.

    The scan verdict comes from the same opening: a torch checkpoint's pickles run once.
    """
    with open_handle(src, records=records) as handle:
        infos = {key: handle.info(key) for key in handle}
        rows = _tensor_rows(infos)
        optimizers = _optimizer_prefixes(handle, list(infos))
        values = [{"name": path, "summary": summarize(value), **plain_value(value)}
                  for path, value in walk(handle.tree, lambda node: not _is_container(node))
                  if not _is_tensor_like(value)]
        container = _container(handle)
        name, fmt = handle.name, handle.format
        if isinstance(handle, LazyCheckpoint):
            verdict = scan_opened(handle)
    if not isinstance(handle, LazyCheckpoint):  # headers (safetensors, numpy) and folders are scanned apart
        verdict = scan(src)
    return {
        "path": str(name),
        "format": fmt,
        "container": container,
        "tensors": rows,
        "values": values,
        "totals": _totals(infos, optimizers),
        "unknown_classes": sorted({f.path for f in verdict.findings if f.severity == Verdict.UNKNOWN_CLASS}),
        "unknown_calls": sorted({f.path for f in verdict.findings if f.severity == Verdict.UNKNOWN_CALL}),
        "scan": {"verdict": str(verdict.verdict), "findings": len(verdict.findings)},
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


# -- folding long listings ----------------------------------------------------------

#: A whole dotted component that is a number (a layer, block or expert index), captured so that
#: ``split`` gives a name's text and its numbers in one pass: ``[text, number, text, ...]``.
_INDEX = re.compile(r"(?<![^.])(\d+)(?![^.])")
#: Names of sharing partners listed in a folded row before the rest are counted.
MAX_SHARED_LISTED = 3


def fold_rows(rows: list[dict]) -> list[dict]:
    """Tensor rows with repeated numbered blocks folded into one row each.

    Rows whose names differ only in their numeric components (``layers.3.attn.q_proj.weight``)
    and that agree in dtype, shape and strides become one row named
    ``layers.{0..31}.attn.q_proj.weight`` with ``count`` 32 and ``nbytes`` their sum.  A row that
    differs (layer 0 of another shape) stays apart, so no shape is hidden.  A folded row keeps
    the names its members share storage with (outside the fold), up to :data:`MAX_SHARED_LISTED`,
    and their number in ``shared_count`` (partners beyond each member's listed ones are not known here).
    Rows come in the order of the first member of each fold.
    """
    groups: dict[tuple, tuple[list[str], list[dict], list[list[str]]]] = {}
    for row in rows:
        parts = _INDEX.split(row["name"])
        texts = parts[::2]
        key = (tuple(texts), row["dtype"], tuple(row["shape"]), tuple(row["strides"]))
        group = groups.get(key)
        if group is None:
            groups[key] = (texts, [row], [parts[1::2]])
        else:
            group[1].append(row)
            group[2].append(parts[1::2])
    return [_folded(*group) if len(group[1]) > 1 else {**group[1][0], "count": 1} for group in groups.values()]


def _folded(texts: list[str], members: list[dict], numbers: list[list[str]]) -> dict:
    """One row for ``members``: names made of the same ``texts`` around their ``numbers``."""
    name = texts[0]
    for position, text in enumerate(texts[1:]):
        name += _index_set(sorted({int(found[position]) for found in numbers})) + text
    partners: dict[str, None] = {}
    if any(row.get("shared_with") for row in members):
        inside = {row["name"] for row in members}
        partners = dict.fromkeys(other for row in members for other in row.get("shared_with", [])
                                 if other not in inside)
    return {**members[0], "name": name, "count": len(members), "nbytes": sum(row["nbytes"] for row in members),
            "shared_with": list(partners)[:MAX_SHARED_LISTED], "shared_count": len(partners)}


def _index_set(values: list[int]) -> str:
    """``{0..31}`` for a run, ``{1,4,9}`` otherwise; one value stays itself."""
    if len(values) == 1:
        return str(values[0])
    if values[-1] - values[0] + 1 == len(values):
        return f"{{{values[0]}..{values[-1]}}}"
    return "{" + ",".join(map(str, values)) + "}"
