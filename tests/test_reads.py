"""``scan`` and ``inspect`` read what their answer needs: never a tensor byte, unless asked to verify.

A :class:`CountingSource` serves a checkpoint's bytes and records every range asked for;
the tests then check the ranges against the records of the zip, as :mod:`zipfile` lists them.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import ptfile
from builders import DEFLATED, build_zip, program, state_dict, storage_pid, tensor_v2, torch_members
from ptfile.containers import ziparchive
from ptfile.formats.loader import LazyCheckpoint
from ptfile.formats.opener import open_handle
from ptfile.io.source import MappedSource
from ptfile.scanning.scanner import scan, scan_opened
from ptfile.tools.inspection import MAX_SHARED_WITH, describe, fold_rows

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


class CountingSource(MappedSource):
    """Bytes in memory that remember every range read, viewed or handed out as an array."""

    def __init__(self, data: bytes, name: str = "counted.pt") -> None:
        super().__init__(data, name)
        self.ranges: list[tuple[int, int, str]] = []  # (start, end, how)

    def read(self, offset: int, length: int, what: str = "read") -> bytes:
        self.ranges.append((offset, offset + length, "read"))
        return super().read(offset, length, what)

    def view(self, offset: int, length: int, what: str = "read") -> memoryview:
        self.ranges.append((offset, offset + length, "view"))
        return super().view(offset, length, what)

    def array(self, offset: int, length: int, what: str, *, copy: bool) -> np.ndarray:
        self.ranges.append((offset, offset + length, "array"))
        return super().array(offset, length, what, copy=copy)

    def close(self) -> None:  # the test reads the ranges after the scan closed its source
        pass

    def touched(self, start: int, end: int) -> int:
        """Bytes of ``[start, end)`` that any request covered."""
        covered = set()
        for lo, hi, _ in self.ranges:
            covered.update(range(max(lo, start), min(hi, end)))
        return len(covered)


def storage_ranges(data: bytes) -> dict[str, tuple[int, int]]:
    """``name -> [start, end)`` of every storage record's content, found by the standard library."""
    found = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if "/data/" in info.filename:
                name_length, extra_length = np.frombuffer(data, "<u2", 2, info.header_offset + 26)
                start = info.header_offset + 30 + int(name_length) + int(extra_length)
                found[info.filename] = (start, start + info.compress_size)
    return found


def saved(tensors: dict) -> bytes:
    buffer = io.BytesIO()
    ptfile.save(tensors, buffer)
    return buffer.getvalue()


def built(storage: bytes, **change: object) -> bytes:
    """A one-tensor checkpoint assembled from bytes; ``change`` alters the storage record."""
    count = len(storage) // 4
    pickle = program(state_dict({"w": tensor_v2(storage_pid("0", count), 0, (count,), (1,))}), 2)
    members = [replace(m, **change) if m.name.endswith("data/0") else m
               for m in torch_members(pickle, {"0": storage})]
    return build_zip(members)


BIG = {"a.weight": np.arange(64 * 1024, dtype=np.float32).reshape(256, 256), "b": np.ones(5000, np.int64),
       "layers.0.w": np.zeros((128, 64), np.float32), "layers.1.w": np.zeros((128, 64), np.float32)}


def assert_no_tensor_byte_read(source: CountingSource, data: bytes) -> None:
    ranges = storage_ranges(data)
    assert ranges, "the file must hold storages for the test to mean anything"
    for name, (start, end) in ranges.items():
        assert source.touched(start, end) == 0, f"{name} was read"
    total = sum(hi - lo for lo, hi, _ in source.ranges)
    tensor_bytes = sum(end - start for start, end in ranges.values())
    # the directory, the pickle, the small records and the local headers: a small part of the file
    assert total < (len(data) - tensor_bytes) * 4, (total, len(data), tensor_bytes)


@pytest.mark.parametrize("name", ["ptfile", "torch"])
def test_scan_reads_no_tensor_byte(name: str) -> None:
    data = saved(BIG) if name == "ptfile" else (FIXTURES / "state_dict.pt").read_bytes()
    source = CountingSource(data)
    result = scan(source)
    assert result.verdict == "clean", result.to_dict()
    assert_no_tensor_byte_read(source, data)


def test_inspect_reads_no_tensor_byte() -> None:
    data = saved(BIG)
    source = CountingSource(data)
    report = describe(source)
    assert report["scan"]["verdict"] == "clean" and report["totals"]["tensors"] == len(BIG)
    assert_no_tensor_byte_read(source, data)


