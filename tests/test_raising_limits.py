"""Every field of ``ptfile.Limits``: lowered below a file, the file is refused (or, for a scan,
not examined) with a message naming the field and how to raise it; at the default the same file
goes through.  Small files and small limit values keep each case fast.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import ptfile
from builders import DEFLATED, build_zip, program, storage_pid, tensor_v2, torch_members
from corpus import os_system
from ptfile.constants import applying
from ptfile.formats.scriptcode import is_code_record
from ptfile.formats.stformat import write_safetensors

DCP_SINGLE = Path(__file__).parent / "fixtures" / "dcp" / "single"


def _hint(field: str) -> str:
    return re.escape(f"; pass limits=ptfile.Limits({field}=...) to raise it")


def test_every_field_is_covered_here() -> None:
    """A new limit must come with a case below."""
    assert set(ptfile.Limits._fields) == set(LOAD_CASES) | set(SCAN_CASES)


def test_the_defaults_are_named_and_a_wrong_type_is_refused(tmp_path: Path) -> None:
    assert ptfile.Limits().max_pickle_nesting == 10_000
    assert ptfile.Limits(max_pickle_nesting=5) == ptfile.Limits()._replace(max_pickle_nesting=5)
    path = tmp_path / "x.pt"
    ptfile.save({"a": np.zeros(2, np.float32)}, path)
    with pytest.raises(TypeError, match="ptfile.Limits"):
        ptfile.load(path, limits={"max_pickle_nesting": 5})  # type: ignore[arg-type]


# -- limits that load and open hit ------------------------------------------------------------


def _deflated_checkpoint(tmp_path: Path) -> tuple[Path, int]:
    data = bytes(range(256)) * 20
    members = torch_members(program(tensor_v2(storage_pid("0", len(data), "ByteStorage"), 0, (len(data),), (1,)), 2),
                            {"0": data})
    members[2].method = DEFLATED
    path = tmp_path / "deflated.pt"
    path.write_bytes(build_zip(members))
    return path, len(data)


def _safetensors(tmp_path: Path) -> tuple[Path, int]:
    path = tmp_path / "model.safetensors"
    write_safetensors({"w": np.ones((2, 3), np.float32)}, path)
    return path, int.from_bytes(path.read_bytes()[:8], "little")


def _npy(tmp_path: Path) -> tuple[Path, int]:
    path = tmp_path / "array.npy"
    np.save(path, np.arange(6, dtype=np.int64))
    return path, int.from_bytes(path.read_bytes()[8:10], "little")


def _nested(tmp_path: Path) -> tuple[Path, int]:
    value: tuple = (1, 2, 3, 4)  # protocol 2 writes tuples of four or more as MARK ... TUPLE
    for _ in range(20):
        value = (value, 1, 2, 3)
    path = tmp_path / "nested.pkl"
    path.write_bytes(pickle.dumps(value, 2))
    return path, 21


def _torchscript(tmp_path: Path) -> tuple[Path, int]:
    torch = pytest.importorskip("torch")

    class Scale(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(Scale()), str(path))
    with zipfile.ZipFile(path) as archive:  # the code records' total size, as the reader counts it
        return path, sum(info.file_size for info in archive.infolist()
                         if is_code_record(info.filename.split("/", 1)[1]))


def _shards(tmp_path: Path) -> tuple[Path, int]:
    folder = tmp_path / "shards"
    folder.mkdir()
    ptfile.save_sharded({f"w{i}": np.ones(64, np.float32) for i in range(4)}, folder, max_shard_size=300)
    (index,) = folder.glob("*.index.json")
    json.loads(index.read_text())  # a real index, read whole
    return index, index.stat().st_size


def _dcp_metadata(tmp_path: Path) -> tuple[Path, int]:
    return DCP_SINGLE, (DCP_SINGLE / ".metadata").stat().st_size


#: field -> (build a file, and the size it needs of that limit)
LOAD_CASES: dict[str, Callable[[Path], tuple[Path, int]]] = {
    "max_inflated_record_bytes": _deflated_checkpoint,
    "max_safetensors_header_bytes": _safetensors,
    "max_npy_header_bytes": _npy,
    "max_pickle_nesting": _nested,
    "max_code_bytes": _torchscript,
    "max_index_bytes": _shards,
    "max_dcp_metadata_bytes": _dcp_metadata,
}


@pytest.mark.parametrize("field", list(LOAD_CASES))
def test_a_limit_below_the_file_refuses_it_and_says_how_to_raise_it(tmp_path: Path, field: str) -> None:
    path, needed = LOAD_CASES[field](tmp_path)
    low = ptfile.Limits(**{field: needed - 1})
    with pytest.raises(ptfile.LimitExceededError, match=rf"over {field} \({needed - 1}\){_hint(field)}"):
        ptfile.load(path, limits=low)
    result = ptfile.scan(path, limits=low)
    assert result.verdict == "invalid", result
    assert any(f"over {field}" in fault for fault in result.faults), result.faults
    # exactly enough lets it through; so do the defaults
    assert ptfile.load(path, limits=ptfile.Limits(**{field: needed})) is not None
    assert ptfile.load(path) is not None
    assert ptfile.scan(path).verdict != "invalid"


def test_an_open_handle_keeps_its_limits_for_what_it_reads_later(tmp_path: Path) -> None:
    """Records are inflated again when a tensor is read, after open returned: the handle's limits hold then."""
    path, needed = _deflated_checkpoint(tmp_path)
    lower = ptfile.Limits(max_inflated_record_bytes=needed - 1)
    with ptfile.open(path, limits=ptfile.Limits(max_inflated_record_bytes=needed)) as handle:
        (key,) = handle.keys()
        with applying(lower):  # what is in force when the tensor is read is not what the handle was opened with
            assert handle[key].nbytes == needed
    with applying(lower), pytest.raises(ptfile.LimitExceededError, match="max_inflated_record_bytes"):
        ptfile.open(path)


