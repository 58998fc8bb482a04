"""Tensors for torch, JAX and MLX, and the safetensors API, checked against the real libraries.

``ptfile.torch.load`` must give what ``torch.load`` gives: for every golden fixture the
same tensors bit for bit, with the same dtypes, shapes, strides, storage offsets,
parameter flags and the same groups of tensors sharing a storage.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ptfile
from ptfile.errors import FrameworkMissingError, PtfileError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SRC = Path(__file__).resolve().parent.parent / "src"


def test_import_ptfile_imports_no_framework() -> None:
    code = ("import sys, ptfile; ptfile.open; "
            "print(sorted(m for m in ('torch', 'jax', 'mlx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC)})
    assert out.stdout.strip() == "[]"


def test_numpy_framework_reads_without_importing_torch(tmp_path) -> None:
    path = tmp_path / "a.pt"
    ptfile.save({"w": np.arange(4, dtype=np.float32)}, path)
    code = (f"import sys, ptfile; t = ptfile.load({str(path)!r}, framework='numpy'); "
            "h = ptfile.open(" + repr(str(path)) + "); h.get_tensor('w', framework='numpy'); "
            "print(type(t['w']).__name__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC)})
    assert out.stdout.split() == ["ndarray", "False"]


def test_unknown_framework_is_refused(tmp_path) -> None:
    path = tmp_path / "a.pt"
    ptfile.save({"w": np.arange(4, dtype=np.float32)}, path)
    with pytest.raises(PtfileError, match="unknown framework 'tf'"):
        ptfile.load(path, framework="tf")
    with ptfile.open(path) as handle, pytest.raises(PtfileError, match="unknown framework"):
        handle.get_tensor("w", framework="paddle")


def test_missing_framework_says_how_to_install(tmp_path) -> None:
    """A framework that cannot be imported is a FrameworkMissingError (an ImportError too)."""
    path = tmp_path / "a.pt"
    ptfile.save({"w": np.arange(4, dtype=np.float32)}, path)
    code = ("import sys, ptfile\nsys.modules['mlx'] = None\nsys.modules['mlx.core'] = None\n"
            f"try:\n    ptfile.load({str(path)!r}, framework='mlx')\n"
            "except ptfile.errors.FrameworkMissingError as exc:\n"
            "    print(isinstance(exc, ImportError), 'pip install' in str(exc) and 'ptfile[mlx]' in str(exc))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(SRC)})
    assert out.stdout.split() == ["True", "True"], out.stderr
    assert issubclass(FrameworkMissingError, PtfileError)


# -- torch --------------------------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch")


def _tensors(tree, path: str = "") -> dict:
    """Every tensor of a tree by dotted path (dicts, lists, tuples, namespaces)."""
    torch = _torch()
    found = {}
    if isinstance(tree, torch.Tensor):
        found[path] = tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            found.update(_tensors(value, f"{path}.{key}" if path else str(key)))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            found.update(_tensors(value, f"{path}.{index}" if path else str(index)))
    elif hasattr(tree, "__dict__") and type(tree).__module__ == "argparse":
        found.update(_tensors(vars(tree), path))
    return found


def _bits(tensor) -> bytes:
    """The values' bytes; conjugate and negative views by exact sign-bit flips, as the golden files hold them."""
    from conftest import import_generator

    return import_generator().raw_bytes(tensor)


def _sharing(tensors: dict, flagged: set[str]) -> list[list[str]]:
    """Groups of names whose tensors share one storage (empty storages are not shared).

    Conjugate and negative views (``flagged``) are left out: torch keeps them lazy over
    their base's storage, ptfile resolves their values into memory of their own.
    """
    groups: dict[int, list[str]] = {}
    storages: dict[int, int] = {}
    for name, tensor in tensors.items():
        storage = tensor.untyped_storage()
        if storage.nbytes() and name not in flagged:
            groups.setdefault(storage.data_ptr(), []).append(name)
            # one storage object per memory, as torch.save counts storages: not two over the same bytes
            assert storages.setdefault(storage.data_ptr(), storage._cdata) == storage._cdata, name
    return sorted(sorted(group) for group in groups.values())


