"""Tar samples for the scanner corpus: archives tarfile (so torch) reads another way than a naive reader.

torch opens a non-zip file with ``tarfile.open(mode="r:", format=PAX_FORMAT)`` and, on any
``tarfile.TarError``, runs ``pickle.load`` from byte 0 instead.  Every sample here is built
from raw header blocks (never by ``tarfile`` itself, which would not write these forms):

* checksum and number fields in forms tarfile's ``nti`` accepts (``0o``, tabs, ``_``), so
  torch reads the archive and its payload while a reader accepting only octal digits does not;
* PAX records tarfile applies (``path`` with a trailing slash, a ``size`` with a sign or a
  space, a PAX path on a header Python 3.11 turns into a directory, hiding a member);
* headers that make tarfile raise after it opened the archive, or refuse its first block,
  so torch runs the pickle at byte 0: the header's own name field holds the payload;
* a PAX record of 200,000 digits (CPython's PAX regex was quadratic, CVE-2024-6232).
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from pathlib import Path

from builders import program
from corpus import DANGEROUS, INVALID, MALFORMED, MALICIOUS, REFUSED, Sample, os_system

BLOCK = 512
#: A PAX header's own name, as tarfile writes it.
PAX_NAME = b"././@PaxHeader"
#: Offset of the ustar prefix field: a byte-0 pickle skips the numeric fields before it.
PREFIX_AT = 345


def octal_checksum(value: int) -> bytes:
    """The checksum field as tarfile writes it: six octal digits, NUL, space."""
    return b"%06o\0 " % value


def header(name: bytes, size: int | bytes, kind: bytes = b"0", *, checksum: Callable[[int], bytes] = octal_checksum,
           mtime: bytes = b"00000000000\0", prefix: bytes = b"", raw: bytes | None = None) -> bytes:
    """One 512-byte ustar header; ``raw`` replaces the name field and everything up to the prefix."""
    size_field = size if isinstance(size, bytes) else b"%011o\0" % size
    block = bytearray(BLOCK)
    block[0:100] = name.ljust(100, b"\0")[:100]
    block[100:108] = b"0000644\0"
    block[108:116] = block[116:124] = b"0000000\0"
    block[124:136] = size_field
    block[136:148] = mtime
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    block[329:337] = block[337:345] = b"0000000\0"
    if raw is not None:
        block[: len(raw)] = raw
    block[PREFIX_AT : PREFIX_AT + len(prefix)] = prefix
    block[148:156] = b" " * 8
    block[148:156] = checksum(sum(block))
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: bytes, data: bytes, **options) -> bytes:
    return header(name, len(data), **options) + padded(data)


def pax_record(keyword: str, value: bytes) -> bytes:
    """``"<length> <keyword>=<value>\\n"``, the length counting its own digits."""
    body = b" " + keyword.encode() + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def pax(records: bytes, **options) -> bytes:
    return header(PAX_NAME, len(records), b"x", **options) + padded(records)


def end() -> bytes:
    return bytes(2 * BLOCK)


def torch_members(marker: Path) -> dict[str, bytes]:
    """The four members of torch's tar format; the object pickle runs the payload."""
    return {
        "sys_info": program({"protocol_version": 1000, "little_endian": True,
                             "type_sizes": {"short": 2, "int": 4, "long": 4}}, 2),
        "pickle": program({"x": 1, "hook": os_system(marker)}, 2),
        "tensors": program(0, 2),
        "storages": program(0, 2) + program([], 2),
    }


def tar_with(marker: Path, **options) -> bytes:
    return b"".join(member(name.encode(), data, **options) for name, data in torch_members(marker).items()) + end()


def byte0_header(marker: Path, size: int, kind: bytes = b"0", **options) -> bytes:
    """A header whose bytes, read from its first, are a pickle that runs the payload.

    The pickle opens with BINBYTES swallowing the name, numeric and checksum fields (so they
    stay what tarfile needs), pops them, and runs the payload from the prefix field on.
    """
    skip = PREFIX_AT - 7  # PROTO 2 (2 bytes), BINBYTES and its 4-byte length
    start = pickle.PROTO + b"\x02" + pickle.BINBYTES + struct.pack("<I", skip)
    rest = pickle.POP + program(os_system(marker), 2)[2:]
    assert PREFIX_AT + len(rest) <= BLOCK, f"the marker path {marker} is too long for a header"
    return header(b"", size, kind, raw=start, prefix=rest, **options)


