"""The scanner and the loader can never disagree: one engine, one judge.

For every file of the corpus (the golden fixtures plus whatever hostile samples the
suite builds), ``load`` refuses exactly the files ``scan`` does not call clean, and
``load(records=True)`` additionally accepts exactly the ``unknown-class`` ones.
Hypothesis then changes one byte of, or truncates, the small fixtures of every kind:
the two must still agree, ``load`` may raise nothing but ``PtfileError``, and ``scan``
nothing at all.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ptfile
from ptfile.scanning.scanner import scan

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CORPUS = sorted(p for p in FIXTURES.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".tar"))


def outcome(path: Path | bytes, records: bool) -> str:
    try:
        ptfile.load(path, records=records)
    except ptfile.UnsafeGlobalError:
        return "unsafe"
    except ptfile.PtfileError:
        return "error"
    return "ok"


def check_agreement(path: Path | bytes) -> str:
    result = scan(path)
    verdict = result.verdict
    plain, with_records = outcome(path, False), outcome(path, True)
    assert (plain == "ok") == (verdict == "clean"), (verdict, plain)
    # records=True reads unknown classes and calls as records: it succeeds exactly when nothing else is
    # wrong (an unknown call outranks a fault in the verdict, so the faults say it)
    readable = verdict in ("clean", "unknown-class") or (verdict == "unknown-call" and not result.faults)
    assert (with_records == "ok") == readable, (verdict, with_records, result.faults)
    return verdict


def test_corpus_is_not_empty():
    assert len(CORPUS) > 20


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_load_and_scan_agree_on_fixtures(path):
    check_agreement(path)


def test_benign_fixtures_are_never_dangerous():
    for path in CORPUS:
        assert scan(path).verdict != "dangerous", path


def test_load_and_scan_agree_on_the_generated_corpus(scan_corpus) -> None:
    """Every hostile and benign sample of the scanner corpus (tests/corpus.py), files and folders alike."""
    from corpus import MARKER_NAME

    folder, samples = scan_corpus
    disagreements = {}
    for sample in samples:
        try:
            check_agreement(folder / sample.name)
        except AssertionError as exc:
            disagreements[sample.name] = str(exc)
    assert not disagreements
    assert not (folder / MARKER_NAME).exists(), "a payload ran while loading or scanning"


# -- one changed byte, or a truncation, of the small fixtures -----------------------------

#: Fixtures of every container and tensor kind, small enough to mutate quickly.
MUTATED = [FIXTURES / name for name in (
    "shared.pt", "packed.pt", "formats/sparse.pt", "formats/nested.pt", "formats/quantized.pt",
    "formats/subclass.pt", "formats/protocol1.pt", "legacy/views.pt", "legacy/protocol1.pt",
    "legacy/every_dtype.pt", "legacy/ancient.tar.pt",
)]
#: Storage records longer than this are mostly tensor values; the bytes around them are mutated more often.
_BULK_RECORD = 64


def _structural_offsets(data: bytes) -> list[int]:
    """Offsets outside the bulk of a zip's storage records: pickles, layout records, headers, directory."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return list(range(len(data)))  # legacy stream or tar: the pickles are most of it
    bulk = set()
    for info in archive.infolist():
        if "/data/" in info.filename and info.file_size > _BULK_RECORD:
            start = info.header_offset + 30 + len(info.orig_filename.encode()) + len(info.extra)
            bulk.update(range(start, start + info.compress_size))
    return [at for at in range(len(data)) if at not in bulk]


_FILES = {path: path.read_bytes() for path in MUTATED}
_STRUCTURAL = {path: _structural_offsets(data) for path, data in _FILES.items()}


@st.composite
def mutated_fixtures(draw) -> bytes:
    path = draw(st.sampled_from(MUTATED))
    data = _FILES[path]
    if draw(st.booleans()) and draw(st.integers(0, 3)) == 0:  # one time in eight: a truncation
        return data[: draw(st.integers(0, len(data) - 1))]
    at = draw(st.one_of(st.integers(0, len(data) - 1), st.sampled_from(_STRUCTURAL[path])))
    value = draw(st.integers(0, 255).filter(lambda v: v != data[at]))
    return data[:at] + bytes([value]) + data[at + 1 :]


