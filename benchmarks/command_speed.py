"""Timings of ptfile commands against their floors, each in fresh Python processes.

Usage::

    python benchmarks/command_speed.py stats  [--dir DIR] [--gb 2.0]   # stats vs numpy float32 reductions
    python benchmarks/command_speed.py import [--runs 40]              # import ptfile + first load vs import numpy
    python benchmarks/command_speed.py inspect FILE... [--runs 10]     # ptfile inspect, --json and table

``stats`` writes a bfloat16 checkpoint of about ``--gb`` GB (tensors of 20,000,000 elements)
in ``DIR`` (the system's temporary folder by default), reads it once so the page cache is
warm, then times ``ptfile.tools.statistics.checkpoint_stats`` and numpy's ``min``, ``max``,
``mean`` and ``std`` of a float32 copy of each tensor (what a user would write), alternately,
``--repeats`` times each; the file is deleted at the end.  The target is a ratio <= 1.2.

``import`` runs ``python -c "import numpy"`` and ``python -c "import ptfile; ptfile.load(F)"``
(F a 900-byte checkpoint) alternately ``--runs`` times each and reports the median and the
minimum wall and CPU time of each and of their difference (target: <= 25 ms).  On a shared
machine the minimum is the estimate of a quiet machine: noise only ever adds time.

``inspect`` runs ``python -m ptfile inspect --json F`` and ``python -m ptfile inspect F``
(the table, piped) for each file, ``--runs`` times each, and reports the same figures
(targets: 0.3 s for the 2.2 GB file of 55 tensors, 1 s for the one of 20,000 tensors).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Modules are timed as an installed package runs them, from cached bytecode: without the cache every
# process would compile ptfile's source again (several times the cost of importing it).
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
       "PYTHONPATH": os.pathsep.join([os.path.join(HERE, "..", "src"), os.environ.get("PYTHONPATH", "")])}
ELEMENTS_PER_TENSOR = 20_000_000

STATS = """
import sys, time
from ptfile.tools.statistics import checkpoint_stats
t = time.perf_counter(); checkpoint_stats(sys.argv[1]); print(time.perf_counter() - t)
"""
NUMPY = """
import sys, time
import numpy as np
import ptfile
with ptfile.open(sys.argv[1]) as ckpt:
    t = time.perf_counter()
    for key in ckpt.keys():
        a = ckpt[key].astype(np.float32)
        a.min(); a.max(); a.mean(); a.std()
    print(time.perf_counter() - t)
"""


def timed(code: str, *args: str) -> float:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=ENV, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def write_bf16(path: str, gigabytes: float) -> None:
    import ml_dtypes
    import numpy as np

    import ptfile

    count = max(1, round(gigabytes * 1e9 / (2 * ELEMENTS_PER_TENSOR)))
    rng = np.random.default_rng(0)
    tensor = rng.standard_normal(ELEMENTS_PER_TENSOR, dtype=np.float32).astype(ml_dtypes.bfloat16)
    tensor[::100_000] = 0
    ptfile.save({f"layers.{i}.weight": tensor.copy() for i in range(count)}, path)


def bench_stats(folder: str, gigabytes: float, repeats: int) -> None:
    path = os.path.join(folder, "command_speed_bf16.pt")
    try:
        write_bf16(path, gigabytes)
        with open(path, "rb") as warm:
            while warm.read(1 << 24):
                pass
        ours, floor = [], []
        for _ in range(repeats):
            ours.append(timed(STATS, path))
            floor.append(timed(NUMPY, path))
        size = os.path.getsize(path) / 1e9
        print(f"file: {size:.2f} GB bfloat16")
        print(f"ptfile stats:          median {statistics.median(ours):.2f} s, min {min(ours):.2f} s")
        print(f"numpy float32 4 calls: median {statistics.median(floor):.2f} s, min {min(floor):.2f} s")
        print(f"ratio (target <= 1.2): median {statistics.median(ours) / statistics.median(floor):.2f}, "
              f"min/min {min(ours) / min(floor):.2f}")
    finally:
        if os.path.exists(path):
            os.remove(path)


def wall_and_cpu(argv: list[str]) -> tuple[float, float]:
    """The wall time and the CPU time (user and system) of one fresh process running ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env=ENV, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def report(label: str, runs: list[tuple[float, float]]) -> None:
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    print(f"{label:36} wall median {statistics.median(walls) * 1e3:7.1f} ms, min {min(walls) * 1e3:7.1f} ms; "
          f"CPU median {statistics.median(cpus) * 1e3:7.1f} ms, min {min(cpus) * 1e3:7.1f} ms")


def bench_import(runs: int) -> None:
    import numpy as np

    import ptfile

    with tempfile.TemporaryDirectory() as folder:
        small = os.path.join(folder, "small.pt")
        ptfile.save({"w": np.arange(64, dtype=np.float32), "b": np.zeros(8, np.float32)}, small)
        numpy_only, first_load = [], []
        for _ in range(runs):
            numpy_only.append(wall_and_cpu([sys.executable, "-c", "import numpy"]))
            first_load.append(wall_and_cpu([sys.executable, "-c", f"import ptfile; ptfile.load({small!r})"]))
    report("import numpy", numpy_only)
    report("import ptfile + first load", first_load)
    for index, what in ((0, "wall"), (1, "CPU")):
        ours, floor = [r[index] for r in first_load], [r[index] for r in numpy_only]
        print(f"difference (target <= 25 ms), {what:4}  median "
              f"{(statistics.median(ours) - statistics.median(floor)) * 1e3:6.1f} ms, "
              f"min {(min(ours) - min(floor)) * 1e3:6.1f} ms")


def bench_inspect(files: list[str], runs: int) -> None:
    for path in files:
        for flags in (["--json"], []):
            argv = [sys.executable, "-m", "ptfile", "inspect", *flags, path]
            wall_and_cpu(argv)  # the page cache and the bytecode cache warm
            report(f"inspect {' '.join(flags) or '(table)'} {os.path.basename(path)}",
                   [wall_and_cpu(argv) for _ in range(runs)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["stats", "import", "inspect"])
    parser.add_argument("files", nargs="*", help="inspect: the checkpoints to inspect")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the stats file is written")
    parser.add_argument("--gb", type=float, default=2.0, help="size of the stats file")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each stats measurement")
    parser.add_argument("--runs", type=int, default=None, help="runs of each import (40) or inspect (10) measurement")
    args = parser.parse_args()
    if args.what == "stats":
        bench_stats(args.dir, args.gb, args.repeats)
    elif args.what == "inspect":
        bench_inspect(args.files, args.runs or 10)
    else:
        bench_import(args.runs or 40)


if __name__ == "__main__":
    main()
