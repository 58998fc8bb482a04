"""The consumer model: every reading a real consumer takes of a file is judged.

Samples are built from raw bytes around a payload that only creates a marker file; the real
consumer (``pickle.load`` from byte 0, ``zipfile`` + ``pickle``, ``torch.load``) runs in a
subprocess and proves the sample is live before ptfile's verdict on it is checked.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

import ptfile
from builders import Member, build_zip, program, tar_archive
from corpus import benign_members, os_system
from ptfile.containers.ziparchive import zipfile_directory
from ptfile.formats import consumers
from ptfile.io.source import MappedSource

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _consumer_runs(code: str, path: Path, marker: Path) -> bool:
    """Run one consumer of ``path`` in a fresh interpreter; True when it created the marker."""
    subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(path)], capture_output=True, timeout=120)
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran


PICKLE_FROM_BYTE_0 = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))"
ZIPFILE_AND_PICKLE = """
    import pickle, sys, zipfile
    with zipfile.ZipFile(sys.argv[1]) as archive:
        for name in archive.namelist():
            try:
                pickle.loads(archive.read(name))
            except Exception:
                pass
"""
TORCH_LOAD = "import sys, torch; torch.load(sys.argv[1], weights_only=False)"


def _refused(path: Path) -> None:
    """What a live sample must get: never clean, and every load path refuses it."""
    assert ptfile.scan(path).verdict in ("dangerous", "invalid")
    with pytest.raises(ptfile.PtfileError):
        ptfile.load(path)
    with pytest.raises(ptfile.PtfileError):
        ptfile.open(path)


# -- the first opcode ---------------------------------------------------------------------------


class _Recorder(pickle.Unpickler):
    """CPython's own unpickler, with every import recorded and refused."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.imports: list[tuple[str, str]] = []

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        self.imports.append((module, name))
        raise pickle.UnpicklingError("refused")


@pytest.mark.parametrize("first", range(256))
def test_fails_at_once_agrees_with_cpython(first: int) -> None:
    """A first byte ptfile calls harmless makes CPython's unpickler fail before any import."""
    payload = pickle.dumps(print, protocol=0)  # a GLOBAL that would be imported next
    for tail in (b"\n" + payload, b"0\n" + payload, b"\x00\x00\x00\x00" + payload):
        unpickler = _Recorder(bytes([first]) + tail)
        if consumers.fails_at_once(bytes([first])):
            with pytest.raises(Exception):  # noqa: B017 - any failure will do; what matters is that none imported
                unpickler.load()
            assert unpickler.imports == []


def test_torch_zip_and_tar_checkpoints_start_with_a_failing_opcode() -> None:
    """Every container torch writes makes ``pickle.load`` from byte 0 fail at once (or is that pickle)."""
    assert consumers.fails_at_once((FIXTURES / "dtypes.pt").read_bytes()[:1])
    tar = tar_archive({"sys_info": b"", "pickle": b"", "tensors": b"", "storages": b""})
    assert consumers.fails_at_once(tar[:1])
    assert not consumers.fails_at_once(b"\x80\x02")


# -- pickle.load from byte 0 of a tar ---------------------------------------------------------------


