"""Basic slices of a tensor read by byte range: what ``get_slice(key)[...]`` moves.

Over a mapped file a tensor is a view, and indexing the view touches only the pages of
its elements.  Over a source read by request (a URL, a file opened with ``mmap=False``)
the format tells where the tensor's elements lie (a :class:`Placement`) and this module
reads only the byte ranges a basic slice (ints, slices with any step, ``...``,
``None``) needs:

* numpy works out the slice: the index is applied to a strided array over no memory,
  whose start and strides are the slice's own (numpy raises its usual ``IndexError``);
* the slice's elements form runs of contiguous bytes (its innermost axes that are
  contiguous in the file); runs closer than :data:`COALESCE_GAP` bytes are read as one
  range, since a request costs more than reading that many bytes more; the ranges go to
  the source as one batch (``fs.cat_ranges`` for a URL: concurrent where fsspec can);
* when the slice's bounding byte range is at most :data:`SPAN_FACTOR` times its own
  bytes (or at most :data:`SMALL_SPAN` bytes), or when more than :data:`MAX_SLICE_READS`
  ranges would be needed, the bounding range is read in one request instead: never more
  than the tensor's own bytes, the most a slice read before.

Slicing one row of a 1000-row tensor moves one row, in one request.  A column of a tensor
whose rows are at most :data:`COALESCE_GAP` bytes long moves the rows it crosses in one
request; of longer rows, one element per row in one batch of requests.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from ..errors import CorruptFileError, LimitExceededError
from .source import Source

__all__ = ["Placement", "read_slice", "is_basic_index"]

#: Runs of a slice closer than this many bytes are read as one range.
COALESCE_GAP = 16 << 10
#: A slice whose bounding range is at most this many times its bytes is read as that one range.
SPAN_FACTOR = 4
#: A bounding range of at most this many bytes is always read as one range.
SMALL_SPAN = 64 << 10
#: More ranges than this and the bounding range is read instead (requests are not free).
MAX_SLICE_READS = 4096
#: Planning keeps one offset per run: above this many runs the bounding range is read instead.
MAX_SLICE_RUNS = 1 << 20


class Placement:
    """Where a tensor's elements lie in a source, for reading a slice of it by range.

    A plain class, not a dataclass: building a dataclass costs about a millisecond at import.
    """

    __slots__ = ("source", "start", "nbytes", "dtype", "shape", "strides", "offset")

    def __init__(self, source: Source, start: int, nbytes: int, dtype: np.dtype, shape: tuple[int, ...],
                 strides: tuple[int, ...], offset: int) -> None:
        self.source = source
        self.start = start  # source offset of the storage's first byte
        self.nbytes = nbytes  # bytes of the storage
        self.dtype = dtype  # the elements as the format's reader gives them
        self.shape = shape
        self.strides = strides  # in elements, none negative
        self.offset = offset  # in elements, from the start of the storage

    def __repr__(self) -> str:
        return (f"Placement(start={self.start}, nbytes={self.nbytes}, dtype={self.dtype}, shape={self.shape}, "
                f"strides={self.strides}, offset={self.offset})")


def is_basic_index(index: Any) -> bool:
    """Whether numpy's basic indexing applies: ints, slices, ``...`` and ``None`` only (no arrays, no bools)."""
    for part in index if isinstance(index, tuple) else (index,):
        if part is None or part is Ellipsis or isinstance(part, slice):
            continue
        if isinstance(part, (bool, np.bool_, np.ndarray)):  # numpy reads 0-d arrays as indexes into memory
            return False
        try:
            operator.index(part)
        except TypeError:
            return False
    return True


def read_slice(place: Placement, index: Any, what: str) -> np.ndarray:
    """``tensor[index]`` for a basic ``index``, reading only the byte ranges the slice covers."""
    _check_inside(place, what)
    itemsize = place.dtype.itemsize
    start, shape, strides = _slice_layout(place, index)
    if 0 in shape:
        return np.empty(shape, place.dtype)
    start += place.offset * itemsize
    flipped = [axis for axis, step in enumerate(strides) if step < 0]
    for axis in flipped:  # read in file order; the axis is reversed again at the end
        start += (shape[axis] - 1) * strides[axis]
    strides = tuple(abs(step) for step in strides)
    # The axes that spread the elements, outermost in the file first; the others repeat them.
    kept = sorted((axis for axis, size in enumerate(shape) if size > 1 and strides[axis]),
                  key=lambda axis: -strides[axis])
    packed = _read_packed(place, start, tuple(shape[a] for a in kept), tuple(strides[a] for a in kept), what)
    packed_strides = dict(zip(kept, packed.strides, strict=True))
    view = np.lib.stride_tricks.as_strided(packed, shape, [packed_strides.get(a, 0) for a in range(len(shape))])
    if flipped:
        view = view[tuple(slice(None, None, -1) if axis in flipped else slice(None) for axis in range(len(shape)))]
    return np.array(view)  # owned and contiguous, as safetensors' slices are


