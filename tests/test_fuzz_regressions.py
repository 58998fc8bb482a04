"""Every input the fuzz harnesses (``fuzz/``) found, replayed through every invariant.

A finding is saved as ``tests/fuzz_regressions/<harness>-<what>.bin``.  Inputs of the byte
harnesses go through every byte invariant of ``fuzzchecks`` (load, open, scan, the scan/load
agreement, the raw engine); inputs of the ``save`` harness through the save round trip.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzzchecks import CHECKS

REGRESSIONS = Path(__file__).resolve().parent / "fuzz_regressions"
FILES = sorted(REGRESSIONS.glob("*.bin"))
BYTE_CHECKS = [name for name in CHECKS if name != "save"]


def test_regressions_are_named_after_a_harness() -> None:
    assert FILES, "no saved findings"
    for path in FILES:
        assert path.name.split("-", 1)[0] in CHECKS, path.name


@pytest.mark.parametrize("check", BYTE_CHECKS)
@pytest.mark.parametrize("path", [p for p in FILES if not p.name.startswith("save-")], ids=lambda p: p.name)
def test_byte_invariants_hold_on_findings(path: Path, check: str) -> None:
    CHECKS[check](path.read_bytes())


@pytest.mark.parametrize("path", [p for p in FILES if p.name.startswith("save-")], ids=lambda p: p.name)
def test_save_round_trip_holds_on_findings(path: Path) -> None:
    CHECKS["save"](path.read_bytes())
