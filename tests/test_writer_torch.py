"""Interop: files ptfile writes, as torch 2.13 loads them; bytes compared with torch.save."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ptfile

torch = pytest.importorskip("torch")
nn = torch.nn

# numpy dtype -> torch dtype, every type ptfile writes
DTYPES = {
    np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
    np.dtype(ml_dtypes.bfloat16): torch.bfloat16, np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32,
    np.dtype(np.int16): torch.int16, np.dtype(np.int8): torch.int8, np.dtype(np.uint8): torch.uint8,
    np.dtype(np.bool_): torch.bool, np.dtype(np.complex128): torch.complex128,
    np.dtype(np.complex64): torch.complex64, np.dtype(ml_dtypes.complex32): torch.complex32,
    np.dtype(np.uint16): torch.uint16, np.dtype(np.uint32): torch.uint32, np.dtype(np.uint64): torch.uint64,
    np.dtype(ml_dtypes.float8_e5m2): torch.float8_e5m2, np.dtype(ml_dtypes.float8_e4m3fn): torch.float8_e4m3fn,
    np.dtype(ml_dtypes.float8_e5m2fnuz): torch.float8_e5m2fnuz,
    np.dtype(ml_dtypes.float8_e4m3fnuz): torch.float8_e4m3fnuz,
    np.dtype(ml_dtypes.float8_e8m0fnu): torch.float8_e8m0fnu,
}


def raw_bytes(t) -> bytes:
    """A tensor's elements in logical order as bytes (torch cannot .numpy() every dtype)."""
    # a fresh buffer: .contiguous() keeps odd strides of size-1 tensors, which .view refuses
    flat = torch.empty(t.numel(), dtype=t.dtype).copy_(t.detach().reshape(-1))
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def load_both(path):
    return torch.load(path, weights_only=True), torch.load(path, weights_only=True, mmap=True)


def random_array(dtype, shape, seed):
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.random.default_rng(seed).integers(0, 256, size=nbytes, dtype=np.uint8)
    if dtype == np.bool_:
        raw %= 2
    return raw.view(dtype).reshape(shape)


def views(base):
    """Views of ``base`` torch can express, each with how numpy makes it."""
    out = {"same": base, "T": base.T}
    if base.ndim >= 1 and base.shape[0] > 1:
        out["slice"] = base[1:]
        out["step"] = base[::2]
        out["bcast"] = np.broadcast_to(base[:1], (3, *base.shape[1:]))
    return out


