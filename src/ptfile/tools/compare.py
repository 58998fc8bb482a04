"""Comparing checkpoints: ``diff`` (what changed) and ``match`` (will it load).

Both work on the flat ``dotted name -> tensor`` view a lazy handle gives, and read
tensor bytes only where they must: ``match`` never, ``diff`` for tensors present on
both sides with the same dtype and shape, in bounded chunks so two checkpoints
larger than memory can be compared.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CorruptFileError
from ..formats.handle import Handle
from ..formats.opener import open_handle
from ..formats.sharded import INDEX_SUFFIX

__all__ = ["diff", "match", "DiffResult", "MatchResult", "strip_prefixes", "COMMON_PREFIXES"]

#: Elements compared at a time; bounds the float64 scratch memory of a comparison to ~32 MB.
CHUNK_ELEMENTS = 1 << 22
#: Prefixes that wrappers add to every key: DataParallel / DDP, torch.compile, Lightning.
COMMON_PREFIXES = ("module.", "_orig_mod.", "model.", "state_dict.")


def strip_prefixes(name: str, prefixes: Iterable[str]) -> str:
    """Remove each prefix in turn wherever it starts the name (``module._orig_mod.x`` -> ``x``)."""
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if prefix and name.startswith(prefix):
                name = name[len(prefix) :]
                changed = True
    return name


def _keyed(names: Iterable[str] | Handle, prefixes: Iterable[str]) -> dict[str, str]:
    """Stripped name -> original name; a clash after stripping is an error, not a silent pick."""
    result: dict[str, str] = {}
    for key in names:
        short = strip_prefixes(key, prefixes)
        if short in result:
            raise CorruptFileError(f"{key!r} and {result[short]!r} are the same name once prefixes are stripped")
        result[short] = key
    return result


def _under_key(names: Iterable[str], key: str | None) -> dict[str, str]:
    """Name inside the nested dict ``key`` -> full name (``x`` -> ``state_dict.x``); all names without a key."""
    if not key:
        return {name: name for name in names}
    found = {name[len(key) + 1:]: name for name in names if name.startswith(key + ".")}
    if not found:
        raise KeyError(f"no tensors under {key!r}")
    return found


@dataclass
class TensorDiff:
    name: str
    status: str  # equal, close, different, dtype, shape
    a: str | list[int] = ""  # dtype (a name) or shape (a list of sizes) on each side, for dtype and shape changes
    b: str | list[int] = ""
    max_abs: float | None = None
    max_rel: float | None = None
    mismatched: int = 0  # elements outside the tolerance


@dataclass
class DiffResult:
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    tensors: list[TensorDiff] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not self.only_a and not self.only_b and all(t.status in ("equal", "close") for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "equal": self.equal,
            "only_a": self.only_a,
            "only_b": self.only_b,
            "tensors": [t.__dict__ for t in self.tensors],
        }


def chunks(array: np.ndarray, size: int = CHUNK_ELEMENTS) -> Iterable[np.ndarray]:
    """The array's elements in C order, ``size`` at a time (views where it is contiguous)."""
    flat = array.reshape(-1) if array.flags.c_contiguous else np.ravel(array)
    for start in range(0, flat.size, size):
        yield flat[start : start + size]


def _as_numbers(chunk: np.ndarray) -> np.ndarray:
    if chunk.dtype.kind == "c" or chunk.dtype.name == "complex32":
        return chunk.astype(np.complex128)
    return chunk.astype(np.float64)


def compare_arrays(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> tuple[str, float, float, int]:
    """(status, max |a-b|, max |a-b|/|b|, count outside atol + rtol*|b|), NaNs equal to NaNs."""
    max_abs = 0.0
    max_rel = 0.0
    mismatched = 0
    identical = True
    for ca, cb in zip(chunks(a), chunks(b), strict=True):
        if identical and ca.tobytes() == cb.tobytes():
            continue
        identical = False
        fa, fb = _as_numbers(ca), _as_numbers(cb)
        both_nan = np.isnan(fa) & np.isnan(fb)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            delta = np.where(both_nan, 0.0, np.abs(fa - fb))
            delta = np.where(np.isnan(delta), np.inf, delta)  # NaN on one side only
            scale = np.abs(fb)
            rel = np.where(delta == 0, 0.0, delta / np.where(scale == 0, np.inf, scale))
            rel = np.where((scale == 0) & (delta > 0), np.inf, rel)
        max_abs = max(max_abs, float(delta.max(initial=0.0)))
        max_rel = max(max_rel, float(rel.max(initial=0.0)))
        mismatched += int(np.count_nonzero(delta > atol + rtol * scale))
    if identical:
        return "equal", 0.0, 0.0, 0
    return ("close" if mismatched == 0 else "different"), max_abs, max_rel, mismatched


def diff(a: Any, b: Any, *, atol: float = 0.0, rtol: float = 0.0, strip: Iterable[str] = (),
         records: bool = False, progress: Callable[[int, int], None] | None = None) -> DiffResult:
    """Compare the tensors of two checkpoints by name, dtype, shape and value."""
    prefixes = tuple(strip)
    with open_handle(a, records=records) as left, open_handle(b, records=records) as right:
        names_a, names_b = _keyed(left, prefixes), _keyed(right, prefixes)
        result = DiffResult(
            only_a=[names_a[k] for k in names_a if k not in names_b],
            only_b=[names_b[k] for k in names_b if k not in names_a],
        )
        common = [k for k in names_a if k in names_b]
        for index, name in enumerate(common, 1):
            result.tensors.append(_diff_one(left, right, names_a[name], names_b[name], name, atol, rtol))
            if progress is not None:
                progress(index, len(common))
    return result


def _diff_one(left: Handle, right: Handle, key_a: str, key_b: str, name: str,
              atol: float, rtol: float) -> TensorDiff:
    ia, ib = left.info(key_a), right.info(key_b)
    if ia.dtype != ib.dtype:
        return TensorDiff(name, "dtype", ia.dtype, ib.dtype)
    if ia.shape != ib.shape:
        return TensorDiff(name, "shape", list(ia.shape), list(ib.shape))
    status, max_abs, max_rel, bad = compare_arrays(left[key_a], right[key_b], atol, rtol)
    return TensorDiff(name, status, max_abs=max_abs, max_rel=max_rel, mismatched=bad)


# -- match ---------------------------------------------------------------------


@dataclass
class MatchResult:
    missing: list[str] = field(default_factory=list)  # expected by the reference, absent
    unexpected: list[str] = field(default_factory=list)  # present, not expected
    shape_mismatch: list[dict] = field(default_factory=list)
    dtype_mismatch: list[dict] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **{k: v for k, v in self.__dict__.items()}}


