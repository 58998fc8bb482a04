"""What every harness shares: the paths, ptfile imported under atheris's coverage instrumentation,
and the loop that runs one invariant of ``tests/fuzzchecks.py`` on every input.

A payload in a seed would only create the harness's marker file (:func:`marker_for`); every
harness checks after each input that it does not exist, so ptfile running code from a file is a finding like any other.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

import atheris  # noqa: E402


def marker_for(harness: str) -> Path:
    """The file the payloads of a harness's seeds would create: one per harness, so that harnesses
    running side by side (the differential one runs the payloads for real) cannot trip each other."""
    return Path(tempfile.gettempdir()) / f"ptfile-fuzz-{harness}-PAYLOAD-RAN"


def import_ptfile_instrumented() -> None:
    """Import every ptfile module, in every subpackage (some are imported only on demand), so that atheris sees
    their branches."""
    with atheris.instrument_imports(include=["ptfile"]):
        import ptfile

        for module in pkgutil.walk_packages(ptfile.__path__, "ptfile."):
            if module.name.split(".")[1] not in ("cli", "__main__"):  # the command is not fuzzed
                importlib.import_module(module.name)


def check_after_each(check: Callable[[bytes], None], marker: Path) -> Callable[[bytes], None]:
    def one_input(data: bytes) -> None:
        check(data)
        if marker.exists():
            marker.unlink()
            raise AssertionError(f"a payload ran: {marker} was created")
    return one_input


def fuzz(harness: str) -> None:
    """Run the invariant named ``harness`` of ``fuzzchecks.CHECKS`` under libFuzzer (argv holds its options)."""
    import_ptfile_instrumented()
    import fuzzchecks

    atheris.Setup(sys.argv, check_after_each(fuzzchecks.CHECKS[harness], marker_for(harness)))
    atheris.Fuzz()
