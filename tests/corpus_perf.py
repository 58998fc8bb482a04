"""Corpus samples for scans that read no tensor byte.

A quick scan leaves stored storage records unread, so these check that it still fails
every file ``load`` refuses, and only those:

* a storage whose CRC is wrong: torch never checks one, ``load`` reads it, so ``clean``
  (``--verify`` notes the mismatch);
* a storage whose central entry points at bytes that are no local header: ``load`` refuses it;
* a deflated storage whose stream is broken: ``load`` would inflate it, and refuses it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from builders import DEFLATED, build_zip, program, state_dict, storage_pid, tensor_v2, torch_members
from corpus import BENIGN, CLEAN, INVALID, MALFORMED, Sample, floats

_STORAGE = floats(*range(64))


def _one_tensor(**change: object) -> bytes:
    """A one-tensor torch zip; ``change`` alters the storage record's Member."""
    pid = storage_pid("0", len(_STORAGE) // 4)
    pickle = program(state_dict({"w": tensor_v2(pid, 0, (len(_STORAGE) // 4,), (1,))}), 2)
    return build_zip([replace(m, **change) if m.name.endswith("/data/0") else m
                      for m in torch_members(pickle, {"0": _STORAGE})])


def _no_local_header() -> bytes:
    data = bytearray(_one_tensor())
    header = data.index(b"archive/data/0") - 30
    data[header : header + 4] = b"PK\x00\x00"  # the central entry points here; no local header signature
    return bytes(data)


def samples(marker: Path) -> list[Sample]:
    """No payload here: every sample is about reading, ``marker`` is unused."""
    del marker
    return [
        Sample("P1-storage-crc-wrong.pt", "C2", BENIGN, (CLEAN,),
               "a storage record whose CRC-32 is wrong (torch never checks; a quick scan never reads it)",
               _one_tensor(crc=0xDEADBEEF)),
        Sample("P2-storage-no-local-header.pt", "C3", MALFORMED, (INVALID,),
               "a storage record whose central entry points at no local header (load refuses it)",
               _no_local_header()),
        Sample("P3-storage-deflate-broken.pt", "C10", MALFORMED, (INVALID,),
               "a deflated storage record whose stream is broken (load would inflate it and fail)",
               _one_tensor(method=DEFLATED, compressed=b"\xff" * 32)),
    ]
