"""A differential oracle: the real consumers of a file, run on it, against ptfile's verdict.

ptfile's promise is that a file it calls clean (or loads) runs no code in any real consumer.
The consumers (section 6 of the security notes) are run here for real, each on the sample's
file in a child process, and the corpus marker says whether the payload ran:

* ``torch.load`` with ``weights_only=False`` and with ``weights_only=True``, on the path
  (torch's legacy tar and stream readers need a real file at offset 0);
* ``torch.jit.load``;
* Python's ``zipfile`` and ``pickle.load`` of every member (a hand-written extraction script);
* ``pickle.load`` from byte 0;
* ``numpy.load(allow_pickle=True)``, reading every member of an ``.npz``;
* ``torch.distributed.checkpoint``'s loader (``dcp_to_torch_save``, which runs single-process)
  on a folder holding ``.metadata`` or rank 0's ``__0.metadata``.

A folder sample gives each file consumer every file in it.  One worker process imports torch
once and forks a child per consumer and sample: the child runs in its own process group,
with an address-space limit, no standard streams and a time limit, and is killed with its
whole group when it overruns, so a payload can neither hang nor poison the next run.  The
worker is restarted when it dies or stops answering.

Run alone, ``python tests/oracle.py report OUT.json`` writes the corpus to a temporary
folder, runs every consumer on every sample and writes the summary of :func:`summarise`.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

#: The consumers, in the order they run on a sample.
TORCH_LOAD, TORCH_LOAD_WEIGHTS_ONLY, JIT_LOAD = "torch.load", "torch.load(weights_only)", "torch.jit.load"
ZIPFILE_PICKLE, PICKLE_LOAD, NUMPY_LOAD, DCP_LOAD = "zipfile+pickle", "pickle.load", "numpy.load", "dcp"
CONSUMERS = (TORCH_LOAD, TORCH_LOAD_WEIGHTS_ONLY, JIT_LOAD, ZIPFILE_PICKLE, PICKLE_LOAD, NUMPY_LOAD, DCP_LOAD)
#: What one consumer run ended with, beside whether the marker appeared.
RETURNED, RAISED, TIMED_OUT, NOT_APPLICABLE = "returned", "raised", "timeout", "n/a"

#: One consumer on one sample gets this long before its process group is killed.
RUN_SECONDS = 30
#: After a consumer returns, its payload's child processes (``subprocess.Popen``) get this long to end.
PAYLOAD_SECONDS = 5
#: Address space a consumer run may add to the worker's own (torch maps a lot at import).
MEMORY_BYTES = 2 << 30
#: How long the worker may take to import torch and answer that it is ready.
START_SECONDS = 120
#: How often a sample whose worker died or hung is retried in a fresh worker.
RETRIES = 1


# -- the consumers (run in a forked child of the worker) ------------------------------------------


def _files(path: Path) -> list[Path]:
    """The files a file consumer reads: the sample itself, or every file of a folder sample."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def _each_file(read: Callable[[Path], Any]) -> Callable[[Path], None]:
    """A consumer over every file of a sample; a failure on one file does not stop the next."""
    def consume(path: Path) -> None:
        failures = []
        for file in _files(path):
            try:
                read(file)
            except Exception as error:  # the consumer refusing a file is an ordinary outcome
                failures.append(error)
        if failures:
            raise failures[0]
    return consume


def _torch_load(weights_only: bool) -> Callable[[Path], Any]:
    def read(file: Path) -> Any:
        import torch

        return torch.load(str(file), map_location="cpu", weights_only=weights_only)
    return read


def _jit_load(file: Path) -> Any:
    import torch

    return torch.jit.load(str(file), map_location="cpu")


def _zipfile_pickle(file: Path) -> None:
    """What a hand-written script does: open the zip with Python's zipfile and unpickle every member."""
    import pickle
    import zipfile

    with zipfile.ZipFile(file) as archive:
        for info in archive.infolist():
            try:
                with archive.open(info) as member:
                    pickle.load(member)
            except Exception:  # a member that is not a pickle; the script goes on to the next
                continue


def _pickle_load(file: Path) -> Any:
    import pickle

    with open(file, "rb") as stream:
        return pickle.load(stream)


def _numpy_load(file: Path) -> None:
    import numpy as np

    loaded = np.load(file, allow_pickle=True)
    if isinstance(loaded, np.lib.npyio.NpzFile):  # members of an .npz load when read
        with loaded:
            for name in loaded.files:
                loaded[name]


def _dcp_load(path: Path) -> None:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as scratch:
        dcp_to_torch_save(path, Path(scratch) / "consolidated.pt")


def _is_dcp_folder(path: Path) -> bool:
    """Where ``dcp_to_torch_save`` finds metadata: ``.metadata``, else rank 0's of a save without coordination."""
    return path.is_dir() and ((path / ".metadata").is_file() or (path / "__0.metadata").is_file())


