"""The zip reader: torch's layout, the leniency torch has, and the strictness safety needs.

Archives come from three writers: torch itself (when installed), Python's
``zipfile`` (deflate, comments, no padding), and the byte-level builder, which
breaks one rule at a time.  Every test reads through both byte sources (a
memory map or bytes, and positioned reads of a file) and expects the same.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from builders import DEFLATED, G, Member, build_zip, program, torch_zip
from corpus_zip import LIVE
from corpus_zip import samples as zip_samples
from ptfile import CorruptFileError, LimitExceededError, PtfileError, UnsupportedFormatError
from ptfile.containers import ziparchive
from ptfile.containers.ziparchive import ZipArchive
from ptfile.io.open import open_source
from ptfile.io.source import FileSource, MappedSource

#: torch's default storage alignment: data of every record starts on a multiple of it.
ALIGNMENT = 64


@pytest.fixture(params=["mapped", "pread"])
def open_archive(request, tmp_path: Path):
    """Open bytes as an archive through a memory map or through positioned reads."""
    opened = []

    def make(blob: bytes) -> ZipArchive:
        path = tmp_path / f"a{len(opened)}.zip"
        path.write_bytes(blob)
        source = open_source(path, mmap_file=request.param == "mapped")
        opened.append(source)
        return ZipArchive(source)

    yield make
    for source in opened:
        source.close()


def contents(archive: ZipArchive) -> dict[str, bytes]:
    return {name: archive.read(archive.entry(name)) for name in archive.order}


def test_builder_archive_is_read_like_zipfile(open_archive) -> None:
    records = {"arc/data.pkl": program(7, 2), "arc/data/0": b"\x01" * 100, "arc/empty": b"", "arc/version": b"3\n"}
    blob = build_zip([Member(name, data) for name, data in records.items()])
    archive = open_archive(blob)
    assert archive.prefix == "arc" and archive.order == list(records)
    assert contents(archive) == records == {i.filename: zipfile.ZipFile(io.BytesIO(blob)).read(i) for i in
                                            zipfile.ZipFile(io.BytesIO(blob)).infolist()}
    for name in records:
        offset, size = archive.stored_range(archive.entry(name))
        assert offset % ALIGNMENT == 0 and size == len(records[name])
        assert archive.verify_crc(archive.entry(name))
    assert archive.anomalies == []


def test_torch_written_archive(open_archive) -> None:
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    torch.save({"a": torch.arange(10, dtype=torch.float32), "b": torch.ones(3, dtype=torch.int64)}, buffer)
    archive = open_archive(buffer.getvalue())
    assert archive.prefix == "archive"
    assert archive.order[0] == "archive/data.pkl"
    assert archive.has("data.pkl") and archive.has("version") and archive.has("data/0") and archive.has("data/1")
    stored = contents(archive)
    assert stored["archive/data/0"] == torch.arange(10, dtype=torch.float32).numpy().tobytes()
    for name in archive.order:
        assert archive.stored_range(archive.entry(name))[0] % ALIGNMENT == 0
        assert archive.verify_crc(archive.entry(name))


def test_zipfile_written_archive_with_deflate_and_comment(open_archive) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as out:
        out.writestr("p/data.pkl", program([1, 2, 3], 2))
        out.writestr("p/data/0", b"abc" * 1000)
        out.writestr("p/stored", b"plain", compress_type=zipfile.ZIP_STORED)
        out.comment = b"a comment that holds PK\x05 but not a whole end record"
    archive = open_archive(buffer.getvalue())
    assert contents(archive) == {"p/data.pkl": program([1, 2, 3], 2), "p/data/0": b"abc" * 1000, "p/stored": b"plain"}
    assert archive.stored_range(archive.entry("p/data/0")) is None  # deflated records have no in-place range


def test_zip64_fields_are_read(open_archive) -> None:
    members = [Member("arc/data.pkl", program(7, 2), zip64=True), Member("arc/x", b"y" * 70, zip64=True)]
    archive = open_archive(build_zip(members))
    assert contents(archive) == {"arc/data.pkl": program(7, 2), "arc/x": b"y" * 70}


def test_records_without_descriptors(open_archive) -> None:
    members = [Member("arc/data.pkl", program(7, 2), descriptor=False), Member("arc/x", b"xyz", descriptor=False)]
    assert contents(open_archive(build_zip(members)))["arc/x"] == b"xyz"


def test_no_zip64_end_record(open_archive) -> None:
    archive = open_archive(build_zip([Member("arc/data.pkl", b"x")], zip64_end=False))
    assert contents(archive) == {"arc/data.pkl": b"x"}


def test_anomalies_are_remembered(open_archive) -> None:
    members = [Member("arc/data.pkl", b"pickle", local_name="arc/datap.kl", flags=0x828, crc=0)]
    archive = open_archive(build_zip(members))
    assert archive.read(archive.entry("arc/data.pkl")) == b"pickle"
    assert not archive.verify_crc(archive.entry("arc/data.pkl"))
    notes = " | ".join(archive.anomalies)
    assert "flag bits 0x0828" in notes and "local name 'arc/datap.kl'" in notes and "CRC 0x00000000" in notes


@pytest.mark.parametrize(
    "member, error, match",
    [
        (Member("arc/a", b"x", flags=0x809), UnsupportedFormatError, r"record 'arc/a' is encrypted"),
        (Member("arc/a", b"x", method=12, compressed=b"x"), UnsupportedFormatError, r"uses compression method 12"),
        (Member("arc/a", b"x" * 10, method=DEFLATED, compressed=b"\xff\xff\xff"), CorruptFileError,
         r"compressed record 'arc/a' is corrupt"),
        (Member("arc/a", b"x" * 10, method=DEFLATED, central_size=20), CorruptFileError,
         r"inflates to 10 bytes, not the declared 20"),
        (Member("arc/a", b"x" * 10, central_size=11), CorruptFileError, r"has size 11 but 10 stored bytes"),
    ],
)
def test_record_errors(open_archive, member: Member, error: type, match: str) -> None:
    archive = open_archive(build_zip([member, Member("arc/b", b"after")]))
    with pytest.raises(error, match=match):
        archive.read(archive.entry("arc/a"))
    assert archive.read(archive.entry("arc/b")) == b"after"


def test_inflate_limit(open_archive, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = open_archive(build_zip([Member("arc/a", b"\0" * 5000, method=DEFLATED)]))
    monkeypatch.setattr(ziparchive, "MAX_INFLATED_RECORD", 4999)
    with pytest.raises(LimitExceededError, match=r"inflates to 5000 bytes, over the 4999-byte limit"):
        archive.read(archive.entry("arc/a"))
    monkeypatch.setattr(ziparchive, "MAX_INFLATED_RECORD", 5000)
    assert archive.read(archive.entry("arc/a")) == b"\0" * 5000


def test_directory_errors(open_archive) -> None:
    good = [Member("arc/data.pkl", b"x")]
    cases = [
        (build_zip([*good, Member("arc/data.pkl", b"y")]), r"zip record 'arc/data.pkl' appears twice"),
        (build_zip([Member("top", b"x")]), r"first zip record 'top' is not inside an archive folder"),
        (build_zip([]), r"first zip record '' is not inside"),
        (build_zip(good, count=5, zip64_end=False), r"cannot hold 5 records"),
        (build_zip(good, zip64_count=2**64 - 1), r"cannot hold"),
        (build_zip(good, zip64_cd_offset=3), r"zipfile shifts every zip offset by \d+ bytes"),
        (build_zip(good, locator_offset=2**64 - 1), r"points at byte 18446744073709551615, where no zip64 end record"),
        (build_zip([Member("arc/a", b"x"), Member("arc/b", alias_of="arc/a")]), r"overlaps the next record"),
        (build_zip([Member("arc/a", b"x", central_offset=10**9, zip64=True)]), r"overlaps .* central directory"),
        (b"PK\x03\x04" + b"\0" * 10, r"too short for a zip archive"),
        (b"PK\x03\x04" + b"\0" * 100, r"no zip end record"),
    ]
    for blob, match in cases:
        with pytest.raises(CorruptFileError, match=match):
            open_archive(blob)


def test_central_record_truncated(open_archive) -> None:
    blob = bytearray(build_zip([Member("arc/data.pkl", b"x")], zip64_end=False))
    end = blob.rfind(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack_from("<II", blob, end + 12)
    struct.pack_into("<I", blob, end + 12, cd_size - 5)  # the directory no longer holds its one record
    with pytest.raises(CorruptFileError, match=r"central directory"):
        open_archive(bytes(blob))


def test_local_header_errors(open_archive) -> None:
    blob = build_zip([Member("arc/a", b"x" * 10), Member("arc/b", b"y")])
    archive = open_archive(blob)
    archive.entries["arc/a"].header_offset = 5  # not a local header
    with pytest.raises(CorruptFileError, match=r"not at a local header"):
        archive.read(archive.entry("arc/a"))
    # A local header whose extra field pushes the data into the next record.
    members = [Member("arc/a", b"x" * 10, central_csize=200, central_size=200), Member("arc/b", b"y")]
    archive = open_archive(build_zip(members))
    with pytest.raises(CorruptFileError, match=r"past the start of the next record"):
        archive.read(archive.entry("arc/a"))
    with pytest.raises(CorruptFileError, match=r"record 'arc/zz' is missing"):
        archive.entry("arc/zz")


def test_every_truncation_and_flip_of_the_directory_is_a_ptfile_error() -> None:
    blob = torch_zip(program({"a": [1, 2]}, 2), {"0": b"\1" * 8})
    for length in range(len(blob)):
        with pytest.raises(PtfileError):
            ZipArchive(MappedSource(blob[:length], "t"))
    for at in range(len(blob)):
        flipped = bytearray(blob)
        flipped[at] ^= 0xFF
        try:
            archive = ZipArchive(MappedSource(bytes(flipped), "t"))
            for name in archive.order:
                archive.read(archive.entry(name))
                archive.verify_crc(archive.entry(name))
        except PtfileError:
            pass


def test_sources_agree_and_check_ranges(tmp_path: Path) -> None:
    path = tmp_path / "bytes.bin"
    data = bytes(range(256)) * 4
    path.write_bytes(data)
    with open(path, "rb") as file:
        sources = [MappedSource(data, "m"), FileSource(file, "f", owned=False), open_source(path, mmap_file=True)]
        for source in sources:
            assert source.size == len(data)
            assert source.read(10, 5) == data[10:15]
            assert bytes(source.view(1000, 24)) == data[1000:]
            assert source.array(3, 4, "x", copy=True).tobytes() == data[3:7]
            for offset, length in ((-1, 1), (0, len(data) + 1), (len(data), 1), (5, -1), (2**63, 2**63)):
                with pytest.raises(CorruptFileError, match=r"lie outside the 1024-byte file"):
                    source.read(offset, length)
        view = sources[0].array(0, 8, "x", copy=False)
        assert not view.flags.writeable
        sources[2].close()


def test_text_mode_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    path.write_bytes(torch_zip(program(1, 2)))
    with open(path) as text, pytest.raises(PtfileError, match="binary mode"):
        open_source(text, mmap_file=True)
    with pytest.raises(PtfileError, match="binary mode"):
        open_source(io.StringIO("PK"), mmap_file=False)


def test_crc_of_stored_data_matches_zlib(open_archive) -> None:
    data = bytes(range(200))
    archive = open_archive(build_zip([Member("arc/a", data)]))
    entry = archive.entry("arc/a")
    assert entry.crc == zlib.crc32(data) and archive.verify_crc(entry)


# -- readers that could disagree: torch's miniz and Python's zipfile ------------------------------
#
# Each archive below is read by the real readers too: ``zipfile`` always, torch (miniz, through
# ``torch._C.PyTorchFileReader`` and ``torch.load``) where installed.  ptfile must either read
# what both read or refuse.

END_SIZE = 22


def _zipfile_names(blob: bytes) -> list[str] | None:
    """The records Python's zipfile lists, or None when it cannot read the archive."""
    try:
        return zipfile.ZipFile(io.BytesIO(blob)).namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def _torch_names(torch, blob: bytes) -> list[str] | None:
    """The records torch's reader lists (inside the archive folder), or None when it refuses the archive."""
    try:
        return torch._C.PyTorchFileReader(io.BytesIO(blob)).get_all_records()
    except RuntimeError:
        return None


