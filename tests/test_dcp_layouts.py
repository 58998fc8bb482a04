"""DCP's per-rank metadata and safetensors storage, written by torch 2.13 at test time.

Two gloo ranks (CPU, in subprocesses) write each layout; in the same run torch reads them back
its own way (``dcp_to_torch_save`` for ``.distcp`` folders, ``dcp.load`` with
``HuggingFaceStorageReader`` for safetensors shards) and the tensors it got are stored as raw
bytes, so that ptfile's reading is compared bit for bit without torch in the test process:

``ranks``           ``use_collectives=False``: ``__0.metadata`` and ``__1.metadata``, each rank
                    its own plain tensors and a value
``ranks_dtensor``   the same with a DTensor sharded over the ranks: each file holds half of it
``ranks_conflict``  the ranks save one name as float32 and as float64
``ranks_payload``   rank 1's value is an object torch pickles by calling a constructor
``hf``              ``HuggingFaceStorageWriter(save_distributed=True)``: one safetensors file
                    per rank, placed by ``DCP_SHARDING_INFO``, tensors sharded along each
                    dimension (unevenly too), replicated, bfloat16
``st_distcp``       ``FileSystemWriter(serialization_format=SAFETENSORS)`` in one process;
                    torch's own loader fails on it, which the generator records
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ptfile
from ptfile.cli.main import main as cli
from ptfile.formats import dcp
from ptfile.formats.stformat import write_safetensors
from ptfile.scanning.scanner import walk_for_scan

GENERATOR = textwrap.dedent('''
    import fractions, json, os, socket, sys
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import SerializationFormat
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader, HuggingFaceStorageWriter

    FULL = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    HALF = (torch.arange(8, dtype=torch.float32) / 3).to(torch.bfloat16).reshape(2, 4)
    INTS = torch.arange(5, dtype=torch.int64)

    def rank_main(rank, out, port):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=2)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Replicate, Shard, distribute_tensor
        mesh = init_device_mesh("cpu", (2,))
        local = {"model": {"w": FULL.clone(), "own": torch.full((3,), float(rank))}, "step": 10 + rank}
        dcp.save(local, checkpoint_id=f"{out}/ranks", use_collectives=False)
        dcp.save({"w": distribute_tensor(FULL, mesh, [Shard(0)])}, checkpoint_id=f"{out}/ranks_dtensor",
                 use_collectives=False)
        dcp.save({"w": FULL.to(torch.float64 if rank else torch.float32)}, checkpoint_id=f"{out}/ranks_conflict",
                 use_collectives=False)
        extra = fractions.Fraction(1, 3) if rank else 0.5
        dcp.save({"w": FULL.clone(), "extra": extra}, checkpoint_id=f"{out}/ranks_payload", use_collectives=False)
        sharded = {"w0": distribute_tensor(FULL, mesh, [Shard(0)]), "w1": distribute_tensor(FULL, mesh, [Shard(1)]),
                   "h": distribute_tensor(HALF, mesh, [Replicate()]), "i": distribute_tensor(INTS, mesh, [Shard(0)])}
        dcp.save(sharded, storage_writer=HuggingFaceStorageWriter(f"{out}/hf", save_distributed=True))
        dist.barrier()
        dist.destroy_process_group()

    def described(tree):
        if isinstance(tree, dict):
            return {"dict": [[k, described(v)] for k, v in tree.items()]}
        if isinstance(tree, torch.Tensor):
            t = tree.contiguous()
            return {"tensor": {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                               "hex": t.view(torch.uint8).numpy().tobytes().hex() if t.numel() else ""}}
        return {"value": tree}

    if __name__ == "__main__":
        out = sys.argv[1]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(rank_main, args=(out, port), nprocs=2)
        torch_reads = {}
        dcp_to_torch_save(f"{out}/ranks", f"{out}/ranks.pt")
        torch_reads["ranks"] = described(torch.load(f"{out}/ranks.pt"))
        target = {"w0": torch.zeros(4, 6), "w1": torch.zeros(4, 6), "h": torch.zeros(2, 4, dtype=torch.bfloat16),
                  "i": torch.zeros(5, dtype=torch.int64)}
        dcp.load(target, storage_reader=HuggingFaceStorageReader(f"{out}/hf"), no_dist=True)
        torch_reads["hf"] = described(target)
        plain = {"w": FULL.clone(), "step": 3}
        dcp.save(plain, storage_writer=FileSystemWriter(f"{out}/st_distcp",
                                                      serialization_format=SerializationFormat.SAFETENSORS))
        try:
            dcp.load({"w": torch.zeros(4, 6), "step": 0}, checkpoint_id=f"{out}/st_distcp", no_dist=True)
            torch_reads["st_distcp"] = "read"
        except BaseException as exc:  # CheckpointException is a BaseException
            torch_reads["st_distcp"] = "failed: " + type(exc).__name__
        os.rename(f"{out}/ranks.pt", f"{out}/ranks-consolidated.pt")
        with open(f"{out}/torch_reads.json", "w") as f:
            json.dump(torch_reads, f)
''')


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    out = tmp_path_factory.mktemp("dcp_layouts")
    script = out / "generate.py"
    script.write_text(GENERATOR)
    subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True, timeout=600, cwd=out)
    return out


def torch_read(written: Path, name: str) -> Any:
    return json.loads((written / "torch_reads.json").read_text())[name]


def check_same(loaded: Any, node: dict, where: str = "<root>") -> None:
    """``loaded`` is what torch read: same keys in order, same values, tensors bit for bit."""
    if "dict" in node:
        assert type(loaded) is dict and list(loaded) == [k for k, _ in node["dict"]], where
        for key, child in node["dict"]:
            check_same(loaded[key], child, f"{where}.{key}")
    elif "tensor" in node:
        spec = node["tensor"]
        assert isinstance(loaded, np.ndarray), where
        assert loaded.dtype.name == spec["dtype"] and list(loaded.shape) == spec["shape"], where
        assert np.ascontiguousarray(loaded).tobytes().hex() == spec["hex"], f"{where}: values differ"
    else:
        assert loaded == node["value"] and type(loaded) is type(node["value"]), where


def copy(written: Path, name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(written / name, target)
    return target


# -- per-rank metadata ---------------------------------------------------------------------------


def test_torch_wrote_per_rank_metadata(written: Path) -> None:
    names = sorted(p.name for p in (written / "ranks").iterdir())
    assert names == ["__0.metadata", "__0_0.distcp", "__1.metadata", "__1_0.distcp"]
    assert dcp.metadata_files(str(written / "ranks")) == ["__0.metadata", "__1.metadata"]


@pytest.mark.parametrize("mmap", [True, False])
def test_per_rank_folder_reads_as_torch_reads_it(written: Path, mmap: bool) -> None:
    """A single process reads ``__0.metadata``: rank 0's own tensor and value, as dcp_to_torch_save gives."""
    loaded = ptfile.load(written / "ranks", mmap=mmap)
    check_same(loaded, torch_read(written, "ranks"))
    assert loaded["model"]["own"].tolist() == [0.0, 0.0, 0.0] and loaded["step"] == 10


