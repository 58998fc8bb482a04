"""Writer tests that need no torch: pickle emitter, zip layout, sharing, errors, atomicity."""

from __future__ import annotations

import argparse
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib
from collections import Counter, OrderedDict

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ptfile
from ptfile.containers import zipwriter
from ptfile.containers.zipwriter import ZipRecordWriter, archive_prefix, padding_extra
from ptfile.formats import writer
from ptfile.pickle.pickler import Pickler
from ptfile.pickle.values import Global, Record

# -- pickle emitter -----------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.complex_numbers(allow_nan=False),
)
plain_data = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(st.text(max_size=4), children, max_size=5),
        # small sets of 0..7 iterate in sorted order, which is the order ptfile writes
        st.frozensets(st.integers(0, 7), max_size=4).map(set),
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(plain_data)
def test_pickler_matches_cpython_protocol_2(value):
    assert Pickler().dump(value) == pickle.dumps(value, protocol=2)


@pytest.mark.parametrize(
    "value",
    [
        list(range(1000)),
        list(range(1001)),
        {i: i for i in range(1000)},  # a full batch ends with an empty MARK SETITEMS in CPython
        {i: i for i in range(2001)},
        bytearray(b"xy"),
        bytearray(),
        frozenset({1, 2}),
        2**2100,
        "\udc80 surrogate",
    ],
    ids=repr,
)
def test_pickler_matches_cpython_on_batches_and_edge_types(value):
    assert Pickler().dump(value) == pickle.dumps(value, protocol=2)


def test_pickler_memo_follows_identity_and_cycles():
    shared = ["x"]
    cyclic: list = []
    cyclic_tuple = (cyclic,)
    cyclic.append(cyclic_tuple)
    for value in ([shared, shared], cyclic_tuple, {"a": shared, "b": (shared, shared)}):
        assert Pickler().dump(value) == pickle.dumps(value, protocol=2)


def test_set_items_are_sorted_for_determinism():
    assert Pickler().dump({8, 0}) == pickle.dumps({0, 8}.__class__([0, 8]), protocol=2).replace(b"K\x08K\x00", b"K\x00K\x08")
    assert b"K\x00K\x08" in Pickler().dump({8, 0})


def test_pickler_golden_bytes():
    # hand-checked: PROTO 2, EMPTY_DICT, BINPUT 0, 'ab' BINUNICODE, BINPUT 1, BININT1 7, SETITEM, STOP
    assert Pickler().dump({"ab": 7}) == b"\x80\x02}q\x00X\x02\x00\x00\x00abq\x01K\x07s."
    # bytes under protocol 2: _codecs.encode('\xff', 'latin1')
    assert Pickler().dump(b"\xff") == (
        b"\x80\x02c_codecs\nencode\nq\x00X\x02\x00\x00\x00\xc3\xbfq\x01X\x06\x00\x00\x00latin1q\x02\x86q\x03Rq\x04."
    )


def test_pickler_long_memo_indexes():
    value = [str(i) for i in range(300)] * 2
    assert Pickler().dump(value) == pickle.dumps(value, protocol=2)


# -- zip layout ---------------------------------------------------------------------


def _zip_bytes(records, prefix="a"):
    import io

    out = io.BytesIO()
    w = ZipRecordWriter(out, prefix)
    for name, data in records:
        w.write_record(name, data)
    w.finish()
    return out.getvalue()