# -- every dtype, shape, stride, sharing pattern ------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from(sorted(DTYPES, key=str)),
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple),
    pick=st.sets(st.sampled_from(["same", "T", "slice", "step", "bcast"]), min_size=1),
    seed=st.integers(0, 1000),
)
def test_torch_loads_views_with_sharing_and_strides(tmp_path, dtype, shape, pick, seed):
    base = random_array(dtype, shape, seed)
    obj = {"base": base}
    obj.update({k: v for k, v in views(base).items() if k in pick})
    path = tmp_path / "h.pt"
    ptfile.save(obj, path)
    for loaded in load_both(path):
        storage = loaded["base"].untyped_storage().data_ptr()
        for key, arr in obj.items():
            t = loaded[key]
            assert t.dtype == DTYPES[dtype]
            assert tuple(t.shape) == arr.shape
            assert raw_bytes(t) == np.ascontiguousarray(arr).tobytes()
            if arr.size:
                assert t.stride() == tuple(s // dtype.itemsize for s in arr.strides)
                assert t.untyped_storage().data_ptr() == storage
        if base.size:
            assert loaded["base"].untyped_storage().nbytes() == base.nbytes


def test_every_dtype_pickles_as_torch_does(tmp_path):
    for np_dtype, torch_dtype in DTYPES.items():
        t = torch.zeros(3, dtype=torch_dtype)
        torch.save({"t": t}, tmp_path / "m.pt")
        ours = tmp_path / "ours"
        ours.mkdir(exist_ok=True)
        ptfile.save({"t": np.zeros(3, np_dtype)}, ours / "m.pt")
        assert (ours / "m.pt").read_bytes() == (tmp_path / "m.pt").read_bytes(), torch_dtype


def test_tied_weights_are_one_tensor(tmp_path):
    w = np.ones((2, 2), np.float32)
    ptfile.save({"a": w, "b": w}, tmp_path / "t.pt")
    for loaded in load_both(tmp_path / "t.pt"):
        assert loaded["a"] is loaded["b"]


def test_negative_strides_are_copied_for_torch(tmp_path):
    base = np.arange(6, dtype=np.float32)
    ptfile.save({"rev": base[::-1]}, tmp_path / "r.pt")
    for loaded in load_both(tmp_path / "r.pt"):
        assert loaded["rev"].tolist() == [5, 4, 3, 2, 1, 0]


# -- read by ptfile, written again: the same checkpoint (and the same bytes) --------


def torch_files(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model[2].weight = model[0].weight.__class__(torch.randn(2, 4))
    x = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    cases = {
        "state_dict.pt": model.state_dict(),
        "views.pt": {"x": x, "t": x.t(), "s": x[1:, ::2], "tied": x, "e": x.expand(3, 4, 6)[1]},
        "params.pt": {"p": nn.Parameter(torch.ones(3)), "q": nn.Parameter(torch.zeros(2), requires_grad=False)},
        "mixed.pt": {
            "f8": torch.zeros(3, dtype=torch.float8_e4m3fn), "bf": torch.ones(2, dtype=torch.bfloat16),
            "meta": {"epoch": 3, "lr": 0.1, "name": "run", "tags": ["a", "b"], "b": b"raw", "c": 1 + 2j},
            "u32": torch.zeros(4, dtype=torch.uint32), "scalar": torch.tensor(5),
        },
        "many.pt": {f"t{i}": torch.full((2,), float(i)) for i in range(700)},
    }
    paths = {}
    for name, obj in cases.items():
        path = tmp_path / "torch" / name
        path.parent.mkdir(exist_ok=True)
        torch.save(obj, path)
        paths[name] = path
    return paths


def same_checkpoint(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
        assert a.storage_offset() == b.storage_offset() and a.requires_grad == b.requires_grad
        assert raw_bytes(a) == raw_bytes(b)
        assert a.untyped_storage().nbytes() == b.untyped_storage().nbytes()
    elif isinstance(a, dict):
        assert list(a) == list(b)
        assert getattr(a, "_metadata", None) == getattr(b, "_metadata", None)
        for key in a:
            same_checkpoint(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            same_checkpoint(x, y)
    else:
        assert a == b


def sharing_pattern(tree):
    ptrs = {}
    return [ptrs.setdefault(t.untyped_storage().data_ptr(), len(ptrs)) for _, t in sorted(flat_tensors(tree))]


def flat_tensors(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from flat_tensors(v, f"{prefix}.{k}")


@pytest.mark.parametrize("name", ["state_dict.pt", "views.pt", "params.pt", "mixed.pt", "many.pt"])
@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "copy"])
def test_rewrite_is_the_same_checkpoint_and_the_same_bytes(tmp_path, name, mmap):
    src = torch_files(tmp_path)[name]
    dst = tmp_path / "ptfile" / name  # same file name: same archive prefix
    dst.parent.mkdir()
    ptfile.save(ptfile.load(src, mmap=mmap), dst)
    for original, rewritten in zip(load_both(src), load_both(dst), strict=True):
        same_checkpoint(original, rewritten)
        assert sharing_pattern(original) == sharing_pattern(rewritten)
    assert dst.read_bytes() == src.read_bytes()


def test_parameters_come_back_as_parameters(tmp_path):
    src = torch_files(tmp_path)["params.pt"]
    ptfile.save(ptfile.load(src), tmp_path / "p.pt")
    loaded = torch.load(tmp_path / "p.pt", weights_only=True)
    assert isinstance(loaded["p"], nn.Parameter) and loaded["p"].requires_grad
    assert isinstance(loaded["q"], nn.Parameter) and not loaded["q"].requires_grad


def test_whole_pickled_module_round_trips_through_records(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3))
    torch.save(model, tmp_path / "m.pt")
    (tmp_path / "out").mkdir()
    ptfile.save(ptfile.load(tmp_path / "m.pt", records=True), tmp_path / "out" / "m.pt")
    back = torch.load(tmp_path / "out" / "m.pt", weights_only=False)
    assert isinstance(back, nn.Sequential)
    assert torch.equal(back[0].weight, model[0].weight)
    assert (tmp_path / "out" / "m.pt").read_bytes() == (tmp_path / "m.pt").read_bytes()


def test_fresh_state_dict_is_byte_identical_to_torch_save(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    torch.save(model.state_dict(), tmp_path / "ref.pt")
    ours = {k: v.numpy() for k, v in model.state_dict().items()}
    (tmp_path / "ptfile").mkdir()
    ptfile.save(ours, tmp_path / "ptfile" / "ref.pt")
    # a plain dict is not the OrderedDict with _metadata torch saves: same tensors, different pickle
    torch.save(dict(model.state_dict()), tmp_path / "ref.pt")
    assert (tmp_path / "ptfile" / "ref.pt").read_bytes() == (tmp_path / "ref.pt").read_bytes()


# -- shards -------------------------------------------------------------------------


def test_sharded_checkpoint_loads_through_the_index(tmp_path):
    sd = {f"h.{i}.w": np.random.default_rng(i).standard_normal((64, 64)).astype(np.float32) for i in range(5)}
    sd["h.0.w_t"] = sd["h.0.w"].T
    ptfile.save_sharded(sd, tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "pytorch_model.bin.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3  # two 16 KiB tensors fit in 40 KB
    merged = {}
    for file in sorted(set(index["weight_map"].values())):
        merged.update(torch.load(tmp_path / file, weights_only=True, mmap=True))
    assert set(merged) == set(sd)
    for key, arr in sd.items():
        assert np.array_equal(merged[key].numpy(), arr)
    assert merged["h.0.w_t"].untyped_storage().data_ptr() == merged["h.0.w"].untyped_storage().data_ptr()


# -- ZIP64 --------------------------------------------------------------------------


@pytest.mark.slow
def test_storage_over_4gib_uses_zip64_and_loads_with_mmap(tmp_path):
    size = 4_300_000_000
    big = np.zeros(size, np.uint8)
    big[-3:] = (7, 8, 9)
    small = np.arange(4, dtype=np.int64)
    path = tmp_path / "huge.pt"
    try:
        ptfile.save({"big": big, "after": small}, path)
        del big
        loaded = torch.load(path, weights_only=True, mmap=True)
        assert loaded["big"].shape == (size,)
        assert loaded["big"][-3:].tolist() == [7, 8, 9]
        assert loaded["after"].tolist() == [0, 1, 2, 3]  # a record whose header offset is past 4 GiB
        del loaded
    finally:
        if os.path.exists(path):
            os.unlink(path)