def test_per_rank_folder_opens_and_consolidates(written: Path, tmp_path: Path) -> None:
    with ptfile.open(written / "ranks") as handle:
        assert sorted(handle.keys()) == ["model.own", "model.w"]
        assert handle.value_names() == ["step"]
        assert handle.info("model.w").shape == (4, 6)
    assert cli(["convert", str(written / "ranks"), str(tmp_path / "out.pt")]) == 0
    check_same(ptfile.load(tmp_path / "out.pt"), torch_read(written, "ranks"))
    assert cli(["diff", str(written / "ranks"), str(written / "ranks-consolidated.pt")]) == 0


def test_per_rank_folder_scans_every_rank(written: Path) -> None:
    result = ptfile.scan(written / "ranks")
    assert result.verdict == "clean", result.faults
    assert any("2 per-rank metadata files" in note for note in result.notes)
    assert not any("not part of the checkpoint" in note for note in result.notes)


def test_a_rank_whose_chunks_cover_part_of_a_tensor_is_refused(written: Path) -> None:
    """Without coordination each rank lists only its own shard of a DTensor: the rest is never stored."""
    with pytest.raises(ptfile.CorruptFileError, match="cover 12 of its 24 elements"):
        ptfile.load(written / "ranks_dtensor")
    assert ptfile.scan(written / "ranks_dtensor").verdict == "invalid"


