"""The invariants the fuzz harnesses (``fuzz/``) check, one function per harness.

Each check takes the fuzzer's bytes and returns quietly when the invariant holds; a broken
invariant is an ``AssertionError`` or an exception other than :class:`ptfile.PtfileError`
escaping.  The harnesses call these under atheris; ``tests/test_fuzz_regressions.py``
replays every saved finding (``tests/fuzz_regressions/<harness>-*.bin``) through the same
function, so a finding stays a test after it is fixed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

import ptfile
from ptfile.formats.loader import Context, detached_storage
from ptfile.policy import allowlist
from ptfile.scanning.scanner import VERDICTS  # the scanner's own list: a new verdict is never a finding


def _read_everything(data: bytes, *, mmap: bool) -> None:
    with ptfile.open(data, mmap=mmap) as checkpoint:
        for key in checkpoint.keys():
            checkpoint.info(key)
            checkpoint[key]


def _accepted(call: Callable[[], Any]) -> bool:
    """True when ``call`` returns, False when it raises PtfileError; anything else escapes."""
    try:
        call()
    except ptfile.PtfileError:
        return False
    return True


def check_load(data: bytes) -> None:
    """``load`` of any bytes returns or raises PtfileError, the same way with and without mmap."""
    plain = _accepted(lambda: ptfile.load(data))
    copied = _accepted(lambda: ptfile.load(data, mmap=False))
    assert plain == copied, f"load accepted={plain} but load(mmap=False) accepted={copied}"
    _accepted(lambda: ptfile.load(data, records=True))


def check_open(data: bytes) -> None:
    """``open`` and reading every tensor returns or raises PtfileError, with and without mmap."""
    for mmap in (True, False):
        _accepted(lambda mmap=mmap: _read_everything(data, mmap=mmap))


def check_scan(data: bytes) -> None:
    """``scan`` of any bytes gives one of its verdicts: a file it cannot parse is ``invalid``, not an error."""
    verdict = ptfile.scan(data).verdict
    assert verdict in VERDICTS, verdict


def check_consistency(data: bytes) -> None:
    """``load`` succeeds iff ``scan`` says clean; with records iff nothing but unknown classes or calls is wrong."""
    result = ptfile.scan(data)
    verdict = result.verdict
    plain = _accepted(lambda: ptfile.load(data))
    assert plain == (verdict == "clean"), f"scan says {verdict} but load accepted={plain}"
    with_records = _accepted(lambda: ptfile.load(data, records=True))
    # an unknown call outranks a fault in the verdict, so the faults say whether records=True can read it
    readable = verdict in ("clean", "unknown-class") or (verdict == "unknown-call" and not result.faults)
    assert with_records == readable, f"scan says {verdict} but load(records=True) accepted={with_records}"


def check_engine(data: bytes) -> None:
    """The raw engine on pickles back to back from byte 0: values or PtfileError, and progress."""
    engine = allowlist.new_engine(data, "fuzz", [], Context(None, False), detached_storage)
    pos = 0
    while pos < len(data):
        try:
            _, after = engine.run(pos)
        except ptfile.PtfileError:
            return
        assert pos < after <= len(data), f"the engine went from byte {pos} to {after} of {len(data)}"
        pos = after


# -- save round trips ---------------------------------------------------------------------------

#: Types a fuzzed tree's arrays take (every dtype family ``save`` writes).
SAVE_DTYPES = ("float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "bool", "complex64",
               "complex128", "uint16", "uint32", "uint64", "bfloat16", "float8_e4m3fn", "float8_e5m2")
#: A fuzzed tree is at most this deep and each container this wide, so one input stays fast.
SAVE_MAX_DEPTH, SAVE_MAX_WIDTH, SAVE_MAX_DIM = 3, 4, 5


class ByteReader:
    """Decisions drawn from the fuzzer's bytes; zeros once they run out."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        value = self.data[self.pos] if self.pos < len(self.data) else 0
        self.pos += 1
        return value

    def pick(self, count: int) -> int:
        return self.byte() % count

    def take(self, size: int) -> bytes:
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk.ljust(size, b"\0")