#: Plain (not Parameter) tensors saved with requires_grad=True: ptfile's numpy arrays carry no
#: such flag, so they come back with requires_grad=False.
GRAD_LOST = {"parameters.pt": {"leaf"}}
#: numpy arrays pickled in the file (torch.load gives numpy arrays): ptfile's tree does not tell
#: them from tensors, so they come back as tensors with the same values.
NUMPY_IN_FILE = {"training.pt": {"counts", "fortran", "numpy_rng.1"}}
#: Empty views at a storage offset: an empty numpy array keeps no offset, so they come back at 0.
OFFSET_LOST = {"edge_shapes.pt": {"empty_slice"}}


def _raw_bits_types() -> dict:
    """torch types with no arithmetic, which ptfile reads as unsigned integers of their width, bit for bit."""
    torch = _torch()
    return {torch.bits8: torch.uint8, torch.bits16: torch.uint16, torch.bits1x8: torch.uint8,
            torch.bits2x4: torch.uint8, torch.bits4x2: torch.uint8, torch.float4_e2m1fn_x2: torch.uint8}


def assert_same_tensors(ours, theirs, *, grad_lost=frozenset(), numpy_in_file=frozenset(),
                        offset_lost=frozenset()) -> None:
    """The two trees hold the same tensors, exactly, laid out and shared alike.

    ``grad_lost``, ``numpy_in_file`` and ``offset_lost`` name the known differences (see
    GRAD_LOST, NUMPY_IN_FILE and OFFSET_LOST); each is checked to be what it claims.
    """
    torch = _torch()
    mine, ref = _tensors(ours), _tensors(theirs)
    assert sorted(set(mine) - set(ref)) == sorted(numpy_in_file)
    for name in numpy_in_file:
        array = _value_at(theirs, name)
        assert isinstance(array, np.ndarray) and np.array_equal(mine[name].numpy(), array)
        del mine[name]
    for name, expected in ref.items():
        if name in grad_lost:
            assert expected.requires_grad and not mine[name].requires_grad
            expected = expected.detach()
        if name in offset_lost:
            assert expected.numel() == 0 and expected.storage_offset() and not mine[name].storage_offset()
            expected = expected.as_strided(expected.shape, expected.stride(), 0)
        got = mine[name]
        what = f"{name}: {expected.dtype} {tuple(expected.shape)}"
        assert type(got) is type(expected), what
        assert got.dtype == _raw_bits_types().get(expected.dtype, expected.dtype) and got.shape == expected.shape, what
        assert got.stride() == expected.stride() and got.storage_offset() == expected.storage_offset(), what
        assert got.requires_grad == expected.requires_grad, what
        assert got.untyped_storage().nbytes() == expected.untyped_storage().nbytes() or expected.is_conj() \
            or expected.is_neg(), what
        assert _bits(got) == _bits(expected), what
        if isinstance(expected, torch.nn.Parameter):
            assert vars(got) == vars(expected), what
    flagged = {name for name, tensor in ref.items() if tensor.is_conj() or tensor.is_neg()}
    assert _sharing(mine, flagged) == _sharing(ref, flagged)


GOLDEN = sorted(p.name for p in FIXTURES.glob("*.pt"))


def _value_at(tree, path: str):
    for part in path.split("."):
        tree = tree[int(part)] if isinstance(tree, (list, tuple)) else tree[part]
    return tree


def _torch_load(path, **kwargs):
    torch = _torch()
    weights_only = "training" not in str(path)  # the one fixture holding numpy values and a Namespace
    return torch.load(path, weights_only=weights_only, **kwargs)


