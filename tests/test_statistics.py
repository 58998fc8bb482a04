"""``ptfile stats``: one chunked pass, checked against float64 numpy over the same values."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import ptfile
from ptfile.tools.statistics import STATS_CHUNK_ELEMENTS, checkpoint_stats, tensor_stats

#: More than two chunks, and not a multiple of the chunk size, so merging and the short last chunk are exercised.
ELEMENTS = 2 * STATS_CHUNK_ELEMENTS + 12_345

FLOATS = ["bfloat16", "float16", "float32", "float64", "float8_e4m3fn", "float8_e5m2"]
INTEGERS = ["int8", "uint8", "int16", "int32", "int64", "bool"]


def dtype(name: str) -> np.dtype:
    return np.dtype(getattr(ml_dtypes, name, None) or name)


def sample(name: str, specials: bool) -> np.ndarray:
    rng = np.random.default_rng(7)
    if name == "bool":
        return rng.integers(0, 2, ELEMENTS).astype(bool)
    if dtype(name).kind in "iu":
        info = np.iinfo(dtype(name))
        return rng.integers(max(info.min, -(10**15)), min(info.max, 10**15), ELEMENTS, endpoint=True).astype(name)
    values = (rng.standard_normal(ELEMENTS) * 3 + 0.5).astype(dtype(name))
    values[::1000] = 0
    if specials:
        values[[3, STATS_CHUNK_ELEMENTS + 1, ELEMENTS - 1]] = np.nan
        values[[5, 2 * STATS_CHUNK_ELEMENTS + 2]] = np.inf
        values[7] = -np.inf
    return values


def check(stats, values: np.ndarray) -> None:
    wide = values.astype(np.complex128 if values.dtype.kind == "c" else np.float64)
    if values.dtype.kind == "c":
        wide = np.abs(wide)
    finite = wide[np.isfinite(wide)]
    assert stats.count == values.size
    assert stats.nan == int(np.isnan(wide).sum())
    assert stats.inf == int(np.isinf(wide).sum())
    assert stats.zeros == int((wide == 0).sum())
    assert stats.min == finite.min() and stats.max == finite.max()  # exact: the working type holds every value
    assert stats.mean == pytest.approx(finite.mean(), rel=1e-12, abs=1e-12)
    assert stats.std == pytest.approx(finite.std(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("specials", [False, True])
def test_floats_match_float64_numpy(name, specials):
    values = sample(name, specials)
    check(tensor_stats("x", values), values)


@pytest.mark.parametrize("name", INTEGERS)
def test_integers_match_float64_numpy(name):
    values = sample(name, False)
    check(tensor_stats("x", values), values)


def test_wide_integers_are_not_rounded_to_float32():
    values = np.array([2**40 + 1, 2**40 + 3], dtype=np.int64)  # float32 would make them equal
    stats = tensor_stats("x", values)
    assert (stats.min, stats.max, stats.mean, stats.std) == (2**40 + 1, 2**40 + 3, 2**40 + 2, 1.0)


def test_complex_uses_magnitudes():
    values = (np.arange(ELEMENTS) + 1j * np.arange(ELEMENTS)[::-1]).astype(np.complex64)
    check(tensor_stats("x", values), values)


def test_non_contiguous_and_empty_and_all_nan():
    base = sample("bfloat16", True)[: ELEMENTS // 7 * 7].reshape(-1, 7)
    view = base[:, ::2].T  # neither C- nor F-contiguous
    check(tensor_stats("x", view), np.ascontiguousarray(view))
    empty = tensor_stats("x", np.zeros((0, 3), np.float32))
    assert (empty.count, empty.min, empty.mean, empty.nan) == (0, None, None, 0)
    nans = tensor_stats("x", np.full(10, np.nan, ml_dtypes.bfloat16))
    assert (nans.nan, nans.min, nans.std) == (10, None, None)


def test_large_offset_values_keep_float64_precision():
    values = (np.arange(3_000_000, dtype=np.float64) * 1e-3 + 1e6).astype(np.float32)
    check(tensor_stats("x", values), values)


def test_checkpoint_stats_reports_progress_in_elements(tmp_path):
    tensors = {"a": sample("bfloat16", True), "b": np.arange(10, dtype=np.float32).reshape(2, 5)}
    ptfile.save(tensors, tmp_path / "s.pt")
    calls = []
    rows = checkpoint_stats(tmp_path / "s.pt", progress=lambda done, total: calls.append((done, total)))
    total = ELEMENTS + 10
    assert [r.name for r in rows] == ["a", "b"]
    assert all(t == total for _, t in calls) and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) == 4  # one call per chunk
    check(rows[0], tensors["a"])
