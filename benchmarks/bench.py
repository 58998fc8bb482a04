"""Side-by-side timings of ptfile, torch, safetensors and the raw I/O limits.

Usage::

    python benchmarks/bench.py            # the 2.2 GB and 20,000-tensor files (needs ~7 GB disk)
    python benchmarks/bench.py --ci       # a 1 GB file and the 20,000-tensor file, fewer repeats

The files: 55 bf16 tensors of 20,000,000 elements (2.2 GB; 25 of them, 1 GB, with ``--ci``)
and 20,000 float32 tensors of 1,024 elements (82 MB of data: the cost per tensor dominates).

Every measurement runs in a fresh Python process (so no import or page of one run helps
another), right after an untimed read of both files, so the page cache is warm, and a
``sync``, so no earlier run's output is still being flushed to disk.
Each operation is timed inside its process, after its imports, and the process reports its
peak RSS and the CPU time of the operation.  The table shows medians, ratios and whether each target of the performance issue
is met.  Files are made once under ``benchmarks/data`` (ignored by git) with torch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
# Measure the ptfile of this checkout, installed or not.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(HERE, "..", "src"), os.environ.get("PYTHONPATH", "")])}

# Each snippet gets PATH (the .pt file), ST (the .safetensors file) and OUT (a scratch file),
# sets `elapsed` to the seconds of the operation alone, and leaves the rest to the harness.
SNIPPETS = {
    "import ptfile": "t = clock(); import ptfile; elapsed = clock() - t",
    "ptfile index": """
        import ptfile
        t = clock()
        with ptfile.open(PATH) as c:
            meta = [c.info(k) for k in c.keys()]
        elapsed = clock() - t""",
    "ptfile load mmap": """
        import ptfile
        t = clock(); sd = ptfile.load(PATH); elapsed = clock() - t""",
    "ptfile load": """
        import ptfile
        t = clock(); sd = ptfile.load(PATH, mmap=False); elapsed = clock() - t""",
    "ptfile save": """
        import ptfile
        sd = ptfile.load(PATH)
        t = clock(); ptfile.save(sd, OUT); elapsed = clock() - t""",
    "ptfile.torch load": """
        import ptfile.torch
        t = clock(); sd = ptfile.torch.load(PATH); elapsed = clock() - t""",
    "ptfile.torch load mmap": """
        import ptfile.torch
        t = clock(); sd = ptfile.torch.load(PATH, mmap=True); elapsed = clock() - t""",
    "ptfile load jax": """
        import ptfile, jax
        t = clock(); sd = ptfile.load(PATH, mmap=False, framework="jax"); elapsed = clock() - t""",
    "jnp.asarray over ptfile load": """
        import ptfile, jax.numpy as jnp
        t = clock(); sd = {k: jnp.asarray(v) for k, v in ptfile.load(PATH, mmap=False).items()}; elapsed = clock() - t""",
    "torch load": """
        import torch
        t = clock(); sd = torch.load(PATH, weights_only=True); elapsed = clock() - t""",
    "torch load mmap": """
        import torch
        t = clock(); sd = torch.load(PATH, weights_only=True, mmap=True); elapsed = clock() - t""",
    "torch save": """
        import torch
        sd = torch.load(PATH, weights_only=True)
        t = clock(); torch.save(sd, OUT); elapsed = clock() - t""",
    "safetensors index": """
        from safetensors import safe_open
        t = clock()
        with safe_open(ST, "np") as f:
            meta = [f.get_slice(k).get_shape() for k in f.keys()]
        elapsed = clock() - t""",
    "safetensors load_file": """
        import ml_dtypes  # lets numpy name bfloat16, as ptfile does
        from safetensors.numpy import load_file
        t = clock(); sd = load_file(ST); elapsed = clock() - t""",
    "safetensors save_file": """
        import ml_dtypes
        from safetensors.numpy import load_file, save_file
        sd = load_file(ST)
        t = clock(); save_file(sd, OUT); elapsed = clock() - t""",
    # One read call into one preallocated buffer, repeated only because Linux moves at most
    # 2 GiB - 4 KiB per call: a single call would leave the end of a 2.2 GB file unread.
    "raw readinto": """
        import numpy as np
        size = os.path.getsize(PATH); buf = np.empty(size, np.uint8); view = memoryview(buf)
        t = clock()
        with open(PATH, "rb", buffering=0) as f:
            done = 0
            while done < size:
                done += f.readinto(view[done:])
        elapsed = clock() - t""",
    # The same read split over one thread per core, each reading 32 MiB chunks in turn: page
    # faults of fresh memory, not the copy, bound a read from the page cache, and cores fault in parallel.
    "raw readinto threads": """
        import numpy as np, threading
        size = os.path.getsize(PATH); buf = np.empty(size, np.uint8); view = memoryview(buf)
        chunks = iter(range(0, size, 32 << 20))
        def work(fd):
            for start in chunks:
                end = min(start + (32 << 20), size)
                while start < end:
                    start += os.preadv(fd, [view[start:end]], start)
        t = clock()
        with open(PATH, "rb", buffering=0) as f:
            threads = [threading.Thread(target=work, args=(f.fileno(),)) for _ in range(len(os.sched_getaffinity(0)))]
            for thread in threads: thread.start()
            for thread in threads: thread.join()
        elapsed = clock() - t""",
    "raw write": """
        import numpy as np
        size = os.path.getsize(PATH); buf = np.ones(size, np.uint8); view = memoryview(buf)
        t = clock()
        with open(OUT, "wb", buffering=0) as f:
            done = 0
            while done < size:
                done += f.write(view[done:])
        elapsed = clock() - t""",
}

PRELUDE = """
import os, resource, sys, json
from time import perf_counter, process_time
PATH, ST, OUT = sys.argv[1], sys.argv[2], sys.argv[3]
_cpu = []
def clock():  # wall time; the process's CPU time is noted beside it (on a shared machine wall time waits)
    _cpu.append(process_time())
    return perf_counter()
