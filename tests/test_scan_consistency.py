"""The scanner and the loader can never disagree: one engine, one judge.

For every file of the corpus (the golden fixtures plus whatever hostile samples the
suite builds), ``load`` refuses exactly the files ``scan`` does not call clean, and
``load(records=True)`` additionally accepts exactly the ``unknown-class`` ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import ptfile
from ptfile.scanner import scan

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CORPUS = sorted(p for p in FIXTURES.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".tar"))


def outcome(path: Path, records: bool) -> str:
    try:
        ptfile.load(path, records=records)
    except ptfile.UnsafeGlobalError:
        return "unsafe"
    except ptfile.PtfileError:
        return "error"
    return "ok"


def check_agreement(path: Path | bytes) -> str:
    verdict = scan(path).verdict
    plain, with_records = outcome(path, False), outcome(path, True)
    assert (plain == "ok") == (verdict == "clean"), (verdict, plain)
    assert (with_records == "ok") == (verdict in ("clean", "unknown-class")), (verdict, with_records)
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
