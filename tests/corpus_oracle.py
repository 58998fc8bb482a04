"""Corpus samples for a consumer no other sample reaches: torch.distributed.checkpoint's loader.

DCP's ``FileSystemReader`` unpickles ``.metadata`` with CPython's ``pickle``, and its load
planner reads every ``BYTE_IO`` item (a non-tensor value, saved whole by ``torch.save`` into
the ``.distcp`` file) with ``torch.load(weights_only=False)``.  Both samples start from the
torch-written ``dcp/single`` fixture and change only the bytes an attacker would.
"""

from __future__ import annotations

from pathlib import Path

from builders import Member, build_zip, program, torch_members
from corpus import DANGEROUS, FIXTURES, MALICIOUS, Sample, os_system

SINGLE = FIXTURES / "dcp" / "single"
#: The record every zip item of a ``.distcp`` file ends with: the end of central directory.
END_RECORD, END_RECORD_BYTES = b"PK\x05\x06", 22
#: Records of a torch zip that only a tensor item has.
TENSOR_RECORD = b"/data/0"


def _items(distcp: bytes) -> list[tuple[int, int]]:
    """(start, end) of each torch zip saved back to back in a ``.distcp`` file."""
    items, start = [], 0
    while (end := distcp.find(END_RECORD, start)) >= 0:
        items.append((start, end + END_RECORD_BYTES))
        start = end + END_RECORD_BYTES
    return items


def _zip_of_length(pickle_bytes: bytes, length: int) -> bytes:
    """A torch zip of ``pickle_bytes`` padded to exactly ``length`` bytes by one extra record."""
    def build(pad: int) -> bytes:
        return build_zip([*torch_members(pickle_bytes, prefix="step"), Member("step/.pad", b"\0" * pad)])

    # Records are aligned as torch aligns them, so the length does not grow one for one with the pad.
    estimate = length - len(build(0))
    for padding in range(max(estimate - 128, 0), max(estimate + 1, 0)):
        if len(blob := build(padding)) == length:
            return blob
    raise ValueError(f"no padding makes the payload's zip exactly {length} bytes")


def _byte_io_payload(marker: Path) -> dict[str, bytes]:
    """The fixture with its first non-tensor item replaced, length for length, by a payload.

    The ``.metadata`` offsets stay true, so DCP reads the new item where the old one was.
    """
    files = {p.name: p.read_bytes() for p in sorted(SINGLE.iterdir()) if p.is_file()}
    distcp = files["__0_0.distcp"]
    start, end = next((s, e) for s, e in _items(distcp) if TENSOR_RECORD not in distcp[s:e])
    evil = _zip_of_length(program({"step": os_system(marker)}, 2), end - start)
    files["__0_0.distcp"] = distcp[:start] + evil + distcp[end:]
    return files


def samples(marker: Path) -> list[Sample]:
    files = {p.name: p.read_bytes() for p in sorted(SINGLE.iterdir()) if p.is_file()}
    return [
        Sample("DCP-metadata-payload", "A1", MALICIOUS, (DANGEROUS,),
               "a DCP folder whose .metadata pickle calls os.system (FileSystemReader unpickles it)",
               {**files, ".metadata": program(os_system(marker), 2)}),
        Sample("DCP-byte-io-payload", "A1", MALICIOUS, (DANGEROUS,),
               "a DCP folder whose non-tensor item is a torch zip calling os.system (read with weights_only=False)",
               _byte_io_payload(marker)),
    ]
