"""Every entry point on every format: the same tensors come out of each.

One reference state dict is written in every format ptfile reads, by the library that owns
the format (torch 2.13 for torch's zip, legacy and DCP layouts, the safetensors package,
numpy), then read through every API entry point and every command.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ptfile
from ptfile.cli.main import main as cli
from ptfile.tools.convert import flatten

REFERENCE = {
    "embed.weight": np.arange(12, dtype=np.float32).reshape(4, 3),
    "layers.0.weight": np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
    "layers.0.bias": np.array([1, -2, 3], dtype=np.int64),
}

#: How each sample is written: by torch, by the safetensors package or by numpy, in a fresh process.
WRITERS = {
    "torch-zip": "torch.save({k: torch.from_numpy(v) for k, v in ref.items()}, out / 'model.pt')",
    "torch-legacy": "torch.save({k: torch.from_numpy(v) for k, v in ref.items()}, out / 'model.pt', "
                    "_use_new_zipfile_serialization=False)",
    "safetensors": "from safetensors.numpy import save_file; save_file(ref, str(out / 'model.safetensors'))",
    "npz": "np.savez(out / 'model.npz', **ref)",
    "bin-shards": "import ptfile; ptfile.save_sharded(ref, out, max_shard_size=60)",
    "safetensors-shards": "from ptfile.tools.convert import write_tensors; "
                          "write_tensors(ref, str(out / 'model.safetensors'), max_shard_size=60)",
    "single-file-folder": "torch.save({k: torch.from_numpy(v) for k, v in ref.items()}, out / 'pytorch_model.bin')",
    "dcp": "import torch.distributed.checkpoint as dcp; "
           "dcp.save({k: torch.from_numpy(v) for k, v in ref.items()}, checkpoint_id=str(out / 'dcp'))",
    # Without coordination: __0.metadata and __0_0.distcp.
    "dcp-rank": "import torch.distributed.checkpoint as dcp; "
                "dcp.save({k: torch.from_numpy(v) for k, v in ref.items()}, checkpoint_id=str(out / 'dcp'), "
                "no_dist=True, use_collectives=False)",
    # torch.jit.save of a module holding the tensors as buffers under the same names.
    "torchscript": "m = torch.nn.Module(); m.embed = torch.nn.Module(); m.layers = torch.nn.ModuleList([torch.nn.Module()]); "
                   "[(m.get_submodule(k.rsplit('.', 1)[0]).register_buffer(k.rsplit('.', 1)[1], torch.from_numpy(v))) "
                   "for k, v in ref.items()]; torch.jit.save(torch.jit.script(m), out / 'model.pt')",
    # pickle.dump of the numpy arrays themselves: a plain pickle's arrays are its tensors.
    "plain-pickle": "import pickle; pickle.dump(ref, open(out / 'model.pkl', 'wb'))",
    # DCP's safetensors storage: shard-00001-model-00001-of-00001.safetensors with DCP_SHARDING_INFO, no index.
    "dcp-safetensors": "import torch.distributed.checkpoint as dcp; "
                       "from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter; "
                       "dcp.save({k: torch.from_numpy(v) for k, v in ref.items()}, no_dist=True, "
                       "storage_writer=HuggingFaceStorageWriter(str(out / 'dcp'), save_distributed=True))",
}
#: What to open in each sample's folder (the folder itself when None).
TARGETS = {"torch-zip": "model.pt", "torch-legacy": "model.pt", "safetensors": "model.safetensors",
           "npz": "model.npz", "bin-shards": None, "safetensors-shards": "model.safetensors.index.json",
           "single-file-folder": None, "dcp": "dcp", "dcp-rank": "dcp", "dcp-safetensors": "dcp",
           "torchscript": "model.pt", "plain-pickle": "model.pkl"}
FORMATS = list(WRITERS)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    base = tmp_path_factory.mktemp("matrix")
    np.savez(base / "reference.npz", **REFERENCE)
    found = {}
    for name, statement in WRITERS.items():
        out = base / name
        out.mkdir()
        code = textwrap.dedent(f"""
            import sys, pathlib, numpy as np, torch
            out = pathlib.Path(sys.argv[1])
            ref = dict(np.load(sys.argv[2]))
            {statement}
        """)
        subprocess.run([sys.executable, "-c", code, str(out), str(base / "reference.npz")], check=True,
                       capture_output=True, timeout=300)
        found[name] = out / TARGETS[name] if TARGETS[name] else out
    return found


def _same(tensors: dict, expected: dict = REFERENCE) -> None:
    assert sorted(tensors) == sorted(expected)
    for key, array in expected.items():
        got = np.asarray(tensors[key])
        assert got.dtype == array.dtype and got.shape == array.shape and got.tobytes() == array.tobytes(), key


def _flat(tree: object, prefix: str = "") -> dict:
    if not prefix and not isinstance(tree, dict):  # a module (TorchScript): its tensors by state-dict names
        return flatten(tree)[0]
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mmap", [True, False])
def test_load(samples: dict[str, Path], fmt: str, mmap: bool) -> None:
    _same(_flat(ptfile.load(samples[fmt], mmap=mmap)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_open(samples: dict[str, Path], fmt: str) -> None:
    with ptfile.open(samples[fmt]) as handle:
        assert sorted(handle.keys()) == sorted(REFERENCE) and len(handle) == len(REFERENCE)
        _same({key: handle[key] for key in handle})
        _same(dict(handle.items()))
        for key, array in REFERENCE.items():
            info = handle.info(key)
            assert (info.shape, np.dtype(info.dtype)) == (array.shape, array.dtype)
            assert handle.get_slice(key)[:1].tobytes() == array[:1].tobytes()
        assert handle.get("no such tensor") is None and "no such tensor" not in handle
        assert isinstance(handle.metadata(), dict)
    with pytest.raises(ptfile.PtfileError):
        handle.keys()  # used after close


@pytest.mark.parametrize("fmt", FORMATS)
def test_scan(samples: dict[str, Path], fmt: str) -> None:
    assert ptfile.scan(samples[fmt]).verdict == "clean"
    assert cli(["scan", str(samples[fmt])]) == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_inspect(samples: dict[str, Path], fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["inspect", str(samples[fmt]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(row["name"] for row in report["tensors"]) == sorted(REFERENCE)
    assert report["scan"]["verdict"] == "clean"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("other", ["torch-zip", "safetensors"])
def test_diff(samples: dict[str, Path], fmt: str, other: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["diff", str(samples[fmt]), str(samples[other]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["equal"] is True


@pytest.mark.parametrize("fmt", FORMATS)
def test_stats(samples: dict[str, Path], fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["stats", str(samples[fmt]), "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["tensors"]}
    assert sorted(rows) == sorted(REFERENCE)
    assert float(rows["embed.weight"]["max"]) == 11.0


@pytest.mark.parametrize("fmt", FORMATS)
def test_match(samples: dict[str, Path], fmt: str) -> None:
    assert cli(["match", str(samples[fmt]), "--against", str(samples["torch-zip"])]) == 0
    assert cli(["match", str(samples["safetensors"]), "--against", str(samples[fmt])]) == 0


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".npz"])
def test_convert(samples: dict[str, Path], fmt: str, suffix: str, tmp_path: Path) -> None:
    out = tmp_path / f"out{suffix}"
    assert cli(["convert", str(samples[fmt]), str(out)]) == 0
    _same(_flat(ptfile.load(out)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_edit(samples: dict[str, Path], fmt: str, tmp_path: Path) -> None:
    out = tmp_path / "edited.pt"
    assert cli(["edit", str(samples[fmt]), str(out), "--rename", "layers.0.=block."]) == 0
    renamed = {key.replace("layers.0.", "block."): value for key, value in REFERENCE.items()}
    _same(_flat(ptfile.load(out)), renamed)


def test_npy_is_one_tensor_named_by_its_stem(tmp_path: Path) -> None:
    np.save(tmp_path / "embed.npy", REFERENCE["embed.weight"])
    _same(ptfile.load(tmp_path / "embed.npy"), {"embed": REFERENCE["embed.weight"]})
    assert ptfile.scan(tmp_path / "embed.npy").verdict == "clean"


def test_a_folder_of_two_checkpoints_is_refused_by_name(samples: dict[str, Path], tmp_path: Path) -> None:
    for name in ("a.pt", "b.pt"):
        (tmp_path / name).write_bytes(samples["torch-zip"].read_bytes())
    with pytest.raises(ptfile.CheckpointNotFoundError, match="a.pt, b.pt"):
        ptfile.load(tmp_path)


def test_tied_weights_survive_safetensors(tmp_path: Path) -> None:
    """pt -> safetensors -> pt and pt -> npz -> pt keep values; safetensors keeps the tie as well."""
    embed = np.arange(6, dtype=np.float32).reshape(2, 3)
    ptfile.save({"embed.weight": embed, "lm_head.weight": embed, "row": embed[1]}, tmp_path / "tied.pt")
    assert cli(["convert", str(tmp_path / "tied.pt"), str(tmp_path / "tied.safetensors")]) == 0
    assert cli(["convert", str(tmp_path / "tied.safetensors"), str(tmp_path / "back.pt")]) == 0
    back = ptfile.load(tmp_path / "back.pt")
    assert sorted(back) == ["embed.weight", "lm_head.weight", "row"]
    assert np.shares_memory(back["embed.weight"], back["lm_head.weight"])
    assert np.shares_memory(back["embed.weight"], back["row"]) and back["row"].tolist() == [3, 4, 5]
    with ptfile.open(tmp_path / "back.pt") as handle:
        assert handle.info("embed.weight").storage == handle.info("lm_head.weight").storage
    assert cli(["diff", str(tmp_path / "tied.pt"), str(tmp_path / "tied.safetensors")]) == 0
    assert cli(["convert", str(tmp_path / "tied.pt"), str(tmp_path / "tied.npz")]) == 0
    assert cli(["diff", str(tmp_path / "tied.pt"), str(tmp_path / "tied.npz")]) == 0


def test_hostile_alias_metadata_is_refused(tmp_path: Path) -> None:
    """A view recorded in the metadata must lie inside the tensor it views."""
    from ptfile.formats.stformat import ALIASES_KEY, write_safetensors

    data = np.zeros(4, np.float32)
    for view in (["w", 3, [2], [1]], ["w", 0, [5], [1]], ["nope", 0, [1], [1]], ["w", -1, [1], [1]]):
        path = tmp_path / "evil.safetensors"
        write_safetensors({"w": data}, path, {ALIASES_KEY: json.dumps({"v": view})})
        with pytest.raises(ptfile.CorruptFileError):
            ptfile.load(path)
        assert ptfile.scan(path).verdict == "invalid"


# -- the same samples behind a URL: folders listed and indexes read through fsspec -------------


@pytest.fixture(scope="module")
def url_samples(samples: dict[str, Path]) -> dict[str, str]:
    """Each sample copied into fsspec's memory file system, as the URL of what to open."""
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    found = {}
    for name, target in samples.items():
        folder = target.parent if TARGETS[name] else target
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                memory.pipe(f"/matrix/{name}/{path.relative_to(folder).as_posix()}", path.read_bytes())
        found[name] = f"memory://matrix/{name}/{TARGETS[name]}" if TARGETS[name] else f"memory://matrix/{name}/"
    return found