def test_ranks_disagreeing_on_a_dtype_are_refused(written: Path) -> None:
    with pytest.raises(ptfile.CorruptFileError, match="depends on the reading rank"):
        ptfile.load(written / "ranks_conflict")
    result = ptfile.scan(written / "ranks_conflict")
    assert result.verdict == "invalid" and any("float64" in fault for fault in result.faults)


def test_another_ranks_values_are_judged(written: Path) -> None:
    """Rank 1 reads its own value with weights_only=False, so its pickle is judged as rank 0's is."""
    with pytest.raises(ptfile.UnsafeGlobalError, match="fractions"):
        ptfile.load(written / "ranks_payload")
    assert ptfile.scan(written / "ranks_payload").verdict not in ("clean", "invalid")
    (written / "ranks_payload" / "__1.metadata").rename(written / "ranks_payload" / "hidden")
    try:
        assert ptfile.load(written / "ranks_payload")["extra"] == 0.5  # rank 0 alone is harmless
    finally:
        (written / "ranks_payload" / "hidden").rename(written / "ranks_payload" / "__1.metadata")


def test_per_rank_metadata_without_rank_0_is_refused(written: Path, tmp_path: Path) -> None:
    """A single process reads ``__0.metadata`` only: without it torch fails, so ptfile refuses."""
    folder = copy(written, "ranks", tmp_path)
    (folder / "__0.metadata").unlink()
    with pytest.raises(ptfile.CorruptFileError, match="without __0.metadata"):
        ptfile.load(folder)
    assert ptfile.scan(folder).verdict == "invalid"
    code = ("import sys; from torch.distributed.checkpoint.format_utils import dcp_to_torch_save\n"
            "try:\n    dcp_to_torch_save(sys.argv[1], sys.argv[2])\n"
            "except BaseException as exc:\n    print(exc)\n    sys.exit(3)")
    ran = subprocess.run([sys.executable, "-c", code, str(folder), str(tmp_path / "x.pt")],
                         capture_output=True, timeout=300)
    assert ran.returncode == 3, "torch read a per-rank folder without __0.metadata"
    assert b"__0.metadata" in ran.stdout


def test_global_metadata_takes_precedence(written: Path, tmp_path: Path) -> None:
    """With ``.metadata`` present torch never reads per-rank files: neither does ptfile, nor must they agree."""
    folder = copy(written, "ranks", tmp_path)
    shutil.copy(folder / "__0.metadata", folder / ".metadata")
    (folder / "__1.metadata").write_bytes(b"not a pickle")
    assert dcp.metadata_files(str(folder)) == [".metadata"]
    check_same(ptfile.load(folder), torch_read(written, "ranks"))
    result = ptfile.scan(folder)
    assert result.verdict == "clean" and any("__1.metadata is read only if" in note for note in result.notes)


