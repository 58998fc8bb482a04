"""The library behind the command: safetensors I/O, conversion, editing, diff, stats, shards."""

from __future__ import annotations

import json
import struct
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import ptfile
from ptfile.formats.npformat import write_npz
from ptfile.formats.stformat import read_safetensors, remove_shared, write_safetensors
from ptfile.tools.compare import compare_arrays, diff, match, strip_prefixes
from ptfile.tools.convert import cast, convert
from ptfile.tools.edit import EditRules, edit_mapping
from ptfile.tools.statistics import tensor_stats

FIXTURES = Path(__file__).resolve().parent / "fixtures"
STATE_DICT = FIXTURES / "state_dict.pt"


# -- safetensors ---------------------------------------------------------------


def test_safetensors_golden_bytes(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors({"test": np.zeros((2, 2), np.int32)}, path)
    header = b'{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}'
    header += b" " * (-len(header) % 8)
    assert path.read_bytes() == struct.pack("<Q", len(header)) + header + b"\0" * 16


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn", "float8_e5m2", "float16", "float32", "int64",
                                   "uint16", "bool", "complex64"])
def test_safetensors_round_trip_and_real_package(tmp_path, dtype):
    np_dtype = np.dtype(getattr(ml_dtypes, dtype, None) or dtype)
    raw = np.arange(24, dtype=np.uint8).repeat(np_dtype.itemsize)[: 24 * np_dtype.itemsize]
    array = raw.view(np_dtype).reshape(4, 6) if np_dtype != np.bool_ else (raw[:24] % 2).astype(bool).reshape(4, 6)
    path = tmp_path / "t.safetensors"
    write_safetensors({"a": array, "t": array.T}, path, {"k": "v"})
    tensors, metadata = read_safetensors(path)
    assert metadata == {"k": "v"}
    assert tensors["a"].tobytes() == array.tobytes() and tensors["t"].tobytes() == np.ascontiguousarray(array.T).tobytes()
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    loaded = load_file(str(path))
    assert loaded["a"].contiguous().view(torch.uint8).numpy().tobytes() == array.tobytes()


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize(
    "header,data,message",
    [
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "outside"),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 16 bytes"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "hole or overlap"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
          "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "hole or overlap"),
        ({"a": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "no known dtype"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "bad shape"),
    ],
)
def test_hostile_safetensors(tmp_path, header, data, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_safetensors_bytes(header, data))
    with pytest.raises(ptfile.PtfileError, match=message):
        read_safetensors(path)


def test_safetensors_huge_header_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ptfile.LimitExceededError):
        read_safetensors(path)


def test_remove_shared_like_safetensors_converter():
    base = np.arange(12, dtype=np.float32)
    tensors = {"a": base, "b_tied": base, "c": np.ones(3, np.float32), "half": base[:6]}
    kept, dropped = remove_shared(tensors)
    assert dropped == {"b_tied": "a", "half": "a"}
    assert set(kept) == {"a", "c"}
    with pytest.raises(ptfile.PtfileError, match="share memory"):
        remove_shared({"x": base[:6], "y": base[3:9]})  # neither covers the buffer: never silently lost
    lone, dropped = remove_shared({"slice": base[2:5]})
    assert not dropped and lone["slice"].tobytes() == base[2:5].tobytes()


# -- convert -------------------------------------------------------------------


def test_npz_keeps_ml_dtypes(tmp_path):
    tensors = {"b": np.arange(5, dtype=np.float32).astype(ml_dtypes.bfloat16), "i": np.arange(3)}
    write_npz(tensors, str(tmp_path / "t.npz"))
    back = ptfile.load(tmp_path / "t.npz")
    assert back["b"].dtype.name == "bfloat16" and back["b"].tobytes() == tensors["b"].tobytes()
    assert back["i"].tolist() == [0, 1, 2]


def test_npz_tensor_names_are_never_taken_for_savez_options(tmp_path):
    # np.savez(out, **arrays) would drop a tensor named allow_pickle and refuse one named file
    tensors = {"file": np.arange(3, dtype=np.int32), "allow_pickle": np.ones((2, 2), np.float32), "x": np.zeros(1)}
    write_npz(tensors, str(tmp_path / "t.npz"))
    with np.load(tmp_path / "t.npz", allow_pickle=False) as npz:  # numpy itself reads every tensor back
        assert sorted(npz.files) == sorted(tensors)
        for key, array in tensors.items():
            assert npz[key].dtype == array.dtype and npz[key].tolist() == array.tolist()
    back = ptfile.load(tmp_path / "t.npz")
    assert {key: value.tolist() for key, value in back.items()} == {k: v.tolist() for k, v in tensors.items()}


def test_cast_only_floats():
    out = cast({"f": np.ones(2, ml_dtypes.bfloat16), "i": np.ones(2, np.int64)}, "float32")
    assert out["f"].dtype == np.float32 and out["i"].dtype == np.int64
    with pytest.raises(ptfile.PtfileError):
        cast({"f": np.ones(2)}, "int8")


def test_convert_pt_safetensors_pt_round_trip(tmp_path):
    convert(STATE_DICT, str(tmp_path / "m.safetensors"))
    convert(tmp_path / "m.safetensors", str(tmp_path / "back.pt"))
    assert diff(STATE_DICT, tmp_path / "back.pt").equal


