"""Resource limits and memory safety: each finding of the limits review, refused quickly and in bounded memory.

The samples come from ``tests/corpus_limits.py`` (they are also part of the scanner corpus).  No
test asserts a time: each asserts the refusal, the limit it names and, where memory was the
problem, a tracemalloc bound.  ``benchmarks/hostile_limits.py`` measures times and peak RSS.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import pickle
import subprocess
import sys
import textwrap
import tracemalloc
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import ptfile
from builders import Call, G, Raw, emit, program
from corpus import os_system
from corpus_limits import (
    SEVEN_ZIP_DAMAGE,
    checkpoint,
    colliding_dict,
    colliding_frozenset,
    colliding_ints,
    colliding_set,
    corrupt_xz,
    damaged_seven_zips,
    gzip_bomb,
    numpy_with_flags,
    pickle_stream,
)
from ptfile.pickle.engine import MAX_EQUAL_HASHES


def _refused(data: bytes, error: type[Exception] = ptfile.PtfileError) -> ptfile.ScanResult:
    """``load`` refuses ``data`` with ``error`` and ``scan`` calls it invalid; the scan result."""
    with pytest.raises(error):
        ptfile.load(data)
    result = ptfile.scan(data)
    assert result.verdict == "invalid", (result.verdict, result.faults)
    return result


# -- 1. third-party archive readers raise anything on damaged bytes -----------------------------


def test_corrupt_xz_is_a_fault_not_a_traceback() -> None:
    data = corrupt_xz()
    with pytest.raises(lzma.LZMAError):  # what the standard library raises, and scan used to let through
        lzma.decompress(data)
    result = _refused(data)
    assert any("xz reader stopped: LZMAError" in fault for fault in result.faults)


@pytest.mark.parametrize("error", sorted(SEVEN_ZIP_DAMAGE))
def test_damaged_7z_is_a_fault_not_a_traceback(error: str) -> None:
    py7zr = pytest.importorskip("py7zr")
    data = damaged_seven_zips()[error]
    with pytest.raises(Exception) as raised, py7zr.SevenZipFile(io.BytesIO(data)) as archive:  # noqa: PT011
        archive.list()
        archive.extract(factory=py7zr.io.BytesIOFactory(1 << 20))
    assert type(raised.value).__name__ == error  # the sample still reproduces the finding
    result = _refused(data)
    assert any(f"7z reader stopped: {error}" in fault for fault in result.faults), result.faults


def test_the_scan_command_reports_damaged_archives_without_a_traceback(
        tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """The finding as reported: ``ptfile scan`` on these files printed a traceback (raised out of the command)."""
    files = {"corrupt.xz": corrupt_xz(), **{f"damaged-{error}.7z": data for error, data in damaged_seven_zips().items()}}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("scan", "--json", *sorted(files))
    assert "Traceback" not in err, err
    assert code == 2  # a file could not be scanned; nothing dangerous
    verdicts = {Path(entry["path"]).name: entry["verdict"] for entry in json.loads(out)["files"]}
    assert verdicts == dict.fromkeys(files, "invalid")


def test_any_exception_of_an_archive_reader_ends_as_a_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a list of known types: whatever a reader raises, even one never seen, is a fault."""
    class Surprise(Exception):
        pass

    def explode(*args: object, **kwargs: object) -> None:
        raise Surprise("from deep inside the reader")

    monkeypatch.setattr(gzip, "GzipFile", explode)
    result = ptfile.scan(gzip.compress(checkpoint(), mtime=0))
    assert result.verdict == "invalid"
    assert any("gzip reader stopped: Surprise: from deep inside the reader" in f for f in result.faults)


# -- 2. decompression bombs: streamed, one copy, lower caps -------------------------------------