def test_verify_streams_every_record_in_views(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ziparchive, "CRC_CHUNK_BYTES", 4096)
    data = saved(BIG)
    source = CountingSource(data)
    assert scan(source, verify=True).verdict == "clean"
    for name, (start, end) in storage_ranges(data).items():
        assert source.touched(start, end) == end - start, f"{name} was not verified whole"
        inside = [(lo, hi, how) for lo, hi, how in source.ranges if start <= lo < end]
        assert all(hi - lo <= 4096 and how == "view" for lo, hi, how in inside), f"{name} was read whole or copied"


def test_wrong_storage_crc_is_found_only_when_verifying() -> None:
    data = built(np.arange(4096, dtype=np.float32).tobytes(), crc=0x1234)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:  # the standard library agrees the CRC is wrong
        assert archive.testzip() is not None and archive.testzip().endswith("data/0")
    quick, full = scan(data), scan(data, verify=True)
    assert quick.verdict == full.verdict == "clean"  # torch never checks a CRC: a note, not a verdict
    assert not any("CRC" in note for note in quick.notes)
    assert any("CRC 0x00001234" in note for note in full.notes), full.notes


def test_verify_inflates_a_deflated_storage_piece_by_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ziparchive, "CRC_CHUNK_BYTES", 1024)
    storage = np.arange(50_000, dtype=np.float32).tobytes()
    data = built(storage, method=DEFLATED)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None  # well formed: zipfile's own CRC check passes
    full = scan(data, verify=True)
    assert not any("CRC" in note for note in full.notes) and not full.faults, full.to_dict()
    archive = ziparchive.ZipArchive(MappedSource(data, "x"))
    pieces = list(archive.chunks(archive.entry("archive/data/0")))
    assert max(len(piece) for piece in pieces) <= 1024 and b"".join(pieces) == storage


