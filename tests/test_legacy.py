"""The legacy stream and the ancient tar format: torch's values bit for bit, and hostile files refused.

Fixtures in ``fixtures/legacy`` were written by torch 2.13 (or, for formats torch no
longer writes, built from bytes) by ``make_legacy.py``, which also recorded what
``torch.load(weights_only=False)`` read from them in ``expected.json``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import mmap
import pickle
import struct
import sys
import tracemalloc
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ptfile
from ptfile.constants import Verdict
from ptfile.errors import CorruptFileError, LimitExceededError, PtfileError, UnsafeGlobalError
from ptfile.formats import legacy
from ptfile.io import source
from ptfile.io.source import MappedSource

FIXTURES = Path(__file__).parent / "fixtures" / "legacy"


def _import(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, FIXTURES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


make_legacy = _import("make_legacy")  # imports torch only when it writes fixtures
lb = make_legacy.lb
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
PATHS = {name: FIXTURES / ("ancient.tar.pt" if name == "ancient_tar" else f"{name}.pt") for name in EXPECTED}
PATHS["module"] = FIXTURES / "module.pt"


# -- describing what ptfile read, as make_legacy describes what torch read ----------


def _root(arr: np.ndarray) -> Any:
    """The object at the end of an array's base chain: an mmap, bytes, or the owning array."""
    node: Any = arr
    while isinstance(node, np.ndarray) and node.base is not None:
        node = node.base
    return node.obj if isinstance(node, memoryview) else node


