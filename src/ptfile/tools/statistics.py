"""Per-tensor statistics in one streamed pass, so files larger than memory work over mmap.

Each tensor is read ``STATS_CHUNK_ELEMENTS`` at a time into one reused buffer: small
floating-point types (bfloat16, float16, float8, float32) and small integers are widened
to float32, which holds them exactly; wider types to float64; complex tensors to their
magnitudes.  A chunk that fits in the CPU cache is read from memory once and then
reduced from cache, which is why the pass is faster than numpy's own min, max, mean and
std over a float32 copy.  Sums are accumulated in float64 and chunks merged with Chan's
formula, so the mean and standard deviation are as exact as float64 allows.
(The float64 deviations cost one extra pass over cached data: still within the time of numpy's
float32 reductions, see ``benchmarks/command_speed.py``.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..formats.opener import open_handle
from .compare import chunks

__all__ = ["TensorStats", "tensor_stats", "checkpoint_stats", "STATS_CHUNK_ELEMENTS"]

#: Elements reduced at a time: 1 MiB of float32, small enough to stay in a core's cache between reductions.
STATS_CHUNK_ELEMENTS = 1 << 18


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


@dataclass
class _Running:
    """Statistics of the finite values seen so far, merged chunk by chunk (Chan et al.)."""

    finite: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    low: float = math.inf
    high: float = -math.inf
    nan: int = 0
    inf: int = 0
    zeros: int = 0

    def add(self, values: np.ndarray, scratch: np.ndarray) -> None:
        """Merge a chunk of finite values; ``scratch`` is a float64 buffer of their size."""
        count = values.size
        if not count:
            return
        self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
        chunk_mean = float(np.add.reduce(values, dtype=np.float64)) / count
        # deviations and their squares in float64: in float32 a value met many times (a bfloat16 or
        # float8 tensor has few distinct values) would repeat one rounding error and bias the result
        np.subtract(values, chunk_mean, out=scratch, dtype=np.float64)
        chunk_m2 = float(np.add.reduce(np.square(scratch, out=scratch)))
        merged = self.finite + count
        delta = chunk_mean - self.mean
        self.mean += delta * count / merged
        self.m2 += chunk_m2 + delta * delta * self.finite * count / merged
        self.finite = merged


def tensor_stats(name: str, array: np.ndarray, progress: Callable[[int], None] | None = None) -> TensorStats:
    """min, max, mean, population std over the finite values; counts of NaN, infinities and zeros.

    ``progress(elements)`` is called after each chunk with the number of elements it held.
    """
    running = _Running()
    work = _working_type(array.dtype)
    size = min(STATS_CHUNK_ELEMENTS, int(array.size))
    buffer: np.ndarray = np.empty(size, work)
    scratch = np.empty(size, np.float64)
    for chunk in chunks(array, STATS_CHUNK_ELEMENTS):
        values = _widen(chunk, buffer[: chunk.size])
        running.zeros += chunk.size - int(np.count_nonzero(values))
        low, high = values.min(initial=np.inf), values.max(initial=-np.inf)
        if np.isfinite(low) and np.isfinite(high):
            running.add(values, scratch[: values.size])
        else:  # the rare chunk holding NaN or infinities: count them, reduce the rest
            is_nan, is_inf = np.isnan(values), np.isinf(values)
            running.nan += int(np.count_nonzero(is_nan))
            running.inf += int(np.count_nonzero(is_inf))
            good = values[~(is_nan | is_inf)]
            running.add(good, scratch[: good.size])
        if progress is not None:
            progress(chunk.size)
    if not running.finite:
        return TensorStats(name, array.dtype.name, int(array.size), None, None, None, None,
                           running.nan, running.inf, running.zeros)
    return TensorStats(name, array.dtype.name, int(array.size), running.low, running.high, running.mean,
                       math.sqrt(running.m2 / running.finite), running.nan, running.inf, running.zeros)


def _is_complex(dtype: np.dtype) -> bool:
    return dtype.kind == "c" or dtype.name == "complex32"


def _working_type(dtype: np.dtype) -> type:
    """float32 where it holds every value exactly (floats of at most 32 bits, integers of at most 16), else float64."""
    if _is_complex(dtype):
        return np.float64
    if dtype.kind in "iub" and dtype.itemsize <= 2 or dtype.kind not in "iub" and dtype.itemsize <= 4:
        return np.float32
    return np.float64


def _widen(chunk: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The chunk as numbers in ``out`` (complex: their magnitudes)."""
    if _is_complex(chunk.dtype):
        np.abs(chunk.astype(np.complex128), out=out)
    else:
        np.copyto(out, chunk, casting="unsafe")
    return out


def checkpoint_stats(src: Any, *, records: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> list[TensorStats]:
    """Statistics of every tensor of a checkpoint, read one chunk at a time over mmap.

    ``progress(elements done, elements in all tensors)`` is called as chunks are reduced.
    """
    with open_handle(src, records=records) as checkpoint:
        keys = checkpoint.keys()
        total = sum(math.prod(checkpoint.info(key).shape) for key in keys)
        done = 0

        def advance(elements: int) -> None:
            nonlocal done
            done += elements
            if progress is not None:
                progress(done, total)

        return [tensor_stats(key, checkpoint[key], advance) for key in keys]