def _dtype(name: str) -> np.dtype:
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def _array(reader: ByteReader, arrays: list[np.ndarray]) -> np.ndarray:
    """A fresh array from the bytes, or a view (slice, step, transpose, broadcast) of an earlier one."""
    if arrays and reader.pick(3) == 0:
        base = arrays[reader.pick(len(arrays))]
        if base.ndim and base.shape[0] > 1:
            view = base[reader.pick(base.shape[0]):: 1 + reader.pick(2)]
            return view.T if reader.pick(2) else view
        return np.broadcast_to(base, (1 + reader.pick(3), *base.shape))
    dtype = _dtype(SAVE_DTYPES[reader.pick(len(SAVE_DTYPES))])
    shape = tuple(reader.pick(SAVE_MAX_DIM) for _ in range(reader.pick(4)))
    count = int(np.prod(shape, dtype=np.int64))
    array = np.frombuffer(reader.take(count * dtype.itemsize), dtype=dtype).reshape(shape).copy()
    if dtype == np.bool_:  # torch keeps bools as bytes 0/1
        array = array.view(np.uint8).astype(bool)
    if reader.pick(4) == 0:
        array = array.view(ptfile.Parameter)
    arrays.append(array)
    return array


def _tree(reader: ByteReader, arrays: list[np.ndarray], depth: int) -> Any:
    kind = reader.pick(6 if depth < SAVE_MAX_DEPTH else 3)
    if kind == 0:
        return _array(reader, arrays)
    if kind == 1:
        return reader.byte() - 128
    if kind == 2:
        return reader.take(reader.pick(8)).decode("latin-1")
    items = [_tree(reader, arrays, depth + 1) for _ in range(1 + reader.pick(SAVE_MAX_WIDTH))]
    if kind == 3:
        return {f"k{i}": item for i, item in enumerate(items)}
    return list(items) if kind == 4 else tuple(items)


def _same(saved: Any, loaded: Any, path: str) -> None:
    if isinstance(saved, np.ndarray):
        assert isinstance(loaded, np.ndarray), f"{path}: {type(loaded).__name__} for an array"
        assert loaded.dtype == saved.dtype and loaded.shape == saved.shape, \
            f"{path}: {loaded.dtype}{loaded.shape} for {saved.dtype}{saved.shape}"
        assert isinstance(loaded, ptfile.Parameter) == isinstance(saved, ptfile.Parameter), f"{path}: parameter lost"
        assert np.ascontiguousarray(loaded).tobytes() == np.ascontiguousarray(saved).tobytes(), f"{path}: bytes differ"
    elif isinstance(saved, dict):
        assert isinstance(loaded, dict) and list(loaded) == list(saved), f"{path}: keys differ"
        for key in saved:
            _same(saved[key], loaded[key], f"{path}.{key}")
    elif isinstance(saved, (list, tuple)):
        assert type(loaded) is type(saved) and len(loaded) == len(saved), f"{path}: {type(loaded).__name__}"
        for index, (a, b) in enumerate(zip(saved, loaded, strict=True)):
            _same(a, b, f"{path}.{index}")
    else:
        assert loaded == saved and type(loaded) is type(saved), f"{path}: {loaded!r} for {saved!r}"


def check_save(data: bytes) -> None:
    """A tree drawn from the bytes saves, scans clean and loads back the same (both load modes)."""
    tree = _tree(ByteReader(data), [], 0)
    out = io.BytesIO()
    ptfile.save(tree, out)
    saved = out.getvalue()
    assert ptfile.scan(saved).verdict == "clean"
    for mmap in (True, False):
        _same(tree, ptfile.load(saved, mmap=mmap), "tree")


CHECKS: dict[str, Callable[[bytes], None]] = {
    "load": check_load, "open": check_open, "scan": check_scan, "consistency": check_consistency,
    "engine": check_engine, "save": check_save,
}