@pytest.mark.parametrize("name", GOLDEN)
@pytest.mark.parametrize("mmap", [None, True])
def test_torch_load_gives_what_torch_gives(name: str, mmap) -> None:
    import ptfile.torch as pt

    path = FIXTURES / name
    ours = pt.load(path, mmap=mmap, weights_only="training" not in name)
    assert_same_tensors(ours, _torch_load(path, mmap=bool(mmap)), grad_lost=GRAD_LOST.get(name, set()),
                        numpy_in_file=NUMPY_IN_FILE.get(name, set()), offset_lost=OFFSET_LOST.get(name, set()))


def _tied_transformer(seed: int = 0):
    """A small language model whose output layer shares its weight with the embedding."""
    torch = _torch()
    nn = torch.nn

    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(32, 16)
            layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(16)
            self.head = nn.Linear(16, 32, bias=False)
            self.head.weight = self.embed.weight  # tied

        def forward(self, tokens):
            return self.head(self.norm(self.encoder(self.embed(tokens))))

    torch.manual_seed(seed)
    return TinyLM().eval()


def test_load_state_dict_strict_of_a_tied_transformer(tmp_path) -> None:
    torch = _torch()
    import ptfile.torch as pt

    model = _tied_transformer(0)
    path = tmp_path / "lm.pt"
    torch.save(model.state_dict(), path)
    for mmap in (None, True):
        state = pt.load(path, mmap=mmap)
        assert state._metadata == torch.load(path)._metadata
        assert state["embed.weight"].untyped_storage().data_ptr() == state["head.weight"].untyped_storage().data_ptr()
        fresh = _tied_transformer(1)
        assert fresh.load_state_dict(state, strict=True) == torch.nn.modules.module._IncompatibleKeys([], [])
        tokens = torch.tensor([[1, 5, 7, 31]])
        with torch.no_grad():
            assert torch.equal(fresh(tokens), model(tokens))
        assert fresh.head.weight is fresh.embed.weight


@pytest.mark.parametrize("mmap", [None, False, True])
def test_loaded_tensors_are_writable_and_the_file_is_not_written(tmp_path, mmap) -> None:
    torch = _torch()
    import ptfile.torch as pt

    path = tmp_path / "w.pt"
    torch.save({"w": torch.arange(6.0), "v": torch.arange(4)}, path)
    before = path.read_bytes()
    ours, theirs = pt.load(path, mmap=mmap), torch.load(path, mmap=bool(mmap))
    for state in (ours, theirs):
        state["w"].add_(1)
        state["v"][0] = 9
    assert torch.equal(ours["w"], theirs["w"]) and torch.equal(ours["v"], theirs["v"])
    assert path.read_bytes() == before


def test_read_only_sources_give_read_only_tensors(tmp_path) -> None:
    """A handle over a read-only map does not pretend its tensors are writable memory of their own."""
    torch = _torch()
    path = tmp_path / "w.pt"
    torch.save({"w": torch.arange(6.0)}, path)
    data = bytearray(path.read_bytes())
    state = ptfile.load(data, framework="pt")
    state["w"].add_(1)  # the caller's bytearray is never written through ptfile's views
    assert bytes(data) == path.read_bytes()


