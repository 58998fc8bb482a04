"""The facts of ``ptfile.constants`` against the real torch, and the verdict words users see.

Reader and writer take torch's record names, versions and alignment from one module; these
tests hold that module to what torch itself writes and reads.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

import ptfile
from ptfile import constants
from ptfile.constants import Verdict


def test_verdicts_are_the_words_users_see_worst_first() -> None:
    assert [v.value for v in Verdict] == ["dangerous", "unknown-call", "invalid", "unknown-class", "clean"]
    assert f"{Verdict.UNKNOWN_CALL}" == str(Verdict.UNKNOWN_CALL) == "unknown-call"
    assert json.dumps({"verdict": Verdict.CLEAN}) == '{"verdict": "clean"}'
    assert Verdict("invalid") is Verdict.INVALID


def test_a_scan_reports_the_words(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    ptfile.save({"w": np.ones(3, np.float32)}, path)
    result = ptfile.scan(path)
    assert result.verdict is Verdict.CLEAN and result.verdict == "clean"
    assert json.loads(json.dumps(result.to_dict()))["verdict"] == "clean"
    assert type(result.to_dict()["verdict"]) is str


def _records(blob: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _data_offset(blob: bytes, name: str) -> int:
    """Where a record's data starts: after its local header, whose extra field holds torch's padding."""
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        at = archive.getinfo(name).header_offset
    name_size, extra_size = struct.unpack_from("<HH", blob, at + 26)
    return at + 30 + name_size + extra_size


def test_torch_writes_the_layout_the_constants_name() -> None:
    torch = pytest.importorskip("torch")
    out = io.BytesIO()
    torch.save({"w": torch.ones(3)}, out)  # to a stream: torch's default prefix
    records = _records(out.getvalue())
    prefix = constants.DEFAULT_ARCHIVE_PREFIX + "/"
    assert set(records) == {prefix + name for name in (
        constants.PICKLE_RECORD, constants.BYTEORDER_RECORD, constants.FORMAT_VERSION_RECORD,
        constants.STORAGE_ALIGNMENT_RECORD, constants.VERSION_RECORD, constants.SERIALIZATION_ID_RECORD,
        constants.STORAGE_FOLDER + "0")}
    assert records[prefix + constants.VERSION_RECORD] == f"{constants.FILE_FORMAT_VERSION}\n".encode()
    assert records[prefix + constants.FORMAT_VERSION_RECORD] == str(constants.FORMAT_VERSION).encode()
    assert records[prefix + constants.STORAGE_ALIGNMENT_RECORD] == str(constants.STORAGE_ALIGNMENT).encode()
    assert _data_offset(out.getvalue(), prefix + constants.STORAGE_FOLDER + "0") % constants.STORAGE_ALIGNMENT == 0


def test_ptfile_writes_what_torch_writes() -> None:
    torch = pytest.importorskip("torch")
    ours, theirs = io.BytesIO(), io.BytesIO()
    ptfile.save({"w": np.ones(3, np.float32)}, ours)
    torch.save({"w": torch.ones(3)}, theirs)
    assert sorted(_records(ours.getvalue())) == sorted(_records(theirs.getvalue()))


def test_a_torchscript_archive_holds_the_constants_record(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    names = {name.split("/", 1)[1] for name in _records(path.read_bytes())}
    assert {constants.CONSTANTS_RECORD, constants.PICKLE_RECORD} <= names


def test_legacy_magic_numbers_are_torchs() -> None:
    torch = pytest.importorskip("torch")
    out = io.BytesIO()
    torch.save({"w": torch.ones(2)}, out, _use_new_zipfile_serialization=False)
    out.seek(0)
    assert pickle.load(out) == constants.LEGACY_MAGIC_NUMBER
    assert pickle.load(out) == constants.LEGACY_PROTOCOL_VERSION


@pytest.mark.parametrize("version", [constants.SUPPORTED_VERSIONS[-1], constants.SUPPORTED_VERSIONS[-1] + 1])
def test_the_supported_versions_are_those_torch_reads(tmp_path: Path, version: int) -> None:
    torch = pytest.importorskip("torch")
    blob = io.BytesIO()
    ptfile.save({"w": np.ones(3, np.float32)}, blob)
    data = bytearray(blob.getvalue())
    start = _data_offset(bytes(data), f"{constants.DEFAULT_ARCHIVE_PREFIX}/{constants.VERSION_RECORD}")
    assert data[start:start + 2] == b"3\n"
    data[start:start + 2] = str(version).encode()  # both two bytes: torch checks no CRC here
    path = tmp_path / "version.pt"
    path.write_bytes(bytes(data))
    torch_reads = True
    try:
        torch.load(path, weights_only=True)
    except RuntimeError:
        torch_reads = False
    assert torch_reads == (version in constants.SUPPORTED_VERSIONS)
    if torch_reads:
        assert ptfile.load(path)["w"].tolist() == [1.0, 1.0, 1.0]
    else:
        with pytest.raises(ptfile.UnsupportedFormatError, match="version"):
            ptfile.load(path)
