"""ptfile's scanner beside picklescan, modelscan and fickling, on the scanner corpus.

    python benchmarks/scan_compare.py [--corpus DIR] [--out FILE] [--details]

Installs nothing: the other tools are used when importable (``pip install picklescan
modelscan fickling``; they are not dependencies of ptfile, not even for its tests).
Without ``--corpus`` the corpus of ``tests/corpus.py`` is written to a temporary folder.

Each tool runs in its own subprocess over every sample (a file or a folder), through its
Python API with default settings, and each sample's result is one outcome:

* ``dangerous``: ptfile ``dangerous`` or ``unknown-call`` (both exit 1); picklescan a dangerous global (exit 1); modelscan
  any issue; fickling an analysis above LIKELY_SAFE.
* ``suspicious``: reported but passed by default: picklescan "suspicious" globals (exit 0
  unless ``--strict``); ptfile ``unknown-class`` (exit 0 unless ``--strict``).
* ``error``: the tool could not scan the file (picklescan ``scan_err``, modelscan errors,
  fickling parse errors or an unsupported 7z/tar, a crash or a timeout); ptfile ``invalid``,
  which is its verdict for a file it refuses as malformed (exit 2, never clean).
* ``clean``: nothing reported.

A malicious sample is *detected* when the outcome is ``dangerous``, *missed* when ``clean``.
A benign sample is a *false alarm* when the outcome is ``dangerous``.  The markdown table
goes to stdout (and ``--out``); the corpus's marker file is checked at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

TOOLS = ("ptfile", "picklescan", "modelscan", "fickling")
DISTRIBUTIONS = {"ptfile": None, "picklescan": "picklescan", "modelscan": "modelscan", "fickling": "fickling"}
OUTCOMES = ("dangerous", "suspicious", "error", "clean")
#: A tool gets this long per sample before the sample counts as an error.
TIMEOUT_SECONDS = 60


# -- one tool on one sample (run in the worker process) ----------------------------------------


def _ptfile(path: str) -> tuple[str, str]:
    import ptfile

    result = ptfile.scan(path)
    outcome = {"dangerous": "dangerous", "unknown-call": "dangerous", "unknown-class": "suspicious", "invalid": "error",
               "clean": "clean"}
    detail = ", ".join(f.path for f in result.findings) or "; ".join(result.faults)[:200]
    return outcome[result.verdict], detail


def _picklescan(path: str) -> tuple[str, str]:
    from picklescan.scanner import SafetyLevel, scan_directory_path, scan_file_path

    result = scan_directory_path(path) if os.path.isdir(path) else scan_file_path(path)
    dangerous = [f"{g.module}.{g.name}" for g in result.globals if g.safety == SafetyLevel.Dangerous]
    suspicious = [f"{g.module}.{g.name}" for g in result.globals if g.safety == SafetyLevel.Suspicious]
    if dangerous or result.infected_files:
        return "dangerous", ", ".join(dangerous)
    if result.scan_err:
        return "error", "scan error"
    if suspicious:
        return "suspicious", ", ".join(suspicious)
    return "clean", f"{result.scanned_files} files scanned"


def _modelscan(path: str) -> tuple[str, str]:
    from modelscan.modelscan import ModelScan

    report = ModelScan().scan(path)
    issues = report.get("issues") or []
    if issues:
        return "dangerous", ", ".join(sorted({f"{i.get('module')}.{i.get('operator')}" for i in issues}))
    if report.get("errors"):
        return "error", str(report["errors"][0])[:200]
    return "clean", f"{report['summary']['scanned']['total_scanned']} files scanned"


def _fickling_file(path: str) -> list[tuple[str, str]]:
    """fickling as its Hugging Face scan treats a downloaded file: zips by member, pickles whole."""
    import tarfile
    import zipfile

    from fickling import scan_file, scan_zip_archive
    from fickling.analysis import Severity

    with open(path, "rb") as handle:
        head = handle.read(6)
    if head.startswith(b"7z\xbc\xaf\x27\x1c") or tarfile.is_tarfile(path):
        return [("error", "7z/tar: not supported by fickling's scanner")]
    if zipfile.is_zipfile(path):
        results = list(scan_zip_archive(path, graceful=True).values())
    else:
        results = [scan_file(path, graceful=True)]
    out = []
    for result in results:
        worst = max((r.severity for r in result.results), default=Severity.LIKELY_SAFE)
        if worst > Severity.LIKELY_SAFE:
            out.append(("dangerous", worst.name))
        elif result.errors:
            out.append(("error", result.errors[0][:200]))
        else:
            out.append(("clean", ""))
    return out or [("clean", "nothing scanned")]


def _fickling(path: str) -> tuple[str, str]:
    files = [os.path.join(d, f) for d, _, names in os.walk(path) for f in sorted(names)] if os.path.isdir(path) \
        else [path]
    outcomes = [o for f in files for o in _fickling_file(f)]
    return min(outcomes, key=lambda o: OUTCOMES.index(o[0]))


SCANNERS = {"ptfile": _ptfile, "picklescan": _picklescan, "modelscan": _modelscan, "fickling": _fickling}


def _timeout(signum: int, frame: Any) -> None:
    raise TimeoutError(f"no result after {TIMEOUT_SECONDS} s")


def worker(tool: str, corpus: Path) -> None:
    """Print ``{sample: [outcome, detail]}`` for one tool over the corpus."""
    logging.disable(logging.CRITICAL)  # the tools log every finding; only their results matter here
    samples = json.loads((corpus / "manifest.json").read_text())["samples"]
    scan = SCANNERS[tool]
    signal.signal(signal.SIGALRM, _timeout)
    results = {}
    for sample in samples:
        path = str(corpus / sample["name"])
        signal.alarm(TIMEOUT_SECONDS)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                results[sample["name"]] = list(scan(path))
        except Exception as exc:  # a tool crashing on a hostile file is a result: it could not scan it
            results[sample["name"]] = ["error", f"{type(exc).__name__}: {str(exc)[:160]}"]
        finally:
            signal.alarm(0)
    print(json.dumps(results))


# -- the comparison -------------------------------------------------------------------------------


def version(tool: str) -> str | None:
    name = DISTRIBUTIONS[tool]
    if name is None:
        return "this checkout"
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def run_tool(tool: str, corpus: Path) -> dict[str, list[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, __file__, "--worker", tool, "--corpus", str(corpus)], capture_output=True,
                          text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row(tool: str, ver: str, samples: list[dict], results: dict[str, list[str]]) -> str:
    def count(label: str, outcome: str) -> int:
        return sum(1 for s in samples if s["label"] == label and results[s["name"]][0] == outcome)

    total = Counter(s["label"] for s in samples)
    cells = [f"{tool} {ver}",
             f"{count('malicious', 'dangerous')}/{total['malicious']}", str(count("malicious", "suspicious")),
             str(count("malicious", "error")), str(count("malicious", "clean")),
             f"{count('benign', 'dangerous')}/{total['benign']}", str(count("benign", "suspicious")),
             str(count("benign", "error")),
             f"{total['malformed'] - count('malformed', 'clean')}/{total['malformed']}"]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| Tool | Malicious detected | only suspicious | error / invalid | missed (clean) | Benign false alarms "
          "| benign suspicious | benign error / invalid | Malformed not clean |\n"
          "|---|---|---|---|---|---|---|---|---|")


def _groups(samples: list[dict], results: dict[str, dict[str, list[str]]]) -> str:
    """Missed malicious samples (outcome clean) per attack group, per tool."""
    groups = sorted({s["cls"][0] for s in samples if s["label"] == "malicious"})
    lines = ["| Tool | " + " | ".join(f"{g} missed" for g in groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for tool, by_sample in results.items():
        cells = []
        for group in groups:
            members = [s for s in samples if s["label"] == "malicious" and s["cls"][0] == group]
            missed = sum(by_sample[s["name"]][0] == "clean" for s in members)
            cells.append(f"{missed}/{len(members)}")
        lines.append(f"| {tool} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _details(samples: list[dict], results: dict[str, dict[str, list[str]]]) -> str:
    lines = []
    for tool, by_sample in results.items():
        missed = [s["name"] for s in samples if s["label"] == "malicious" and by_sample[s["name"]][0] == "clean"]
        alarms = [f"{s['name']} ({by_sample[s['name']][1]})" for s in samples
                  if s["label"] == "benign" and by_sample[s["name"]][0] == "dangerous"]
        lines.append(f"- **{tool}** missed: {', '.join(missed) or 'none'}; false alarms: {', '.join(alarms) or 'none'}")
    return "\n".join(lines)


def compare(corpus: Path, details: bool) -> str:
    samples = json.loads((corpus / "manifest.json").read_text())["samples"]
    results: dict[str, dict[str, list[str]]] = {}
    rows = []
    for tool in TOOLS:
        ver = version(tool)
        if ver is None:
            rows.append(f"| {tool} (not installed) |" + " |" * 8)
            continue
        results[tool] = run_tool(tool, corpus)
        rows.append(_row(tool, ver, samples, results[tool]))
    counts = Counter(s["label"] for s in samples)
    text = [f"Corpus: {len(samples)} samples ({counts['malicious']} malicious, {counts['malformed']} malformed, "
            f"{counts['benign']} benign).", "", HEADER, *rows, "", _groups(samples, results)]
    if details:
        text += ["", _details(samples, results)]
    return "\n".join(text) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="a corpus written by benchmarks/scan_corpus.py")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--details", action="store_true", help="list every miss and false alarm")
    parser.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.corpus)
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        corpus = args.corpus
        if corpus is None:
            from corpus import write_corpus

            corpus = Path(scratch) / "corpus"
            write_corpus(corpus)
        table = compare(corpus, args.details)
        marker = corpus / json.loads((corpus / "manifest.json").read_text())["marker"]
        if marker.exists():
            raise SystemExit(f"{marker} exists: a payload ran during the comparison")
    print(table, end="")
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
