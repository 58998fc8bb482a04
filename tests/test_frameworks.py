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
    for name, tensor in tensors.items():
        storage = tensor.untyped_storage()
        if storage.nbytes() and name not in flagged:
            groups.setdefault(storage.data_ptr(), []).append(name)
    return sorted(sorted(group) for group in groups.values())


#: Plain (not Parameter) tensors saved with requires_grad=True: ptfile's numpy arrays carry no
#: such flag, so they come back with requires_grad=False.
GRAD_LOST = {"parameters.pt": {"leaf"}}
#: numpy arrays pickled in the file (torch.load gives numpy arrays): ptfile's tree does not tell
#: them from tensors, so they come back as tensors with the same values.
NUMPY_IN_FILE = {"training.pt": {"counts", "fortran", "numpy_rng.1"}}
#: Empty views at a storage offset: an empty numpy array keeps no offset, so they come back at 0.
OFFSET_LOST = {"edge_shapes.pt": {"empty_slice"}}


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
        assert got.dtype == expected.dtype and got.shape == expected.shape, what
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