RUNNERS: dict[str, Callable[[Path], None]] = {
    TORCH_LOAD: _each_file(_torch_load(False)),
    TORCH_LOAD_WEIGHTS_ONLY: _each_file(_torch_load(True)),
    JIT_LOAD: _each_file(_jit_load),
    ZIPFILE_PICKLE: _each_file(_zipfile_pickle),
    PICKLE_LOAD: _each_file(_pickle_load),
    NUMPY_LOAD: _each_file(_numpy_load),
    DCP_LOAD: _dcp_load,
}


def _applies(consumer: str, path: Path) -> bool:
    return _is_dcp_folder(path) if consumer == DCP_LOAD else True


# -- the worker --------------------------------------------------------------------------------------


def _confine() -> None:
    """In the child: its own process group, bounded memory, no standard streams (pdb, pagers, pty)."""
    os.setpgid(0, 0)
    used = _address_space()
    resource.setrlimit(resource.RLIMIT_AS, (used + MEMORY_BYTES, used + MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)


def _address_space() -> int:
    """This process's virtual size in bytes (``VmSize``), the base the memory limit adds to."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _reap_children(seconds: float) -> None:
    """Wait for the payload's own children (``Popen`` returns before its command has run)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.01)


def _run_in_child(consumer: str, path: Path, seconds: float) -> str:
    """Fork, run one consumer in the child, and say how it ended; the child's group is always killed."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the worker's loop
        code = 1
        try:
            _confine()
            try:
                RUNNERS[consumer](path)
                code = 0
            except BaseException:
                code = 1
            _reap_children(PAYLOAD_SECONDS)
        finally:
            os._exit(code)
    deadline = time.monotonic() + seconds
    outcome = None
    while outcome is None:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status):
                outcome = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
            else:
                outcome = RETURNED if os.WEXITSTATUS(status) == 0 else RAISED
        elif time.monotonic() > deadline:
            _kill_group(pid)
            os.waitpid(pid, 0)
            outcome = TIMED_OUT
        else:
            time.sleep(0.005)
    _kill_group(pid)  # whatever the payload left running in the child's group
    return outcome


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group has already ended
        os.killpg(pgid, signal.SIGKILL)


def _marker_present(marker: Path) -> bool:
    return marker.exists() or marker.is_symlink()


def _remove_marker(marker: Path) -> None:
    if marker.is_dir() and not marker.is_symlink():  # venv.create and friends make a folder
        shutil.rmtree(marker, ignore_errors=True)
    else:
        marker.unlink(missing_ok=True)


def run_consumers(path: Path, marker: Path, seconds: float = RUN_SECONDS) -> dict[str, dict[str, Any]]:
    """Every consumer on one sample: ``{consumer: {"ran": marker appeared, "outcome": ...}}``."""
    results = {}
    for consumer in CONSUMERS:
        _remove_marker(marker)
        if not _applies(consumer, path):
            results[consumer] = {"ran": False, "outcome": NOT_APPLICABLE}
            continue
        outcome = _run_in_child(consumer, path, seconds)
        results[consumer] = {"ran": _marker_present(marker), "outcome": outcome}
        _remove_marker(marker)
    return results


def serve() -> None:
    """The worker: import the consumers' libraries once, then answer one JSON line per sample."""
    import numpy  # noqa: F401
    import torch
    import torch.distributed.checkpoint.format_utils  # noqa: F401

    torch.set_num_threads(1)
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but answers on the channel
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        answer = run_consumers(Path(request["path"]), Path(request["marker"]), request["seconds"])
        out.write(json.dumps(answer) + "\n")
        out.flush()


# -- the parent's side ---------------------------------------------------------------------------------


class WorkerFailed(RuntimeError):
    """The worker died or stopped answering."""


class Worker:
    """A worker process serving many samples; restarted when it dies or hangs."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.process: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_FORCE")}
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "serve"], cwd=self.scratch, env=env,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                   start_new_session=True)
        self.process = process
        if self._answer(START_SECONDS) != {"ready": True}:
            raise WorkerFailed("the worker did not start")
        return process

    def _answer(self, seconds: float) -> Any:
        assert self.process is not None and self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], seconds)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise WorkerFailed("no answer" if not ready else "the worker died")
        return json.loads(line)

    def run(self, path: Path, marker: Path, seconds: float = RUN_SECONDS) -> dict[str, dict[str, Any]]:
        """Every consumer on one sample, each allowed ``seconds``; :class:`WorkerFailed` if the worker is lost."""
        process = self.process if self.process is not None and self.process.poll() is None else self._start()
        assert process.stdin is not None
        process.stdin.write(json.dumps({"path": str(path), "marker": str(marker), "seconds": seconds}) + "\n")
        process.stdin.flush()
        return self._answer(len(CONSUMERS) * (seconds + PAYLOAD_SECONDS) + 10)

    def stop(self) -> None:
        if self.process is None:
            return
        _kill_group(self.process.pid)  # the worker leads its own session and group
        self.process.wait()
        self.process = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class SampleResult:
    """What the consumers did with one sample, and what ptfile said of it."""

    name: str
    label: str
    consumers: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdict: str | None = None
    refused: dict[str, str] = field(default_factory=dict)  # ptfile entry point -> error class, or "accepted"

    @property
    def live(self) -> list[str]:
        """The consumers under which the payload ran."""
        return [name for name, result in self.consumers.items() if result["ran"]]


def run_oracle(folder: Path, samples: Iterable[Any], marker: Path) -> list[SampleResult]:
    """Every consumer on every sample written in ``folder`` (as ``corpus.write_corpus`` writes them)."""
    results = []
    with tempfile.TemporaryDirectory() as scratch, Worker(Path(scratch)) as worker:
        for sample in samples:
            result = SampleResult(sample.name, sample.label)
            for attempt in range(RETRIES + 1):
                try:
                    result.consumers = worker.run(folder / sample.name, marker)
                    break
                except WorkerFailed:
                    if attempt == RETRIES:
                        result.consumers = {}
            results.append(result)
    return results


def judge_with_ptfile(path: Path, result: SampleResult) -> None:
    """ptfile's scan verdict, and whether ``load`` (plain and with records) and ``open`` refuse the file."""
    import ptfile

    result.verdict = ptfile.scan(path).verdict

    def opened(**options: Any) -> None:
        with ptfile.open(path, **options) as checkpoint:
            for key in checkpoint.keys():
                checkpoint[key]

    entries = {"load": lambda: ptfile.load(path), "load(records)": lambda: ptfile.load(path, records=True),
               "open": opened}
    for name, call in entries.items():
        try:
            call()
            result.refused[name] = "accepted"
        except ptfile.PtfileError as error:
            result.refused[name] = type(error).__name__


def summarise(results: list[SampleResult]) -> dict[str, Any]:
    """Counts: samples, live samples per consumer, ptfile verdicts overall and on live samples."""
    live = [r for r in results if r.live]
    return {
        "samples": len(results),
        "labels": dict(Counter(r.label for r in results)),
        "live_samples": len(live),
        "live_per_consumer": {c: sum(c in r.live for r in results) for c in CONSUMERS},
        "live_only_under": {c: sorted(r.name for r in live if r.live == [c]) for c in CONSUMERS
                            if any(r.live == [c] for r in live)},
        "verdicts": dict(Counter(r.verdict for r in results)),
        "verdicts_of_live": dict(Counter(r.verdict for r in live)),
        "timeouts": sorted(f"{r.name}: {c}" for r in results for c, v in r.consumers.items() if v["outcome"] == TIMED_OUT),
        "no_answer": sorted(r.name for r in results if not r.consumers),
        "samples_detail": {r.name: {"label": r.label, "live": r.live, "verdict": r.verdict, "ptfile": r.refused,
                                    "outcomes": {c: v["outcome"] for c, v in r.consumers.items()}} for r in results},
    }


def violations(results: list[SampleResult]) -> list[str]:
    """Samples some consumer ran a payload from that ptfile did not refuse everywhere."""
    out = []
    for result in results:
        if not result.live:
            continue
        if result.verdict not in ("dangerous", "invalid"):
            out.append(f"{result.name}: scan says {result.verdict}, payload ran under {', '.join(result.live)}")
        accepted = [entry for entry, outcome in result.refused.items() if outcome == "accepted"]
        if accepted:
            out.append(f"{result.name}: {', '.join(accepted)} accepted it, payload ran under {', '.join(result.live)}")
    return out


def oracle_corpus(folder: Path) -> tuple[list[SampleResult], Path]:
    """Write the corpus into ``folder``, run the consumers and ptfile on every sample."""
    from corpus import MARKER_NAME, write_corpus

    samples = write_corpus(folder)
    marker = folder.resolve() / MARKER_NAME
    results = run_oracle(folder, samples, marker)
    for result in results:
        judge_with_ptfile(folder / result.name, result)
    return results, marker


def _report(out: Path) -> int:
    sys.path[:0] = [str(ROOT / "src"), str(TESTS)]
    with tempfile.TemporaryDirectory() as folder:
        results, _ = oracle_corpus(Path(folder))
    summary = summarise(results)
    summary["violations"] = violations(results)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    brief = {k: v for k, v in summary.items() if k != "samples_detail"}
    print(json.dumps(brief, indent=1))
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    elif len(sys.argv) == 3 and sys.argv[1] == "report":
        sys.exit(_report(Path(sys.argv[2])))
    else:
        sys.exit("usage: python tests/oracle.py report OUT.json")
