"""Time and peak memory of ``ptfile.scan`` and ``ptfile.load`` on hostile 1 MB tar files.

    python benchmarks/tar_limits.py [OUT_DIR]

Each file is written to OUT_DIR (a temporary folder by default) and read in a fresh process,
which prints the verdict or the error, the seconds the call took and the peak RSS in MiB.
The target: no input of 1 MB or less takes over 2 s or 256 MiB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from corpus_tar import BLOCK, header, member, pax, pax_record  # noqa: E402

MB = 1 << 20
#: Read by the child process: one call, timed from after the import.
CHILD = """
import resource, sys, time
import ptfile
path, call = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if call == "scan":
    outcome = ptfile.scan(path).verdict
else:
    try:
        ptfile.load(path)
        outcome = "loaded"
    except ptfile.PtfileError as exc:
        outcome = type(exc).__name__
print(outcome, f"{time.perf_counter() - start:.3f}", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def _fill(data: bytes) -> bytes:
    """Zero-padded (end-of-archive blocks) or cut to exactly 1 MB."""
    return data[:MB].ljust(MB, b"\0")


def _repeat(part: bytes) -> bytes:
    return part * (MB // len(part))


def cases() -> dict[str, bytes]:
    tiny = b"\x80\x02K\x01."
    return {
        "pax-200k-digits": _fill(pax(b"1" * 200_000 + b" comment=x\n")),
        "pax-1M-digits": header(b"././@PaxHeader", MB - BLOCK, b"x") + b"1" * (MB - BLOCK),
        "pax-64k-one-record": _fill(pax(pax_record("comment", b"x" * 65_000)) + member(b"m", b"")),
        "pax-64-tiny-records-each": _fill(_repeat(pax(b"5 a=\n" * 64) + member(b"m", b""))),
        "2047-empty-members": _fill(_repeat(member(b"m", b""))),
        "pax-path-members": _fill(_repeat(pax(pax_record("path", b"p")) + member(b"m", tiny))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", help="folder for the files (default: a temporary one)")
    args = parser.parse_args(argv)
    folder = args.out or Path(tempfile.mkdtemp(prefix="tar-limits-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = {"PYTHONPATH": str(ROOT / "src")}
    print(f"{'file':28} {'bytes':>8} {'call':5} {'outcome':20} {'s':>7} {'MiB':>5}")
    for name, data in cases().items():
        path = folder / f"{name}.tar"
        path.write_bytes(data)
        for call in ("scan", "load"):
            done = subprocess.run([sys.executable, "-c", CHILD, str(path), call], capture_output=True, text=True,
                                  env=env, timeout=600, check=True)
            outcome, seconds, mib = done.stdout.split()
            print(f"{name:28} {len(data):>8} {call:5} {outcome:20} {seconds:>7} {mib:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
