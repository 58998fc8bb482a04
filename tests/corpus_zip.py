"""Zip parser differentials: archives that torch's reader (miniz) and Python's ``zipfile`` read differently.

Each sample puts a benign checkpoint where one reader looks and the payload where another
looks, so a scanner that judged only one reading would call the file clean:

* ``case``: miniz looks names up ignoring ASCII case, so a second ``archive/data.PKL`` is
  what ``torch.load`` may unpickle;
* ``nul``: ``zipfile`` cuts names at a NUL, so ``archive/data.pkl\\0`` is its data.pkl;
* ``empty-name``: a record named by nothing at all (no payload: a parser fault);
* ``end-comment``: a last end record whose comment runs past the file, which both
  readers take (miniz never checks the comment's length);
* ``zip64-locator``: the locator points miniz at one ZIP64 end record while ``zipfile``
  reads the one just before the locator;
* ``concat``: a gap before the end record makes ``zipfile`` shift every offset onto a
  second copy of the archive.

:data:`LIVE` names, for each live sample, the reader that runs its payload.
"""

from __future__ import annotations

import struct
from pathlib import Path

from builders import ZIP64_LOCATOR_MAGIC, Member, build_zip, program, torch_members
from corpus import MALFORMED, MALICIOUS, REFUSED, Sample, benign_members, os_system

#: Live samples and the consumer that runs their payload: ``torch`` (``torch.load(weights_only=False)``)
#: or ``zipfile`` (``zipfile.ZipFile(...).open("archive/data.pkl")`` then ``pickle.load``).
LIVE = {
    "ZIP-case-data.PKL.pt": "torch",
    "ZIP-nul-data.pkl.pt": "zipfile",
    "ZIP-end-comment-overrun.pt": "torch",
    "ZIP-zip64-locator.pt": "zipfile",
    "ZIP-concat-shift.pt": "zipfile",
}


def _evil(marker: Path) -> bytes:
    """The payload at protocol 0: it neither starts with PROTO nor sits in a ``.pkl`` record of its own."""
    return program(os_system(marker), 0)


END_SIZE = 22
LOCATOR_SIZE = 20


def _comment_size(archive: bytes, size: int) -> bytes:
    """``archive`` with the comment length of its end record (its last 22 bytes) set to ``size``."""
    return archive[:-2] + struct.pack("<H", size)


def case_twins(marker: Path) -> bytes:
    """``archive/data.pkl`` benign, then ``archive/data.PKL``: miniz's sorted lookup lands on the second."""
    members = benign_members()
    return build_zip([members[0], Member("archive/data.PKL", _evil(marker)), *members[1:]])


def nul_name(marker: Path) -> bytes:
    """A benign checkpoint, then ``archive/data.pkl\\0``: zipfile's last ``archive/data.pkl``."""
    return build_zip([*benign_members(), Member("archive/data.pkl\0", _evil(marker))])


def end_comment_overrun(marker: Path) -> bytes:
    """A benign archive whose end comment spans a malicious archive whose own comment overruns the file.

    A reader that skips an end record whose comment runs past the file takes the benign
    one; miniz and zipfile take the last.
    """
    benign = build_zip(benign_members())
    evil = _comment_size(build_zip(torch_members(_evil(marker)), head=benign, zip64_end=False), 0xFFFF)
    # the benign record's comment covers the rest of the file exactly
    return _comment_size(benign, len(evil) - len(benign)) + evil[len(benign):]


def zip64_locator(marker: Path) -> bytes:
    """The locator points at a benign ZIP64 end record; the malicious one lies just before the locator.

    Layout: benign records, directory and ZIP64 end record; malicious records, directory
    and ZIP64 end record; a locator pointing at the benign ZIP64 end record; the end record.
    """
    benign = build_zip(benign_members())[: -END_SIZE - LOCATOR_SIZE]
    evil = build_zip(torch_members(_evil(marker)), head=benign)
    locator = struct.pack("<4sIQI", ZIP64_LOCATOR_MAGIC, 0, len(benign) - 56, 1)
    return evil[: -END_SIZE - LOCATOR_SIZE] + locator + evil[-END_SIZE:]


def concat_shift(marker: Path) -> bytes:
    """Two archives of one shape back to back, the end record naming the first one's directory.

    torch reads the first.  zipfile finds the directory ending short of the end record, takes
    the gap for bytes prepended to the archive and shifts every offset onto the second.
    """
    evil = _evil(marker)
    benign = program({"x": "a" * (len(evil) - len(program({"x": ""}, 0)))}, 0)
    first = build_zip(torch_members(benign), zip64_end=False)
    second = build_zip(torch_members(evil), zip64_end=False)
    assert len(first) == len(second), "both archives must have one shape"
    return first[:-END_SIZE] + second[:-END_SIZE] + first[-END_SIZE:]


def samples(marker: Path) -> list[Sample]:
    return [
        Sample("ZIP-case-data.PKL.pt", "C5", MALICIOUS, REFUSED,
               "archive/data.pkl benign, archive/data.PKL malicious: torch's case-blind lookup takes the second",
               case_twins(marker)),
        Sample("ZIP-nul-data.pkl.pt", "C5", MALICIOUS, REFUSED,
               "a malicious archive/data.pkl\\0 after the benign data.pkl: zipfile cuts the NUL and takes it",
               nul_name(marker)),
        Sample("ZIP-empty-name.pt", "C5", MALFORMED, REFUSED, "a benign checkpoint plus a record with an empty name",
               build_zip([*benign_members(), Member("", b"x")])),
        Sample("ZIP-end-comment-overrun.pt", "C6", MALICIOUS, REFUSED,
               "a malicious archive after a benign one, its end record's comment running past the file",
               end_comment_overrun(marker)),
        Sample("ZIP-zip64-locator.pt", "C6", MALICIOUS, REFUSED,
               "the ZIP64 locator points at a benign directory, zipfile reads the malicious one before it",
               zip64_locator(marker)),
        Sample("ZIP-concat-shift.pt", "C6", MALICIOUS, REFUSED,
               "zipfile shifts every offset onto a malicious copy of the archive; torch reads the benign one",
               concat_shift(marker)),
    ]