@pytest.mark.parametrize("form", ["none", "str", "device", "dict", "callable", "callable_none", "meta"])
def test_map_location_forms_as_torch_load(tmp_path, form) -> None:
    torch = _torch()
    import ptfile.torch as pt

    path = tmp_path / "m.pt"
    torch.save({"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)}, path)
    location = {
        "none": None, "str": "cpu", "device": torch.device("cpu"), "dict": {"cpu": "cpu"},
        "callable": lambda storage, loc: storage, "callable_none": lambda storage, loc: None, "meta": "meta",
    }[form]
    ours, theirs = pt.load(path, map_location=location), torch.load(path, map_location=location)
    for key in theirs:
        assert ours[key].device == theirs[key].device and ours[key].dtype == theirs[key].dtype
        assert ours[key].shape == theirs[key].shape and ours[key].stride() == theirs[key].stride()
        if theirs[key].device.type != "meta":
            assert torch.equal(ours[key], theirs[key])


def test_map_location_of_another_type_is_refused(tmp_path) -> None:
    torch = _torch()
    import ptfile.torch as pt

    path = tmp_path / "m.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(PtfileError, match="map_location must be"):
        pt.load(path, map_location=3)
    with pytest.raises(PtfileError, match="pickle_module must be None"):
        pt.load(path, pickle_module=__import__("pickle"))


def _quantized_and_sparse():
    torch = _torch()
    torch.manual_seed(7)
    dense = torch.randn(4, 6)
    dense[dense.abs() < 0.8] = 0
    return {
        "q_tensor": torch.quantize_per_tensor(torch.randn(3, 4), 0.05, 3, torch.quint8),
        "q_int8": torch.quantize_per_tensor(torch.randn(5), 0.1, 0, torch.qint8),
        "q_int32": torch.quantize_per_tensor(torch.randn(2, 2), 0.01, 1, torch.qint32),
        "q_channel": torch.quantize_per_channel(torch.randn(3, 4), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64),
                                                torch.tensor([0, 1, -1]), 0, torch.qint8),
        "coo": dense.to_sparse(),
        "csr": dense.to_sparse_csr(),
        "csc": dense.to_sparse_csc(),
        "bsr": dense.to_sparse_bsr((2, 3)),
        "bsc": dense.to_sparse_bsc((2, 3)),
    }


def test_quantized_and_sparse_tensors_as_torch_loads_them(tmp_path) -> None:
    torch = _torch()
    import ptfile.torch as pt

    path = tmp_path / "qs.pt"
    torch.save(_quantized_and_sparse(), path)
    ours, theirs = pt.load(path), torch.load(path)
    assert list(ours) == list(theirs)
    for key, expected in theirs.items():
        got = ours[key]
        assert (got.layout, got.dtype, got.shape, got.is_quantized) == \
            (expected.layout, expected.dtype, expected.shape, expected.is_quantized), key
        if expected.is_quantized:
            assert got.qscheme() == expected.qscheme(), key
            assert torch.equal(got.int_repr(), expected.int_repr()) and got.stride() == expected.stride(), key
            if expected.qscheme() == torch.per_tensor_affine:
                assert (got.q_scale(), got.q_zero_point()) == (expected.q_scale(), expected.q_zero_point()), key
            else:
                assert torch.equal(got.q_per_channel_scales(), expected.q_per_channel_scales()), key
                assert torch.equal(got.q_per_channel_zero_points(), expected.q_per_channel_zero_points()), key
                assert got.q_per_channel_axis() == expected.q_per_channel_axis(), key
        else:
            assert torch.equal(got.to_dense(), expected.to_dense()), key
            if expected.layout == torch.sparse_coo:
                assert torch.equal(got._indices(), expected._indices()), key
                assert got.is_coalesced() == expected.is_coalesced(), key
            else:
                assert torch.equal(got.values(), expected.values()), key


def test_torch_save_writes_what_torch_save_writes(tmp_path) -> None:
    """Byte for byte, for a module's state dict, every dtype, views and tied weights."""
    torch = _torch()
    import ptfile.torch as pt
    from conftest import import_generator

    generator = import_generator()
    cases = {"lm": _tied_transformer(0).state_dict(), "dtypes": generator.case_dtypes(),
             "views": generator.case_views(), "shared": generator.case_shared(),
             "parameters": {k: v for k, v in generator.case_parameters().items() if k != "leaf"}}
    for name, state in cases.items():
        (tmp_path / "torch").mkdir(exist_ok=True)
        (tmp_path / "ptfile").mkdir(exist_ok=True)
        theirs, ours = tmp_path / "torch" / f"{name}.pt", tmp_path / "ptfile" / f"{name}.pt"
        torch.save(state, theirs)
        pt.save(state, ours)
        assert ours.read_bytes() == theirs.read_bytes(), name
        assert_same_tensors(torch.load(ours), torch.load(theirs))


def test_torch_save_refuses_what_it_cannot_write(tmp_path) -> None:
    torch = _torch()
    import ptfile.torch as pt

    for value, reason in ((torch.zeros(3).to_sparse(), "dense"), (torch.zeros(2, device="meta"), "CPU"),
                          (torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, torch.qint8), "quantized")):
        with pytest.raises(PtfileError, match=reason):
            pt.save({"x": value}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


# -- handles and safe_open -------------------------------------------------------------------


def test_handle_framework_per_handle_and_per_call(tmp_path) -> None:
    torch = _torch()
    path = tmp_path / "h.pt"
    base = torch.arange(12.0).reshape(3, 4)
    torch.save({"w": base, "tied": base, "row": base[1], "b": torch.arange(4).to(torch.bfloat16)}, path)
    theirs = torch.load(path)
    with ptfile.open(path, framework="pt") as handle:
        w, tied, row = handle["w"], handle.get_tensor("tied"), handle.get_tensor("row")
        assert isinstance(w, torch.Tensor) and torch.equal(w, theirs["w"])
        assert w.untyped_storage().data_ptr() == tied.untyped_storage().data_ptr() == row.untyped_storage().data_ptr()
        assert row.storage_offset() == theirs["row"].storage_offset() == 4
        assert handle.get_tensor("b").dtype == torch.bfloat16
        as_numpy = handle.get_tensor("w", framework="numpy")
        assert isinstance(as_numpy, np.ndarray) and np.array_equal(as_numpy, theirs["w"].numpy())
        part = handle.get_slice("w")[1:, ::2]
        assert isinstance(part, torch.Tensor) and torch.equal(part, theirs["w"][1:, ::2])
        assert isinstance(handle.get_slice("w", framework="numpy")[0], np.ndarray)
        assert dict(handle.metadata()) == {}
    with ptfile.open(path) as handle:  # numpy by default, torch on request
        assert isinstance(handle["w"], np.ndarray)
        assert torch.equal(handle.get_tensor("w", framework="torch"), theirs["w"])
        assert torch.equal(handle.get_slice("b", framework="pt")[1:3], theirs["b"][1:3])


def _state():
    torch = _torch()
    torch.manual_seed(11)
    return {"a": torch.arange(12.0).reshape(4, 3), "b": torch.randn(5).to(torch.bfloat16),
            "c": torch.arange(6, dtype=torch.int64).reshape(2, 3), "d": torch.tensor([True, False, True])}


def _read_like_safetensors(open_fn, path, framework: str) -> dict:
    """The safetensors reading pattern: keys, every tensor, slices with their shape, metadata."""
    out = {}
    with open_fn(path, framework=framework, device="cpu") as f:
        for key in f.keys():
            out[key] = f.get_tensor(key)
        piece = f.get_slice("a")
        out["a.shape"] = piece.get_shape()
        out["a[1:3, :2]"] = piece[1:3, :2]
        out["c[1]"] = f.get_slice("c")[1]
        out["metadata.format"] = (f.metadata() or {}).get("format")
    return out


def _layouts(tmp_path) -> dict:
    """The same state dict as a .pt file, a .bin file, a shard folder, its index and a DCP folder."""
    torch = _torch()
    import torch.distributed.checkpoint as dcp

    import ptfile.torch as pt

    state = _state()
    torch.save(state, tmp_path / "model.pt")
    torch.save(state, tmp_path / "pytorch_model.bin")
    shards = tmp_path / "shards"
    ptfile.save_sharded(ptfile.load(tmp_path / "model.pt"), shards, max_shard_size=64)
    assert len(list(shards.glob("*.bin"))) > 1
    with pytest.warns(UserWarning):  # "torch.distributed is unavailable ... assuming a single process"
        dcp.save(_state(), checkpoint_id=str(tmp_path / "dcp"))
    pt.save(state, tmp_path / "ptfile_saved.pt")
    return {"pt": tmp_path / "model.pt", "bin": tmp_path / "pytorch_model.bin", "shards": shards,
            "index": shards / "pytorch_model.bin.index.json", "dcp": tmp_path / "dcp",
            "ptfile_saved": tmp_path / "ptfile_saved.pt"}


def test_safe_open_reads_every_layout_as_safetensors_reads_its_file(tmp_path) -> None:
    torch = _torch()
    safetensors = pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    reference = tmp_path / "model.safetensors"
    save_file(_state(), reference, metadata={"format": "pt"})
    expected = _read_like_safetensors(safetensors.safe_open, reference, "pt")
    layouts = _layouts(tmp_path)
    layouts["safetensors"] = reference
    for name, path in layouts.items():
        got = _read_like_safetensors(ptfile.safe_open, path, "pt")
        assert sorted(got) == sorted(expected), name
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert isinstance(got[key], torch.Tensor) and got[key].dtype == value.dtype, (name, key)
                assert torch.equal(got[key], value), (name, key)
            elif key != "metadata.format" or name == "safetensors":
                assert got[key] == value, (name, key)


def test_safe_open_numpy_as_safetensors_numpy(tmp_path) -> None:
    _torch()
    safetensors = pytest.importorskip("safetensors")
    from safetensors.numpy import save_file

    state = {"a": np.arange(12, dtype=np.float32).reshape(4, 3), "c": np.arange(6, dtype=np.int64).reshape(2, 3)}
    reference = tmp_path / "model.safetensors"
    save_file(state, reference)
    ptfile.save(state, tmp_path / "model.pt")
    expected = _read_like_safetensors(safetensors.safe_open, reference, "np")
    for path in (reference, tmp_path / "model.pt"):
        got = _read_like_safetensors(ptfile.safe_open, path, "np")
        assert sorted(got) == sorted(expected)
        for key, value in expected.items():
            if isinstance(value, np.ndarray):
                assert type(got[key]) is np.ndarray and got[key].dtype == value.dtype
                assert np.array_equal(got[key], value), key
            else:
                assert got[key] == value, key


class _Touch:
    """Pickles as a call that creates a marker file: the harmless stand-in for a payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_safe_open_and_torch_load_refuse_what_scan_does_not_call_clean(tmp_path) -> None:
    torch = _torch()
    import ptfile.torch as pt

    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": _Touch(marker)}, path)
    assert ptfile.scan(path).verdict == "dangerous"
    with pytest.raises(PtfileError):
        ptfile.safe_open(path, framework="pt")
    for weights_only in (True, False):
        with pytest.raises(PtfileError):
            pt.load(path, weights_only=weights_only)
    assert not marker.exists()


def test_safe_open_and_torch_load_read_under_the_limits_given(tmp_path) -> None:
    """``limits=`` reaches every read, as for ``ptfile.load``: a tight limit refuses, naming the field."""
    torch = _torch()
    import ptfile.torch as pt

    nested: list = [torch.zeros(2), 0]
    for _ in range(20):  # each two-item list opens a MARK inside its parent's
        nested = [nested, 0]
    path = tmp_path / "nested.pt"
    torch.save({"w": torch.ones(3), "deep": nested}, path)
    tight = ptfile.Limits(max_pickle_nesting=5)
    for read in (lambda: pt.load(path, limits=tight), lambda: ptfile.safe_open(path, limits=tight)):
        with pytest.raises(ptfile.LimitExceededError, match=r"max_pickle_nesting"):
            read()
    assert torch.equal(pt.load(path)["w"], torch.ones(3))
    with ptfile.safe_open(path, limits=ptfile.Limits(max_pickle_nesting=50)) as handle:
        assert torch.equal(handle.get_tensor("w"), torch.ones(3))


# -- JAX --------------------------------------------------------------------------------------


def _jax():
    return pytest.importorskip("jax")


def test_jax_arrays_equal_numpy_and_alias_aligned_storages() -> None:
    jax = _jax()
    numpy_state = ptfile.load(FIXTURES / "parameters.pt")
    jax_state = ptfile.load(FIXTURES / "parameters.pt", framework="jax")
    assert list(jax_state) == list(numpy_state)
    for key, array in numpy_state.items():
        got = jax_state[key]
        assert isinstance(got, jax.Array) and got.dtype == array.dtype and got.shape == array.shape
        assert np.array_equal(np.asarray(got).view(np.uint8), array.view(np.ndarray).view(np.uint8))
    assert jax_state["bf16"].dtype.name == "bfloat16"


def test_jax_aliases_large_aligned_storages(tmp_path) -> None:
    """torch aligns storages to 64 bytes: JAX on the CPU can use a large one in place."""
    torch = _torch()
    _jax()
    from ptfile.tensors.frameworks import JAX_ALIAS_BYTES

    path = tmp_path / "big.pt"
    torch.save({"big": torch.arange(JAX_ALIAS_BYTES // 2).to(torch.bfloat16), "small": torch.arange(4.0)}, path)
    with ptfile.open(path, framework="flax") as handle:
        numpy_view = handle.get_tensor("big", framework="numpy")
        big = handle["big"]
        assert big.dtype.name == "bfloat16" and np.array_equal(np.asarray(big), numpy_view)
        assert big.unsafe_buffer_pointer() == numpy_view.__array_interface__["data"][0]
        assert np.array_equal(np.asarray(handle["small"]), np.arange(4.0, dtype=np.float32))


def test_jax_narrows_64_bit_values_only_when_exact(tmp_path) -> None:
    jax = _jax()
    path = tmp_path / "x.pt"
    ptfile.save({"small": np.arange(3, dtype=np.int64), "big": np.array([2**40], np.int64),
                 "f64": np.array([0.5, 1.0]), "f64_fine": np.array([0.1])}, path)
    with ptfile.open(path, framework="jax") as handle:
        if jax.config.jax_enable_x64:
            pytest.skip("64-bit types are enabled: nothing is narrowed")
        assert handle["small"].dtype == np.int32 and handle["small"].tolist() == [0, 1, 2]
        assert handle["f64"].dtype == np.float32
        for key in ("big", "f64_fine"):
            with pytest.raises(PtfileError, match="jax_enable_x64"):
                handle.get_tensor(key)


def test_jax_refuses_what_it_cannot_hold() -> None:
    _jax()
    with pytest.raises(PtfileError, match="complex32"):
        ptfile.load(FIXTURES / "dtypes.pt", framework="jax")


def _mlx():
    return pytest.importorskip("mlx.core")


def _mlx_bits(array) -> bytes:
    """An MLX array's bytes in C order (bfloat16 through its bits: numpy has no MLX bfloat16)."""
    mx = _mlx()
    return np.array(array.view(mx.uint16) if array.dtype == mx.bfloat16 else array).tobytes()


@pytest.mark.parametrize("name", GOLDEN)
def test_mlx_arrays_of_every_golden_tensor(name: str) -> None:
    """Every tensor in a dtype MLX holds comes back in that dtype with the same bits; the rest are refused."""
    mx = _mlx()
    from ptfile.tensors.frameworks import MLX_DTYPES

    path = FIXTURES / name
    refused = set()
    with ptfile.open(path, records=True) as handle:
        for key in handle.keys():
            array = handle.get_tensor(key, framework="numpy")
            if not isinstance(array, np.ndarray) or array.dtype.name not in MLX_DTYPES:
                refused.add(key)
                with pytest.raises(PtfileError, match="MLX has no"):
                    handle.get_tensor(key, framework="mlx")
                continue
            got = handle.get_tensor(key, framework="mlx")
            plain = array.view(np.ndarray)
            assert isinstance(got, mx.array) and got.dtype == getattr(mx, MLX_DTYPES[plain.dtype.name]), key
            assert tuple(got.shape) == plain.shape, key
            assert _mlx_bits(got) == np.ascontiguousarray(plain).tobytes(), key
    if refused:
        with pytest.raises(PtfileError, match="MLX has no"):
            ptfile.load(path, framework="mlx", records=True)
    else:
        assert isinstance(ptfile.load(path, framework="mlx", records=True), (dict, list, tuple))


def test_mlx_keeps_float64_and_refuses_complex128(tmp_path) -> None:
    """MLX by itself narrows float64 and complex128 to 32 bits: ptfile keeps the one and refuses the other."""
    mx = _mlx()
    path = tmp_path / "x.pt"
    wide = np.array([0.1, 1e300, -0.0, np.nan])
    ptfile.save({"f64": wide, "c128": np.array([1 + 1e-10j])}, path)
    with ptfile.open(path) as handle:
        got = handle.get_tensor("f64", framework="mlx")
        assert got.dtype == mx.float64 and np.array(got).tobytes() == wide.tobytes()
        with pytest.raises(PtfileError, match="MLX has no complex128"):
            handle.get_tensor("c128", framework="mlx")
    with pytest.raises(PtfileError, match="MLX has no complex128"):
        ptfile.load(path, framework="mlx")


def test_mlx_bfloat16_is_mlx_bfloat16() -> None:
    mx = _mlx()
    state = ptfile.load(FIXTURES / "parameters.pt", framework="mlx")
    numpy_state = ptfile.load(FIXTURES / "parameters.pt")
    assert state["bf16"].dtype == mx.bfloat16
    assert np.array_equal(np.array(state["bf16"].astype(mx.float32)), numpy_state["bf16"].astype(np.float32))


def test_ptfile_torch_without_torch_says_so() -> None:
    code = ("import sys\nsys.modules['torch'] = None\nimport ptfile\n"
            "try:\n    import ptfile.torch\nexcept ptfile.errors.FrameworkMissingError as exc:\n"
            "    print('ptfile[torch]' in str(exc))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(SRC)})
    assert out.stdout.split() == ["True"], out.stderr


def test_weights_only_false_gives_records_and_runs_nothing(tmp_path) -> None:
    """A whole pickled module loads as inert records, its tensors as torch tensors."""
    torch = _torch()
    import ptfile.torch as pt

    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(3, 2), path)
    with pytest.raises(PtfileError):
        pt.load(path)  # weights_only=True, as torch.load, refuses a whole module
    record = pt.load(path, weights_only=False)
    assert isinstance(record, ptfile.Record) and record.classname == "torch.nn.modules.linear.Linear"
    weight = record.state["_parameters"]["weight"]
    assert isinstance(weight, torch.nn.Parameter) and torch.equal(weight, torch.load(path, weights_only=False).weight)


def test_copied_storages_are_never_found_again_under_a_reused_id() -> None:
    """Read-only memory is copied per storage; once its array is gone, its id may name another array."""
    _torch()
    from ptfile.tensors.frameworks import converter

    convert = converter("pt")
    kept = []
    for value in range(300):
        root = np.full(64, value, np.int16)
        root.flags.writeable = False
        kept.append((value, convert.tensor(root[8:16])))
        del root  # its id is free again, while the copy it made lives on in ``kept``
    assert all(bool((tensor == value).all()) for value, tensor in kept)


def test_slices_for_frameworks_hold_their_own_bytes(tmp_path) -> None:
    torch = _torch()
    path = tmp_path / "s.pt"
    torch.save({"w": torch.arange(1000.0)}, path)
    with ptfile.open(path, framework="pt") as handle:
        part = handle.get_slice("w")[10:20]
        assert torch.equal(part, torch.arange(10.0, 20.0)) and part.untyped_storage().nbytes() == 40