@pytest.mark.parametrize("fmt", FORMATS)
def test_url_load_open_and_scan(url_samples: dict[str, str], fmt: str) -> None:
    url = url_samples[fmt]
    _same(_flat(ptfile.load(url)))
    with ptfile.open(url) as handle:
        assert sorted(handle.keys()) == sorted(REFERENCE)
        _same({key: handle[key] for key in handle})
        for key, array in REFERENCE.items():
            np.testing.assert_array_equal(handle.get_slice(key)[1:], array[1:])
            np.testing.assert_array_equal(handle.get_slice(key)[..., ::-2], array[..., ::-2])
    result = ptfile.scan(url)
    assert result.verdict == "clean", (result.faults, result.notes)
    assert cli(["scan", url]) == 0


@pytest.mark.parametrize("fmt", ["bin-shards", "safetensors-shards", "single-file-folder", "dcp", "dcp-rank",
                                 "dcp-safetensors"])
def test_url_folder_is_what_its_local_copy_is(samples: dict[str, Path], url_samples: dict[str, str],
                                              fmt: str) -> None:
    with ptfile.open(samples[fmt]) as local, ptfile.open(url_samples[fmt]) as remote:
        assert (remote.format, remote.keys()) == (local.format, local.keys())
        assert remote.name.startswith("memory://")


def test_url_folder_of_two_checkpoints_is_refused_by_name(samples: dict[str, Path]) -> None:
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    data = samples["torch-zip"].read_bytes()
    memory.pipe("/matrix-two/a.pt", data)
    memory.pipe("/matrix-two/b.bin", data)
    memory.pipe("/matrix-two/notes.txt", b"not a checkpoint")
    with pytest.raises(ptfile.CheckpointNotFoundError, match=r"holds 2 \(a.pt, b.bin\)"):
        ptfile.open("memory://matrix-two")
    assert ptfile.scan("memory://matrix-two").verdict == "invalid"


def test_url_shard_names_cannot_leave_the_folder() -> None:
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    memory.pipe("/matrix-climb/model.safetensors.index.json",
                json.dumps({"weight_map": {"w": "../elsewhere/model.safetensors"}}).encode())
    with pytest.raises(ptfile.CorruptFileError, match="not a plain file name"):
        ptfile.open("memory://matrix-climb/")