def _tar_with_pickle_name(marker: Path) -> bytes:
    """A tar whose first member's name is a protocol-0 pickle that runs the payload."""
    name = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    assert len(name) < 100
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for member, data in ((name.decode(), b""), ("sys_info", pickle.dumps({}, protocol=2))):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_pickle_from_byte_0_of_a_tar_is_judged(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "named.tar"
    path.write_bytes(_tar_with_pickle_name(marker))
    assert tarfile.is_tarfile(path)
    assert _consumer_runs(PICKLE_FROM_BYTE_0, path, marker)
    result = ptfile.scan(path)
    assert result.verdict == "dangerous"
    assert "os.system" in {f.path for f in result.findings}
    _refused(path)


def test_byte_0_reading_of_a_torch_tar_finds_nothing() -> None:
    """The real legacy tar fixtures: their first byte fails at once, so nothing more is read."""
    for path in sorted((FIXTURES / "legacy").glob("*.tar.pt")):
        inventory: list = []
        source = MappedSource(path.read_bytes(), str(path))
        assert consumers.byte0_reading(source, inventory, None) == []
        assert inventory == []


def test_a_pickle_cut_short_at_byte_0_is_never_clean() -> None:
    """A byte-0 pickle the engine cannot finish after an import: CPython might go on, so the file is a fault,
    and the globals met before the fault are judged."""
    inventory: list = []
    data = b"cos\nsystem\n(S'true'\ntR" + b"\xff" * 64  # the call, then an unknown opcode instead of STOP
    faults = consumers.byte0_reading(MappedSource(data, "cut"), inventory, None)
    assert len(faults) == 1 and "pickle.load from byte 0" in faults[0]
    assert {(use.module, use.name) for use in inventory} == {("os", "system")}


def test_a_pickle_that_fails_before_any_import_is_harmless() -> None:
    """No GLOBAL, INST, EXT or persistent id before the fault: CPython cannot have run anything."""
    for data in (b"(" + b"\xff" * 64, b"X\x01\x00\x00\x00a\x00", b"N" * 100):
        inventory: list = []
        assert consumers.byte0_reading(MappedSource(data, "data"), inventory, None) == []
        assert inventory == []


# -- zipfile on a zip appended to something else ---------------------------------------------------


def _evil_zip(marker: Path) -> bytes:
    return build_zip([Member("archive/data.pkl", program(os_system(marker), 2))])


def _front(kind: str) -> bytes:
    """A checkpoint ptfile loads on its own: the front half of a polyglot."""
    if kind == "pickle":
        return program({"epoch": 3}, 2)
    return (FIXTURES / "legacy" / {"legacy": "parameters.pt", "tar": "ancient.tar.pt"}[kind]).read_bytes()


@pytest.mark.parametrize("front", ["legacy", "tar", "pickle"])
def test_zip_appended_to_a_checkpoint_is_judged(tmp_path: Path, front: str) -> None:
    marker = tmp_path / "marker"
    alone = tmp_path / "alone.pt"
    alone.write_bytes(_front(front))
    ptfile.load(alone)  # the front half alone is a checkpoint ptfile reads
    assert ptfile.scan(alone).verdict == "clean"
    path = tmp_path / f"{front}.pt"
    path.write_bytes(_front(front) + _evil_zip(marker))
    assert zipfile.is_zipfile(path)
    assert _consumer_runs(ZIPFILE_AND_PICKLE, path, marker)
    assert not _consumer_runs(PICKLE_FROM_BYTE_0, path, marker)
    result = ptfile.scan(path)
    assert result.verdict == "dangerous"
    assert any("polyglot" in fault for fault in result.faults)
    _refused(path)


@pytest.mark.parametrize("front", ["legacy", "tar", "pickle"])
def test_benign_zip_appended_is_still_a_fault(tmp_path: Path, front: str) -> None:
    """Two files in one is never clean, even when both halves are: readers disagree on what it is."""
    path = tmp_path / "twice.pt"
    path.write_bytes(_front(front) + build_zip(benign_members()))
    assert ptfile.scan(path).verdict == "invalid"
    with pytest.raises(ptfile.PtfileError):  # the container, or the polyglot check, refuses it
        ptfile.load(path)


def test_zipfile_directory_matches_zipfile(tmp_path: Path) -> None:
    """Our reading of zipfile's end-record rule against zipfile itself, on truncations of polyglots."""
    data = program({"a": 1}, 2) + build_zip(benign_members())
    for cut in range(0, len(data), 7):
        for sample in (data[:cut], data[cut:]):
            try:
                zipfile.ZipFile(io.BytesIO(sample)).close()
                opens = True
            except Exception:  # noqa: BLE001 - zipfile's many errors all mean "not a zip to it"
                opens = False
            if opens:
                assert zipfile_directory(MappedSource(sample, "s")) is not None or not _has_members(sample)


def _has_members(data: bytes) -> bool:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return bool(archive.infolist())


@pytest.mark.parametrize("front", ["legacy", "tar"])
def test_torch_load_reads_the_front_half(tmp_path: Path, front: str) -> None:
    """torch.load reads a legacy file with a zip appended from byte 0: the zip is zipfile's alone."""
    pytest.importorskip("torch")
    marker = tmp_path / "marker"
    path = tmp_path / "legacy.pt"
    path.write_bytes(_front(front) + _evil_zip(marker))
    assert not _consumer_runs(TORCH_LOAD, path, marker)