def test_per_rank_metadata_beside_global_metadata_is_judged(written: Path, tmp_path: Path) -> None:
    """torch's loader falls back to the rank's own file when ``.metadata`` fails: a payload there is found."""
    folder = copy(written, "ranks", tmp_path)
    shutil.copy(folder / "__0.metadata", folder / ".metadata")
    assert ptfile.scan(folder).verdict == "clean"
    clean = ptfile.load(folder)
    (folder / "__1.metadata").write_bytes(b"cos\nsystem\n(S'true'\ntR.")  # os.system('true'), never run
    assert ptfile.scan(folder).verdict == "dangerous"
    # load refuses what scan does not call clean, though .metadata itself is clean
    with pytest.raises(ptfile.UnsafeGlobalError):
        ptfile.load(folder)
    with pytest.raises(ptfile.UnsafeGlobalError):
        ptfile.open(folder)
    (folder / "__1.metadata").write_bytes(b"\x80\x02}q\x00(")  # only damaged: read only if .metadata fails
    assert sorted(ptfile.load(folder)) == sorted(clean)


# -- safetensors storage -------------------------------------------------------------------------


def test_torch_wrote_safetensors_shards(written: Path) -> None:
    names = sorted(p.name for p in (written / "hf").iterdir())
    assert names == ["shard-00001-model-00001-of-00001.safetensors", "shard-00002-model-00001-of-00001.safetensors"]


@pytest.mark.parametrize("mmap", [True, False])
def test_safetensors_shards_read_as_torch_reads_them(written: Path, mmap: bool) -> None:
    loaded = ptfile.load(written / "hf", mmap=mmap)
    expected = torch_read(written, "hf")
    assert sorted(loaded) == sorted(k for k, _ in expected["dict"])
    for key, node in expected["dict"]:
        check_same(loaded[key], node, key)


def test_safetensors_shards_open_scan_and_convert(written: Path, tmp_path: Path) -> None:
    with ptfile.open(written / "hf") as handle:
        assert handle.info("i").shape == (5,) and handle.info("h").dtype == "bfloat16"
        assert len(handle.entry("w1").chunks) == 2 and handle.entry("i").chunks[0].sizes == (3,)
    result = ptfile.scan(written / "hf")
    assert result.verdict == "clean", result.faults
    assert cli(["convert", str(written / "hf"), str(tmp_path / "out.safetensors")]) == 0
    assert cli(["diff", str(written / "hf"), str(tmp_path / "out.safetensors")]) == 0


def test_safetensors_distcp_is_refused_as_torch_fails_on_it(written: Path) -> None:
    """``FileSystemWriter(serialization_format=SAFETENSORS)``: torch's loader cannot read the tensors back."""
    assert torch_read(written, "st_distcp").startswith("failed")
    with pytest.raises(ptfile.PtfileError):
        ptfile.load(written / "st_distcp")
    assert ptfile.scan(written / "st_distcp").verdict == "invalid"


def _shard(folder: Path, name: str, tensors: dict, info: Any) -> None:
    metadata = {"format": "pt"} if info is None else {dcp.SHARDING_INFO_KEY: json.dumps(info), "format": "pt"}
    write_safetensors(tensors, folder / name, metadata)


HALVES = {"w": np.arange(4, dtype=np.float32)}


@pytest.mark.parametrize(("case", "second", "info", "message"), [
    ("overlap", HALVES, {"w": {"saved_offsets": [0]}}, "overlap"),
    ("hole", HALVES, {"w": {"saved_offsets": [6]}}, "cover 8 of its 10 elements"),
    ("dtypes", {"w": np.arange(4, dtype=np.float64)}, {"w": {"saved_offsets": [4]}}, "stored as"),
    ("no-offsets", HALVES, {"other": {"saved_offsets": [4]}}, "no list of saved offsets"),
    ("short-offsets", HALVES, {"w": {"saved_offsets": []}}, "1 dimensions but 0 saved offsets"),
    ("negative", HALVES, {"w": {"saved_offsets": [-4]}}, "no list of saved offsets"),
    ("not-json", HALVES, "{", "not valid JSON"),
])
def test_hostile_safetensors_shards_are_refused(tmp_path: Path, case: str, second: dict, info: Any,
                                                message: str) -> None:
    """Shards that two readers could merge differently, or that leave part of a tensor unwritten."""
    _shard(tmp_path, "shard-00001-model-00001-of-00001.safetensors", HALVES, {"w": {"saved_offsets": [0]}})
    if isinstance(info, str):
        write_safetensors(second, tmp_path / "shard-00002-model-00001-of-00001.safetensors",
                          {dcp.SHARDING_INFO_KEY: info})
    else:
        _shard(tmp_path, "shard-00002-model-00001-of-00001.safetensors", second, info)
    with pytest.raises(ptfile.CorruptFileError, match=message):
        ptfile.load(tmp_path)
    assert ptfile.scan(tmp_path).verdict == "invalid"