def test_convert_key_picks_nested_state_dict(tmp_path):
    report = convert(FIXTURES / "training.pt", str(tmp_path / "m.safetensors"), key="model")
    tensors, _ = read_safetensors(tmp_path / "m.safetensors")
    with ptfile.open(FIXTURES / "training.pt") as ckpt:
        expected = [k[len("model."):] for k in ckpt.keys() if k.startswith("model.")]
    assert sorted(tensors) == sorted(expected) and report.tensors == len(expected)


def test_convert_reports_skipped_values(tmp_path):
    report = convert(FIXTURES / "training.pt", str(tmp_path / "all.safetensors"))
    assert "epoch" in report.skipped_values


# -- edit ----------------------------------------------------------------------


def test_edit_rules_order_and_collisions():
    mapping = OrderedDict(
        [("module.encoder.module.w", 1), ("module.head.w", 2), ("module.head.running_mean", 3)]
    )
    edited, log = edit_mapping(mapping, EditRules(strip=["module."], rename=[("head.", "classifier.")],
                                                  drop=["running_"]))
    assert list(edited) == ["encoder.module.w", "classifier.w"]  # only leading prefixes are stripped
    assert any(line.startswith("drop") for line in log)
    with pytest.raises(ptfile.PtfileError, match="both be renamed"):
        edit_mapping({"a.x": 1, "b.x": 2}, EditRules(rename_regex=[(r"^\w+\.", "")]))


def test_edit_keeps_state_dict_metadata():
    mapping = OrderedDict(w=np.zeros(2))
    mapping._metadata = {"": {"version": 1}}
    edited, _ = edit_mapping(mapping, EditRules(keep=["w"]))
    assert edited._metadata == mapping._metadata


# -- diff, match, stats --------------------------------------------------------


def test_compare_arrays_nan_and_tolerance():
    a = np.array([1.0, np.nan, 3.0], np.float32)
    assert compare_arrays(a, a.copy(), 0, 0)[0] == "equal"
    b = np.array([1.0, np.nan, 3.001], np.float32)
    status, max_abs, _, bad = compare_arrays(a, b, 0, 0)
    assert status == "different" and bad == 1 and max_abs == pytest.approx(0.001, rel=1e-3)
    assert compare_arrays(a, b, 0.01, 0)[0] == "close"
    c = np.array([1.0, 2.0, 3.0], np.float32)
    assert compare_arrays(a, c, 1e9, 1e9)[0] == "different"  # NaN against a number never matches


def test_strip_prefixes():
    assert strip_prefixes("module._orig_mod.x.module.y", ["module.", "_orig_mod."]) == "x.module.y"


def test_match_prefix_hint(tmp_path):
    sd = ptfile.load(STATE_DICT)
    tensors = {"module." + k: v for k, v in sd.items() if isinstance(v, np.ndarray)}
    ptfile.save(tensors, tmp_path / "wrapped.pt")
    result = match(tmp_path / "wrapped.pt", STATE_DICT)
    assert not result.ok and any("'module.'" in hint for hint in result.suggestions)


def test_stats_exact_for_large_counts():
    values = (np.arange(10_000_000, dtype=np.float64) * 1e-3 + 1e6).astype(np.float32)
    values[5] = np.nan
    values[7] = np.inf
    stats = tensor_stats("x", values)
    finite = values[np.isfinite(values)].astype(np.float64)
    assert (stats.nan, stats.inf) == (1, 1)
    assert stats.mean == pytest.approx(finite.mean(), rel=1e-12)
    assert stats.std == pytest.approx(finite.std(), rel=1e-9)


# -- shards --------------------------------------------------------------------


def test_sharded_round_trip(tmp_path):
    sd = {k: v for k, v in ptfile.load(STATE_DICT).items() if isinstance(v, np.ndarray)}
    ptfile.save_sharded(sd, tmp_path, max_shard_size=300)
    assert (tmp_path / "pytorch_model.bin.index.json").exists()
    merged = ptfile.load(tmp_path)
    assert sorted(merged) == sorted(sd)  # the index lists names sorted, as Hugging Face writes it
    for key in sd:
        assert merged[key].tobytes() == sd[key].tobytes()
    with ptfile.open(tmp_path / "pytorch_model.bin.index.json") as shards:
        assert sorted(shards.keys()) == sorted(sd)


@pytest.mark.parametrize("shard", ["../outside.bin", "/abs/x.bin", "sub/x.bin", ""])
def test_shard_index_cannot_escape_its_folder(tmp_path, shard):
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(ptfile.CorruptFileError, match="plain file name"):
        ptfile.open(index)


def test_shard_missing_a_listed_tensor(tmp_path):
    ptfile.save({"a": np.zeros(1)}, tmp_path / "s1.bin")
    (tmp_path / "x.index.json").write_text(json.dumps({"weight_map": {"a": "s1.bin", "b": "s1.bin"}}))
    with pytest.raises(ptfile.CorruptFileError, match="lacks it"):
        ptfile.load(tmp_path / "x.index.json")