def test_zip_golden_local_header_padding_and_descriptor():
    data = _zip_bytes([("x", b"hi"), ("e", b"")])
    # local header of "a/x": version 0, flags 0x0808, stored, no time, crc/sizes 0
    assert data[:30] == struct.pack("<IHHHHHIIIHH", 0x04034B50, 0, 0x0808, 0, 0, 0, 0, 0, 0, 3, 4 + 27)
    assert data[30:33] == b"a/x"
    # FB field: 30 + 3 + 4 = 37 bytes before the padding, 27 more reach 64
    assert data[33:64] == b"FB\x1b\x00" + b"Z" * 27
    assert data[64:66] == b"hi"
    assert data[66:82] == struct.pack("<IIII", 0x08074B50, zlib.crc32(b"hi"), 2, 2)
    # empty record: flags 0x0800, no descriptor; its data offset is also 64-aligned
    assert struct.unpack_from("<H", data, 82 + 6)[0] == 0x0800
    extra_len = struct.unpack_from("<H", data, 82 + 28)[0]
    assert (82 + 30 + 3 + extra_len) % 64 == 0
    # the ZIP64 end record is always there, then its locator, then the classic end
    assert data.rfind(b"PK\x06\x06") < data.rfind(b"PK\x06\x07") < data.rfind(b"PK\x05\x06")
    assert struct.unpack_from("<HH", data, data.rfind(b"PK\x06\x06") + 12) == (0x031E, 0x2D)


def test_zip_is_a_valid_zip_with_real_crcs():
    data = _zip_bytes([("data.pkl", b"abc" * 100), ("data/0", bytes(range(256))), ("empty", b"")])
    import io

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
        assert z.namelist() == ["a/data.pkl", "a/data/0", "a/empty", "a/.data/serialization_id"]
        assert z.read("a/data/0") == bytes(range(256))
        for info in z.infolist():
            assert (info.header_offset + 30 + len(info.filename) + len(_local_extra(data, info))) % 64 == 0


def _local_extra(data, info):
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len
    return data[start : start + extra_len]


@pytest.mark.parametrize(
    ("cursor", "size", "extra_before_fb"),
    [(0, 10, 0), (2**32, 10, 4 + 8), (0, 2**32, 4 + 16), (2**32, 2**32, 4 + 24), (0xFFFFFFFF, 1, 12)],
)
def test_padding_counts_the_zip64_field(cursor, size, extra_before_fb):
    name = 9
    field = padding_extra(cursor, name, size)
    pad = struct.unpack_from("<H", field, 2)[0]
    assert (cursor + 30 + name + extra_before_fb + 4 + pad) % 64 == 0
    assert field == b"FB" + struct.pack("<H", pad) + b"Z" * pad


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("model.pt", "model"),
        ("dir.x/model.tar.pt", "model.tar"),
        ("plain", "plain"),
        ("a\\b.bin", "b"),
        ("modèle.pt", "archive"),
        (".hidden", ""),
        (None, "archive"),
    ],
)
def test_archive_prefix_like_torch(name, prefix):
    assert archive_prefix(name) == prefix


def test_std_string_hash_and_hash_combine_are_64_bit():
    assert 0 <= zipwriter.std_string_hash(b"data.pkl") < 2**64
    assert zipwriter.hash_combine(0, 0) == 0x9E3779B9
    # different lengths exercise the tail (len % 8) and the 8-byte loop
    values = {zipwriter.std_string_hash(b"x" * n) for n in range(20)}
    assert len(values) == 20


# -- save -> ptfile.load ------------------------------------------------------------


def _save_load(tmp_path, obj, **kw):
    path = tmp_path / "ckpt.pt"
    ptfile.save(obj, path)
    return ptfile.load(path, **kw)


def test_values_round_trip(tmp_path):
    ns = argparse.Namespace(lr=0.1, name="x")
    od = OrderedDict(a=np.arange(3, dtype=np.float32))
    od._metadata = OrderedDict({"": {"version": 1}})
    obj = {
        "od": od,
        "list": [1, 2.5, None, True, "s", b"\x00\xff", 3 + 4j],
        "tuple": (1, (2, 3)),
        "set": {3, 1, 2},
        "frozen": frozenset({"a"}),
        "ns": ns,
        "np_scalar": np.float32(1.5),
        "np_int": np.int64(-7),
        "counter": Counter(a=2),
        "dtype": Global("torch", "float16"),
        "big": 2**100,
        "bytearray": bytearray(b"ab"),
    }
    back = _save_load(tmp_path, obj)
    assert back["od"]._metadata == {"": {"version": 1}}
    np.testing.assert_array_equal(back["od"]["a"], np.arange(3, dtype=np.float32))
    assert back["list"] == obj["list"]
    assert back["tuple"] == obj["tuple"]
    assert back["set"] == obj["set"] and back["frozen"] == obj["frozen"]
    assert vars(back["ns"]) == vars(ns)
    assert back["np_scalar"] == np.float32(1.5) and back["np_scalar"].dtype == np.float32
    assert back["np_int"] == -7 and back["np_int"].dtype == np.int64
    assert back["counter"] == Counter(a=2)
    assert back["dtype"] == Global("torch", "float16")
    assert back["big"] == 2**100 and back["bytearray"] == bytearray(b"ab")


