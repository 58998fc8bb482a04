"""torch.distributed.checkpoint (DCP) folders: reading, consolidating, scanning, hostile variants.

Golden folders under ``tests/fixtures/dcp`` were written by torch 2.13 (``make_dcp.py``):
``single`` in one process, ``ranks2`` by two gloo ranks saving DTensors sharded along dim 0
and dim 1, replicated, plus non-tensor values.  Their full state dicts, as torch reads them
back, are stored as torch-free descriptions (``<name>.expected.json`` + ``.bin``).

Hostile variants rewrite a golden ``.metadata``: it is read into its record tree, one
field is changed, and the tree is pickled again with ptfile's own pickler (NEWOBJ + BUILD,
as torch pickles the dataclasses).  ``test_rewritten_metadata_reads_the_same`` shows that
the unchanged rewrite still reads as the golden folder, so each variant differs from a
valid checkpoint by its one change only.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ptfile
from ptfile.cli.main import main as cli
from ptfile.formats import dcp
from ptfile.formats.stformat import read_safetensors
from ptfile.formats.writer import dumps_tree
from ptfile.pickle.inventory import GlobalUse
from ptfile.pickle.values import Global, Record
from ptfile.policy import allowlist
from ptfile.scanning.scanner import scan
from ptfile.tensors.rebuild import TorchDtype
from ptfile.tensors.special import Layout
from ptfile.tools import convert

DCP_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "dcp"
CASES = ("single", "ranks2")
META = dcp.METADATA_MODULE
FS = dcp.FILESYSTEM_MODULE


# -- expectations ----------------------------------------------------------------


def expected(name: str) -> tuple[Any, bytes]:
    meta = json.loads((DCP_FIXTURES / f"{name}.expected.json").read_text())
    return meta["tree"], (DCP_FIXTURES / f"{name}.expected.bin").read_bytes()


def check_tensor(array: Any, spec: dict, blobs: bytes, where: str) -> None:
    assert isinstance(array, np.ndarray), f"{where}: {type(array).__name__}, not an array"
    assert array.dtype.name == spec["dtype"], where
    assert array.shape == tuple(spec["shape"]), where
    start, length = spec["blob"]
    assert np.ascontiguousarray(array).tobytes() == blobs[start : start + length], f"{where}: values differ"


def check_tree(loaded: Any, node: Any, blobs: bytes, where: str = "<root>") -> None:
    """``loaded`` is exactly the described tree: same containers, keys in order, values and tensor bytes."""
    if isinstance(node, dict) and "dict" in node:
        assert type(loaded) is dict, where
        assert list(loaded) == [k for k, _ in node["dict"]], where
        for key, child in node["dict"]:
            check_tree(loaded[key], child, blobs, f"{where}.{key}")
    elif isinstance(node, dict) and ("list" in node or "tuple" in node):
        kind = "list" if "list" in node else "tuple"
        assert type(loaded).__name__ == kind and len(loaded) == len(node[kind]), where
        for i, child in enumerate(node[kind]):
            check_tree(loaded[i], child, blobs, f"{where}.{i}")
    elif isinstance(node, dict) and "tensor" in node:
        check_tensor(loaded, node["tensor"], blobs, where)
    elif isinstance(node, dict) and "float" in node:
        assert type(loaded) is float and loaded.hex() == node["float"], where
    else:
        assert type(loaded) is type(node) and loaded == node, where


def flat_tensors(node: Any, prefix: str = "") -> dict[str, dict]:
    """fqn -> tensor description, as DCP flattens a state dict."""
    found: dict[str, dict] = {}
    children = node.get("dict") or list(enumerate(node.get("list") or [])) if isinstance(node, dict) else []
    if isinstance(node, dict) and "tensor" in node:
        return {prefix: node["tensor"]}
    for key, child in children:
        found.update(flat_tensors(child, f"{prefix}.{key}" if prefix else str(key)))
    return found


# -- building and rewriting folders -------------------------------------------------


def copy_case(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(DCP_FIXTURES / name, folder)
    return folder


def metadata_tree(folder: Path) -> Record:
    tree = dcp.read_metadata(str(folder))
    tree.state["storage_meta"].state["checkpoint_id"] = None  # a path value ptfile's writer does not write
    return tree


def write_metadata(folder: Path, tree: Any) -> None:
    data, storages = dumps_tree(tree)
    assert not storages
    (folder / dcp.METADATA_FILE).write_bytes(data)


def chunks_of(tree: Record, fqn: str) -> list[Record]:
    return tree.state["state_dict_metadata"][fqn].state["chunks"]


def storage_of(tree: Record, fqn: str, offset: Any) -> Record:
    for index, info in tree.state["storage_data"].items():
        if index.state["fqn"] == fqn and index.state.get("offset") == offset:
            return info
    raise KeyError(fqn)


def record(name: str, state: Any, module: str = META) -> Record:
    return Record(Global(module, name), (), state)


def write_dcp(folder: Path, tensors: dict[str, tuple[np.ndarray, list[tuple[tuple, tuple]]]],
              values: dict[str, Any] | None = None) -> None:
    """A DCP folder written without torch: ``fqn -> (global array, [(offsets, sizes), ...])``, one item file."""
    folder.mkdir(parents=True, exist_ok=True)
    blobs = bytearray()
    entries: dict[str, Record] = {}
    storage: dict[Record, Record] = {}

    def item(fqn: str, offset: Any, obj: Any) -> None:
        buffer = io.BytesIO()
        ptfile.save(obj, buffer)
        info = {"relative_path": "__0_0.distcp", "offset": len(blobs), "length": len(buffer.getvalue())}
        storage[record("MetadataIndex", {"fqn": fqn, "offset": offset, "index": None})] = record("_StorageInfo", info, FS)
        blobs.extend(buffer.getvalue())

    for fqn, (array, boxes) in tensors.items():
        chunks = []
        for offsets, sizes in boxes:
            item(fqn, offsets, np.array(array[tuple(slice(o, o + s) for o, s in zip(offsets, sizes, strict=True))]))  # 0-d stays 0-d
            chunks.append(record("ChunkStorageMetadata", {"offsets": offsets, "sizes": sizes}))
        properties = record("TensorProperties", (TorchDtype(array.dtype.name), Layout("strided"), False,
                                                 "TORCH_CONTIGUOUS_FORMAT", False))
        entries[fqn] = record("TensorStorageMetadata", {"properties": properties, "size": array.shape, "chunks": chunks})
    for fqn, value in (values or {}).items():
        item(fqn, None, value)
        entries[fqn] = record("BytesStorageMetadata", None)
    planner = {fqn: tuple(fqn.split(".")) for fqn in entries}
    write_metadata(folder, record("Metadata", {"state_dict_metadata": entries, "planner_data": planner,
                                               "storage_data": storage, "version": "1.0.0"}))
    (folder / "__0_0.distcp").write_bytes(bytes(blobs))


def grid(shape: tuple[int, ...], splits: tuple[int, ...]) -> list[tuple[tuple, tuple]]:
    """Boxes cutting each dimension into ``splits`` nearly equal parts (torch.chunk's way)."""
    per_dim = []
    for size, parts in zip(shape, splits, strict=True):
        step = -(-size // parts)
        per_dim.append([(o, min(step, size - o)) for o in range(0, size, step)] if size else [(0, 0)])
    boxes: list[tuple[tuple, tuple]] = [((), ())]
    for options in per_dim:
        boxes = [(o + (a,), s + (b,)) for o, s in boxes for a, b in options]
    return boxes


# -- golden folders ----------------------------------------------------------------


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("name", CASES)
def test_load_matches_torch(name, mmap):
    tree, blobs = expected(name)
    check_tree(ptfile.load(DCP_FIXTURES / name, mmap=mmap), tree, blobs)


@pytest.mark.parametrize("name", CASES)
def test_lazy_handle_gives_global_tensors_and_values(name):
    tree, blobs = expected(name)
    tensors = flat_tensors(tree)
    with ptfile.open(DCP_FIXTURES / name) as handle:
        assert handle.keys() == list(tensors)
        for key, spec in tensors.items():
            info = handle.info(key)
            assert (info.dtype, info.shape, info.is_contiguous) == (spec["dtype"], tuple(spec["shape"]), True)
            assert info.nbytes == spec["blob"][1]
            check_tensor(handle[key], spec, blobs, key)
        assert set(handle.value_names()).isdisjoint(tensors)
        assert not any(name in handle for name in handle.value_names())  # the mapping holds tensors only
        for value_name in handle.value_names():
            handle.value(value_name)  # values are read by name
            with pytest.raises(KeyError, match=r"\.value\("):
                handle[value_name]
        with pytest.raises(KeyError):
            handle.info("no.such.tensor")


def test_ranks2_is_really_sharded_along_two_dimensions():
    # What the fixture claims to test: chunks from two ranks, split on dim 0 (unevenly) and on dim 1.
    with ptfile.open(DCP_FIXTURES / "ranks2") as handle:
        layout = {key: [(c.offsets, c.sizes, c.item.file) for c in handle.entry(key).chunks] for key in handle}
        assert layout["model.row"] == [((0, 0), (3, 3), "__0_0.distcp"), ((3, 0), (2, 3), "__1_0.distcp")]
        assert layout["model.col"] == [((0, 0), (4, 3), "__0_0.distcp"), ((0, 3), (4, 3), "__1_0.distcp")]
        assert len(layout["model.rep"]) == 1 and layout["model.rep"][0][:2] == ((0, 0), (3, 3))
        assert handle.value("step") == 11 and handle.value("extra.nested.names") == ["a", "b"]


def test_single_chunk_tensors_are_views_of_the_mapped_file_and_assembled_ones_are_new():
    with ptfile.open(DCP_FIXTURES / "ranks2") as handle:
        assert not handle["model.rep"].flags.writeable  # one chunk: a view of __1_0.distcp
        row = handle["model.row"]
        assert row.flags.writeable and row.flags.owndata
    with ptfile.open(DCP_FIXTURES / "ranks2", mmap=False) as handle:
        assert handle["model.rep"].flags.writeable


def test_metadata_dataclasses_are_vouched_for_in_the_folder_only():
    data = (DCP_FIXTURES / "single" / dcp.METADATA_FILE).read_bytes()
    with pytest.raises(ptfile.UnsafeGlobalError, match="dangerous") as caught:
        ptfile.load(data, records=True)  # the same pickle as an ordinary file: torch.distributed code
    assert "torch.distributed.checkpoint.metadata" in str(caught.value)
    assert scan(DCP_FIXTURES / "single" / dcp.METADATA_FILE).verdict == "dangerous"
    assert scan(DCP_FIXTURES / "single").verdict == "clean"


def test_vouching_never_covers_dunder_or_dotted_names():
    vouch_all = lambda module, name: True  # noqa: E731 - the widest possible allowance
    for name in ("__reduce__", "a.b"):
        use = GlobalUse(dcp.METADATA_MODULE, name, "new", 0, ".metadata")
        assert allowlist.judge([use], inert_classes=vouch_all).verdict == "dangerous"
    use = GlobalUse(dcp.METADATA_MODULE, "Metadata", "new", 0, ".metadata")
    assert allowlist.judge([use], inert_classes=dcp.is_data_class).verdict == "clean"
    assert allowlist.judge([use]).verdict == "dangerous"


def test_metadata_over_the_size_limit_is_refused():
    with pytest.raises(ptfile.LimitExceededError, match=r"over max_dcp_metadata_bytes \(100\); "
                       r"pass limits=ptfile\.Limits\(max_dcp_metadata_bytes=\.\.\.\) to raise it"):
        ptfile.open(DCP_FIXTURES / "single", limits=ptfile.Limits(max_dcp_metadata_bytes=100))
    with ptfile.open(DCP_FIXTURES / "single") as handle:  # the default lets it through
        assert len(handle) > 0


def test_unknown_classes_in_value_items_need_records(tmp_path):
    config = Record(Global("mypackage.config", "Config"), (), {"depth": 3})
    write_dcp(tmp_path / "ckpt", {"w": (np.ones((2, 2), np.float32), [((0, 0), (2, 2))])}, values={"config": config})
    with pytest.raises(ptfile.UnsafeGlobalError, match="unknown-class"):
        ptfile.load(tmp_path / "ckpt")
    loaded = ptfile.load(tmp_path / "ckpt", records=True)
    assert loaded["config"].classname == "mypackage.config.Config" and loaded["config"].state == {"depth": 3}
    assert scan(tmp_path / "ckpt").verdict == "unknown-class"


def test_rewritten_metadata_reads_the_same(tmp_path):
    folder = copy_case("ranks2", tmp_path)
    write_metadata(folder, metadata_tree(folder))
    tree, blobs = expected("ranks2")
    check_tree(ptfile.load(folder), tree, blobs)


# -- consolidation -------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_consolidate_to_pt_holds_the_whole_state_dict(name, tmp_path):
    out = tmp_path / "full.pt"
    report = convert.consolidate(DCP_FIXTURES / name, out)
    assert report.written == [str(out)] and report.skipped_values == []
    tree, blobs = expected(name)
    check_tree(ptfile.load(out), tree, blobs)


@pytest.mark.parametrize("name", CASES)
def test_consolidate_to_safetensors_holds_every_tensor(name, tmp_path):
    out = tmp_path / "model.safetensors"
    report = convert.consolidate(DCP_FIXTURES / name, out)
    tree, blobs = expected(name)
    tensors, metadata = read_safetensors(out)
    assert metadata == {"format": "pt"}
    wanted = flat_tensors(tree)
    assert sorted(tensors) == sorted(wanted)
    for key, spec in wanted.items():
        check_tensor(tensors[key], spec, blobs, key)
    with ptfile.open(DCP_FIXTURES / name) as handle:
        assert report.skipped_values == handle.value_names() != []


def test_consolidate_refuses_other_formats(tmp_path):
    with pytest.raises(ptfile.UnsupportedFormatError):
        convert.consolidate(DCP_FIXTURES / "single", tmp_path / "out.npz")


def test_consolidated_files_load_in_torch(tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    convert.consolidate(DCP_FIXTURES / "ranks2", tmp_path / "full.pt")
    convert.consolidate(DCP_FIXTURES / "ranks2", tmp_path / "full.safetensors")
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(DCP_FIXTURES / "ranks2", tmp_path / "torch.pt")
    reference = torch.load(tmp_path / "torch.pt", weights_only=True)
    mine = torch.load(tmp_path / "full.pt", weights_only=True)
    assert mine.keys() == reference.keys() and mine["extra"] == reference["extra"] and mine["step"] == reference["step"]
    for key, tensor in reference["model"].items():
        assert torch.equal(mine["model"][key], tensor)
    flat = safetensors_torch.load_file(tmp_path / "full.safetensors")
    assert sorted(flat) == sorted(f"model.{k}" for k in reference["model"])
    for key, tensor in reference["model"].items():
        assert torch.equal(flat[f"model.{key}"], tensor)


def test_consolidation_memory_is_bounded_by_the_largest_tensor(tmp_path):
    # 4 tensors of 1 MiB, each in 8 chunks: assembling them all at once would take 4 MiB.
    rng = np.random.default_rng(0)
    arrays = {f"layer{i}.w": rng.standard_normal((512, 512), dtype=np.float32) for i in range(4)}
    write_dcp(tmp_path / "ckpt", {k: (a, grid(a.shape, (4, 2))) for k, a in arrays.items()})
    for out in ("out.safetensors", "out.pt"):
        tracemalloc.start()
        try:
            convert.consolidate(tmp_path / "ckpt", tmp_path / out)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1.5 * (1 << 20), f"{out}: peak {peak} bytes"
    tracemalloc.start()
    try:
        ptfile.load(tmp_path / "ckpt")  # the contrast: every tensor at once, so tracemalloc sees numpy's memory
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak > 4 * (1 << 20)
    tensors, _ = read_safetensors(tmp_path / "out.safetensors")
    full = ptfile.load(tmp_path / "out.pt")
    for key, array in arrays.items():
        assert np.array_equal(tensors[key], array) and np.array_equal(full["layer" + key[5]]["w"], array)


@pytest.mark.parametrize("shape,splits", [((6, 4, 5), (3, 2, 1)), ((7, 3), (3, 3)), ((), ()), ((0, 3), (1, 1))])
def test_grid_partitions_assemble_exactly(tmp_path, shape, splits):
    array = np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape)
    write_dcp(tmp_path / "ckpt", {"t": (array, grid(shape, splits))}, values={"note": "x"})
    with ptfile.open(tmp_path / "ckpt") as handle:
        assert np.array_equal(handle["t"], array) and handle["t"].dtype == array.dtype
        assert handle.value("note") == "x"


def test_crossing_chunks_are_an_overlap_even_when_their_sizes_add_up(tmp_path):
    # A column and a row cross at (1, 1) while (2, 2) is left out: 9 elements in all, but wrong.
    boxes = [((0, 1), (3, 1)), ((1, 0), (1, 3)), ((0, 0), (1, 1)), ((0, 2), (1, 1)), ((2, 0), (1, 1))]
    write_dcp(tmp_path / "ckpt", {"t": (np.zeros((3, 3), np.float32), boxes)})
    with pytest.raises(ptfile.CorruptFileError, match=r"chunks at \(0, 1\) and \(1, 0\) overlap"):
        ptfile.open(tmp_path / "ckpt")


def test_chunks_scattered_beyond_the_grid_limit_are_refused(tmp_path, monkeypatch):
    write_dcp(tmp_path / "ckpt", {"t": (np.zeros((4, 4), np.float32), grid((4, 4), (4, 4)))})
    assert ptfile.load(tmp_path / "ckpt")["t"].shape == (4, 4)
    monkeypatch.setattr(dcp, "MAX_GRID_CELLS", 15)
    with pytest.raises(ptfile.LimitExceededError, match="16 cells"):
        ptfile.open(tmp_path / "ckpt")


# -- dispatch: convert, inspect, scan -------------------------------------------------


def test_cli_convert_inspect_and_scan(tmp_path, capsys):
    folder = DCP_FIXTURES / "ranks2"
    assert cli(["convert", str(folder), str(tmp_path / "out.safetensors"), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["tensors"] == 4 and document["skipped_values"] == ["step", "extra.lr", "extra.nested.flag",
                                                                      "extra.nested.names"]
    assert cli(["inspect", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "dcp" and report["scan"]["verdict"] == "clean"
    assert {r["name"]: r["shape"] for r in report["tensors"]} == {
        "model.row": [5, 3], "model.col": [4, 6], "model.ids": [4, 3], "model.rep": [3, 3]}
    assert {v["name"]: v["summary"] for v in report["values"]}["step"] == "11"
    assert report["container"]["records"] == ["__0_0.distcp", "__1_0.distcp"]
    assert cli(["scan", str(DCP_FIXTURES), "-r", "--include", "(ranks2|single)$", "--json"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert [(Path(f["path"]).name, f["verdict"], f["format"]) for f in files] == [
        ("ranks2", "clean", "dcp"), ("single", "clean", "dcp")]


def test_convert_with_options_takes_the_general_path(tmp_path):
    report = ptfile.tools.convert.convert(str(DCP_FIXTURES / "single"), str(tmp_path / "m.safetensors"), key="model")
    tensors, _ = read_safetensors(tmp_path / "m.safetensors")
    assert sorted(tensors) == ["b", "ids", "scale", "w"] and report.tensors == 4


def test_a_folder_without_metadata_is_still_a_shard_folder(tmp_path):
    with pytest.raises(ptfile.CheckpointNotFoundError, match="index"):
        ptfile.load(tmp_path)


def test_scan_notes_bytes_no_item_covers(tmp_path):
    folder = copy_case("single", tmp_path)
    with open(folder / "__0_0.distcp", "ab") as f:
        f.write(pickle.dumps("hidden"))
    (folder / "notes.txt").write_text("hi")
    result = scan(folder)
    assert result.verdict == "clean"
    assert any("belong to no item" in n for n in result.notes)
    assert any("'notes.txt' is not part of the checkpoint" in n for n in result.notes)


# -- hostile folders ---------------------------------------------------------------


class _System:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_metadata_calling_os_system_is_refused(tmp_path):
    folder = copy_case("single", tmp_path)
    marker = tmp_path / "marker"
    fake = {"state_dict_metadata": {}, "storage_data": _System(f"touch {marker}")}
    (folder / dcp.METADATA_FILE).write_bytes(pickle.dumps(fake, protocol=4))
    for records in (False, True):
        with pytest.raises(ptfile.UnsafeGlobalError, match="dangerous"):
            ptfile.load(folder, records=records)
        with pytest.raises(ptfile.UnsafeGlobalError):
            ptfile.open(folder, records=records)
    result = scan(folder)
    assert result.verdict == "dangerous" and any(f.path in ("posix.system", "os.system") for f in result.findings)
    assert cli(["scan", str(folder)]) == 1
    assert not marker.exists()


def test_metadata_calling_a_dataclass_is_dangerous(tmp_path):
    # Vouching covers NEWOBJ and BUILD, never a call: REDUCE on Metadata stays dangerous.
    folder = copy_case("single", tmp_path)
    body = b"\x80\x02ctorch.distributed.checkpoint.metadata\nMetadata\n)R."
    (folder / dcp.METADATA_FILE).write_bytes(body)
    with pytest.raises(ptfile.UnsafeGlobalError, match="dangerous"):
        ptfile.load(folder, records=True)
    assert scan(folder).verdict == "dangerous"


def test_value_item_calling_os_system_is_refused(tmp_path):
    folder = copy_case("single", tmp_path)
    marker = tmp_path / "marker"
    tree = metadata_tree(folder)
    evil = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(evil, "w") as archive:  # a torch.save-shaped zip whose pickle calls os.system
        archive.writestr("archive/data.pkl", pickle.dumps(_System(f"touch {marker}"), protocol=2))
        archive.writestr("archive/version", "3\n")
    with open(folder / "__0_0.distcp", "ab") as f:
        offset = f.tell()
        f.write(evil.getvalue())
    info = storage_of(tree, "step", None)
    info.state.update(offset=offset, length=len(evil.getvalue()))
    write_metadata(folder, tree)
    with pytest.raises(ptfile.UnsafeGlobalError, match="dangerous"):  # values are judged when the folder opens
        ptfile.open(folder, records=True)
    with pytest.raises(ptfile.UnsafeGlobalError):
        ptfile.load(folder, records=True)
    assert scan(folder).verdict == "dangerous"
    assert not marker.exists()


def _mutate(tmp_path: Path, change) -> Path:
    folder = copy_case("ranks2", tmp_path)
    tree = metadata_tree(folder)
    change(tree, folder)
    write_metadata(folder, tree)
    return folder


def _set_chunk(fqn: str, i: int, **fields):
    def change(tree: Record, folder: Path) -> None:
        chunk = chunks_of(tree, fqn)[i]
        old = chunk.state["offsets"]
        chunk.state.update(fields)
        for index in tree.state["storage_data"]:  # keep the chunk's item findable under its new offsets
            if index.state["fqn"] == fqn and index.state.get("offset") == old:
                index.state["offset"] = chunk.state["offsets"]
    return change


def _set_item(fqn: str, at: Any, **fields):
    def change(tree: Record, folder: Path) -> None:
        storage_of(tree, fqn, at).state.update(fields)
    return change


def _drop_chunk(tree: Record, folder: Path) -> None:
    chunks_of(tree, "model.row").pop()


def _remove_file(tree: Record, folder: Path) -> None:
    (folder / "__1_0.distcp").unlink()


def _other_chunk_item(tree: Record, folder: Path) -> None:
    # model.row's second chunk (2 x 3 float32) pointing at model.rep's item (3 x 3 float16)
    rep = storage_of(tree, "model.rep", (0, 0)).state
    storage_of(tree, "model.row", (3, 0)).state.update(offset=rep["offset"], length=rep["length"])


def _transformed(tree: Record, folder: Path) -> None:
    storage_of(tree, "model.rep", (0, 0)).state["transform_descriptors"] = ["zstd"]


HOSTILE = {
    "chunk offset out of bounds": (_set_chunk("model.row", 1, offsets=(4, 0)), ptfile.CorruptFileError, "outside"),
    "chunk size out of bounds": (_set_chunk("model.col", 1, sizes=(4, 4)), ptfile.CorruptFileError, "outside"),
    "chunk of the wrong rank": (_set_chunk("model.col", 1, offsets=(0, 3, 0), sizes=(4, 3, 1)),
                                ptfile.CorruptFileError, "dimensions"),
    "overlapping chunks": (_set_chunk("model.row", 1, offsets=(2, 0)), ptfile.CorruptFileError, "overlap"),
    "missing coverage": (_drop_chunk, ptfile.CorruptFileError, "cover 9 of its 15"),
    "item beyond its file": (_set_item("model.row", (3, 0), offset=11300), ptfile.CorruptFileError, "past the end"),
    "item longer than its file": (_set_item("model.row", (3, 0), length=1 << 40), ptfile.CorruptFileError,
                                  "past the end"),
    "item too small for its chunk": (_set_item("model.row", (3, 0), length=16), ptfile.CorruptFileError, "needs 24"),
    "missing item file": (_remove_file, ptfile.CorruptFileError, "missing file"),
    "path traversal": (_set_item("model.rep", (0, 0), relative_path="../x"), ptfile.CorruptFileError, "plain file"),
    "absolute path": (_set_item("model.rep", (0, 0), relative_path="/etc/passwd"), ptfile.CorruptFileError,
                      "plain file"),
    "negative offset": (_set_item("step", None, offset=-1), ptfile.CorruptFileError, "offset"),
    "stream transforms": (_transformed, ptfile.UnsupportedFormatError, "transforms"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_metadata_is_refused_on_open_and_load(tmp_path, case):
    change, error, message = HOSTILE[case]
    folder = _mutate(tmp_path, change)
    with pytest.raises(error, match=message):
        ptfile.open(folder)
    with pytest.raises(error, match=message):
        ptfile.load(folder)
    assert scan(folder).verdict == "invalid"


def test_chunk_whose_item_holds_another_tensor_is_refused_when_read(tmp_path):
    folder = _mutate(tmp_path, _other_chunk_item)
    with ptfile.open(folder) as handle:
        assert np.array_equal(handle["model.col"], ptfile.load(DCP_FIXTURES / "ranks2")["model"]["col"])
        with pytest.raises(ptfile.CorruptFileError, match=r"float16 \(3, 3\), not the float32 \(2, 3\)"):
            handle["model.row"]


def test_item_slices_cannot_reach_their_neighbours(tmp_path):
    # Cut the first item short by one byte: its zip end record is gone, and the reader
    # must not find the neighbour's instead.
    folder = _mutate(tmp_path, _set_item("model.row", (0, 0), length=1576))
    with ptfile.open(folder) as handle, pytest.raises(ptfile.CorruptFileError, match="no zip end record"):
        handle["model.row"]


def test_mem_format_enum_is_checked():
    body = b"\x80\x02ctorch.distributed.checkpoint.metadata\n_MEM_FORMAT_ENCODING\nK\x07\x85R."
    with pytest.raises(ptfile.CorruptFileError, match="no member 7"):
        ptfile.load(body)
    body = b"\x80\x02ctorch.distributed.checkpoint.metadata\n_MEM_FORMAT_ENCODING\nK\x01\x85R."
    assert ptfile.load(body) == "TORCH_CHANNELS_LAST"


def test_path_through_a_value_is_refused(tmp_path):
    folder = copy_case("single", tmp_path)
    tree = metadata_tree(folder)
    tree.state["planner_data"]["extra.lr"] = ("step", "lr")  # 'step' holds an int
    write_metadata(folder, tree)
    with pytest.raises(ptfile.CorruptFileError, match="passes through a value"):
        ptfile.load(folder)


def test_list_index_beyond_the_entries_is_refused(tmp_path):
    folder = copy_case("single", tmp_path)
    tree = metadata_tree(folder)
    tree.state["planner_data"]["layers.1"] = ("layers", 10**12)  # would allocate a huge list
    write_metadata(folder, tree)
    with pytest.raises(ptfile.CorruptFileError, match="planner_data"):
        ptfile.open(folder)


# -- torch oracle ------------------------------------------------------------------


def test_fresh_dcp_folder_written_by_torch(tmp_path):
    torch = pytest.importorskip("torch")
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_dcp", DCP_FIXTURES / "make_dcp.py")
    make_dcp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_dcp)
    generator = torch.Generator().manual_seed(5)
    state = {
        "net": {"a": torch.randn(4, 3, generator=generator).to(torch.bfloat16),
                "b": torch.randint(-9, 9, (5,), generator=generator, dtype=torch.int32),
                "c": torch.randn(2, 2, generator=generator, dtype=torch.float64)},
        "epoch": 3,
        "opt": {"lr": 0.25, "history": [1.5, 2.5]},
    }
    folder = tmp_path / "fresh"
    make_dcp.save_single(folder, state)
    description, blobs = make_dcp.describe(state)
    check_tree(ptfile.load(folder), description["tree"], blobs)
    convert.consolidate(folder, tmp_path / "full.pt")
    loaded = torch.load(tmp_path / "full.pt", weights_only=True)
    assert loaded["epoch"] == 3 and loaded["opt"] == state["opt"]
    for key, tensor in state["net"].items():
        assert torch.equal(loaded["net"][key], tensor)


def test_value_item_with_a_zip_end_record_trick_is_refused(tmp_path):
    """A BYTE_IO item whose last end record (comment running past the item) opens a malicious archive.

    DCP's loader hands the item's bytes to ``torch.load(weights_only=False)``, whose zip reader
    takes that last end record; the item goes through ptfile's zip checks like any checkpoint.
    """
    from corpus_zip import end_comment_overrun

    folder = copy_case("single", tmp_path)
    marker = tmp_path / "marker"
    blob = end_comment_overrun(marker)
    golden_metadata = (folder / dcp.METADATA_FILE).read_bytes()
    tree = metadata_tree(folder)
    with open(folder / "__0_0.distcp", "ab") as f:
        offset = f.tell()
        f.write(blob)
    storage_of(tree, "step", None).state.update(offset=offset, length=len(blob))
    write_metadata(folder, tree)
    with pytest.raises(ptfile.PtfileError):  # the value item is judged when the folder opens
        ptfile.open(folder)
    with pytest.raises(ptfile.PtfileError):
        ptfile.load(folder)
    assert scan(folder).verdict in ("dangerous", "invalid")
    assert not marker.exists()
    pytest.importorskip("torch")
    # torch rewrites its own metadata the same way (ptfile's pickling of the memory-format enum is not torch's)
    (folder / dcp.METADATA_FILE).write_bytes(golden_metadata)
    script = ("import dataclasses, pickle, sys, torch.distributed.checkpoint as dcp\n"
              "path = sys.argv[1] + '/.metadata'\n"
              "meta = pickle.load(open(path, 'rb'))\n"
              "index = next(i for i in meta.storage_data if i.fqn == 'step')\n"
              "meta.storage_data[index] = dataclasses.replace(meta.storage_data[index], offset=int(sys.argv[2]),\n"
              "                                               length=int(sys.argv[3]))\n"
              "pickle.dump(meta, open(path, 'wb'))\n"
              "dcp.load({'step': 0}, checkpoint_id=sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", script, str(folder), str(offset), str(len(blob))], cwd=tmp_path, timeout=300,
                   capture_output=True)
    assert marker.exists(), "DCP's loader did not run the item's payload"
    assert scan(folder).verdict in ("dangerous", "invalid")  # the folder as torch rewrote it