def _torch_value(torch, blob: bytes):
    try:
        return torch.load(io.BytesIO(blob), weights_only=True)
    except (RuntimeError, ValueError):
        return None


def _checkpoint(value: object, *, tail: int = 0) -> bytes:
    """A torch-layout archive of one plain pickle, its data record padded by ``tail`` bytes."""
    members = [Member("archive/data.pkl", program(value, 2)), Member("archive/version", b"3\n")]
    if tail:
        members.insert(1, Member("archive/pad", b"\0" * tail))
    return build_zip(members, zip64_end=False)


@pytest.mark.parametrize("first, second", [("arc/data.pkl", "arc/DATA.PKL"), ("arc/x/__torch__.py", "arc/X/__torch__.Py"),
                                           ("arc/version", "ARC/version")])
def test_names_equal_but_for_ascii_case_are_refused(open_archive, first: str, second: str) -> None:
    blob = build_zip([Member(first, program(1, 2)), Member(second, program(2, 2))])
    with pytest.raises(CorruptFileError, match=r"differ only in case; torch's reader ignores case"):
        open_archive(blob)
    assert len(_zipfile_names(blob)) == 2  # zipfile tells them apart; miniz, comparing case-blind, cannot


def test_names_are_looked_up_as_torch_looks_them_up(open_archive) -> None:
    blob = build_zip([Member("arc/DATA.PKL", b"upper"), Member("arc/Code/M.Py", b"code"), Member("arc/\u00c9", b"e"),
                      Member("arc/VERSION", b"3\n")])
    archive = open_archive(blob)
    assert archive.has("data.pkl") and archive.get("Data.Pkl") is archive.entry("arc/data.pkl")
    assert archive.read(archive.get("data.pkl")) == b"upper"
    assert archive.lists("DATA.PKL") and not archive.lists("data.pkl")  # a listing keeps the case
    assert [name for name, _ in archive.records_under("code/", ".py")] == ["Code/M.Py"]
    assert archive.has("\u00c9") and not archive.has("\u00e9")  # miniz folds ASCII letters only
    torch = pytest.importorskip("torch")
    reader = torch._C.PyTorchFileReader(io.BytesIO(blob))
    assert reader.has_record("data.pkl") and reader.get_record("Data.Pkl") == b"upper"
    assert reader.has_record("code/m.py") and not reader.has_record("\u00e9")
    assert reader.get_all_records() == ["DATA.PKL", "Code/M.Py", "\u00c9", "VERSION"]