"""
EPILOGUE = """
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": elapsed, "rss": rss, "cpu": _cpu[-1] - _cpu[-2]}))
"""


def make_files(ci: bool) -> dict[str, tuple[str, str]]:
    """The benchmark checkpoints, written by torch (and as safetensors) once."""
    os.makedirs(DATA, exist_ok=True)
    specs = {"many": ("20,000 tensors", 20_000, 1024, "float32")}
    if ci:
        specs["big"] = ("1 GB bf16, 25 tensors", 25, 20_000_000, "bfloat16")
    else:
        specs["big"] = ("2.2 GB bf16, 55 tensors", 55, 20_000_000, "bfloat16")
    files = {}
    for name, (label, count, numel, dtype) in specs.items():
        pt = os.path.join(DATA, f"{name}-{count}x{numel}.pt")
        st = pt[:-3] + ".safetensors"
        if not (os.path.exists(pt) and os.path.exists(st)):
            script = textwrap.dedent(f"""
                import torch, collections
                from safetensors.torch import save_file
                g = torch.Generator().manual_seed(0)
                sd = collections.OrderedDict(
                    (f"layers.{{i}}.weight", torch.randn({numel}, generator=g).to(torch.{dtype}))
                    for i in range({count}))
                torch.save(sd, {pt!r})
                save_file(sd, {st!r})
            """)
            subprocess.run([sys.executable, "-c", script], check=True)
        files[label] = (pt, st)
    return files


def measure(snippet: str, pt: str, st: str, repeats: int) -> tuple[float, int, float]:
    code = PRELUDE + textwrap.dedent(snippet) + EPILOGUE
    out = os.path.join(DATA, "out.tmp")
    times, peaks, cpus = [], [], []
    for _ in range(repeats):
        # Warm the page cache right before each run: the machine may reclaim idle cache
        # between runs, and a cold file would time the disk instead of the code.
        warm(pt)
        warm(st)
        # Start every run with no dirty pages queued for the disk: a write measured while
        # the kernel flushes an earlier run's output would time that flush.
        os.sync()
        result = subprocess.run([sys.executable, "-c", code, pt, st, out], capture_output=True, text=True, env=ENV)
        if result.returncode != 0:
            raise RuntimeError(f"benchmark snippet failed:\n{result.stderr}")
        value = json.loads(result.stdout.strip().splitlines()[-1])
        times.append(value["seconds"])
        peaks.append(value["rss"])
        cpus.append(value["cpu"])
        if os.path.exists(out):
            os.remove(out)
    return statistics.median(times), max(peaks), statistics.median(cpus)


def warm(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


TARGETS = [
    # (file label key, measured, reference, max ratio, text)
    ("many", "ptfile index", "safetensors index", 1.5, "index <= 1.5x safetensors header index"),
    ("big", "ptfile index", "safetensors index", 1.5, "index <= 1.5x safetensors header index"),
    ("big", "ptfile load", "raw readinto", 1.3, "load(mmap=False) <= 1.3x readinto limit"),
    ("big", "ptfile load", "raw readinto threads", 1.3, "load(mmap=False) <= 1.3x readinto limit, a thread per core"),
    ("big", "ptfile load", "torch load", 0.33, "load(mmap=False) <= 0.33x torch.load"),
    ("many", "ptfile load", "safetensors load_file", 1.0, "load <= 1.0x safetensors load_file"),
    ("many", "ptfile load", "torch load", 0.1, "load <= 0.1x torch.load"),
    ("big", "ptfile load mmap", "safetensors index", 2.0, "load(mmap) <= 2x safetensors header index"),
    ("big", "ptfile save", "torch save", 0.5, "save <= 0.5x torch.save"),
    ("big", "ptfile.torch load", "torch load", 0.3, "ptfile.torch.load <= 0.3x torch.load"),
    ("many", "ptfile.torch load", "torch load", 0.5, "ptfile.torch.load <= 0.5x torch.load"),
    ("big", "ptfile.torch load mmap", "torch load mmap", 1.0, "ptfile.torch.load(mmap) <= 1.0x torch.load(mmap)"),
    ("many", "ptfile.torch load mmap", "torch load mmap", 1.0, "ptfile.torch.load(mmap) <= 1.0x torch.load(mmap)"),
    ("big", "ptfile save", "raw write", 1.3, "save <= 1.3x write limit"),
    ("many", "ptfile save", "safetensors save_file", 1.5, "save <= 1.5x safetensors save_file"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ci", action="store_true", help="1 GB file and 3 repeats instead of 2.2 GB and 5")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", action="append", default=[], help="run only these operations")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.ci else 5)
    files = make_files(args.ci)
    results: dict[tuple[str, str], tuple[float, int, float]] = {}
    for label, (pt, st) in files.items():
        warm(pt)
        warm(st)
        size = os.path.getsize(pt)
        print(f"\n### {label} ({size / 1e9:.2f} GB)\n")
        print("| operation | median s | median CPU s | peak RSS MiB |")
        print("|---|---:|---:|---:|")
        for op, snippet in SNIPPETS.items():
            if args.only and op not in args.only:
                continue
            seconds, rss, cpu = measure(snippet, pt, st, repeats)
            results[(label, op)] = (seconds, rss, cpu)
            print(f"| {op} | {seconds:.3f} | {cpu:.3f} | {rss / 2**20:.0f} |", flush=True)
    print("\n### Targets\n")
    print("| file | target | ratio | met |")
    print("|---|---|---:|---|")
    labels = {("big" if "bf16" in k else "many"): k for k in files}
    for key, measured, reference, limit, text in TARGETS:
        label = labels[key]
        if (label, measured) not in results or (label, reference) not in results:
            continue
        ratio = results[(label, measured)][0] / results[(label, reference)][0]
        print(f"| {label} | {text} | {ratio:.2f} | {'yes' if ratio <= limit else 'NO'} |")
    big = labels["big"]
    size = os.path.getsize(files[big][0])
    memory_checks = [
        ("ptfile load mmap", 150 * 2**20, "load(mmap) peak RSS <= 150 MiB"),
        ("ptfile load", 1.1 * size, "load(mmap=False) peak RSS <= 1.1x file size"),
        ("ptfile.torch load", 1.1 * size, "ptfile.torch.load peak RSS <= 1.1x file size"),
    ]
    for op, limit, text in memory_checks:
        if (big, op) in results:
            rss = results[(big, op)][1]
            print(f"| {big} | {text} | {rss / 2**20:.0f} MiB | {'yes' if rss <= limit else 'NO'} |")
    if ("many", "import ptfile") in results or (labels["many"], "import ptfile") in results:
        seconds = results[(labels["many"], "import ptfile")][0]
        print(f"| - | import ptfile <= 150 ms | {seconds * 1000:.0f} ms | {'yes' if seconds <= 0.15 else 'NO'} |")


if __name__ == "__main__":
    main()
