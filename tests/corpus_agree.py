"""Corpus samples where ``scan`` and ``load`` once disagreed, or refused what torch 2.13 loads.

Each sample is a file where the two must give the same answer: records that torch reads
while loading (and ``load`` once skipped), records no reader of ptfile could read, tensor
parts whose values only a load looked at, and files torch loads that ptfile refused.
"""

from __future__ import annotations

import bz2
import pickle
import struct
from pathlib import Path

from builders import G, Member, build_zip, legacy_stream, program, storage_pid, tensor_v2, torch_members
from corpus import BENIGN, CLEAN, INVALID, MALFORMED, MALICIOUS, REFUSED, Sample, benign_members, floats, os_system

#: zip method 12: Python's zipfile reads bzip2, torch's miniz and ptfile do not.
BZIP2 = 12


def _layout_record(name: str, data: bytes, **lies: int) -> list[Member]:
    """The small benign checkpoint with one more torch layout record, which may lie about itself."""
    members = benign_members()
    members.insert(-1, Member(f"archive/{name}", data, **lies))
    return members


def _longs(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}q", *values)


def _nested(sizes: tuple[int, ...]) -> bytes:
    """A nested tensor of two 1-D components over a 5-float buffer; ``sizes`` are the components' lengths."""
    buffer = tensor_v2(storage_pid("0", 5), 0, (5,), (1,))
    sizes_t = tensor_v2(storage_pid("1", 2, "LongStorage"), 0, (2, 1), (1, 1))
    strides_t = tensor_v2(storage_pid("2", 2, "LongStorage"), 0, (2, 1), (1, 1))
    offsets_t = tensor_v2(storage_pid("3", 2, "LongStorage"), 0, (2,), (1,))
    nested = G("torch._utils", "_rebuild_nested_tensor")(buffer, sizes_t, strides_t, offsets_t)
    return build_zip(torch_members(program({"nested": nested}, 2), {
        "0": floats(0, 1, 2, 3, 4), "1": _longs(*sizes), "2": _longs(1, 1), "3": _longs(0, 2),
    }))


def _sparse_out_of_range() -> bytes:
    """A COO tensor of size (2, 3) whose indices reach row 5 and column -1: torch.load keeps them as they are."""
    indices = tensor_v2(storage_pid("0", 4, "LongStorage"), 0, (2, 2), (2, 1))
    values = tensor_v2(storage_pid("1", 2), 0, (2,), (1,))
    layout = G("torch.serialization", "_get_layout")("torch.sparse_coo")
    sparse = G("torch._utils", "_rebuild_sparse_tensor")(layout, (indices, values, G("torch", "Size")((2, 3)), False))
    return build_zip(torch_members(program({"sparse": sparse}, 2), {"0": _longs(0, 5, 1, -1), "1": floats(1, 2)}))


def _bits8() -> bytes:
    """A ``torch.bits8`` tensor, as torch saves it: an untyped storage read through ``_rebuild_tensor_v3``."""
    pid = storage_pid("0", 4, "UntypedStorage", module="torch.storage")
    bits = G("torch._utils", "_rebuild_tensor_v3")(pid, 0, (4,), (1,), False, G("collections", "OrderedDict")(),
                                                  G("torch", "bits8"))
    return build_zip(torch_members(program({"bits": bits}, 2), {"0": bytes([0, 1, 0x80, 0xFF])}))


def _legacy_with_int_magic() -> bytes:
    """A legacy stream whose magic number is a protocol-0 INT, which pickle.load (and torch) reads."""
    magic = pickle.INT + b"119547037146038801333356\n" + pickle.STOP
    return legacy_stream(program({"epoch": 3, "loss": [1.5, 0.25]}, 2), magic=magic)


def _hidden_bzip2_pickle(marker: Path) -> bytes:
    """A payload pickle in a bzip2 record: zipfile plus pickle would run it; no torch reader can read it."""
    payload = program(os_system(marker), 2)
    members = benign_members()
    members.insert(-1, Member("archive/extra.pkl", payload, method=BZIP2, compressed=bz2.compress(payload)))
    return build_zip(members)


def samples(marker: Path) -> list[Sample]:
    """Samples on which ``scan(x).verdict == "clean"`` exactly when ``load(x)`` succeeds, as with torch."""
    invalid = (INVALID,)
    return [
        Sample("agree-serialization-id-false-size.pt", "C10", MALFORMED, invalid,
               ".data/serialization_id whose central size overruns the next record: torch's reader fails on open",
               build_zip(_layout_record(".data/serialization_id", b"0" * 40, central_size=4096, central_csize=4096))),
        Sample("agree-storage-alignment-not-an-integer.pt", "C6", MALFORMED, invalid,
               ".storage_alignment holding text: torch.load's int() of it fails",
               build_zip(_layout_record(".storage_alignment", b"sixty-four"))),
        Sample("agree-format-version-unreadable.pt", "C4", MALFORMED, invalid,
               ".format_version in a compression method no torch reader has",
               build_zip(_layout_record(".format_version", b"1", method=BZIP2, compressed=bz2.compress(b"1")))),
        Sample("agree-bzip2-extra-pickle.pt", "C6", MALICIOUS, REFUSED,
               "an extra .pkl record in bzip2 (zipfile reads it, torch never does) holding a call",
               _hidden_bzip2_pickle(marker)),
        Sample("agree-nested-component-past-buffer.pt", "D2", MALFORMED, invalid,
               "a nested tensor whose second component runs past its buffer (torch: setStorage out of bounds)",
               _nested((2, 9))),
        Sample("agree-nested-negative-size.pt", "D2", MALFORMED, invalid,
               "a nested tensor with a negative component size (torch: storage size overflow)",
               _nested((2, -3))),
        Sample("agree-nested-in-bounds.pt", "benign", BENIGN, (CLEAN,),
               "a nested tensor of two components inside its buffer", _nested((2, 3))),
        Sample("agree-sparse-indices-out-of-range.pt", "benign", BENIGN, (CLEAN,),
               "COO indices outside the size: torch 2.13 loads them unchecked (invariant checks are off by default)",
               _sparse_out_of_range()),
        Sample("agree-bits8.pt", "benign", BENIGN, (CLEAN,), "a torch.bits8 tensor, which torch loads", _bits8()),
        Sample("agree-legacy-int-magic.pt", "benign", BENIGN, (CLEAN,),
               "a legacy stream whose magic number is a protocol-0 INT", _legacy_with_int_magic()),
    ]