def test_a_lone_upper_case_data_pkl_is_the_pickle_torch_loads(tmp_path: Path) -> None:
    import ptfile

    blob = build_zip([Member("archive/DATA.PKL", program({"x": 1}, 2)), Member("archive/version", b"3\n")])
    assert ptfile.load(blob) == {"x": 1}
    torch = pytest.importorskip("torch")
    assert torch.load(io.BytesIO(blob), weights_only=True) == {"x": 1}


def test_torchscript_is_told_by_the_exact_name_constants_pkl(tmp_path: Path) -> None:
    """torch.load asks ``"constants.pkl" in get_all_records()``: CONSTANTS.PKL is a plain checkpoint to it."""
    import ptfile
    from ptfile.formats.loader import open_zip

    marker = tmp_path / "ran"
    constants = program(G("os", "system")(f"touch {marker}"), 0)
    blob = build_zip([Member("archive/data.pkl", program({"x": 1}, 2)), Member("archive/CONSTANTS.PKL", constants),
                      Member("archive/version", b"3\n")])
    assert type(open_zip(MappedSource(blob, "t"))).__name__ == "TorchZip"
    assert ptfile.scan(blob).verdict == "dangerous"  # torch.jit.load would read that record as constants
    torch = pytest.importorskip("torch")
    assert torch.load(io.BytesIO(blob), weights_only=True) == {"x": 1}
    assert not marker.exists()