@pytest.mark.parametrize("damage", ["corrupt", "short", "long"])
def test_verify_faults_a_broken_deflate_stream(damage: str) -> None:
    storage = np.arange(20_000, dtype=np.float32).tobytes()
    if damage == "corrupt":
        data = built(storage, method=DEFLATED, compressed=b"\xff" * 64)
        expected = "is corrupt"
    else:
        # a stream that inflates to fewer or more bytes than its central entry declares
        other = storage[: len(storage) // 2] if damage == "short" else storage + storage
        squeezer = zlib.compressobj(9, 8, -15)
        data = built(storage, method=DEFLATED, compressed=squeezer.compress(other) + squeezer.flush())
        expected = "not the declared"
    full = scan(data, verify=True)
    assert full.verdict == "invalid" and any(expected in fault for fault in full.faults), full.to_dict()


def test_scan_fails_what_load_refuses_without_reading_tensor_bytes() -> None:
    """A storage whose local header is not one: ``load`` refuses it, so a quick scan is not clean."""
    storage = np.arange(16384, dtype=np.float32).tobytes()
    data = bytearray(built(storage))
    header = data.find(b"PK\x03\x04archive/data/0"[:4], data.find(b"archive/data/0") - 30)
    assert data[header + 30 : header + 44] == b"archive/data/0"
    data[header : header + 4] = b"XXXX"
    source = CountingSource(bytes(data))
    result = scan(source)
    assert result.verdict == "invalid" and any("not at a local header" in f for f in result.faults), result.to_dict()
    # still no tensor byte read past the first 512 (every file's head is sniffed) and before the last
    # KiB (where the zip end record is looked for)
    start, end = storage_ranges(built(storage))["archive/data/0"]
    assert source.touched(max(start, 512), end - ziparchive.FIRST_END_SEARCH) == 0
    with pytest.raises(ptfile.PtfileError, match="not at a local header"):
        ptfile.load(bytes(data))


def test_compressed_storage_is_inflated_without_verify() -> None:
    """``load`` inflates a deflated storage, so a quick scan does too: a broken stream is a fault."""
    data = built(np.zeros(4096, np.float32).tobytes(), method=DEFLATED, compressed=b"\xff" * 64)
    result = scan(data)
    assert result.verdict == "invalid" and any("is corrupt" in f for f in result.faults), result.to_dict()
    with pytest.raises(ptfile.PtfileError, match="is corrupt"):
        ptfile.load(data)


def test_encrypted_storage_is_a_fault_without_verify() -> None:
    data = built(np.zeros(16, np.float32).tobytes(), flags=0x0801)
    result = scan(data)
    assert result.verdict == "invalid" and any("encrypted" in fault for fault in result.faults), result.to_dict()


def test_remote_scan_moves_no_tensor_byte() -> None:
    fsspec = pytest.importorskip("fsspec")
    data = saved(BIG)
    with fsspec.open("memory://perf/big.pt", "wb") as handle:
        handle.write(data)
    from ptfile.io.remote import open_remote

    source = open_remote("memory://perf/big.pt")
    tensor_bytes = sum(end - start for start, end in storage_ranges(data).values())
    result = scan(source)
    assert result.verdict == "clean"
    assert source.bytes_read < (len(data) - tensor_bytes) * 4, (source.bytes_read, len(data))
    assert source.requests < 40, source.requests  # no request per storage


def test_scan_opened_agrees_with_scan(scan_corpus: tuple[Path, list]) -> None:
    """The verdict inspect takes from its open handle is the verdict a scan of the path gives."""
    folder, samples = scan_corpus
    compared = 0
    for sample in samples:
        path = folder / sample.name
        try:
            handle = open_handle(str(path), records=True)
        except ptfile.PtfileError:
            continue
        with handle:
            if not isinstance(handle, LazyCheckpoint):
                continue
            opened = scan_opened(handle).to_dict()
        assert opened == scan(str(path)).to_dict(), sample.name
        compared += 1
    assert compared >= 20  # benign fixtures and the hostile files load(records=True) still opens


# -- totals ----------------------------------------------------------------------------------


def test_totals_count_storages_once_and_parameters_apart(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "training.pt"
    script = f"""
import torch, json
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.BatchNorm1d(3), torch.nn.Linear(4, 10, bias=False))
model[2].weight = model[0].weight  # tied: one parameter under two names
optimizer = torch.optim.Adam(model.parameters())
model(torch.randint(0, 10, (2, 3))).sum().backward()
optimizer.step()
torch.save({{"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}},
           {str(path)!r})
storages = {{}}
for value in [*model.state_dict().values(), *(t for s in optimizer.state_dict()["state"].values() for t in s.values()),
              torch.get_rng_state()]:
    storages[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
print(json.dumps({{
    "parameters": sum(p.numel() for p in model.parameters()),
    "buffers": sum(b.numel() for b in model.buffers()) + torch.get_rng_state().numel(),
    "optimizer": sum(t.numel() for s in optimizer.state_dict()["state"].values() for t in s.values()),
    "bytes": sum(storages.values()),
}}))
"""
    del torch
    expected = __import__("json").loads(subprocess.run([sys.executable, "-c", script], capture_output=True,
                                                        text=True, check=True).stdout)
    totals = describe(path)["totals"]
    assert totals["parameters"] == expected["parameters"]
    assert totals["elements"] == {key: expected[key] for key in ("parameters", "buffers", "optimizer")}
    assert totals["bytes"] == expected["bytes"]
    assert totals["tensors"] == len(describe(path)["tensors"])


def test_marked_parameters_are_the_parameters() -> None:
    """A file that pickles nn.Parameter says which tensors are parameters: only those count."""
    report = describe(FIXTURES / "parameters.pt")
    marked = [row for row in report["tensors"] if row["parameter"]]
    assert marked and len(marked) < len(report["tensors"])
    assert report["totals"]["parameters"] == sum(int(np.prod(row["shape"])) for row in marked)


def test_views_of_one_storage_list_a_bounded_number_of_partners(tmp_path: Path, run_cli) -> None:
    """Every row of 3,000 views of one storage names at most MAX_SHARED_WITH partners and counts them all."""
    torch = pytest.importorskip("torch")
    base = torch.arange(3000, dtype=torch.float32)
    views = {f"t{i}": base[i:i + 1] for i in range(3000)}
    path = tmp_path / "views.pt"
    torch.save(views, path)
    report = describe(path)
    assert [r["name"] for r in report["tensors"]] == list(views)
    for record in report["tensors"]:
        assert record["shared_count"] == 2999  # torch's views of one storage: every other tensor
        assert len(record["shared_with"]) == MAX_SHARED_WITH and record["name"] not in record["shared_with"]
        assert all(views[other].untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
                   for other in record["shared_with"])
    assert report["totals"]["bytes"] == base.nbytes and report["totals"]["parameters"] == 3000
    code, out, err = run_cli("inspect", path)
    assert code == 0, err
    assert f"and {2999 - MAX_SHARED_WITH:,} more" in out


# -- folding -----------------------------------------------------------------------------------


def row(name: str, shape: tuple = (4, 4), dtype: str = "bfloat16", shared: tuple = ()) -> dict:
    strides = [shape[1], 1] if len(shape) == 2 else [1] * len(shape)
    return {"name": name, "dtype": dtype, "shape": list(shape), "strides": strides, "nbytes": 2 * int(np.prod(shape)),
            "shared_with": list(shared)}


def test_fold_rows_folds_only_rows_that_agree() -> None:
    rows = [row(f"layers.{i}.attn.q_proj.weight") for i in range(32)]
    rows[5] = row("layers.5.attn.q_proj.weight", (4, 8))  # one layer of another shape stays apart
    rows.append(row("layers.0.attn.q_proj.bias", (4,), "float32"))
    rows += [row(f"experts.{i}.w", (2, 2), shared=("tied",) if i == 2 else ()) for i in (1, 2, 4)]
    folded = {r["name"]: r for r in fold_rows(rows)}
    whole = folded["layers.{0,1,2,3,4,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31}"
                   ".attn.q_proj.weight"]
    assert whole["count"] == 31 and whole["nbytes"] == 31 * 32
    assert folded["layers.5.attn.q_proj.weight"]["count"] == 1
    assert folded["layers.0.attn.q_proj.bias"]["count"] == 1
    assert folded["experts.{1,2,4}.w"]["shared_with"] == ["tied"]
    assert sum(r["count"] for r in folded.values()) == len(rows)


def test_fold_rows_names_runs_as_ranges() -> None:
    folded = fold_rows([row(f"model.layers.{i}.mlp.{j}.weight") for i in range(3) for j in range(2)])
    assert [(r["name"], r["count"]) for r in folded] == [("model.layers.{0..2}.mlp.{0..1}.weight", 6)]


def test_inspect_folds_a_long_listing(tmp_path: Path, run_cli) -> None:
    path = tmp_path / "layers.pt"
    ptfile.save({f"layers.{i}.{part}": np.zeros((3, 2), np.float32) for i in range(300) for part in ("a", "b")},
                path)
    code, folded, err = run_cli("inspect", path)
    assert code == 0, err
    assert "layers.{0..299}.a  x300" in folded and "layers.{0..299}.b  x300" in folded
    assert "layers.7.a" not in folded
    code, every, _ = run_cli("inspect", path, "--all")
    assert code == 0 and all(f"layers.{i}.b " in every for i in range(300))
    assert "600 tensors" in every and "600 tensors" in folded


def test_inspect_keeps_a_short_listing_unless_asked(tmp_path: Path, run_cli) -> None:
    path = tmp_path / "short.pt"
    ptfile.save({f"blocks.{i}.w": np.zeros(2, np.float32) for i in range(3)}, path)
    _, plain, _ = run_cli("inspect", path)
    assert "blocks.1.w" in plain and "{0..2}" not in plain
    assert "blocks.{0..2}.w  x3" in run_cli("inspect", path, "--collapse")[1]


def test_cli_scan_verify(tmp_path: Path, run_cli) -> None:
    path = tmp_path / "crc.pt"
    path.write_bytes(built(np.arange(256, dtype=np.float32).tobytes(), crc=1))
    (quick_code, quick, _), (full_code, full, _) = run_cli("scan", path), run_cli("scan", path, "--verify")
    assert quick_code == full_code == 0
    assert "CRC" not in quick and "CRC 0x00000001" in full


def test_verify_gives_back_the_pages_it_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A verified storage does not stay resident: each piece of a file's map is released once checked."""
    monkeypatch.setattr(ziparchive, "CRC_CHUNK_BYTES", 8192)
    released: list[tuple[int, int]] = []
    original = MappedSource.release

    def counting_release(self: MappedSource, offset: int, length: int) -> None:
        assert self.read_only_map  # only the read-only map of a file is released
        released.append((offset, offset + length))
        original(self, offset, length)

    monkeypatch.setattr(MappedSource, "release", counting_release)
    data = saved(BIG)
    path = tmp_path / "big.pt"
    path.write_bytes(data)
    assert scan(path, verify=True).verdict == "clean"
    for name, (start, end) in storage_ranges(data).items():
        covered = sum(min(hi, end) - max(lo, start) for lo, hi in released if lo < end and hi > start)
        assert covered == end - start, name
    released.clear()
    assert scan(path).verdict == "clean" and released  # a quick scan streams the small records only
    assert not any(lo < end and hi > start for lo, hi in released for start, end in storage_ranges(data).values())


def test_release_leaves_a_copy_on_write_map_alone(tmp_path: Path) -> None:
    import mmap

    path = tmp_path / "bytes.bin"
    path.write_bytes(bytes(mmap.PAGESIZE * 2))
    with open(path, "r+b") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    mapped[10] = 7  # a private change that dropping the page would lose
    source = MappedSource(mapped, "copy")
    source.release(0, mmap.PAGESIZE * 2)
    assert mapped[10] == 7
