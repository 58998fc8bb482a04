"""The zip reader: torch's layout, the leniency torch has, and the strictness safety needs.

Archives come from three writers: torch itself (when installed), Python's
``zipfile`` (deflate, comments, no padding), and the byte-level builder, which
breaks one rule at a time.  Every test reads through both byte sources (a
memory map or bytes, and positioned reads of a file) and expects the same.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from builders import DEFLATED, Member, build_zip, program, torch_zip
from ptfile import CorruptFileError, LimitExceededError, PtfileError, UnsupportedFormatError, ziparchive
from ptfile.source import FileSource, MappedSource, open_source
from ptfile.ziparchive import ZipArchive

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