def test_torchscript_code_records_are_found_in_any_case(tmp_path: Path) -> None:
    """Code records renamed CODE/__torch__.PY still load in torch.jit.load, so ptfile must read them as code."""
    from ptfile.formats.torchscript import TorchScriptArchive

    blob = (Path(__file__).parent / "fixtures" / "formats" / "scripted.pt").read_bytes()
    renamed = blob.replace(b"/code/__torch__.py", b"/CODE/__torch__.PY")
    assert renamed.count(b"/CODE/__torch__.PY") >= 2  # the local and the central name
    code = TorchScriptArchive(MappedSource(renamed, "t")).code
    assert "CODE/__torch__.PY" in code and "code/__torch__.py" not in code
    assert code["CODE/__torch__.PY"] == TorchScriptArchive(MappedSource(blob, "t")).code["code/__torch__.py"]
    torch = pytest.importorskip("torch")
    module = torch.jit.load(io.BytesIO(renamed))
    assert module.code == torch.jit.load(io.BytesIO(blob)).code


@pytest.mark.parametrize("name, why", [("arc/data.pkl\0", "a NUL byte"), ("arc/a\0b", "a NUL byte"),
                                       ("arc\\data.pkl", "a backslash")])
def test_names_zipfile_rewrites_are_refused(open_archive, name: str, why: str) -> None:
    blob = build_zip([Member("arc/data.pkl", b"benign"), Member(name, b"evil")])
    with pytest.raises(CorruptFileError, match=f"holds {why}"):
        open_archive(blob)
    if "\0" in name:  # zipfile lists the record under the name cut at the NUL
        assert _zipfile_names(blob)[1] == name.split("\0")[0]


