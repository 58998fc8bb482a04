"""Time ``ptfile.load`` and ``ptfile.scan`` on each resource-exhaustion sample, each in a fresh process.

    python benchmarks/hostile_limits.py [--only SUBSTRING]

The samples are those of ``tests/corpus_limits.py`` (damaged archives, a gzip bomb, hash
collisions, a stream of tiny pickles, numpy dtypes with forged flags), plus the 50 MB stream
of tiny pickles the limit on back-to-back pickles was made for, and opcode floods that are the
engine's worst cases per byte.  ptfile's target: no input of 1 MB or less makes ``load`` or
``scan`` take over 2 s or 256 MiB.  For each sample and operation a child process reads the
file, runs the operation once and reports its wall time, its CPU time (the fairer figure on a
busy machine) and its peak resident set (``resource.getrusage``, which includes the
interpreter, numpy and the file's bytes: about 95 MiB for the smallest sample).
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import corpus_limits  # noqa: E402

#: Seconds and MiB an input of at most 1 MB may cost (the limits' target).
TARGET_SECONDS, TARGET_MIB, SMALL_INPUT = 2.0, 256, 1 << 20

CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
import ptfile
data = open(sys.argv[2], "rb").read()
start, cpu = time.perf_counter(), time.process_time()
try:
    outcome = ptfile.scan(data).verdict if sys.argv[1] == "scan" else (ptfile.load(data), "loaded")[1]
except ptfile.PtfileError as exc:
    outcome = type(exc).__name__
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"seconds": seconds, "cpu": cpu, "mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "outcome": outcome}))
"""


def opcode_floods(size: int = SMALL_INPUT) -> dict[str, bytes]:
    """A megabyte of the opcodes that cost the engine most per byte."""
    body = size - 6  # room for PROTO, MARK, POP_MARK, NONE and STOP
    return {
        "flood-none-pop.pkl": b"\x80\x02" + (pickle.NONE + pickle.POP) * (body // 2) + pickle.NONE + pickle.STOP,
        "flood-long1.pkl": b"\x80\x02" + pickle.MARK + (pickle.LONG1 + b"\x01\x07") * (body // 3)
        + pickle.POP_MARK + pickle.NONE + pickle.STOP,
        "flood-empty-set.pkl": b"\x80\x04" + pickle.MARK + pickle.EMPTY_SET * body + pickle.POP_MARK
        + pickle.NONE + pickle.STOP,
        "flood-empty-dict.pkl": b"\x80\x02" + pickle.MARK + pickle.EMPTY_DICT * body + pickle.POP_MARK
        + pickle.NONE + pickle.STOP,
    }


def build_samples() -> dict[str, bytes]:
    samples = {s.name: s.data for s in corpus_limits.samples(Path("unused")) if isinstance(s.data, bytes)}
    samples["L4-pickle-stream-50MB.pkl"] = corpus_limits.pickle_stream(25_000_000)
    samples.update(opcode_floods())
    return samples


def measure(operation: str, path: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, operation, str(path), str(ROOT / "src")],
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        return {"seconds": float("nan"), "cpu": float("nan"), "mib": float("nan"),
                "outcome": f"crashed: {done.stderr.strip()[-200:]}"}
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only samples whose name contains this")
    args = parser.parse_args(argv)
    over = 0
    print(f"{'sample':38} {'bytes':>10} {'op':5} {'seconds':>8} {'cpu s':>6} {'peak MiB':>9}  outcome")
    with tempfile.TemporaryDirectory() as folder:
        for name, data in build_samples().items():
            if args.only not in name:
                continue
            path = Path(folder) / name
            path.write_bytes(data)
            for operation in ("load", "scan"):
                result = measure(operation, path)
                flag = ""
                if len(data) <= SMALL_INPUT and not (result["seconds"] <= TARGET_SECONDS and result["mib"] <= TARGET_MIB):
                    flag, over = "  OVER TARGET", over + 1
                print(f"{name:38} {len(data):>10} {operation:5} {result['seconds']:8.2f} {result['cpu']:6.2f} "
                      f"{result['mib']:9.0f}  "
                      f"{result['outcome']}{flag}")
            path.unlink()
    print(f"target for inputs of at most {SMALL_INPUT} bytes: {TARGET_SECONDS} s and {TARGET_MIB} MiB; "
          f"{over} runs over it")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
