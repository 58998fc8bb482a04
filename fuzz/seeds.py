"""Seed corpora: the small torch-written fixtures, the small files of the scanner corpus
(their payloads aimed at the harness's marker), and the pickles inside the zips among them.
The slow differential harness starts from one malicious sample per attack class.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

from common import ROOT, marker_for

#: Seeds larger than this are left out: libFuzzer mutates small inputs many times faster.
MAX_SEED_BYTES = 32 << 10
#: File kinds taken from the fixtures (the ``.expected`` descriptions and scripts are not inputs).
FIXTURE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".tar", ".distcp", ".metadata")
#: Seeds of the save harness: fixed decision bytes (the fuzzer grows them from there).
SAVE_SEEDS = (b"", bytes(range(256)), b"\x03\x00\x02\x04\x04" + bytes(range(64)), b"\x05\x03" * 40)


def _fixture_seeds() -> list[bytes]:
    fixtures = ROOT / "tests" / "fixtures"
    files = sorted(p for p in fixtures.rglob("*") if p.is_file() and (p.suffix in FIXTURE_SUFFIXES
                                                                       or p.name == ".metadata"))
    return [p.read_bytes() for p in files if p.stat().st_size <= MAX_SEED_BYTES]


def _corpus_files(harness: str) -> list:
    from corpus import build_corpus

    samples = build_corpus(marker_for(harness))
    return [s for s in samples if isinstance(s.data, bytes) and len(s.data) <= MAX_SEED_BYTES]


def _differential_seeds() -> list[bytes]:
    """One malicious file per attack class: every input costs a run of each real consumer."""
    from corpus import MALICIOUS

    first = {}
    for sample in _corpus_files("differential"):
        if sample.label == MALICIOUS:
            first.setdefault(sample.cls, sample.data)
    return list(first.values())


def _pickles_inside(blobs: list[bytes]) -> list[bytes]:
    """The ``.pkl`` members of the zips among ``blobs``: direct seeds for the engine."""
    out = []
    for blob in blobs:
        try:
            with zipfile.ZipFile(io.BytesIO(blob)) as archive:
                out += [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
        except Exception:  # hostile zips (encrypted flags, bad CRCs) are seeds, not sources of seeds
            continue
    return out


def seeds_for(harness: str) -> list[bytes]:
    if harness == "save":
        return list(SAVE_SEEDS)
    if harness == "differential":
        return _differential_seeds()
    blobs = _fixture_seeds() + [s.data for s in _corpus_files(harness)]
    if harness == "engine":
        blobs += _pickles_inside(blobs)
    return blobs


def write_seeds(harness: str, folder: Path) -> int:
    """Write the seeds of ``harness`` into ``folder``, named by content; returns how many."""
    folder.mkdir(parents=True, exist_ok=True)
    blobs = {hashlib.sha1(b).hexdigest(): b for b in seeds_for(harness)}
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)
    return len(blobs)