def test_an_empty_name_is_refused_and_scanned_to_a_verdict(open_archive) -> None:
    import ptfile

    for members in ([Member("arc/data.pkl", b"x"), Member("", b"y")], [Member("", b"y"), Member("arc/data.pkl", b"x")]):
        with pytest.raises(CorruptFileError, match=r"zip record at byte \d+ has an empty name"):
            open_archive(build_zip(members))
        result = ptfile.scan(build_zip(members))  # the scanner's own walk with zipfile meets the record too
        assert result.verdict == "invalid" and any("has an empty name" in fault for fault in result.faults)
    with pytest.raises(IndexError):  # why the scanner cannot ask zipfile whether such a record is a folder
        zipfile.ZipInfo("").is_dir()


def test_end_record_is_the_one_both_readers_take(open_archive) -> None:
    first = _checkpoint({"x": 1})
    # a second archive after the first, the first's comment covering it, its own comment running past the file
    second = build_zip([Member("archive/data.pkl", program({"x": 2}, 2)), Member("archive/version", b"3\n")],
                       head=first, zip64_end=False)
    blob = first[:-2] + struct.pack("<H", len(second) - len(first)) + second[len(first):-2] + b"\xff\xff"
    archive = open_archive(blob)
    assert archive.order == ["archive/data.pkl", "archive/version"]
    assert archive.read(archive.get("data.pkl")) == program({"x": 2}, 2)
    assert zipfile.ZipFile(io.BytesIO(blob)).read("archive/data.pkl") == program({"x": 2}, 2)
    torch = pytest.importorskip("torch")
    assert _torch_value(torch, blob) == {"x": 2}


