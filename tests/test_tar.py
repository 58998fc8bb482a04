"""Tar reading as Python's tarfile reads it: header fields, PAX records, and what torch does with the rest.

torch opens a non-zip file with ``tarfile.open(mode="r:", format=PAX_FORMAT)`` and runs
``pickle.load`` from byte 0 on any ``TarError``.  The real ``tarfile`` is the oracle here:
ptfile must call a block a tar header exactly when ``TarInfo.frombuf`` does, and whenever it
reads an archive, tarfile must list the same members at the same offsets without an error.
The corpus samples of ``tests/corpus_tar.py`` are proven live with real torch.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import textwrap
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ptfile
from corpus import MALICIOUS
from corpus_tar import BLOCK, end, header, member, pax, pax_record, samples, torch_members
from ptfile.errors import CorruptFileError, LimitExceededError, PtfileError
from ptfile.formats import legacy
from ptfile.io.source import MappedSource

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "legacy" / "ancient.tar.pt"
#: Numeric fields of a header: (offset, width).
NUMBER_FIELDS = ((100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (148, 8), (329, 8), (337, 8))
#: Characters tarfile's nti may or may not accept in a number field.
NUMBER_CHARS = b"0123456789o0Ox_+- \t\n\v\f\r\x1c\x00\x80\xffa9\xe9"


def _frombuf_accepts(block: bytes) -> bool:
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _with_checksum(block: bytearray, form: bytes) -> bytes:
    block[148:156] = b" " * 8
    value = sum(block)
    block[148:156] = (form % value)[:8].ljust(8, b"\0") if b"%" in form else form
    return bytes(block)


garbled_number = st.binary(min_size=0, max_size=12).map(lambda raw: bytes(NUMBER_CHARS[b % len(NUMBER_CHARS)] for b in raw))
#: Numbers in the forms int(text, 8) may take: whitespace, a sign, 0o, underscores, a NUL and junk after it.
shaped_number = st.builds(
    lambda pad, sign, prefix, digits, under, tail: pad + sign + prefix
    + (digits[:1] + b"_" + digits[1:] if under and len(digits) > 1 else digits) + pad[::-1] + tail,
    st.sampled_from([b"", b" ", b"\t", b"\n "]), st.sampled_from([b"", b"+", b"-"]),
    st.sampled_from([b"", b"0o", b"0O", b"0x"]), st.from_regex(rb"\A[0-9]{0,6}\Z"), st.booleans(),
    st.sampled_from([b"", b"\0", b"\0junk", b"\0\xff"]))
number_text = st.one_of(garbled_number, shaped_number)
checksum_forms = st.sampled_from([b"%06o\0 ", b"0o%06o", b"\t%06o\t", b"0%o_", b"%o", b"+%06o", b" %o ", b"-%o",
                                  b"%06o\0x", b"0x%o", b"%07o\x80", b"\xff%o"])


@given(fields=st.lists(st.tuples(st.sampled_from(NUMBER_FIELDS), number_text), max_size=4),
       form=checksum_forms, kind=st.sampled_from([b"0", b"\0", b"5", b"S", b"x", b"g", b"L", b"Z"]))
def test_is_tar_accepts_exactly_what_frombuf_accepts(fields: list, form: bytes, kind: bytes) -> None:
    block = bytearray(header(b"sys_info", 116))
    block[156:157] = kind
    for (start, width), text in fields:
        block[start : start + width] = text[:width].ljust(width, b"\0")
    data = _with_checksum(block, form) if all(start != 148 for (start, _), _ in fields) else bytes(block)
    assert legacy.is_tar(data) == _frombuf_accepts(data)
    if legacy.is_tar(data):
        info = tarfile.TarInfo.frombuf(data, "utf-8", "surrogateescape")
        parsed = legacy._parse_tar_header(data, 0)
        assert (parsed.name, parsed.type, parsed.size, parsed.mode) == (info.name, info.type, info.size, info.mode)


@given(field=st.one_of(number_text.filter(bool), st.binary(min_size=1, max_size=12)))
def test_numbers_read_as_tarfile_nti_reads_them(field: bytes) -> None:
    try:
        expected = tarfile.nti(field)
    except tarfile.HeaderError:
        with pytest.raises(CorruptFileError):
            legacy._tar_number(field)
    else:
        assert legacy._tar_number(field) == expected


@pytest.mark.parametrize("field, value", [(b"0o17\0", 15), (b"\t17\t\0", 15), (b"1_7\0", 15), (b"+17", 15),
                                          (b"-1\0", -1), (b"\0garbage", 0), (b"\xff" * 12, -1),
                                          (b"\x80" + bytes(10) + b"\x01", 1)])
def test_number_forms(field: bytes, value: int) -> None:
    assert legacy._tar_number(field) == value == tarfile.nti(field)


# -- whole archives: what ptfile reads, tarfile reads the same way ----------------------------


def _tarfile_members(data: bytes) -> list[tuple[str, bytes, int, int]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", format=tarfile.PAX_FORMAT) as archive:
        return [(m.name, m.type, m.offset_data, m.size) for m in archive.getmembers()]


PATHS = st.sampled_from([b"pickle", b"pickle/", b"pickle//", b"sys_info", b"a/b", b"", b"x" * 120])
SIZES = st.sampled_from([b"0", b"5", b" 7", b"+9", b"1_0", b"12 ", b"abc", b"-3", b"\xd9\xa1", b"0x10", b"1e3"])


@st.composite
def archives(draw: st.DrawFn) -> bytes:
    parts = []
    for index in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from([b"pickle", b"storages", b"d/", b"m%d" % index]))
        kind = draw(st.sampled_from([b"0", b"\0", b"5", b"7", b"Z", b"2"]))
        # a directory or a link has no data blocks: its data would be read as the next header
        data = draw(st.binary(max_size=40)) if kind not in (b"5", b"2") else b""
        records = b""
        if draw(st.booleans()):
            records += pax_record("path", draw(PATHS))
        if draw(st.booleans()):
            records += pax_record("size", draw(SIZES))
        if draw(st.booleans()):
            records += pax_record("mtime", b"1700000000.25")
        if records:
            parts.append(pax(records))
        prefix = draw(st.sampled_from([b"", b"dir"]))
        parts.append(header(name, len(data), kind, prefix=prefix) + data + bytes(-len(data) % BLOCK))
    return b"".join(parts) + end()


@given(data=archives())
def test_every_archive_ptfile_walks_is_listed_alike_by_tarfile(data: bytes) -> None:
    try:
        walked = list(legacy.walk_tar(MappedSource(data, "t.tar")))
    except PtfileError:
        return  # refused: torch may read it, but ptfile reads it no other way
    listed = _tarfile_members(data)  # raises no TarError: torch would not fall back to byte 0
    assert [(m.name, m.type, m.data, m.size) for m in walked] == listed


def test_fixture_is_walked_as_tarfile_lists_it() -> None:
    data = FIXTURE.read_bytes()
    walked = [(m.name, m.type, m.data, m.size) for m in legacy.walk_tar(MappedSource(data, "f"))]
    assert walked == _tarfile_members(data)
    assert ptfile.scan(FIXTURE).verdict == "clean"


def test_pax_path_and_size_are_applied(tmp_path: Path) -> None:
    members = torch_members(tmp_path / "never")
    members["pickle"] = members["sys_info"]  # a harmless dict as the object
    body = [member(b"sys_info", members["sys_info"]),
            pax(pax_record("path", b"pickle/") + pax_record("size", b" +%d" % len(members["pickle"])))
            + header(b"ignored", 0) + members["pickle"] + bytes(-len(members["pickle"]) % BLOCK),
            member(b"tensors", members["tensors"]), member(b"storages", members["storages"])]
    data = b"".join(body) + end()
    assert ptfile.load(data)["protocol_version"] == 1000
    assert {m[0] for m in _tarfile_members(data)} == set(legacy.TAR_MEMBERS)


@pytest.mark.parametrize("records", [
    b"0 path=pickle\n",  # a zero length: tarfile raises at once
    b"15 path=pickle",  # no newline: old tarfile reads it, new tarfile refuses it
    b"13 path=pickle\nxx",  # bytes past the records
    b"10 =pickle\n",  # no keyword
    b"25 GNU.sparse.size=1024\n",  # sparse members
    b"22 hdrcharset=BINARY\n",
    b"99999999999999999999999 a=b\n",  # a length of more digits than newer tarfile reads
])
def test_pax_records_other_readers_read_otherwise_are_refused(records: bytes) -> None:
    data = header(legacy.TAR_MEMBERS[0].encode(), 0)  # a filler so the PAX header is not the first
    data += header(b"././@PaxHeader", len(records), b"x") + records + bytes(-len(records) % BLOCK)
    data += header(b"pickle", 0) + end()
    with pytest.raises(CorruptFileError):
        list(legacy.walk_tar(MappedSource(data, "t.tar")))


@pytest.mark.parametrize("mode", [b"0000000\0", b"0000200\0", b"0010644\0", b"\x80" + b"\xff" * 7, b"\xff" * 8])
def test_member_modes_torch_cannot_read_back_are_refused(tmp_path: Path, mode: bytes) -> None:
    members = {**torch_members(tmp_path / "never"), "pickle": b"\x80\x02}q\x00."}
    blocks = []
    for name, data in members.items():
        block = bytearray(member(name.encode(), data))
        block[100:108] = mode
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\0 " % sum(block[:BLOCK])
        blocks.append(bytes(block))
    with pytest.raises(CorruptFileError, match="mode"):
        ptfile.load(b"".join(blocks) + end())
    assert ptfile.load(b"".join(member(n.encode(), d) for n, d in members.items()) + end()) == {}


def test_global_pax_renaming_members_is_refused() -> None:
    data = header(b"pax_global_header", 13, b"g") + b"13 path=evil\n".ljust(BLOCK, b"\0") + header(b"a", 0) + end()
    with pytest.raises(CorruptFileError, match="global PAX"):
        list(legacy.walk_tar(MappedSource(data, "t.tar")))
    comment = header(b"pax_global_header", 15, b"g") + b"15 comment=abc\n".ljust(BLOCK, b"\0")
    assert [m.name for m in legacy.walk_tar(MappedSource(comment + header(b"a", 0) + end(), "t.tar"))] == ["a"]
    # a global header last: tarfile raises ReadError listing the members, so torch reads a pickle instead
    last = header(b"a", 0) + comment + end()
    with pytest.raises(tarfile.ReadError):
        _tarfile_members(last)
    with pytest.raises(CorruptFileError, match="global PAX header is not followed by a member header at byte 1536"):
        list(legacy.walk_tar(MappedSource(last, "t.tar")))


def test_scanner_never_hands_a_tar_to_tarfile(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tarfile was asked to read an archive")

    monkeypatch.setattr(tarfile.TarInfo, "frombuf", classmethod(refuse))
    monkeypatch.setattr(tarfile.TarFile, "open", classmethod(refuse))
    data = member(b"model.pkl", b"\x80\x02}q\x00.") + end()
    result = ptfile.scan(data)
    assert result.verdict == "invalid"  # a tar that is not a checkpoint: load refuses it
    assert any("model.pkl: clean" in note for note in result.notes)


def test_pax_digit_bomb_is_refused_in_bounded_memory() -> None:
    (bomb,) = [s for s in samples(Path("/nonexistent")) if s.name == "E5-tar-pax-200k-digits.tar"]
    tracemalloc.start()
    try:
        with pytest.raises(LimitExceededError, match="MAX_PAX_BYTES"):
            ptfile.load(bomb.data)
        result = ptfile.scan(bomb.data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.verdict == "invalid"
    assert any("MAX_PAX_BYTES" in fault for fault in result.faults)
    assert peak < 16 << 20


def test_pax_number_longer_than_the_limit_is_refused() -> None:
    records = pax_record("size", b"1" * (legacy.MAX_PAX_NUMBER_CHARS + 1))
    data = pax(records) + header(b"pickle", 0) + end()
    with pytest.raises(LimitExceededError, match="MAX_PAX_NUMBER_CHARS"):
        list(legacy.walk_tar(MappedSource(data, "t.tar")))


def test_pax_path_on_a_v7_directory_is_refused() -> None:
    """tarfile up to at least 3.11.7 lists it as a directory (no data: a header hidden in it is read next);
    later versions read a PAX-named header as the file its type says."""
    hidden = member(b"pickle", b"\x80\x02K\x01.")
    data = pax(pax_record("path", b"pickle")) + header(b"d/", len(hidden), b"\0") + hidden + end()
    listed = _tarfile_members(data)
    assert [(name, kind) for name, kind, _, _ in listed] in ([("pickle", b"5"), ("pickle", b"0")], [("pickle", b"\0")])
    with pytest.raises(CorruptFileError, match="a file or a directory by Python version"):
        list(legacy.walk_tar(MappedSource(data, "t.tar")))


def test_pax_header_with_too_many_records_is_refused() -> None:
    records = pax_record("comment", b"x") * (legacy.MAX_PAX_RECORDS + 1)
    data = pax(records) + header(b"pickle", 0) + end()
    with pytest.raises(LimitExceededError, match="MAX_PAX_RECORDS"):
        list(legacy.walk_tar(MappedSource(data, "t.tar")))
    allowed = pax(pax_record("comment", b"x") * legacy.MAX_PAX_RECORDS) + header(b"pickle", 0) + end()
    assert [m.name for m in legacy.walk_tar(MappedSource(allowed, "t.tar"))] == ["pickle"]
    assert [m[0] for m in _tarfile_members(allowed)] == ["pickle"]


# -- the corpus samples, live under torch -------------------------------------------------------

TORCH_LOAD_EACH = textwrap.dedent(
    """
    import sys, torch
    for path in sys.argv[1:]:
        try:
            torch.load(path, weights_only=False)
        except Exception:
            pass
    """
)


def test_tar_samples_run_their_payload_under_torch_and_are_refused(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    live = []
    for sample in samples(tmp_path / "unused"):
        if sample.label != MALICIOUS:
            continue
        folder = tmp_path / sample.name.replace(".", "_")
        folder.mkdir()
        (chosen,) = [s for s in samples(folder / "ran") if s.name == sample.name]
        (folder / sample.name).write_bytes(chosen.data)
        live.append(folder / sample.name)
    assert len(live) >= 8
    subprocess.run([sys.executable, "-c", TORCH_LOAD_EACH, *map(str, live)], check=True, timeout=300,
                   capture_output=True)
    ran = [path.name for path in live if (path.parent / "ran").exists()]
    assert ran == [path.name for path in live], "torch.load ran every payload"
    for path in live:
        (path.parent / "ran").unlink()
        assert ptfile.scan(path).verdict in ("dangerous", "invalid"), path.name
        with pytest.raises(PtfileError):
            ptfile.load(path)
        assert not (path.parent / "ran").exists()