ALL_DTYPES = [
    np.float64, np.float32, np.float16, ml_dtypes.bfloat16, np.int64, np.int32, np.int16, np.int8, np.uint8,
    np.bool_, np.complex128, np.complex64, ml_dtypes.complex32, np.uint16, np.uint32, np.uint64,
    ml_dtypes.float8_e5m2, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2fnuz, ml_dtypes.float8_e4m3fnuz,
    ml_dtypes.float8_e8m0fnu,
]


def _random_array(dtype, shape, seed=0):
    raw = np.random.default_rng(seed).integers(0, 256, size=int(np.prod(shape)) * np.dtype(dtype).itemsize,
                                               dtype=np.uint8)
    if np.dtype(dtype) == np.bool_:
        raw = raw % 2
    return raw.view(dtype).reshape(shape)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_dtype_round_trips_bit_exactly(tmp_path, dtype):
    arr = _random_array(dtype, (3, 4))
    back = _save_load(tmp_path, {"t": arr, "v": arr.T[1:]})
    assert back["t"].dtype == np.dtype(dtype)
    assert back["t"].tobytes() == arr.tobytes()
    assert back["v"].tobytes() == arr.T[1:].tobytes()
    assert np.shares_memory(back["t"], back["v"])


def test_sharing_and_strides_survive(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    obj = {
        "base": base,
        "tied": base,
        "t": base.T,
        "slice": base[1:3, ::2],
        "bcast": np.broadcast_to(base[0], (5, 6)),
        "fortran": np.asfortranarray(np.ones((2, 3), np.int16)),
        "scalar": np.array(3.5),
        "empty": np.zeros((0, 3), np.float32),
    }
    back = _save_load(tmp_path, obj)
    assert back["base"] is back["tied"]
    for key in ("t", "slice", "bcast"):
        np.testing.assert_array_equal(back[key], obj[key])
        assert back[key].strides == obj[key].strides
        assert np.shares_memory(back[key], back["base"])
    assert back["fortran"].strides == obj["fortran"].strides
    assert back["scalar"].shape == () and back["scalar"] == 3.5
    assert back["empty"].shape == (0, 3)
    with ptfile.open(tmp_path / "ckpt.pt") as handle:
        assert handle.info("slice").offset == 6
        assert handle.info("slice").strides == (6, 2)
        assert handle.info("bcast").strides == (0, 1)
        assert handle.info("bcast").storage == handle.info("base").storage
        assert len({handle.info(k).storage for k in handle}) == 4  # base, fortran, scalar, empty


def test_negative_strides_are_copied(tmp_path):
    base = np.arange(10, dtype=np.int32)
    back = _save_load(tmp_path, {"base": base, "rev": base[::-1]})
    np.testing.assert_array_equal(back["rev"], base[::-1])
    assert not np.shares_memory(back["rev"], back["base"])


def test_misaligned_view_is_copied(tmp_path):
    raw = np.arange(9, dtype=np.uint8)
    odd = raw[1:].view(np.float32)  # starts one byte into the uint8 root
    back = _save_load(tmp_path, {"odd": odd})
    assert back["odd"].tobytes() == odd.tobytes()


def test_nonnative_byte_order_is_converted(tmp_path):
    big = np.arange(4, dtype=">i4")
    back = _save_load(tmp_path, {"big": big})
    assert back["big"].dtype == np.int32
    np.testing.assert_array_equal(back["big"], [0, 1, 2, 3])


def test_parameter_round_trips(tmp_path):
    param = np.ones(3, np.float32).view(ptfile.Parameter)
    param.requires_grad = False
    back = _save_load(tmp_path, {"p": param, "again": param})
    assert isinstance(back["p"], ptfile.Parameter) and back["p"].requires_grad is False
    assert back["again"] is back["p"]


def test_records_are_written_back_as_read(tmp_path):
    module = Record(Global("mymodels", "Net"), (), {"training": True, "_modules": {"fc": 1}})
    dev = Record(Global("torch", "device"), ("cpu",))
    listy = Record(Global("mymodels", "Seq"), ())
    listy.listitems.extend([1, 2])
    listy.items["k"] = "v"
    back = _save_load(tmp_path, {"m": module, "d": dev, "l": listy}, records=True)
    assert back["m"].cls == module.cls and back["m"].state == module.state
    assert back["d"].args == ("cpu",)
    assert back["l"].listitems == [1, 2] and back["l"].items == {"k": "v"}
    raw = zipfile.ZipFile(tmp_path / "ckpt.pt").read("ckpt/data.pkl")
    assert b"ctorch\ndevice\n" in raw and b"cmymodels\nNet\n" in raw


# -- errors before writing ----------------------------------------------------------


def test_unsupported_value_names_its_path_and_writes_nothing(tmp_path):
    target = tmp_path / "x.pt"
    obj = {"model": {"layers": [{"weight": object()}]}}
    with pytest.raises(ptfile.PtfileError, match=r"model\.layers\.0\.weight"):
        ptfile.save(obj, target)
    assert list(tmp_path.iterdir()) == []


def test_module_slots_are_left_out_of_error_paths(tmp_path):
    module = Record(Global("m", "Net"), (), {"_modules": {"fc": Record(Global("m", "L"), (), {"_parameters": {
        "weight": np.zeros(2, dtype=np.float128)}})}})
    with pytest.raises(ptfile.PtfileError, match=r"^fc\.weight: cannot save an array of numpy dtype float128"):
        ptfile.save(module, tmp_path / "x.pt")


@pytest.mark.parametrize(
    "bad", [np.array(["a"]), np.array([object()]), np.ma.masked_array([1, 2]), ml_dtypes.bfloat16(1), {1j: 1j}.keys()],
    ids=["str-array", "object-array", "masked", "ml-scalar", "dict-keys"],
)
def test_values_torch_cannot_hold_are_refused(tmp_path, bad):
    with pytest.raises(ptfile.PtfileError, match=r"^x: "):
        ptfile.save({"x": bad}, tmp_path / "x.pt")


def test_two_types_over_one_memory_are_refused(tmp_path):
    base = np.zeros(4, np.float32)
    with pytest.raises(ptfile.PtfileError, match=r"^b: views memory already saved as torch.float32"):
        ptfile.save({"a": base, "b": base.view(np.int32)}, tmp_path / "x.pt")


def test_empty_base_name_is_refused(tmp_path):
    with pytest.raises(ptfile.PtfileError, match="empty base name"):
        ptfile.save({}, tmp_path / ".hidden")


# -- atomic, deterministic, streaming -----------------------------------------------


def test_crash_during_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    ptfile.save({"old": np.zeros(3)}, target)
    before = target.read_bytes()
    real = ZipRecordWriter.write_record

    def failing(self, name, data, size=None):
        if name == "data/1":
            raise OSError("disk full")
        return real(self, name, data, size)

    monkeypatch.setattr(ZipRecordWriter, "write_record", failing)
    with pytest.raises(OSError, match="disk full"):
        ptfile.save({"a": np.ones(1000), "b": np.ones(1000)}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_file_object_target(tmp_path):
    import io

    buf = io.BytesIO()
    ptfile.save({"a": np.arange(3)}, buf)
    assert zipfile.ZipFile(io.BytesIO(buf.getvalue())).namelist()[0] == "archive/data.pkl"
    np.testing.assert_array_equal(ptfile.load(buf.getvalue())["a"], np.arange(3))


def test_output_is_deterministic_across_processes(tmp_path):
    script = (
        "import numpy as np, ptfile, sys\n"
        "obj = {'s': {'alpha', 'beta', 'gamma', 'delta'}, 'w': np.arange(5.0), 'k': {'x': 1, 'y': [1, 2]}}\n"
        "ptfile.save(obj, sys.argv[1])\n"
    )
    outputs = []
    for seed in ("1", "2"):
        path = tmp_path / seed / "same.pt"
        path.parent.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": os.pathsep.join(sys.path)}
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env)
        outputs.append(path.read_bytes())
    assert outputs[0] == outputs[1]


def test_storage_keys_and_record_order(tmp_path):
    a, b = np.zeros(2, np.float32), np.ones(2, np.float32)
    ptfile.save({"b": b, "a": a, "b2": b[1:]}, tmp_path / "m.pt")
    names = zipfile.ZipFile(tmp_path / "m.pt").namelist()
    assert names == [
        "m/data.pkl", "m/.format_version", "m/.storage_alignment", "m/byteorder", "m/data/0", "m/data/1",
        "m/version", "m/.data/serialization_id",
    ]
    z = zipfile.ZipFile(tmp_path / "m.pt")
    assert z.read("m/data/0") == b.tobytes() and z.read("m/data/1") == a.tobytes()


def test_memory_does_not_grow_with_checkpoint_size(tmp_path):
    big = np.ones(64 << 20, np.uint8)
    tracemalloc.start()
    try:
        ptfile.save({"big": big}, tmp_path / "big.pt")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak} bytes while writing 64 MiB"
    assert os.path.getsize(tmp_path / "big.pt") > 64 << 20