def test_end_records_the_readers_disagree_on_are_refused(open_archive) -> None:
    blob = _checkpoint({"x": 1}) + b"PK\x05\x06" + b"\0" * 10  # a last signature without room for a record
    with pytest.raises(CorruptFileError, match=r"takes the end record at byte \d+, Python's zipfile none"):
        open_archive(blob)
    assert _zipfile_names(blob) is None
    torch = pytest.importorskip("torch")
    assert _torch_value(torch, blob) == {"x": 1}  # miniz passes over the signature without room


@pytest.mark.parametrize("front, trailing", [(0, 4096 - END_SIZE), (0, 4097 - END_SIZE), (70000, 65557 - END_SIZE),
                                             (70000, 65558 - END_SIZE), (70000, 69584 - END_SIZE),
                                             (70000, 69585 - END_SIZE)])
def test_miniz_end_record_search_matches_torch(front: int, trailing: int) -> None:
    """How far back torch finds the end record, with bytes after it: miniz's block scan, modelled exactly.

    miniz reads 4 KiB blocks back from the end, 4093 bytes apart, and stops after the block
    reaching 65557 bytes back; in a file shorter than that, a step below byte 0 fails instead.
    """
    torch = pytest.importorskip("torch")
    blob = _checkpoint({"x": 1}, tail=front) + b"\0" * trailing
    found = ziparchive._miniz_end(blob, 0, len(blob))
    assert (found == len(blob) - trailing - END_SIZE) == (_torch_value(torch, blob) == {"x": 1})
    assert found in (None, len(blob) - trailing - END_SIZE)
    zipfile_found = ziparchive._zipfile_end(blob, 0, len(blob))
    assert (zipfile_found is not None) == (_zipfile_names(blob) is not None)
    if found is not None and zipfile_found is None:
        with pytest.raises(CorruptFileError, match=r"Python's zipfile none"):
            ZipArchive(MappedSource(blob, "t"))


def test_zip64_locator_is_read_where_both_readers_read_it(open_archive) -> None:
    from corpus_zip import zip64_locator

    blob = zip64_locator(Path("never-created"))
    with pytest.raises(CorruptFileError, match=r"torch's zip reader takes the central directory at byte \d+ "
                                               r"\(\d+ bytes\), Python's zipfile at byte \d+"):
        open_archive(blob)
    assert _zipfile_names(blob) is not None
    torch = pytest.importorskip("torch")
    assert _torch_names(torch, blob) is not None
    assert zipfile.ZipFile(io.BytesIO(blob)).read("archive/data.pkl") != torch._C.PyTorchFileReader(
        io.BytesIO(blob)).get_record("data.pkl")


def test_zip64_locator_is_ignored_by_miniz_before_byte_76(open_archive, tmp_path: Path) -> None:
    # an empty archive: a locator (pointing at byte 0) and an end record at byte 20, where miniz looks for none
    blob = struct.pack("<4sIQI", b"PK\x06\x07", 0, 0, 1) + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0, 0, 0, 20, 0)
    with pytest.raises(CorruptFileError, match=r"Python's zipfile cannot use the zip64 locator at byte 0"):
        open_archive(blob)
    path = tmp_path / "tiny.zip"
    path.write_bytes(blob)
    with pytest.raises(zipfile.BadZipFile):  # it seeks to the zip64 end record before byte 0
        zipfile.ZipFile(path)


def test_torch_and_ptfile_written_zip64_archives_still_open(tmp_path: Path) -> None:
    import ptfile

    path = tmp_path / "w.pt"
    ptfile.save({"w": np.arange(6, dtype=np.float32)}, path)
    blob = path.read_bytes()
    assert blob[-END_SIZE - 20 : -END_SIZE - 16] == b"PK\x06\x07"  # the ZIP64 locator before the end record
    assert ZipArchive(MappedSource(blob, "w")).order == zipfile.ZipFile(io.BytesIO(blob)).namelist()
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(6.0)}, buffer)
    blob = buffer.getvalue()
    assert blob[-END_SIZE - 20 : -END_SIZE - 16] == b"PK\x06\x07"
    assert ZipArchive(MappedSource(blob, "t")).order == zipfile.ZipFile(io.BytesIO(blob)).namelist()