def test_limits_end_with_the_call(tmp_path: Path) -> None:
    path, _ = _nested(tmp_path)
    with pytest.raises(ptfile.LimitExceededError):
        ptfile.load(path, limits=ptfile.Limits(max_pickle_nesting=3))
    assert ptfile.load(path) == pickle.loads(path.read_bytes())


# -- limits only a scan hits ------------------------------------------------------------------


def _dangerous_pickle(tmp_path: Path) -> bytes:
    return program(os_system(tmp_path / "ran"), 2)


def _gzip_member(tmp_path: Path) -> tuple[bytes, int]:
    inner = _dangerous_pickle(tmp_path)
    return gzip.compress(inner), len(inner)


def _tar_of_two(tmp_path: Path) -> tuple[bytes, int]:
    first = pickle.dumps(list(range(100)), 2)
    second = _dangerous_pickle(tmp_path)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in (("a.pkl", first), ("b.pkl", second)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue(), len(first) + len(second)


def _stream(tmp_path: Path) -> tuple[bytes, int]:
    return pickle.dumps(None, 2) * 3 + _dangerous_pickle(tmp_path), 4


#: field -> (build a file whose last part is dangerous, and the size it needs of that limit)
SCAN_CASES: dict[str, Callable[[Path], tuple[bytes, int]]] = {
    "max_member_bytes": _gzip_member,
    "max_archive_bytes": _tar_of_two,
    "max_stream_pickles": _stream,
}


@pytest.mark.parametrize("field", list(SCAN_CASES))
def test_a_scan_limit_below_the_file_leaves_it_unexamined(tmp_path: Path, field: str) -> None:
    blob, needed = SCAN_CASES[field](tmp_path)
    low = ptfile.scan(blob, limits=ptfile.Limits(**{field: needed - 1}))
    assert low.verdict == "invalid", low  # not examined, so never clean
    assert any(re.search(rf"over {field} \({needed - 1}\){_hint(field)}", fault) for fault in low.faults), low.faults
    assert ptfile.scan(blob, limits=ptfile.Limits(**{field: needed})).verdict == "dangerous"
    assert ptfile.scan(blob).verdict == "dangerous"
    assert not (tmp_path / "ran").exists()


# -- the command -----------------------------------------------------------------------------


def _ptfile(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "ptfile", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=120)


def test_the_command_takes_limits_and_names_them(tmp_path: Path) -> None:
    path, needed = _nested(tmp_path)
    refused = _ptfile("--limit", f"max_pickle_nesting={needed - 1}", "inspect", path)
    assert refused.returncode == 2, refused
    assert f"over max_pickle_nesting ({needed - 1})" in refused.stderr
    assert "--limit max_pickle_nesting=N" in refused.stderr
    assert _ptfile("--limit", f"max_pickle_nesting={needed}", "inspect", path).returncode == 0
    blob, needed = _stream(tmp_path)
    (tmp_path / "stream.bin").write_bytes(blob)
    for jobs in ("1", "2"):  # in this process, and sent to worker processes
        scanned = _ptfile("--limit", f"max_stream_pickles={needed - 1}", "scan", "-j", jobs, tmp_path / "stream.bin",
                          tmp_path / "stream.bin")
        assert scanned.returncode == 2 and "over max_stream_pickles" in scanned.stdout, scanned
    wrong = _ptfile("--limit", "max_everything=3", "inspect", path)
    assert wrong.returncode == 2 and "NAME one of max_inflated_record_bytes" in wrong.stderr