def describe_ptfile(path: Any, *, mmap: bool) -> dict:
    tree = ptfile.load(path, mmap=mmap)
    tensors, values = {}, {}
    for key, leaf in make_legacy.leaves(tree):
        if isinstance(leaf, np.ndarray):
            tensors[key] = {
                "dtype": leaf.dtype.name,
                "shape": list(leaf.shape),
                "stride": [s // leaf.itemsize for s in leaf.strides],
                "sha256": hashlib.sha256(np.ascontiguousarray(leaf).tobytes()).hexdigest(),
                "parameter": isinstance(leaf, ptfile.Parameter),
                "requires_grad": bool(getattr(leaf, "requires_grad", False)),
            }
        elif key.endswith("_metadata"):
            values[key] = {k: dict(v) for k, v in leaf.items()}
        else:
            values[key] = make_legacy.json_value(leaf)
    ranges = {}
    with ptfile.open(path, mmap=mmap) as ckpt:
        assert sorted(ckpt.keys()) == sorted(tensors)
        for key in ckpt:
            spec = ckpt.spec(key)
            tensors[key]["offset"] = ckpt.info(key).offset
            buffer = ckpt.buffer(spec.storage, spec.dtype.itemsize)
            start = buffer.__array_interface__["data"][0]
            ranges[key] = (start, start + len(buffer))
    for key, first in make_legacy.sharing_groups(ranges).items():
        tensors[key]["shares_with"] = first
    return {"tensors": tensors, "values": values}


# -- reading what torch wrote ----------------------------------------------------------


@pytest.mark.parametrize("mmap_file", [True, False], ids=["mmap", "copy"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_matches_torch(name: str, mmap_file: bool) -> None:
    assert describe_ptfile(PATHS[name], mmap=mmap_file) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_from_bytes_and_file_objects(name: str) -> None:
    data = PATHS[name].read_bytes()
    expected = describe_ptfile(PATHS[name], mmap=True)
    assert describe_ptfile(data, mmap=True) == expected
    assert describe_ptfile(io.BytesIO(data), mmap=False) == expected


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_format(name: str) -> None:
    with ptfile.open(PATHS[name]) as ckpt:
        assert ckpt.format == ("tar" if name == "ancient_tar" else "legacy")
        assert ckpt.container.byteorder == "little"


def test_expected_covers_what_the_brief_asks() -> None:
    dtypes = {t["dtype"] for t in EXPECTED["every_dtype"]["tensors"].values()}
    assert dtypes == set(make_legacy.LEGACY_DTYPES)
    views = EXPECTED["views"]["tensors"]
    assert views["column"]["stride"] == [6] and views["tail"]["offset"] == 19 and views["expanded"]["stride"] == [0]
    groups = {t["shares_with"] for t in views.values()}
    assert groups == {"base", "expanded", "scalar", "empty", "other"}  # other_stepped shares "other"
    params = EXPECTED["parameters"]["tensors"]
    assert params["weight"]["parameter"] and params["weight"]["requires_grad"]
    assert params["frozen"]["parameter"] and not params["frozen"]["requires_grad"]
    assert "optimizer.state.0.exp_avg" in EXPECTED["training"]["tensors"]
    assert EXPECTED["training"]["values"]["model._metadata"][""] == {"version": 1}


def test_mmap_tensors_are_views_of_the_mapped_file() -> None:
    tree = ptfile.load(PATHS["views"], mmap=True)
    for key in ("base", "row", "column", "tail", "other"):
        assert isinstance(_root(tree[key]), mmap.mmap), key
        assert not tree[key].flags.writeable
    assert np.shares_memory(tree["base"], tree["row"])


def test_copies_own_one_buffer_per_storage() -> None:
    tree = ptfile.load(PATHS["views"], mmap=False)
    roots = {key: id(_root(tree[key])) for key in ("base", "same", "row", "column", "transposed", "block", "tail")}
    assert len(set(roots.values())) == 1
    # load(mmap=False) reads the file into one buffer; storages are disjoint parts of it
    assert not np.shares_memory(tree["other"], tree["base"])
    assert tree["base"].flags.writeable
    tree["base"][1, 2] = -100.0
    assert tree["row"][2] == -100.0 and tree["column"][1] == -100.0 and tree["transposed"][2, 1] == -100.0
    assert tree["block"][0, 0] == -100.0


@pytest.mark.parametrize("fmt", ["legacy", "tar"])
def test_memory_is_one_copy_or_none(tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    numel = 4 << 20  # float32 elements: 16 MiB
    nbytes = 4 * numel
    if fmt == "legacy":
        pid = lb.storage_pid("FloatStorage", "1", numel)
        obj = {"x": lb.rebuild_v2(pid, 0, (numel,), (1,)), "y": lb.rebuild_v2(pid, 4, (8,), (1,))}
        data = lb.legacy_stream(obj, {"1": (numel, bytes(nbytes))})
    else:
        data = lb.tar_archive(lb.tar_members({"x": lb.Pid("1"), "y": lb.Pid("2")},
                                             [(5, "FloatStorage", numel, bytes(nbytes))],
                                             [(1, 5, "FloatTensor", (numel,), (1,), 0), (2, 5, "FloatTensor", (8,), (1,), 4)]))
    path = tmp_path / "big.pt"
    path.write_bytes(data)
    del data
    slack = 3 << 20  # pickles, walk windows, arrays' own objects
    # A whole-file read may land in an anonymous map (huge pages) that tracemalloc does not see:
    # count each such buffer by its size.
    mapped: list[int] = []
    whole_file_buffer = source.whole_file_buffer

    def counted(size: int) -> np.ndarray:
        buffer = whole_file_buffer(size)
        if not isinstance(buffer.base, np.ndarray) and buffer.base is not None:
            mapped.append(buffer.nbytes)
        return buffer

    monkeypatch.setattr(source, "whole_file_buffer", counted)
    for mmap_file, low, high in ((False, nbytes, nbytes + slack), (True, 0, slack)):
        mapped.clear()
        tracemalloc.start()
        try:
            tree = ptfile.load(path, mmap=mmap_file)
            peak = tracemalloc.get_traced_memory()[1] + sum(mapped)
        finally:
            tracemalloc.stop()
        assert low <= peak < high, (mmap_file, peak)
        assert np.shares_memory(tree["x"], tree["y"])
        del tree


@pytest.mark.parametrize("mmap_file", [True, False], ids=["mmap", "copy"])
def test_storage_views_share_their_root(mmap_file: bool) -> None:
    tree = ptfile.load(PATHS["views_metadata"], mmap=mmap_file)
    whole = tree["whole"]
    assert np.shares_memory(whole, tree["first"]) and np.shares_memory(whole, tree["second"])
    np.testing.assert_array_equal(tree["first"].reshape(-1), whole[4:12])
    np.testing.assert_array_equal(tree["first_again"], whole[5:11:2])
    np.testing.assert_array_equal(tree["second"], whole[12:16].reshape(2, 2).T)
    assert tree["longs"].tolist() == [2**40, 9]
    if not mmap_file:
        assert _root(whole) is _root(tree["first"]) is _root(tree["second"])


def test_view_info_is_relative_to_the_view() -> None:
    with ptfile.open(PATHS["views_metadata"]) as ckpt:
        info = ckpt.info("first_again")
        assert (info.storage, info.storage_nbytes, info.offset) == ("2000", 32, 1)
        assert ckpt.info("whole").storage == "1000"


def test_whole_module_is_an_unknown_class() -> None:
    with pytest.raises(UnsafeGlobalError, match="torch.nn.modules.linear.Linear"):
        ptfile.load(PATHS["module"])
    record = ptfile.load(PATHS["module"], records=True)
    assert isinstance(record, ptfile.Record)
    assert record.cls == ptfile.Global("torch.nn.modules.linear", "Linear")
    weight = record.state["_parameters"]["weight"]
    assert isinstance(weight, ptfile.Parameter) and weight.shape == (2, 2)


def test_new_dtypes_torch_cannot_load_back() -> None:
    """torch 2.13 writes float8/uint16..64 in the legacy stream as UntypedStorage, which its loader rejects."""
    tree = ptfile.load(PATHS["new_dtypes"])
    assert tree["uint16"].tolist() == [0, 1, 2, 65504, 0, 3]
    assert tree["float8_e4m3fn"].astype(np.float32).tolist()[:3] == [0.0, -1.5, 2.25]


# -- built from bytes: little-endian on every host ------------------------------------


def _float_stream() -> bytes:
    pid = lb.storage_pid("FloatStorage", "7", 3)
    short = lb.storage_pid("ShortStorage", "8", 2)
    obj = {"f": lb.rebuild_v2(pid, 0, (3,), (1,)), "s": lb.rebuild_v2(short, 0, (2,), (1,))}
    return lb.legacy_stream(obj, {"7": (3, bytes.fromhex("0000803f000000c00000c07f")), "8": (2, bytes.fromhex("0201ff7f"))})


def test_legacy_storages_are_little_endian(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "byteorder", "big")  # the container must not consult the host
    tree = ptfile.load(_float_stream())
    assert tree["f"].tolist()[:2] == [1.0, -2.0] and np.isnan(tree["f"][2])
    assert tree["s"].tolist() == [0x0102, 0x7FFF]
    with ptfile.open(_float_stream()) as ckpt:
        assert ckpt.container.byteorder == "little"


def test_tar_storages_are_little_endian(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "byteorder", "big")
    members = lb.tar_members({"x": lb.Pid("1")}, [(5, "IntStorage", 2, bytes.fromhex("01000000feffffff"))],
                             [(1, 5, "IntTensor", (2,), (1,), 0)])
    with ptfile.open(lb.tar_archive(members)) as ckpt:
        assert ckpt.container.byteorder == "little"
        assert ckpt["x"].tolist() == [1, -2]


def test_tar_storage_reachable_directly() -> None:
    members = lb.tar_members({"s": lb.Pid("5")}, [(5, "IntStorage", 2, bytes(8))], [])
    storage = ptfile.load(lb.tar_archive(members))["s"]
    assert (storage.key, storage.nbytes) == ("5", 8)


def test_tar_with_pax_headers() -> None:
    """A PAX header naming the member (as tarfile writes for long or non-ASCII names) is honoured."""
    members = make_legacy.ancient_tar_members()
    out = io.BytesIO()
    import tarfile

    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo("placeholder")
            info.size = len(data)
            info.pax_headers = {"path": name, "comment": "é"}
            tar.addfile(info, io.BytesIO(data))
    assert out.getvalue().count(b"path=") == 4
    assert describe_ptfile(out.getvalue(), mmap=True) == EXPECTED["ancient_tar"]


# -- the pickle walker ------------------------------------------------------------------

_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=300),
    st.binary(max_size=300), st.integers(min_value=-(2**300), max_value=2**300),
)
_tree = st.recursive(
    _leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.tuples(inner, inner),
                            st.dictionaries(st.text(max_size=5), inner, max_size=5),
                            st.frozensets(st.integers(), max_size=4)),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(_tree, st.integers(min_value=0, max_value=5), st.binary(max_size=20))
def test_pickle_end_finds_the_stop(value: Any, protocol: int, tail: bytes) -> None:
    data = pickle.dumps(value, protocol=protocol)
    source = MappedSource(data + tail, "<walk>")
    assert legacy.pickle_end(source, 0, source.size, "walk") == len(data)


def test_pickle_end_reads_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(legacy, "WALK_WINDOW", 7)  # every argument straddles a window edge
    data = pickle.dumps([{"k" * 40: b"v" * 300, "n": 2**100}, "x" * 1000], protocol=0) + pickle.dumps(
        {"a": [1.5, "b" * 500]}, protocol=4
    )
    source = MappedSource(data, "<walk>")
    first = legacy.pickle_end(source, 0, source.size, "walk")
    assert legacy.pickle_end(source, first, source.size, "walk") == len(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x80\x02K", b"\x80\x02\xff.", b"\x80\x02X\xff\xff\xff\x7f.", b"\x80\x02\x8b\xff\xff\xff\xff.", b"cos\nsys"],
    ids=["empty", "no-stop", "bad-opcode", "long-string", "negative-long4", "no-newline"],
)
def test_pickle_end_refuses(data: bytes) -> None:
    with pytest.raises(CorruptFileError):
        legacy.pickle_end(MappedSource(data, "<walk>"), 0, len(data), "walk")


def test_pickle_end_stops_at_its_limit() -> None:
    data = pickle.dumps(list(range(100)), protocol=2)
    with pytest.raises(CorruptFileError):
        legacy.pickle_end(MappedSource(data, "<walk>"), 0, len(data) - 1, "walk")


# -- hostile legacy streams -------------------------------------------------------------


def _parts() -> list[bytes]:
    """A small valid stream in pieces: five pickles, then the storages of keys 10 and 20."""
    root = lb.storage_pid("FloatStorage", "10", 4)
    view = lb.storage_pid("FloatStorage", "10", 4, ("11", 1, 2))
    longs = lb.storage_pid("LongStorage", "20", 1)
    obj = OrderedDict(a=lb.rebuild_v2(root, 0, (2, 2), (2, 1)), v=lb.rebuild_v2(view, 0, (2,), (1,)),
                      n=lb.rebuild_v2(longs, 0, (), ()))
    floats = np.arange(4, dtype="<f4").tobytes()
    return lb.legacy_parts(obj, {"10": (4, floats), "20": (1, lb.int64(5))})


def _stream(parts: list[bytes]) -> bytes:
    return b"".join(parts)


def _refused(data: bytes, error: type = PtfileError, match: str | None = None) -> None:
    for mmap_file in (True, False):
        with pytest.raises(error, match=match):
            ptfile.load(data, mmap=mmap_file)
    with pytest.raises(error, match=match):
        ptfile.open(data)


def test_small_stream_is_valid() -> None:
    tree = ptfile.load(_stream(_parts()))
    assert tree["a"].tolist() == [[0, 1], [2, 3]] and tree["v"].tolist() == [1, 2] and tree["n"] == 5


@pytest.mark.parametrize("name", ["views", "views_metadata", "every_dtype", "protocol4", "protocol1"])
def test_legacy_truncated_anywhere(name: str) -> None:
    data = PATHS[name].read_bytes()
    for end in range(len(data)):
        with pytest.raises(PtfileError):
            ptfile.load(data[:end])


def test_small_stream_truncated_anywhere_lazily() -> None:
    data = _stream(_parts())
    for end in range(len(data)):
        with pytest.raises(PtfileError):
            ptfile.open(data[:end])


@pytest.mark.parametrize("magic", [0x1950A86A20F9469CFC6D, -0x1950A86A20F9469CFC6C, 0, 2**200])
def test_bad_magic(magic: int) -> None:
    parts = _parts()
    parts[0] = lb.dumps(magic)
    _refused(_stream(parts), CorruptFileError, "magic number")


@pytest.mark.parametrize("magic", [float(lb.MAGIC_NUMBER), str(lb.MAGIC_NUMBER), (lb.MAGIC_NUMBER,)])
def test_magic_of_another_type_is_not_legacy(magic: Any) -> None:
    parts = _parts()
    parts[0] = lb.dumps(magic)
    _refused(_stream(parts))


@pytest.mark.parametrize("version", [1000, 1002, 0, -1001, "1001", 1001.0, True, [1001]])
def test_wrong_protocol_version(version: Any) -> None:
    parts = _parts()
    parts[1] = lb.dumps(version)
    _refused(_stream(parts), CorruptFileError, "protocol version")


@pytest.mark.parametrize("sys_info", [[], None, 5, "sys_info"])
def test_sys_info_must_be_a_dict(sys_info: Any) -> None:
    parts = _parts()
    parts[2] = lb.dumps(sys_info)
    _refused(_stream(parts), CorruptFileError, "sys_info")


def test_oversized_header_pickle() -> None:
    parts = _parts()
    parts[2] = lb.dumps({"padding": "x" * legacy.MAX_HEADER_PICKLE_BYTES})
    _refused(_stream(parts), CorruptFileError)


def _with_numel(parts: list[bytes], index: int, numel: int) -> bytes:
    storage = parts[5 + index]
    return _stream([*parts[:5 + index], lb.int64(numel) + storage[8:], *parts[6 + index:]])


@pytest.mark.parametrize("numel", [2**62, 2**63 - 1, -1, -(2**63), 5, 3, 0])
def test_storage_numel_checked(numel: int) -> None:
    _refused(_with_numel(_parts(), 0, numel), CorruptFileError, "storage '10'")


def test_pid_numel_larger_than_the_file() -> None:
    pid = lb.storage_pid("FloatStorage", "10", 2**61)
    parts = lb.legacy_parts({"a": lb.rebuild_v2(pid, 0, (1,), (1,))}, {"10": (2**61, b"")})
    _refused(_stream(parts), CorruptFileError, "bytes are left")


def test_pid_numel_beyond_int64() -> None:
    pid = lb.storage_pid("FloatStorage", "10", 2**64)
    _refused(lb.legacy_stream({"a": lb.rebuild_v2(pid, 0, (1,), (1,))}, {"10": (0, b"")}), CorruptFileError, "int64")


@pytest.mark.parametrize(
    "keys",
    [["10"], ["10", "20", "30"], ["10", "10", "20"], ["20", "11"], [], ("10", "20"), [10, 20], "1020"],
    ids=["missing", "extra", "duplicate", "view-key", "empty", "tuple", "ints", "string"],
)
def test_key_list_mismatch(keys: Any) -> None:
    parts = _parts()
    parts[4] = lb.dumps(keys)
    _refused(_stream(parts), CorruptFileError, "key list")


def test_key_list_order_is_free_but_data_follows_it() -> None:
    parts = _parts()
    parts[4] = lb.dumps(["20", "10"])
    tree = ptfile.load(_stream([*parts[:5], parts[6], parts[5]]))
    assert tree["a"].tolist() == [[0, 1], [2, 3]] and tree["n"] == 5


def test_trailing_bytes_after_storages() -> None:
    _refused(_stream(_parts()) + b"\0", CorruptFileError, "follow the last legacy storage")


def test_referenced_storage_absent() -> None:
    missing = lb.storage_pid("FloatStorage", "99", 1)
    parts = lb.legacy_parts({"x": lb.rebuild_v2(missing, 0, (1,), (1,))}, {"10": (1, bytes(4))})
    _refused(_stream(parts), CorruptFileError, "missing \\['99'\\]")


def _single(pid: Any, size: tuple = (1,), stride: tuple = (1,), offset: int = 0,
            storages: dict | None = None) -> bytes:
    storages = storages if storages is not None else {"10": (4, bytes(16))}
    return lb.legacy_stream({"x": lb.rebuild_v2(pid, offset, size, stride)}, storages)


@pytest.mark.parametrize(
    "view",
    [("11", 3, 2), ("11", 5, 0), ("11", 0, 5), ("11", -1, 2), ("11", 1, -1), ("11", 2**64, 1), ("10", 1, 1),
     ("11", 1), "11", ("../x", 0, 1), (11, 0, 1), ("11", 1.0, 1)],
)
def test_out_of_bounds_view_metadata(view: Any) -> None:
    _refused(_single(lb.storage_pid("FloatStorage", "10", 4, view)), CorruptFileError)


def test_tensor_beyond_its_view_but_inside_the_root() -> None:
    view = lb.storage_pid("FloatStorage", "10", 4, ("11", 1, 2))
    assert ptfile.load(_single(view, (2,), (1,), 0))["x"].shape == (2,)
    _refused(_single(view, (2,), (1,), 1), CorruptFileError, "reaches element 2")
    _refused(_single(view, (3,), (1,), 0), CorruptFileError, "reaches element 2")


def test_view_key_declared_twice_differently() -> None:
    a = lb.storage_pid("FloatStorage", "10", 4, ("11", 0, 2))
    b = lb.storage_pid("FloatStorage", "10", 4, ("11", 1, 2))
    obj = [lb.rebuild_v2(a, 0, (1,), (1,)), lb.rebuild_v2(b, 0, (1,), (1,))]
    _refused(lb.legacy_stream(obj, {"10": (4, bytes(16))}), CorruptFileError, "declared twice")


def test_root_key_reused_as_view_of_another() -> None:
    a = lb.storage_pid("FloatStorage", "10", 4, ("20", 0, 2))
    b = lb.storage_pid("FloatStorage", "20", 4)
    obj = [lb.rebuild_v2(a, 0, (1,), (1,)), lb.rebuild_v2(b, 0, (1,), (1,))]
    _refused(lb.legacy_stream(obj, {"10": (4, bytes(16)), "20": (4, bytes(16))}), CorruptFileError)


def test_storage_with_two_types() -> None:
    a = lb.storage_pid("FloatStorage", "10", 4)
    b = lb.storage_pid("IntStorage", "10", 4)
    obj = [lb.rebuild_v2(a, 0, (1,), (1,)), lb.rebuild_v2(b, 0, (1,), (1,))]
    _refused(lb.legacy_stream(obj, {"10": (4, bytes(16))}), CorruptFileError, "two different types")


@pytest.mark.parametrize(
    "pid",
    [
        ("storage", lb.G("torch", "FloatStorage"), "10", "cpu", 4),  # the zip layout
        ("storage", lb.G("torch", "FloatStorage"), "10", "cpu", 4, None, None),
        ("tensor", lb.G("torch", "FloatStorage"), "10", "cpu", 4, None),
        ("storage", "FloatStorage", "10", "cpu", 4, None),
        ("storage", lb.G("torch", "FloatStorage"), "10", 0, 4, None),
        ("storage", lb.G("torch", "FloatStorage"), "", "cpu", 4, None),
        ("storage", lb.G("torch", "FloatStorage"), "10", "cpu", -4, None),
        ("storage", lb.G("torch", "FloatStorage"), "10", "cpu", True, None),
        ("module", 5, None, None),
        "10",
        (),
    ],
)
def test_malformed_persistent_ids(pid: Any) -> None:
    _refused(_single(lb.Pid(pid)), PtfileError)


# -- os.system anywhere is refused, and never runs ----------------------------------------


def _system(marker: Path) -> lb.Call:
    return lb.Call(lb.G("os", "system"), f"touch {marker}")


@pytest.mark.parametrize("part", range(5), ids=["magic", "version", "sys_info", "pickle", "keys"])
@pytest.mark.parametrize("nested", [False, True], ids=["bare", "nested"])
def test_os_system_in_any_legacy_pickle(tmp_path: Path, part: int, nested: bool) -> None:
    marker = tmp_path / "marker"
    parts = _parts()
    payload = _system(marker)
    parts[part] = lb.dumps({"x": payload} if nested else payload)
    data = _stream(parts)
    for records in (False, True):
        with pytest.raises(UnsafeGlobalError, match="os.system"):
            ptfile.load(data, records=records)
        with pytest.raises(UnsafeGlobalError, match="os.system"):
            ptfile.open(data, records=records)
    assert not marker.exists()


def test_forged_magic_by_eval(tmp_path: Path) -> None:
    parts = _parts()
    parts[0] = lb.dumps(lb.Call(lb.G("builtins", "eval"), hex(lb.MAGIC_NUMBER)))
    _refused(_stream(parts), UnsafeGlobalError, "builtins.eval")


def test_os_system_in_a_broken_stream_is_still_unsafe(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    parts = _parts()
    parts[3] = lb.dumps([_system(marker), lb.rebuild_v2(lb.storage_pid("FloatStorage", "10", 4), 0, (1,), (1,))])
    _refused(_stream(parts)[:-3], UnsafeGlobalError, "os.system")  # truncated storages, dangerous pickle
    assert not marker.exists()


def test_unknown_class_in_a_small_pickle_needs_records() -> None:
    parts = _parts()
    parts[2] = lb.dumps({"little_endian": True, "kind": lb.G("mymodule", "Thing")})
    data = _stream(parts)
    assert ptfile.load(data, records=True)["n"] == 5
    with pytest.raises(UnsafeGlobalError, match="mymodule.Thing"):
        ptfile.load(data)


def test_os_system_after_a_bad_version_is_still_unsafe(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    parts = _parts()
    parts[1] = lb.dumps(1002)
    parts[3] = lb.dumps([_system(marker)])
    _refused(_stream(parts), UnsafeGlobalError, "os.system")
    assert not marker.exists()


def test_small_pickle_globals_reach_the_inventory() -> None:
    parts = _parts()
    parts[2] = lb.dumps(OrderedDict(little_endian=True))
    with ptfile.open(_stream(parts)) as ckpt:
        assert [use.path for use in ckpt.container.inventory_extra] == ["collections.OrderedDict"] * 2
        assert {use.record for use in ckpt.container.inventory_extra} == {"sys_info"}


# -- hostile tar archives -----------------------------------------------------------------


def _tar(members: dict | None = None, **changes: bytes) -> bytes:
    members = dict(members or make_legacy.ancient_tar_members())
    members.update(changes)
    return lb.tar_archive(members)


def test_tar_truncated_anywhere() -> None:
    data = _tar()
    last_data_end = len(data.rstrip(b"\0"))
    end_of_members = -(-last_data_end // legacy.TAR_BLOCK) * legacy.TAR_BLOCK
    for end in range(end_of_members):
        with pytest.raises(PtfileError):
            ptfile.load(data[:end])
    ptfile.load(data[:end_of_members])  # tarfile, too, reads an archive without its end blocks


@pytest.mark.parametrize("member", legacy.TAR_MEMBERS)
def test_tar_missing_member(member: str) -> None:
    members = make_legacy.ancient_tar_members()
    del members[member]
    _refused(lb.tar_archive(members), CorruptFileError, "lacks the members")


def test_tar_duplicate_and_foreign_members() -> None:
    members = list(make_legacy.ancient_tar_members().items())
    _refused(lb.tar_archive([*members, members[1]]), CorruptFileError, "appears twice")
    _refused(lb.tar_archive([*members, ("extra", b"")]), CorruptFileError, "not one torch writes")


def test_tar_bad_checksum_in_a_later_header() -> None:
    data = bytearray(_tar())
    sys_info_size = int(data[124:136].rstrip(b"\0 "), 8)
    second = legacy.TAR_BLOCK + -(-sys_info_size // legacy.TAR_BLOCK) * legacy.TAR_BLOCK
    assert data[second : second + 6] == b"pickle"
    data[second] ^= 1
    _refused(bytes(data), CorruptFileError, "checksum")


def _retyped(data: bytes, offset: int, kind: bytes) -> bytes:
    block = bytearray(data[offset : offset + 512])
    block[156:157] = kind
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return data[:offset] + bytes(block) + data[offset + 512 :]


@pytest.mark.parametrize("kind", [b"2", b"5", b"g", b"L", b"S"])
def test_tar_member_types(kind: bytes) -> None:
    _refused(_retyped(_tar(), 0, kind), CorruptFileError)


def _resized(data: bytes, offset: int, field: bytes) -> bytes:
    block = bytearray(data[offset : offset + 512])
    block[124:136] = field
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return data[:offset] + bytes(block) + data[offset + 512 :]


@pytest.mark.parametrize(
    "field", [b"77777777777\0", b"\x80" + b"\xff" * 11, b"\xff" * 12, b"12345678901x", b"00000000000\0"]
)
def test_tar_member_sizes(field: bytes) -> None:
    _refused(_resized(_tar(), 0, field), PtfileError)


def test_tar_trailing_garbage() -> None:
    _refused(_tar() + b"PK\x03\x04", CorruptFileError, "after the end of the tar archive")
    data = bytearray(_tar())
    data[-1] = 1
    _refused(bytes(data), CorruptFileError, "after the end of the tar archive")


def test_tar_oversized_pax_header() -> None:
    out = io.BytesIO()
    import tarfile

    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("sys_info")
        info.pax_headers = {"comment": "x" * legacy.MAX_PAX_BYTES}
        tar.addfile(info, io.BytesIO(b""))
    _refused(out.getvalue(), LimitExceededError, "PAX header")


def _tensor_tar(size: tuple, stride: tuple, offset: int, ndim: int | None = None) -> bytes:
    metadata = lb.tensor_metadata(size, stride, offset)
    if ndim is not None:
        metadata = struct.pack("<i", ndim) + metadata[4:]
    tensors = lb.dumps(1) + lb.dumps((1, 100, lb.G("torch", "FloatTensor"))) + metadata
    members = lb.tar_members({"x": lb.Pid("1")}, [(100, "FloatStorage", 4, bytes(16))], [])
    members["tensors"] = tensors
    return lb.tar_archive(members)


def test_tar_tensor_metadata_valid() -> None:
    assert ptfile.load(_tensor_tar((2, 2), (2, 1), 0))["x"].shape == (2, 2)
    assert ptfile.load(_tensor_tar((4,), (0,), 3))["x"].strides == (0,)


@pytest.mark.parametrize(
    "size, stride, offset",
    [
        ((5,), (1,), 0), ((2,), (1,), 3), ((2, 2), (2, 2), 0), ((-1,), (1,), 0), ((1,), (-1,), 0),
        ((2,), (1,), -1), ((2**62,), (1,), 0), ((2,), (2**62,), 0), ((1,), (1,), 2**62),
        ((2**62, 2), (0, 2**62), 0), ((1,), (1,), -(2**63)),
    ],
)
def test_tar_out_of_bounds_tensors(size: tuple, stride: tuple, offset: int) -> None:
    _refused(_tensor_tar(size, stride, offset), CorruptFileError)


@pytest.mark.parametrize("ndim", [-1, 65, 2**31 - 1, -(2**31)])
def test_tar_bad_ndim(ndim: int) -> None:
    _refused(_tensor_tar((1,), (1,), 0, ndim), CorruptFileError)


def test_tar_huge_broadcast_view_read_lazily() -> None:
    # refused while listing, before any byte of it is read
    with pytest.raises(ptfile.LimitExceededError, match="more than numpy can index"), \
            ptfile.open(_tensor_tar((2**62,), (0,), 0)) as ckpt:
        ckpt["x"]


def test_tar_huge_broadcast_view_loaded() -> None:
    for mmap_file in (True, False):
        with pytest.raises(PtfileError):
            ptfile.load(_tensor_tar((2**62,), (0,), 0), mmap=mmap_file)


def _storages_member(count: Any, numel: int, data: bytes, views: Any = ()) -> bytes:
    return (lb.dumps(count) + lb.dumps((100, "cpu", lb.G("torch", "FloatStorage"))) + lb.int64(numel) + data
            + lb.dumps(list(views) if isinstance(views, tuple) else views))


@pytest.mark.parametrize(
    "count, numel, data, views",
    [
        (2, 4, bytes(16), ()), (0, 4, bytes(16), ()), (-1, 4, bytes(16), ()), (2**40, 4, bytes(16), ()),
        ("1", 4, bytes(16), ()), (1, 5, bytes(16), ()), (1, -1, bytes(16), ()), (1, 2**62, bytes(16), ()),
        (1, 3, bytes(16), ()), (1, 4, bytes(16), ((200, 100, 3, 2),)), (1, 4, bytes(16), ((200, 999, 0, 1),)),
        (1, 4, bytes(16), ((100, 100, 0, 1),)), (1, 4, bytes(16), ((200, 100, -1, 1),)),
        (1, 4, bytes(16), ((200, 100, 0),)), (1, 4, bytes(16), {"a": 1}),
    ],
)
def test_tar_bad_storages(count: Any, numel: int, data: bytes, views: Any) -> None:
    members = lb.tar_members({"x": lb.Pid("1")}, [], [(1, 100, "FloatTensor", (1,), (1,), 0)])
    members["storages"] = _storages_member(count, numel, data, views)
    _refused(lb.tar_archive(members), CorruptFileError)


@pytest.mark.parametrize(
    "tensors",
    [
        [(1, 999, "FloatTensor", (1,), (1,), 0)],  # no such storage
        [(100, 100, "FloatTensor", (1,), (1,), 0)],  # key of a storage
        [(1, 100, "FloatTensor", (1,), (1,), 0), (1, 100, "FloatTensor", (1,), (1,), 0)],  # twice
    ],
)
def test_tar_bad_tensor_keys(tensors: list) -> None:
    members = lb.tar_members({"x": lb.Pid("1")}, [(100, "FloatStorage", 4, bytes(16))], tensors)
    _refused(lb.tar_archive(members), CorruptFileError)


def test_tar_wrong_tensor_count() -> None:
    tensors = [(1, 100, "FloatTensor", (1,), (1,), 0)]
    for count in (2, 0, -1, 2**40):
        members = lb.tar_members({"x": lb.Pid("1")}, [(100, "FloatStorage", 4, bytes(16))], tensors)
        members["tensors"] = lb.dumps(count) + members["tensors"][len(lb.dumps(1)):]
        _refused(lb.tar_archive(members), CorruptFileError)


@pytest.mark.parametrize("pid", ["2", "-1", "1e3", " 1", "1_0", "0x1", "9" * 40, 1, b"1", ("1",)])
def test_tar_bad_persistent_ids(pid: Any) -> None:
    members = lb.tar_members({"x": lb.Pid(pid)}, [(100, "FloatStorage", 4, bytes(16))],
                             [(1, 100, "FloatTensor", (1,), (1,), 0)])
    _refused(lb.tar_archive(members), PtfileError)


def test_tar_leading_zero_ids_name_the_same_object() -> None:
    """torch looks ids up with int(), so "007" is object 7."""
    members = lb.tar_members({"x": lb.Pid("007")}, [(100, "FloatStorage", 4, bytes(16))],
                             [(7, 100, "FloatTensor", (1,), (1,), 0)])
    assert ptfile.load(lb.tar_archive(members))["x"].shape == (1,)


@pytest.mark.parametrize("member", ["sys_info", "pickle", "tensors", "storages"])
def test_os_system_in_any_tar_member(tmp_path: Path, member: str) -> None:
    marker = tmp_path / "marker"
    members = make_legacy.ancient_tar_members()
    payload = lb.dumps({"x": _system(marker)})
    if member == "tensors":  # inside a tensor header
        payload = lb.dumps(1) + lb.dumps((11, 100, _system(marker))) + lb.tensor_metadata((1,), (1,), 0)
    elif member == "storages":  # the storage views list
        payload = members["storages"][: -len(lb.dumps([(200, 100, 4, 5)]))] + lb.dumps([_system(marker)])
    members[member] = payload
    for records in (False, True):
        with pytest.raises(UnsafeGlobalError, match="os.system"):
            ptfile.load(lb.tar_archive(members), records=records)
    assert not marker.exists()


def test_os_system_in_a_tar_with_broken_storages_is_still_unsafe(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    members = make_legacy.ancient_tar_members()
    members["pickle"] = lb.dumps({"x": _system(marker)})
    members["storages"] = members["storages"][:-1]
    _refused(lb.tar_archive(members), UnsafeGlobalError, "os.system")
    assert not marker.exists()


def test_tar_inventory_is_clean() -> None:
    from ptfile.policy import allowlist

    with ptfile.open(PATHS["ancient_tar"]) as ckpt:
        assert {use.path for use in ckpt.container.inventory_extra} >= {"torch.FloatTensor", "torch.FloatStorage"}
        assert allowlist.judge(ckpt.container.inventory_extra).verdict == Verdict.CLEAN


def test_tar_saved_from_gpu() -> None:
    members = lb.tar_members({"x": lb.Pid("1")}, [(5, "FloatStorage", 1, bytes(4))], [])
    members["tensors"] = (lb.dumps(1) + lb.dumps((1, 5, lb.G("torch.cuda", "FloatTensor")))
                          + lb.tensor_metadata((1,), (1,), 0))
    assert ptfile.load(lb.tar_archive(members))["x"].tolist() == [0.0]


# -- torch as the oracle --------------------------------------------------------------------


def test_torch_oracle(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    paths = make_legacy.write_fixtures(tmp_path)
    for name, path in paths.items():
        if name == "module":
            loaded = torch.load(path, weights_only=False)
            record = ptfile.load(path, records=True)
            for key in ("weight", "bias"):
                expected = loaded._parameters[key].detach().numpy()
                np.testing.assert_array_equal(record.state["_parameters"][key], expected)
            continue
        if name == "new_dtypes":
            with pytest.raises(AttributeError):  # torch 2.13 cannot read what it wrote
                torch.load(path, weights_only=False)
            expected = make_legacy.describe_torch(make_legacy.new_dtypes(torch))
        else:
            expected = make_legacy.describe_torch(torch.load(path, weights_only=False))
        for mmap_file in (True, False):
            assert describe_ptfile(path, mmap=mmap_file) == expected, name
        assert expected == EXPECTED[name], f"{name}: committed expected.json is stale"


def test_torch_oracle_reads_our_tar_variants(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    cases = {
        "bytes-source": lb.tar_archive(make_legacy.ancient_tar_members()),
        "views": lb.tar_archive(lb.tar_members(
            {"a": lb.Pid("1"), "b": lb.Pid("2"), "c": lb.Pid("3")},
            [(10, "ShortStorage", 6, np.arange(6, dtype="<i2").tobytes())],
            [(1, 10, "ShortTensor", (2, 3), (3, 1), 0), (2, 20, "ShortTensor", (2,), (1,), 1),
             (3, 10, "ShortTensor", (3, 2), (1, 3), 0)],
            views=[(20, 10, 2, 3)],
        )),
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(data)
        expected = make_legacy.describe_torch(torch.load(path, weights_only=False))
        assert describe_ptfile(path, mmap=True) == expected, name


# -- the magic number as torch's unpickler reads it ---------------------------------------


@pytest.mark.parametrize("magic", [b"I119547037146038801333356\n.", b"I0x1950A86A20F9469CFC6C\n.",
                                   b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."])
def test_magic_as_plain_int_loads_as_torch_loads_it(magic: bytes, tmp_path: Path) -> None:
    """A protocol-0 INT (any size, any base pickle.load reads) or a bare LONG1 is the magic to torch too."""
    torch = pytest.importorskip("torch")
    original = PATHS["protocol1"].read_bytes()
    assert original.startswith(b"L119547037146038801333356L\n.")  # protocol 0: the magic ends at the first '.'
    rewritten = magic + original[original.index(b".") + 1 :]
    path = tmp_path / "int_magic.pt"
    path.write_bytes(rewritten)
    theirs = make_legacy.describe_torch(torch.load(path, weights_only=False))
    assert theirs == EXPECTED["protocol1"]  # torch reads the file as it reads the original
    assert describe_ptfile(path, mmap=True) == theirs
    assert ptfile.scan(path).verdict == "clean"