def test_bytes_prepended_to_an_archive_are_refused(open_archive) -> None:
    archive = _checkpoint({"x": 1})
    blob = b"PK\x03\x04" + b"\0" * 60 + archive  # offsets still count from the archive's own start
    with pytest.raises(CorruptFileError, match=r"Python's zipfile shifts every zip offset by 64 bytes"):
        open_archive(blob)
    assert zipfile.ZipFile(io.BytesIO(blob)).read("archive/data.pkl") == program({"x": 1}, 2)  # zipfile shifts
    torch = pytest.importorskip("torch")
    assert _torch_value(torch, blob) is None  # miniz does not: the directory is not where the end record says


def test_central_directory_bytes_after_the_last_record_are_refused(open_archive) -> None:
    members = [Member("arc/data.pkl", b"benign"), Member("arc/version", b"3\n"), Member("arc/other.pkl", b"evil")]
    blob = build_zip(members, count=2, zip64_end=False)
    with pytest.raises(CorruptFileError, match=r"has \d+ bytes after its 2 records"):
        open_archive(blob)
    assert _zipfile_names(blob) == ["arc/data.pkl", "arc/version", "arc/other.pkl"]  # it reads to the directory's end
    torch = pytest.importorskip("torch")
    assert _torch_names(torch, blob) == ["data.pkl", "version"]  # miniz reads the count the end record gives


def test_bad_central_signature(open_archive) -> None:
    blob = bytearray(build_zip([Member("arc/data.pkl", b"x")]))
    blob[blob.find(b"PK\x01\x02")] ^= 0xFF
    with pytest.raises(CorruptFileError, match=r"bad central directory signature"):
        open_archive(bytes(blob))


@pytest.mark.parametrize("name, consumer", sorted(LIVE.items()))
def test_differential_samples_are_live_and_refused(tmp_path: Path, name: str, consumer: str) -> None:
    """Each sample's payload runs under the reader that picks it; ptfile never calls the file clean."""
    import ptfile

    marker = tmp_path / "ran"
    sample = {s.name: s for s in zip_samples(marker)}[name]
    path = tmp_path / name
    path.write_bytes(sample.data)
    result = ptfile.scan(path)
    assert result.verdict in ("dangerous", "invalid"), result
    for attempt in (lambda: ptfile.load(path), lambda: ptfile.load(sample.data, mmap=False)):
        with pytest.raises(PtfileError):
            attempt()
    assert not marker.exists()
    if consumer == "torch":
        pytest.importorskip("torch")
    subprocess.run([sys.executable, "-c", LIVE_RUNNERS[consumer], str(path)], cwd=tmp_path, timeout=120,
                   capture_output=True)
    assert marker.exists(), f"{name}: the payload did not run under {consumer}"


#: How each consumer reads a sample, in a subprocess (the payload only creates the marker file).
LIVE_RUNNERS = {
    "torch": "import sys, torch; torch.load(sys.argv[1], weights_only=False)",
    "zipfile": "import pickle, sys, zipfile; pickle.load(zipfile.ZipFile(sys.argv[1]).open('archive/data.pkl'))",
}


def test_zip64_locator_pointing_at_no_zip64_record_keeps_the_end_record_fields(open_archive) -> None:
    blob = build_zip([Member("archive/data.pkl", program({"x": 1}, 2)), Member("archive/version", b"3\n")],
                     locator_offset=0)  # byte 0 holds a local header, not a zip64 end record
    assert open_archive(blob).order == ["archive/data.pkl", "archive/version"] == _zipfile_names(blob)
    torch = pytest.importorskip("torch")
    assert _torch_value(torch, blob) == {"x": 1}  # miniz falls back to the end record's own fields