# -- shards -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30), ("1.5kb", 1500), (" 10 KiB ", 10240), (7, 7)],
)
def test_parse_size(text, value):
    assert writer.parse_size(text) == value


@pytest.mark.parametrize("bad", ["5 parsecs", "GB", "-1MB", 0, 1.5])
def test_parse_size_refuses(bad):
    with pytest.raises((ValueError, TypeError)):
        writer.parse_size(bad)


def test_shard_plan_greedy_shared_and_oversized():
    sd = {
        "a": np.zeros(100, np.uint8),
        "b": np.zeros(100, np.uint8),
        "big": np.zeros(500, np.uint8),
        "c": np.zeros(60, np.uint8),
    }
    sd["a_tied"] = sd["a"][10:]
    shards, total = writer.plan_shards(sd, 250)
    assert shards == [["a", "b", "a_tied"], ["big"], ["c"]]
    shards, _ = writer.plan_shards({"x": np.zeros(10, np.uint8), "y": np.zeros(10, np.uint8)}, 10)
    assert shards == [["x"], ["y"]]
    assert total == 760


def test_save_sharded_round_trip_and_single_shard(tmp_path):
    sd = {f"layer{i}.weight": np.full(50, i, np.float32) for i in range(6)}
    names = ptfile.save_sharded(sd, tmp_path, max_shard_size=450)
    assert names[-1] == "pytorch_model.bin.index.json" and len(names) == 4
    import json

    index = json.loads((tmp_path / "pytorch_model.bin.index.json").read_text())
    assert index["metadata"]["total_size"] == 6 * 200
    for key, file in index["weight_map"].items():
        np.testing.assert_array_equal(ptfile.load(tmp_path / file)[key], sd[key])
    assert ptfile.save_sharded(sd, tmp_path) == ["pytorch_model.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pytorch_model.bin"]  # stale shards removed
    assert list(ptfile.load(tmp_path / "pytorch_model.bin")) == list(sd)


def test_save_sharded_refuses_non_arrays(tmp_path):
    with pytest.raises(ptfile.PtfileError, match="only arrays"):
        ptfile.save_sharded({"a": 1}, tmp_path)
