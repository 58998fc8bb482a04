"""Per-tensor statistics, streamed in chunks so files larger than memory work over mmap.

Sums are accumulated in float64 (complex tensors: their magnitudes), so the mean and
standard deviation of a bfloat16 or float8 tensor are as exact as float64 allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .compare import chunks
from .opener import open_handle

__all__ = ["TensorStats", "tensor_stats", "checkpoint_stats"]


@dataclass
class TensorStats:
    name: str
    dtype: str
    count: int
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    nan: int
    inf: int
    zeros: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tensor_stats(name: str, array: np.ndarray) -> TensorStats:
    """min, max, mean, population std over the finite values; counts of NaN, infinities and zeros."""
    finite = 0
    mean = 0.0
    m2 = 0.0  # sum of squared deviations, merged chunk by chunk (Chan et al.), stable for large counts
    nan = inf = zeros = 0
    low, high = math.inf, -math.inf
    for chunk in chunks(array):
        values = _as_float(chunk)
        is_nan = np.isnan(values)
        is_inf = np.isinf(values)
        nan += int(is_nan.sum())
        inf += int(is_inf.sum())
        zeros += int(np.count_nonzero(values == 0))
        good = values[~(is_nan | is_inf)]
        if not good.size:
            continue
        chunk_mean = float(good.mean())
        chunk_m2 = float(np.square(good - chunk_mean).sum())
        merged = finite + good.size
        delta = chunk_mean - mean
        mean += delta * good.size / merged
        m2 += chunk_m2 + delta * delta * finite * good.size / merged
        finite = merged
        low, high = min(low, float(good.min())), max(high, float(good.max()))
    if not finite:
        return TensorStats(name, array.dtype.name, int(array.size), None, None, None, None, nan, inf, zeros)
    return TensorStats(name, array.dtype.name, int(array.size), low, high, mean, math.sqrt(m2 / finite), nan, inf, zeros)


def _as_float(chunk: np.ndarray) -> np.ndarray:
    if chunk.dtype.kind == "c" or chunk.dtype.name == "complex32":
        return np.abs(chunk.astype(np.complex128))  # magnitudes of complex values
    return chunk.astype(np.float64)


def checkpoint_stats(src: Any, *, records: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> list[TensorStats]:
    """Statistics of every tensor of a checkpoint, read one tensor at a time over mmap."""
    with open_handle(src, records=records) as checkpoint:
        keys = checkpoint.keys()
        result = []
        for index, key in enumerate(keys, 1):
            result.append(tensor_stats(key, checkpoint[key]))
            if progress is not None:
                progress(index, len(keys))
        return result
