"""Run fuzz harnesses one after another, each for a fixed time, and summarise them.

    python fuzz/run.py [--seconds 15] [--corpus DIR] [--findings DIR] [HARNESS ...]

Without names every fast harness runs (load, open, scan, consistency, engine, save); the slow
``differential`` harness runs only when named.  Each harness starts from its seeds
(``seeds.py``) and, with ``--corpus``, from and into ``DIR/<harness>`` so that a long campaign
can go on where the last one stopped.  A crash, an uncaught exception or a broken invariant
leaves its input in ``--findings`` and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from seeds import MAX_SEED_BYTES, write_seeds  # noqa: E402

FAST = ("load", "open", "scan", "consistency", "engine", "save")
SLOW = ("differential",)
#: libFuzzer's limits per input: run time (s) and resident memory (MiB); over either is a finding.
INPUT_SECONDS, RSS_MIB = 20, 2048
#: The input sizes libFuzzer may grow to (the seeds are at most MAX_SEED_BYTES).
MAX_LEN = MAX_SEED_BYTES
STATS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)")


def run_harness(name: str, seconds: int, corpus: Path, seeds: Path, findings: Path, *,
                seed: int | None = None, runs: int | None = None) -> tuple[int, str]:
    """One harness for ``seconds`` (and at most ``runs`` inputs from random ``seed``, when given:
    a run that ends on ``runs`` explores the same inputs wherever it runs); its exit status and a summary."""
    command = [sys.executable, str(HERE / f"fuzz_{name}.py"), str(corpus), str(seeds),
               f"-max_total_time={seconds}", f"-timeout={INPUT_SECONDS}", f"-rss_limit_mb={RSS_MIB}",
               f"-max_len={MAX_LEN}", f"-artifact_prefix={findings}/{name}-", "-print_final_stats=1"]
    command += [f"-seed={seed}"] if seed is not None else []
    command += [f"-runs={runs}"] if runs is not None else []
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    output = done.stdout + done.stderr
    stats = STATS.findall(output)
    runs, cov, ft = stats[-1] if stats else ("?", "?", "?")
    line = f"{name}: exit {done.returncode}, {runs} runs in {time.monotonic() - started:.0f} s, cov {cov} ft {ft}"
    if done.returncode:
        line += "\n" + output[-4000:]
    return done.returncode, line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("harnesses", nargs="*", metavar="HARNESS", help=f"any of {', '.join(FAST + SLOW)}")
    parser.add_argument("--seconds", type=int, default=15, help="time per harness")
    parser.add_argument("--corpus", type=Path, help="keep each harness's corpus in DIR/<harness>")
    parser.add_argument("--findings", type=Path, default=Path("fuzz-findings"), help="where failing inputs go")
    parser.add_argument("--seed", type=int, help="libFuzzer's random seed (a smoke run that can be replayed)")
    parser.add_argument("--runs", type=int, help="inputs per harness at most")
    args = parser.parse_args()
    unknown = sorted(set(args.harnesses) - set(FAST + SLOW))
    if unknown:
        parser.error(f"no harness named {', '.join(unknown)}")
    args.findings.mkdir(parents=True, exist_ok=True)
    failed = 0
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.harnesses or FAST:
            corpus = (args.corpus or Path(scratch)) / name
            corpus.mkdir(parents=True, exist_ok=True)
            seeds = Path(scratch) / f"seeds-{name}"
            write_seeds(name, seeds)
            status, line = run_harness(name, args.seconds, corpus, seeds, args.findings.resolve(),
                                       seed=args.seed, runs=args.runs)
            print(line, flush=True)
            failed |= status != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
