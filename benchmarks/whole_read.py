"""The whole-file read of ``load(mmap=False)`` chunk by chunk, and ``ptfile.torch.load`` beside ``torch.load``.

Usage::

    python benchmarks/whole_read.py              # the files bench.py makes under benchmarks/data

Each load runs in a fresh Python process, the loaders in turn, so each one meets memory as
the one before it left it.  For ``ptfile.load(mmap=False)`` of the 2.2 GB file it prints the
wall and CPU seconds and each 32 MiB chunk's read rate in GB/s of its thread's CPU time, in
the order chunks were judged, up to the first one judged slow (after which chunks go into
ordinary pages and are not timed): what decides between huge and ordinary pages.  Then
``ptfile.torch.load`` and ``torch.load`` alternate on both files, and the conversion of the
20,000 tensors' numpy arrays to torch tensors is timed alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
BIG = os.path.join(DATA, "big-55x20000000.pt")
MANY = os.path.join(DATA, "many-20000x1024.pt")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(HERE, "..", "src"), os.environ.get("PYTHONPATH", "")])}

CHUNKS = """
    import time
    from ptfile.io import source
    rates = []
    judge = source._PageAdvice.after
    def after(self, began, length):
        if began is not None:
            rates.append(length / max(time.thread_time() - began, 1e-9) / 1e9)
        judge(self, began, length)
    source._PageAdvice.after = after
    import ptfile
    wall, cpu = time.perf_counter(), time.process_time()
    ptfile.load(PATH, mmap=False)
    print(f"ptfile.load(mmap=False): wall {time.perf_counter() - wall:.2f} s, CPU {time.process_time() - cpu:.2f} s;"
          f" chunks judged (GB/s): {' '.join(f'{r:.1f}' for r in rates)}")
"""

LOAD = """
    import time
    import {module}
    wall, cpu = time.perf_counter(), time.process_time()
    {module}.load(PATH)
    print(f"{module}.load: wall {{time.perf_counter() - wall:.2f}} s, CPU {{time.process_time() - cpu:.2f}} s")
"""

CONVERT = """
    import time
    import torch
    import ptfile
    from ptfile.tensors.frameworks import converter
    tree = ptfile.load(PATH, mmap=False)
    cpu = time.process_time()
    converter("torch").tree(tree)
    print(f"numpy to torch, 20,000 tensors: CPU {time.process_time() - cpu:.3f} s")
"""


def run(snippet: str, path: str) -> None:
    code = f"PATH = {path!r}\n" + textwrap.dedent(snippet)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    print("  " + result.stdout.strip(), flush=True)


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    if not (os.path.exists(BIG) and os.path.exists(MANY)):
        sys.exit("make the files first: python benchmarks/bench.py (it writes them under benchmarks/data)")
    print("2.2 GB file, ptfile.load(mmap=False):")
    for _ in range(repeats):
        run(CHUNKS, BIG)
    for label, path in (("2.2 GB file", BIG), ("20,000 tensors", MANY)):
        print(f"{label}, in turn:")
        for _ in range(repeats):
            run(LOAD.format(module="ptfile.torch"), path)
            run(LOAD.format(module="torch"), path)
    for _ in range(3):
        run(CONVERT, MANY)


if __name__ == "__main__":
    main()