def _checksum_samples(marker: Path) -> list[Sample]:
    forms = {
        "0o": lambda value: b"0o%06o" % value,
        "tab": lambda value: b"\t%06o\t" % value,
        "underscore": lambda value: (b"%07o" % value)[:2] + b"_" + (b"%07o" % value)[2:],
    }
    return [Sample(f"C8-tar-checksum-{form}.tar", "C8", MALICIOUS, (DANGEROUS,),
                   f"legacy tar whose header checksums are written {form!r}-style, which tarfile's nti reads; "
                   "the payload is in 'pickle'", tar_with(marker, checksum=checksum))
            for form, checksum in forms.items()]


def _pax_samples(marker: Path) -> list[Sample]:
    members = torch_members(marker)
    evil = members["pickle"]

    def around(pickle_part: bytes) -> bytes:
        parts = [member(name.encode(), data) for name, data in members.items() if name != "pickle"]
        return parts[0] + pickle_part + b"".join(parts[1:]) + end()

    slash = pax(pax_record("path", b"pickle/")) + member(b"junk", evil)
    signed = pax(pax_record("size", b" +%d" % len(evil))) + header(b"pickle", 0) + padded(evil)
    # Python <= 3.12 makes a '\0'-typed header named "d/" a directory before the PAX path
    # names it "pickle": a directory has no data, so the header hidden in its data is read
    # as the next member, the last "pickle", which torch unpickles.
    hidden = member(b"pickle", evil)
    directory = pax(pax_record("path", b"pickle")) + header(b"d/", len(hidden), b"\0") + hidden
    return [
        Sample("C8-tar-pax-path-slash.tar", "C8", MALICIOUS, (DANGEROUS,),
               "legacy tar whose payload member is named 'pickle/' by a PAX path (tarfile strips the slash)",
               around(slash)),
        Sample("C8-tar-pax-size-signed.tar", "C8", MALICIOUS, (DANGEROUS,),
               "legacy tar whose 'pickle' header says 0 bytes and whose PAX size ' +N' (int() reads it) gives them",
               around(signed)),
        Sample("C8-tar-pax-directory-hides-member.tar", "C8", MALICIOUS, REFUSED,
               "a PAX path on a header Python 3.11 reads as a directory: the 'pickle' torch reads hides in its data",
               around(directory)),
    ]


def _byte0_samples(marker: Path) -> list[Sample]:
    members = {**torch_members(marker), "pickle": program({"x": 1}, 2)}  # a benign tar after the first header
    body = b"".join(member(name.encode(), data) for name, data in members.items())
    junk = byte0_header(marker, 0)
    truncated = junk + body[:-BLOCK]  # the last member runs past the end: ReadError while listing
    dangling = junk + pax(pax_record("path", b"x")) + end()  # a PAX header and no member: SubsequentHeaderError
    # tarfile refuses the first block (its mtime is not a number), so torch reads the pickle at
    # byte 0 at once, while a reader that checks only the checksum and the size reads a benign tar.
    records = pax_record("path", b"sys_info")
    refused = byte0_header(marker, len(records), b"x", mtime=b"not a number") + padded(records)
    refused += header(b"placeholder", len(members["sys_info"])) + padded(members["sys_info"]) + body[
        BLOCK + len(padded(members["sys_info"])) :] + end()
    return [
        Sample("C8-tar-byte0-truncated.pt", "C8", MALICIOUS, REFUSED,
               "the first tar header's fields hold a pickle; the last member is cut short, so tarfile raises "
               "ReadError and torch runs the pickle at byte 0", truncated),
        Sample("C8-tar-byte0-dangling-pax.pt", "C8", MALICIOUS, REFUSED,
               "the first tar header's fields hold a pickle; a PAX header with no member after it makes tarfile "
               "raise, and torch runs the pickle at byte 0", dangling),
        Sample("C8-tar-byte0-bad-mtime.pt", "C8", MALICIOUS, (DANGEROUS,),
               "a benign tar whose first (PAX) header has a non-numeric mtime: tarfile refuses it, torch runs "
               "the pickle its fields hold at byte 0", refused),
    ]


def _pax_bomb() -> bytes:
    """A PAX header holding one record of 200,000 digits (the first block of a 1 MB-class file)."""
    digits = b"1" * 200_000
    return pax(digits + b" comment=x\n") + end()


def samples(marker: Path) -> list[Sample]:
    """The tar samples; each payload would create ``marker`` if any of it ran."""
    return [
        *_checksum_samples(marker),
        *_pax_samples(marker),
        *_byte0_samples(marker),
        Sample("E5-tar-pax-200k-digits.tar", "E5", MALFORMED, (INVALID,),
               "a PAX record length of 200,000 digits: CPython 3.11.7's PAX regex is quadratic in it", _pax_bomb()),
    ]