def test_mutation_targets_exist() -> None:
    assert all(path.exists() for path in MUTATED)
    assert any(len(_STRUCTURAL[path]) < len(_FILES[path]) for path in MUTATED)  # tensor values are skipped somewhere


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_fixtures())
def test_load_and_scan_agree_on_mutated_fixtures(data: bytes) -> None:
    # check_agreement lets anything but PtfileError out of load, and any exception out of scan
    check_agreement(data)


# -- torch is the oracle for the samples where scan and load once disagreed ------------------

_TORCH_LOADS = """
import json, sys, warnings
import torch
warnings.simplefilter("ignore")
out = {}
for path in sys.argv[1:]:
    out[path] = []
    for weights_only in (True, False):
        try:
            torch.load(path, weights_only=weights_only)
            out[path].append(True)
        except Exception:
            out[path].append(False)
print(json.dumps(out))
"""


def test_agree_samples_load_exactly_where_torch_loads_them(tmp_path: Path) -> None:
    """Each sample of corpus_agree that runs no code: ptfile loads it exactly when torch 2.13 does."""
    pytest.importorskip("torch")
    import json
    import subprocess
    import sys

    from corpus import MALICIOUS
    from corpus_agree import samples

    marker = tmp_path / "PAYLOAD-RAN"
    chosen = [s for s in samples(marker) if s.label != MALICIOUS]
    for sample in chosen:
        (tmp_path / sample.name).write_bytes(sample.data)
    paths = [str(tmp_path / s.name) for s in chosen]
    done = subprocess.run([sys.executable, "-c", _TORCH_LOADS, *paths], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    torch_loads = json.loads(done.stdout)
    for sample, path in zip(chosen, paths, strict=True):
        by_weights_only, with_any_loader = torch_loads[path], any(torch_loads[path])
        # the legacy INT magic is an opcode only torch's weights_only unpickler refuses
        assert outcome(Path(path), False) == ("ok" if with_any_loader else "error"), (sample.name, by_weights_only)
        assert (scan(Path(path)).verdict == "clean") == with_any_loader, sample.name
    assert not marker.exists()


def test_foreign_byte_order_storage_of_partial_elements_is_refused_by_both() -> None:
    """A big-endian untyped storage of 5 bytes read as float32: load cannot swap it, so scan says invalid.

    (torch 2.13 swaps the whole elements and loads it; ptfile refuses, in scan and load alike.)
    """
    from builders import G, build_zip, program, storage_pid, torch_members

    pid = storage_pid("0", 5, "UntypedStorage", module="torch.storage")
    tensor = G("torch._utils", "_rebuild_tensor_v3")(pid, 0, (1,), (1,), False, G("collections", "OrderedDict")(),
                                                     G("torch", "float32"))
    data = build_zip(torch_members(program({"t": tensor}, 2), {"0": bytes(5)}, byteorder=b"big"))
    assert check_agreement(data) == "invalid"
    assert "not a whole number of 4-byte elements" in scan(data).faults[0]


@pytest.mark.parametrize("field", ["compressed size", "size"])
def test_serialization_id_size_changed_by_one_is_refused_as_torch_refuses_it(field: str) -> None:
    """torch's reader reads .data/serialization_id when it opens the archive: a false size fails the load."""
    torch = pytest.importorskip("torch")
    data = (FIXTURES / "shared.pt").read_bytes()
    name = b"shared/.data/serialization_id"
    central = data.rindex(b"PK\x01\x02", 0, data.rindex(name))
    at = central + (20 if field == "compressed size" else 24)
    changed = data[:at] + bytes([(data[at] + 1) & 0xFF]) + data[at + 1 :]
    with pytest.raises(RuntimeError, match="PytorchStreamReader"):
        torch.load(io.BytesIO(changed), weights_only=True)
    assert check_agreement(changed) == "invalid"


@pytest.mark.parametrize("data", [b"\x80\x02K\x05.", b"I5\n.", b"\x8a\x01\x05.", b"K\x05.", b"N."],
                         ids=["protocol-2-int", "protocol-0-int", "bare-long1", "bare-binint1", "bare-none"])
def test_pickles_load_cannot_open_are_not_clean(data: bytes) -> None:
    """An int that is not the legacy magic, or an opcode no checkpoint starts with: load refuses, scan says invalid."""
    assert check_agreement(data) == "invalid"