def test_gzip_bomb_stops_at_the_member_limit_in_bounded_memory() -> None:
    data = gzip_bomb()
    assert len(data) < 600_000
    tracemalloc.start()
    try:
        result = ptfile.scan(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.verdict == "invalid"
    assert any("max_member_bytes" in fault and "not examined" in fault for fault in result.faults), result.faults
    # one growing buffer up to the limit (BytesIO over-allocates by an eighth) and a piece or two;
    # it used to be the limit read at once, copied, then sliced again
    assert peak < ptfile.Limits().max_member_bytes * 5 // 4, peak


def test_member_just_under_the_limit_is_read_with_one_copy() -> None:
    """A member that fits is scanned, and the pickle in it is not copied again by the stream scan."""
    size = ptfile.Limits().max_member_bytes - 64
    data = gzip_bomb(size - 14)  # PROTO(2) + BINBYTES8(9) + STOP(1) around the zeros, minus slack
    tracemalloc.start()
    try:
        result = ptfile.scan(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.verdict == "invalid"  # a gzip file load does not read: never clean
    assert not any("not examined" in fault for fault in result.faults), result.faults
    assert any("clean (pickle)" in note for note in result.notes), result.notes
    # the member once, and the BINBYTES8 value the engine slices out of it once
    assert peak < ptfile.Limits().max_member_bytes * 9 // 4, peak


def test_members_together_stop_at_the_archive_limit() -> None:
    """Each member under max_member_bytes, together over max_archive_bytes (both lowered to keep the test small)."""
    import tarfile

    limits = ptfile.Limits(max_member_bytes=2 << 20, max_archive_bytes=5 << 19)
    piece = pickle.dumps(bytes(1 << 20), 4)  # 1 MiB each: the first two fit in 2.5 MiB, the third does not
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for i in range(3):
            info = tarfile.TarInfo(f"part{i}.pkl")
            info.size = len(piece)
            archive.addfile(info, io.BytesIO(piece))
    result = ptfile.scan(out.getvalue(), limits=limits)
    assert result.verdict == "invalid"
    assert sum("clean (pickle)" in note for note in result.notes) == 2, result.notes
    assert any("part2.pkl" in fault and "max_archive_bytes" in fault for fault in result.faults), result.faults
    raised = ptfile.scan(out.getvalue(), limits=limits._replace(max_archive_bytes=4 << 20))
    assert sum("clean (pickle)" in note for note in raised.notes) == 3, raised.notes


# -- 3. hash collisions ---------------------------------------------------------------------------


@pytest.mark.parametrize("build", [colliding_dict, colliding_frozenset, colliding_set], ids=lambda f: f.__name__)
def test_colliding_keys_are_refused(build) -> None:
    data = build()
    assert len(data) < 1 << 20
    with pytest.raises(ptfile.LimitExceededError, match="MAX_EQUAL_HASHES"):
        ptfile.load(data)
    result = ptfile.scan(data)
    assert result.verdict == "invalid"
    assert any("MAX_EQUAL_HASHES" in fault for fault in result.faults)


@pytest.mark.parametrize("build", [colliding_dict, colliding_frozenset, colliding_set], ids=lambda f: f.__name__)
def test_colliding_keys_up_to_the_limit_load_as_pickle_does(build) -> None:
    data = build(MAX_EQUAL_HASHES)
    assert ptfile.load(data) == pickle.loads(data)
    assert ptfile.scan(data).verdict == "clean"
    with pytest.raises(ptfile.LimitExceededError):
        ptfile.load(build(MAX_EQUAL_HASHES + 1))


def test_a_key_repeated_is_not_a_collision() -> None:
    """The same key set again replaces its value (CPython finds it at once): not counted twice."""
    data = program(Call(G("builtins", "set"), ([7] * (10 * MAX_EQUAL_HASHES),)), 2)
    assert ptfile.load(data) == pickle.loads(data) == {7}
    pairs = [(7, i) for i in range(10 * MAX_EQUAL_HASHES)]
    data = program(Call(G("collections", "OrderedDict"), (pairs,)), 2)
    assert ptfile.load(data) == OrderedDict([(7, 10 * MAX_EQUAL_HASHES - 1)])


@pytest.mark.parametrize("keys", ["ints", "tuples"])
@pytest.mark.parametrize("container", ["set", "OrderedDict"])
def test_collisions_through_constructors_are_refused(keys: str, container: str) -> None:
    """builtins.set and OrderedDict build their containers from a list at once: counted there too."""
    ints = colliding_ints(MAX_EQUAL_HASHES + 1)
    values = ints if keys == "ints" else [(k,) for k in ints]
    assert len({hash(v) for v in values}) == 1
    tree = (Call(G("builtins", "set"), (values,)) if container == "set"
            else Call(G("collections", "OrderedDict"), ([(v, 0) for v in values],)))
    with pytest.raises(ptfile.LimitExceededError, match="MAX_EQUAL_HASHES"):
        ptfile.load(program(tree, 2))


def test_str_keys_are_not_counted() -> None:
    """str hashes are randomized per process: no attacker can aim them, and the hot path stays one type test."""
    keys = {f"layer{i}.weight": i for i in range(5 * MAX_EQUAL_HASHES)}
    assert ptfile.load(pickle.dumps(keys, 2)) == keys


# -- 4. back-to-back pickles -------------------------------------------------------------------------


def test_many_tiny_pickles_stop_at_the_limit() -> None:
    result = _refused(pickle_stream())
    assert any("max_stream_pickles" in fault for fault in result.faults), result.faults


def test_a_payload_past_the_pickle_limit_is_never_clean(tmp_path: Path) -> None:
    benign = pickle.dumps(None, 2) * ptfile.Limits().max_stream_pickles
    result = ptfile.scan(benign + program(os_system(tmp_path / "ran"), 2))
    assert result.verdict == "invalid"  # not examined, so not dangerous either, but never clean
    assert any("max_stream_pickles" in fault for fault in result.faults)
    within = ptfile.scan(pickle.dumps(None, 2) * (ptfile.Limits().max_stream_pickles - 1) + program(os_system(tmp_path / "ran"), 2))
    assert within.verdict == "dangerous"


# -- 5. numpy dtype states -----------------------------------------------------------------------------

#: Every numpy dtype ptfile reads, and ones it refuses (structured, void, object): pickled by numpy itself.
READ_DTYPES = ["i1", "<i2", ">i4", "<i8", ">i8", "u1", ">u2", "<u4", "u8", "?", "<f2", ">f4", "f8", "g", "c8", ">c16", "G",
               "S0", "S5", "<U1", ">U3", "<M8[ns]", ">m8[25s]", "M8", "M8[D]", "m8[3h]", ("U3", (2,))]
REFUSED_DTYPES = ["V8", "O", [("a", "<i4")], [("a", "<i4"), ("b", "O")], np.dtype("i4,f8", align=True), [("a", "U2", (2,))]]


def _array(spec) -> np.ndarray:
    dtype = np.dtype(spec)
    if dtype.kind in "OV":
        return np.zeros(3, dtype)
    return np.arange(3).astype(dtype)


@pytest.mark.parametrize("protocol", [2, 4])  # protocol 5 pickles arrays through _frombuffer, which ptfile refuses
@pytest.mark.parametrize("spec", READ_DTYPES, ids=str)
def test_numpy_pickles_of_every_dtype_still_load(spec, protocol: int) -> None:
    array = _array(spec)
    data = pickle.dumps(array, protocol)
    loaded = ptfile.load(data)
    expected = pickle.loads(data)
    assert loaded.dtype.newbyteorder("=") == expected.dtype.newbyteorder("=")
    assert loaded.shape == expected.shape and np.array_equal(loaded, expected)
    assert not loaded.dtype.hasobject
    if expected.dtype.kind not in "SU":  # numpy pickles str and bytes items as Python str and bytes
        scalar = pickle.dumps(expected.reshape(-1)[1], protocol)
        assert ptfile.load(scalar) == pickle.loads(scalar)


@pytest.mark.parametrize("spec", REFUSED_DTYPES, ids=str)
def test_numpy_structured_void_and_object_dtypes_are_refused(spec) -> None:
    _refused(pickle.dumps(_array(spec), 2))


@pytest.mark.parametrize("flags", [1 << bit for bit in range(8)] + [0x3F, 0xFF])
def test_forged_dtype_flags_are_refused(flags: int) -> None:
    result = _refused(numpy_with_flags(flags), ptfile.CorruptFileError)
    assert any(f"flags {flags} (numpy writes 0)" in fault for fault in result.faults), result.faults


@pytest.mark.parametrize("field, value", [(5, 6), (5, 8), (6, 16), (7, 0), (1, "|"), (1, "=")])
def test_str_dtype_states_numpy_would_not_write_are_refused(field: int, value: object) -> None:
    """numpy's __setstate__ takes a U element of 6 bytes or an alignment of 16; ptfile takes only numpy's own."""
    state = list(np.dtype("<U1").__reduce__()[2])
    state[field] = value
    data = _dtype_with_state(Call(G("numpy", "dtype"), ("U1", False, True)), tuple(state))
    with pytest.raises(ptfile.CorruptFileError, match="not the one numpy writes|out of range|differs"):
        ptfile.load(data)


def _dtype_with_state(call: Call, state: tuple) -> bytes:
    return program(Raw(emit(call, 2) + emit(state, 2) + pickle.BUILD), 2)


def test_forged_flags_really_make_numpy_read_pointers(tmp_path: Path) -> None:
    """The hole is real: numpy's own unpickling of the forged sample yields an 'object' int64 array."""
    path = tmp_path / "forged.pkl"
    path.write_bytes(numpy_with_flags(0x01))
    script = textwrap.dedent(
        """
        import os, pickle, sys
        array = pickle.loads(open(sys.argv[1], "rb").read())
        print(array.dtype, array.dtype.hasobject, flush=True)
        os._exit(0)  # never let numpy release the "objects" those integers point at
        """
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["int64", "True"], (done.stdout, done.stderr)