def test_safetensors_shards_merge_and_an_index_wins(tmp_path: Path) -> None:
    """Two halves merge into one tensor; a folder with a shard index is read by its index instead."""
    _shard(tmp_path, "a.safetensors", HALVES, {"w": {"saved_offsets": [0]}})
    _shard(tmp_path, "b.safetensors", {"w": HALVES["w"] + 4}, {"w": {"saved_offsets": [4]}})
    assert ptfile.load(tmp_path)["w"].tolist() == list(range(8))
    assert ptfile.scan(tmp_path).verdict == "clean"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "a.safetensors"}}))
    assert not dcp.is_dcp(tmp_path)


def test_scan_command_takes_each_layout_as_one_checkpoint(written: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Walking a tree, a per-rank folder and a folder of safetensors shards are each one checkpoint."""
    copy(written, "ranks", tmp_path)
    copy(written, "hf", tmp_path)
    assert cli(["scan", "-r", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "scanned 2 files" in out and "ranks: clean (dcp)" in out and "hf: clean (dcp)" in out


def test_scan_command_scans_other_files_of_a_dcp_folder_on_their_own(written: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A safetensors file beside per-rank metadata is not part of that checkpoint, so it is scanned alone."""
    folder = copy(written, "ranks", tmp_path)
    shutil.copy(written / "hf" / "shard-00001-model-00001-of-00001.safetensors", folder / "stray.safetensors")
    assert cli(["scan", "-r", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "scanned 2 files" in out and "stray.safetensors: clean" in out


# -- the same layouts behind a URL ---------------------------------------------------------------


def _url_copy(folder: Path, name: str) -> str:
    """``folder`` copied into fsspec's memory file system, as a URL (a stand-in for an object store)."""
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    for path in folder.iterdir():
        memory.pipe(f"/dcp-layouts/{name}/{path.name}", path.read_bytes())
    return f"memory://dcp-layouts/{name}"


def test_per_rank_folder_behind_a_url_reads_and_scans_as_its_local_copy(written: Path) -> None:
    url = _url_copy(written / "ranks", "ranks")
    assert dcp.metadata_files(url) == ["__0.metadata", "__1.metadata"]
    check_same(ptfile.load(url), torch_read(written, "ranks"))
    result = ptfile.scan(url)
    assert result.verdict == "clean", result.faults
    assert any("2 per-rank metadata files" in note for note in result.notes)
    assert not any("not part of the checkpoint" in note for note in result.notes)


def test_hostile_per_rank_folders_behind_a_url_are_refused(written: Path) -> None:
    conflict = _url_copy(written / "ranks_conflict", "ranks_conflict")
    with pytest.raises(ptfile.CorruptFileError, match="depends on the reading rank"):
        ptfile.load(conflict)
    assert ptfile.scan(conflict).verdict == "invalid"
    payload = _url_copy(written / "ranks_payload", "ranks_payload")
    with pytest.raises(ptfile.UnsafeGlobalError, match="fractions"):
        ptfile.load(payload)
    assert ptfile.scan(payload).verdict not in ("clean", "invalid")


def test_per_rank_metadata_beside_global_metadata_behind_a_url_is_judged(written: Path, tmp_path: Path) -> None:
    """The per-rank files torch falls back to are listed and judged behind a URL as on disk."""
    folder = copy(written, "ranks", tmp_path)
    shutil.copy(folder / "__0.metadata", folder / ".metadata")
    url = _url_copy(folder, "ranks-fallback")
    assert dcp.metadata_files(url) == [".metadata"]
    result = ptfile.scan(url)
    assert result.verdict == "clean" and any("__1.metadata is read only if" in note for note in result.notes)
    (folder / "__1.metadata").write_bytes(b"cos\nsystem\n(S'true'\ntR.")  # os.system('true'), never run
    assert ptfile.scan(_url_copy(folder, "ranks-fallback-payload")).verdict == "dangerous"


def test_safetensors_shards_behind_a_url_read_and_scan_as_their_local_copy(written: Path) -> None:
    url = _url_copy(written / "hf", "hf")
    assert dcp.is_dcp(url)
    loaded = ptfile.load(url)
    for key, node in torch_read(written, "hf")["dict"]:
        check_same(loaded[key], node, key)
    with ptfile.open(url) as remote, ptfile.open(written / "hf") as local:
        assert (remote.format, list(remote.keys())) == (local.format, list(local.keys()))
        assert remote.entry("w1").chunks == local.entry("w1").chunks
    result = ptfile.scan(url)
    assert result.verdict == "clean", result.faults
    assert any("2 safetensors files merged" in note for note in result.notes)


def test_hostile_safetensors_shards_behind_a_url_are_refused(tmp_path: Path) -> None:
    _shard(tmp_path, "shard-00001-model-00001-of-00001.safetensors", HALVES, {"w": {"saved_offsets": [0]}})
    _shard(tmp_path, "shard-00002-model-00001-of-00001.safetensors", HALVES, {"w": {"saved_offsets": [2]}})
    url = _url_copy(tmp_path, "hf-overlap")
    with pytest.raises(ptfile.CorruptFileError, match="overlap"):
        ptfile.load(url)
    assert ptfile.scan(url).verdict == "invalid"


def test_one_row_of_a_safetensors_shard_behind_a_url_moves_one_row(tmp_path: Path) -> None:
    """A tensor stored whole in one shard is sliced by byte range; one split over shards is assembled."""
    matrix = np.arange(1000 * 256, dtype=np.float32).reshape(1000, 256)
    _shard(tmp_path, "shard-00001-model-00001-of-00001.safetensors", {"m": matrix, "w": HALVES["w"]},
           {"m": {"saved_offsets": [0, 0]}, "w": {"saved_offsets": [0]}})
    _shard(tmp_path, "shard-00002-model-00001-of-00001.safetensors", {"w": HALVES["w"] + 4},
           {"w": {"saved_offsets": [4]}})
    with ptfile.open(_url_copy(tmp_path, "hf-rows")) as handle:
        source = handle._file(handle.entry("m").chunks[0].item.file)
        before, requests = source.bytes_read, source.requests
        np.testing.assert_array_equal(handle.get_slice("m")[517], matrix[517])
        assert (source.bytes_read - before, source.requests - requests) == (256 * 4, 1)
        np.testing.assert_array_equal(handle.get_slice("m")[::-3, 5:9], matrix[::-3, 5:9])
        assert handle.get_slice("w")[2:6].tolist() == [2, 3, 4, 5]


def test_a_walk_over_a_folder_past_the_rank_file_limit_names_the_limit(written: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Too many per-rank files: the folder's scan is invalid and names the limit, its files are judged alone."""
    folder = copy(written, "ranks", tmp_path)
    monkeypatch.setattr(dcp, "MAX_RANK_FILES", 1)
    assert dcp.is_dcp(folder)
    walk = walk_for_scan([str(tmp_path)], recursive=True)
    assert str(folder) in walk.files and str(folder / "__1_0.distcp") in walk.files
    result = ptfile.scan(folder)
    assert result.verdict == "invalid" and any("over the limit of 1" in fault for fault in result.faults)
