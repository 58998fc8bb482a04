"""Fuzz harness, slow: mutated files through the real consumers against ptfile's verdict.

Each input is written to a file and given to the oracle's worker (``tests/oracle.py``:
torch.load both ways, torch.jit.load, zipfile + pickle, pickle, numpy.load, each in a
confined child).  Whenever a payload runs (the seeds aim theirs at this harness's marker),
ptfile must call the file dangerous or invalid and refuse it in load and open.  About
a few inputs a second; run it on its own:  ``python fuzz/run.py --seconds 600 differential``.
"""

from __future__ import annotations

import atexit
import sys
import tempfile
from pathlib import Path

from common import atheris, import_ptfile_instrumented, marker_for

#: Each consumer gets this long on one mutated file (the seeds' consumers take milliseconds).
CONSUMER_SECONDS = 10


def main() -> None:
    import_ptfile_instrumented()
    from oracle import SampleResult, Worker, WorkerFailed, judge_with_ptfile, violations

    marker = marker_for("differential")
    scratch = Path(tempfile.mkdtemp(prefix="ptfile-differential-"))
    worker = Worker(scratch)
    atexit.register(worker.stop)
    path = scratch / "input.pt"

    def one_input(data: bytes) -> None:
        path.write_bytes(data)
        try:
            consumers = worker.run(path, marker, CONSUMER_SECONDS)
        except WorkerFailed:  # the input killed the worker itself: nothing known to compare; a fresh one follows
            return
        result = SampleResult("input", "fuzzed", consumers)
        judge_with_ptfile(path, result)
        found = violations([result])
        assert not found, "; ".join(found)
        assert not marker.exists(), "a payload ran in ptfile's process"

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
