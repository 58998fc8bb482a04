"""The ``ptfile`` commands timed as a user runs them, side by side with a peer scanner.

Usage::

    python benchmarks/commands.py                       # makes the files under benchmarks/data
    python benchmarks/commands.py --data /scratch       # ... somewhere with room (~2.3 GB)
    python benchmarks/commands.py --picklescan /venv/bin/picklescan

The files are those of ``bench.py``: 55 bf16 tensors of 20,000,000 elements (``big``, 2.2 GB)
and 20,000 float32 tensors of 1,024 elements (``many``), written by torch once.

Every run is a fresh process started the way a user starts it (``python -m ptfile ...``,
the peer's own console script), interpreter start and imports included, after an untimed
read of the file so the page cache is warm.  Each run reports its wall time, its CPU time
(user + system, from ``wait4``: what the run cost, whatever else the machine was doing)
and its peak RSS; the table shows medians (peak RSS: the largest) and each target of the
performance issue on wall and CPU time.  picklescan (``pip install picklescan``, in a venv
of its own) is the peer: it reads the zip directory and unpickles ``data.pkl`` with
``pickletools``, and also tries every other record as a pickle.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "src")
# Measure the ptfile of this checkout, installed or not.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
FILES = {"big": (55, 20_000_000, "bfloat16"), "many": (20_000, 1024, "float32")}

# (label, file, command with {file} and {picklescan}); the peer's rows name it first.
COMMANDS = [
    ("picklescan", "big", ["{picklescan}", "-p", "{file}"]),
    ("ptfile scan", "big", [sys.executable, "-m", "ptfile", "scan", "{file}"]),
    ("ptfile scan --verify", "big", [sys.executable, "-m", "ptfile", "scan", "--verify", "{file}"]),
    ("ptfile inspect", "big", [sys.executable, "-m", "ptfile", "inspect", "{file}"]),
    ("picklescan", "many", ["{picklescan}", "-p", "{file}"]),
    ("ptfile scan", "many", [sys.executable, "-m", "ptfile", "scan", "{file}"]),
    ("ptfile inspect", "many", [sys.executable, "-m", "ptfile", "inspect", "{file}"]),
    ("ptfile inspect --all", "many", [sys.executable, "-m", "ptfile", "inspect", "--all", "{file}"]),
    ("python -c pass", "big", [sys.executable, "-c", "pass"]),  # the interpreter's own start
]

# (file, measured, reference or None, limit: a ratio, or seconds when there is no reference)
TARGETS = [
    ("big", "ptfile scan", "picklescan", 2.0, "scan <= 2x picklescan"),
    ("many", "ptfile scan", "picklescan", 0.5, "scan <= 0.5x picklescan"),
    ("big", "ptfile inspect", None, 0.3, "inspect <= 0.3 s"),
    ("many", "ptfile inspect", None, 1.0, "inspect <= 1 s"),
]
#: Peak RSS of ``ptfile inspect big.pt``: it reads no tensor byte, so it holds none.
INSPECT_BIG_RSS = 100 * 2**20


def make_files(folder: str) -> dict[str, str]:
    """The benchmark checkpoints, written by torch once."""
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, (count, numel, dtype) in FILES.items():
        path = paths[name] = os.path.join(folder, f"{name}-{count}x{numel}.pt")
        if os.path.exists(path):
            continue
        script = textwrap.dedent(f"""
            import torch, collections
            g = torch.Generator().manual_seed(0)
            sd = collections.OrderedDict(
                (f"layers.{{i}}.weight", torch.randn({numel}, generator=g).to(torch.{dtype})) for i in range({count}))
            torch.save(sd, {path!r})
        """)
        subprocess.run([sys.executable, "-c", script], check=True)
    return paths


def warm(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def run_once(argv: list[str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and peak RSS bytes of one fresh process."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    error = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode not in (0, 1):  # 1: a scanner's "found something"; neither file has anything
        raise RuntimeError(f"{' '.join(argv)} exited {process.returncode}:\n{error}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(HERE, "data"), help="folder for the benchmark files")
    parser.add_argument("--picklescan", default=shutil.which("picklescan"), help="the picklescan console script")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    files = make_files(args.data)
    results: dict[tuple[str, str], tuple[float, float, int]] = {}
    print("| file | command | wall s | CPU s | peak RSS MiB |")
    print("|---|---|---:|---:|---:|")
    for label, name, template in COMMANDS:
        if "{picklescan}" in template and not args.picklescan:
            continue
        argv = [part.format(file=files[name], picklescan=args.picklescan) for part in template]
        runs = []
        for _ in range(args.repeats):
            warm(files[name])
            runs.append(run_once(argv))
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        rss = max(r[2] for r in runs)
        results[(name, label)] = (wall, cpu, rss)
        print(f"| {name} | {label} | {wall:.3f} | {cpu:.3f} | {rss / 2**20:.0f} |", flush=True)
    print("\n| file | target | wall | CPU | met (wall / CPU) |")
    print("|---|---|---:|---:|---|")
    for name, measured, reference, limit, text in TARGETS:
        if (name, measured) not in results or (reference and (name, reference) not in results):
            continue
        wall, cpu, _ = results[(name, measured)]
        if reference:
            wall, cpu = wall / results[(name, reference)][0], cpu / results[(name, reference)][1]
        unit = "x" if reference else " s"
        print(f"| {name} | {text} | {wall:.2f}{unit} | {cpu:.2f}{unit} | "
              f"{'yes' if wall <= limit else 'NO'} / {'yes' if cpu <= limit else 'NO'} |")
    if ("big", "ptfile inspect") in results:
        rss = results[("big", "ptfile inspect")][2]
        print(f"| big | inspect peak RSS <= 100 MiB | {rss / 2**20:.0f} MiB | | "
              f"{'yes' if rss <= INSPECT_BIG_RSS else 'NO'} |")


if __name__ == "__main__":
    main()