def _check_inside(place: Placement, what: str) -> None:
    """Every element of the tensor inside its storage, and the storage inside the source."""
    place.source.check(place.start, place.nbytes, what)
    if 0 in place.shape:
        return
    last = place.offset + sum((size - 1) * step for size, step in zip(place.shape, place.strides, strict=True))
    if place.offset < 0 or min(place.strides, default=0) < 0 or (last + 1) * place.dtype.itemsize > place.nbytes:
        raise CorruptFileError(f"{what}: the tensor's elements reach past its {place.nbytes}-byte storage")


def _slice_layout(place: Placement, index: Any) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """``(byte offset of the first element, shape, byte strides)`` of ``tensor[index]``, nothing read.

    numpy applies the index to a strided array over one element of memory, which is never
    read: basic indexing only moves the start and changes the strides.
    """
    parts = index if isinstance(index, tuple) else (index,)
    if not any(part is Ellipsis for part in parts):
        parts = (*parts, Ellipsis)  # so that all-int indexes give a 0-d view, not a scalar read from memory
    itemsize = place.dtype.itemsize
    base = np.zeros(itemsize, np.uint8).view(f"V{itemsize}")
    try:
        ghost = np.lib.stride_tricks.as_strided(base, place.shape, [s * itemsize for s in place.strides])
    except ValueError as exc:  # numpy's own limits, should a shape pass the format's
        raise LimitExceededError(f"a tensor of size {place.shape} cannot be sliced as a numpy array: {exc}") from None
    view = ghost[parts]
    start = view.__array_interface__["data"][0] - ghost.__array_interface__["data"][0]
    return start, view.shape, view.strides


def _read_packed(place: Placement, start: int, shape: tuple[int, ...], strides: tuple[int, ...],
                 what: str) -> np.ndarray:
    """The elements at ``start`` with positive ``strides`` (outermost first), packed in C order."""
    itemsize = place.dtype.itemsize
    inner = len(shape)  # axes from here on are contiguous in the file: one run each
    run = itemsize
    while inner and strides[inner - 1] == run:
        inner -= 1
        run *= shape[inner]
    needed = math.prod(shape) * itemsize
    span = sum((size - 1) * step for size, step in zip(shape, strides, strict=True)) + itemsize
    runs = needed // run
    if span <= max(SPAN_FACTOR * needed, SMALL_SPAN) or runs > MAX_SLICE_RUNS:
        return _bounding(place, start, span, shape, strides, what)
    offsets = np.zeros(1, np.int64)
    for size, step in zip(shape[:inner], strides[:inner], strict=True):
        offsets = (offsets[:, None] + np.arange(size, dtype=np.int64) * step).reshape(-1)
    firsts, lasts = _coalesced(offsets, run)
    if len(firsts) > MAX_SLICE_READS:
        return _bounding(place, start, span, shape, strides, what)
    pieces = place.source.read_ranges([(place.start + start + int(a), int(b - a)) for a, b in zip(firsts, lasts, strict=True)],
                                      what)
    joined = np.frombuffer(b"".join(pieces), np.uint8)
    # where each run starts in the joined ranges: its range's place there, plus its distance into the range
    group = np.searchsorted(firsts, offsets, side="right") - 1
    placed = np.concatenate(([0], np.cumsum(lasts - firsts)[:-1]))[group] + (offsets - firsts[group])
    out = np.empty((runs, run), np.uint8)
    for begin in range(0, runs, max(1, (1 << 20) // run)):  # gather a few MB of indexes at a time
        end = min(runs, begin + max(1, (1 << 20) // run))
        out[begin:end] = joined[placed[begin:end, None] + np.arange(run)]
    return out.view(place.dtype).reshape(shape)


def _coalesced(offsets: np.ndarray, run: int) -> tuple[np.ndarray, np.ndarray]:
    """The byte ranges ``[first, last)`` covering runs of ``run`` bytes at ``offsets``, gaps up to COALESCE_GAP merged."""
    ordered = np.sort(offsets)
    ends = np.maximum.accumulate(ordered + run)
    breaks = np.flatnonzero(ordered[1:] > ends[:-1] + COALESCE_GAP) + 1
    firsts = ordered[np.concatenate(([0], breaks))]
    lasts = ends[np.concatenate((breaks - 1, [len(ordered) - 1]))]
    return firsts, lasts


def _bounding(place: Placement, start: int, span: int, shape: tuple[int, ...], strides: tuple[int, ...],
              what: str) -> np.ndarray:
    """The elements read as their one bounding range."""
    data = np.frombuffer(place.source.read(place.start + start, span, what), np.uint8)
    return np.ndarray(shape, place.dtype, buffer=data, strides=strides).copy()