def expected_from(ref: Any, *, records: bool = False) -> dict[str, tuple[tuple[int, ...], str | None]]:
    """Names, shapes and dtypes a model expects: from a checkpoint, or a JSON file.

    The JSON is ``{"name": [shape...]}``, ``{"name": {"shape": [...], "dtype": "float32"}}``
    or the document ``ptfile inspect --json`` prints.
    """
    if isinstance(ref, (str, os.PathLike)) and os.fspath(ref).endswith(".json") and \
            not os.fspath(ref).endswith(INDEX_SUFFIX):
        with open(ref, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as exc:
                raise CorruptFileError(f"{os.fspath(ref)}: not valid JSON: {exc}") from None
        return _expected_from_json(data, os.fspath(ref))
    with open_handle(ref, records=records) as checkpoint:
        return {k: (checkpoint.info(k).shape, checkpoint.info(k).dtype) for k in checkpoint}


def _expected_from_json(data: Any, name: str) -> dict[str, tuple[tuple[int, ...], str | None]]:
    if not isinstance(data, dict):
        raise CorruptFileError(f"{name}: expected a JSON object of tensor names")
    if data.get("command") == "inspect":
        data = _inspect_rows(data, name)
    expected = {}
    for key, value in data.items():
        if isinstance(value, dict):
            shape, dtype = value.get("shape"), value.get("dtype")
        else:
            shape, dtype = value, None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise CorruptFileError(f"{name}: shape of {key!r} is not a list of sizes")
        expected[key] = (tuple(shape), dtype)
    return expected


def _inspect_rows(document: dict, name: str) -> dict[str, Any]:
    """``name -> {"shape", "dtype"}`` from the tensors of a ``ptfile inspect --json`` document."""
    rows = document.get("tensors")
    if not isinstance(rows, list) or not all(isinstance(row, dict) and isinstance(row.get("name"), str)
                                             for row in rows):
        raise CorruptFileError(f"{name}: an inspect document without a list of named tensors")
    return {row["name"]: {"shape": row.get("shape"), "dtype": row.get("dtype")} for row in rows}


def match(file: Any, ref: Any, *, records: bool = False, strip: Iterable[str] = (),
          key: str | None = None) -> MatchResult:
    """What ``model.load_state_dict(file, strict=True)`` would report, with prefix hints.

    ``key`` picks the nested state dict of ``file`` to compare (``state_dict``, ``model``);
    ``strip`` removes prefixes from ``file``'s names first (``module.``), as ``diff`` does.
    """
    expected = expected_from(ref, records=records)
    with open_handle(file, records=records) as checkpoint:
        inside = _under_key(checkpoint, key)
        names = _keyed(inside, tuple(strip))
        infos = {short: checkpoint.info(inside[name]) for short, name in names.items()}
    actual = {k: (info.shape, info.dtype) for k, info in infos.items()}
    result = MatchResult(
        missing=[k for k in expected if k not in actual],
        unexpected=[k for k in actual if k not in expected],
    )
    for key in expected:
        if key in actual:
            (shape_e, dtype_e), (shape_a, dtype_a) = expected[key], actual[key]
            if shape_e != shape_a:
                result.shape_mismatch.append({"name": key, "expected": list(shape_e), "found": list(shape_a)})
            if dtype_e is not None and dtype_e != dtype_a:
                result.dtype_mismatch.append({"name": key, "expected": dtype_e, "found": dtype_a})
    if result.missing and result.unexpected:
        result.suggestions = _prefix_suggestions(list(actual), list(expected))
    return result


def _prefix_suggestions(actual: list[str], expected: list[str]) -> list[str]:
    """Prefixes whose removal from, or addition to, the file's names makes more of them match."""
    expected_set = set(expected)
    baseline = sum(k in expected_set for k in actual)
    hints = []
    for prefix in _candidate_prefixes(actual):
        stripped = sum(strip_prefixes(k, [prefix]) in expected_set for k in actual)
        if stripped > baseline:
            hints.append(f"strip the prefix {prefix!r} from the file's names ({stripped} of {len(expected)} then match)")
    for prefix in _candidate_prefixes(expected):
        added = sum(prefix + k in expected_set for k in actual)
        if added > baseline:
            hints.append(f"add the prefix {prefix!r} to the file's names ({added} of {len(expected)} then match)")
    return hints


def _candidate_prefixes(names: list[str]) -> list[str]:
    found = {name.split(".", 1)[0] + "." for name in names if "." in name}
    return sorted(found | {p for p in COMMON_PREFIXES if any(n.startswith(p) for n in names)})
