"""The differential oracle: every corpus sample through the real consumers, against ptfile.

Whatever ``corpus.build_corpus`` returns is written to a folder and given to every consumer of
``tests/oracle.py`` (torch.load both ways, torch.jit.load, zipfile + pickle, pickle from byte 0,
numpy.load, DCP's loader).  No sample carries an expectation here: whenever the marker appears
under any consumer, ptfile must call the file ``dangerous`` or ``invalid`` and refuse it in
``load`` (plain and with records) and ``open``.  The counts are printed, and written as JSON to
the path in ``PTFILE_ORACLE_SUMMARY`` when that is set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("torch")

from builders import G, program, torch_zip  # noqa: E402
from corpus import BENIGN, MARKER_NAME, os_system  # noqa: E402
from oracle import (  # noqa: E402
    CONSUMERS,
    DCP_LOAD,
    JIT_LOAD,
    NUMPY_LOAD,
    PICKLE_LOAD,
    RAISED,
    RETURNED,
    TIMED_OUT,
    TORCH_LOAD,
    ZIPFILE_PICKLE,
    Worker,
    WorkerFailed,
    oracle_corpus,
    summarise,
    violations,
)

#: Consumers that some corpus sample must run a payload under, or the oracle has gone blind.
MUST_SEE_PAYLOADS = (TORCH_LOAD, ZIPFILE_PICKLE, PICKLE_LOAD, NUMPY_LOAD)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, dict, Path]:
    folder = tmp_path_factory.mktemp("oracle")
    results, marker = oracle_corpus(folder)
    summary = summarise(results)
    brief = {k: v for k, v in summary.items() if k != "samples_detail"}
    print("\noracle:", json.dumps(brief, indent=1))
    target = os.environ.get("PTFILE_ORACLE_SUMMARY")
    if target:
        Path(target).write_text(json.dumps({**summary, "violations": violations(results)}, indent=1) + "\n")
    return results, summary, marker


def test_every_payload_a_consumer_runs_is_refused_by_ptfile(oracle) -> None:
    results, _, marker = oracle
    found = violations(results)
    assert not found, "ptfile accepts files a real consumer runs code from:\n" + "\n".join(found)
    assert not marker.exists(), "a payload ran in the test process (ptfile ran code)"


def test_every_sample_was_answered_in_time(oracle) -> None:
    """Consumers may hang only on the resource attacks (a quadratic PAX parse, colliding dict keys):
    that is what those samples show about them.  Every other sample gets an answer from every consumer."""
    results, summary, _ = oracle
    assert summary["no_answer"] == [], "the worker died on these samples twice"
    malformed = {r.name for r in results if r.label == "malformed"}
    assert [t for t in summary["timeouts"] if t.split(": ", 1)[0] not in malformed] == []


def test_the_oracle_sees_payloads_and_reads_files(oracle) -> None:
    """Each consumer reads some sample to the end, the main ones run some payload, and benign files run none."""
    results, summary, _ = oracle
    assert summary["samples"] == len(results) > 0
    for consumer in MUST_SEE_PAYLOADS:
        assert summary["live_per_consumer"][consumer] > 0, f"no payload ran under {consumer}"
    for consumer in CONSUMERS:
        assert any(r.consumers[consumer]["outcome"] == RETURNED for r in results), f"{consumer} never read a sample"
    assert [r.name for r in results if r.label == BENIGN and r.live] == []


def test_benign_fixtures_read_by_their_own_consumer(oracle) -> None:
    """The consumers are the real ones: torch reads its fixtures, jit its TorchScript, DCP its folder."""
    results, _, _ = oracle
    outcomes = {r.name: r.consumers for r in results}
    assert outcomes["benign-state_dict.pt"][TORCH_LOAD]["outcome"] == RETURNED
    assert outcomes["benign-formats-scripted.pt"][JIT_LOAD]["outcome"] == RETURNED
    assert outcomes["benign-dcp-single"][DCP_LOAD]["outcome"] == RETURNED
    assert outcomes["benign-numpy-array.pkl"][NUMPY_LOAD]["outcome"] == RETURNED


def test_worker_survives_hangs_crashes_memory_and_its_own_death(tmp_path: Path) -> None:
    """A payload that sleeps is killed at the time limit, one that segfaults or asks for 16 GiB ends
    alone, and one that kills the worker only costs that sample."""
    marker = tmp_path / MARKER_NAME
    files = {
        "sleep.pkl": program(G("time", "sleep")(3600), 2),
        "segfault.pkl": program(G("ctypes", "string_at")(0), 2),
        "memory.pkl": program(G("builtins", "bytearray")(16 << 30), 2),
        "kill-worker.pkl": program(G("os", "kill")(G("os", "getppid")(), 9), 2),
        "live.pt": torch_zip(program(os_system(marker), 2)),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with Worker(tmp_path) as worker:
        assert worker.run(tmp_path / "sleep.pkl", marker, seconds=2)[PICKLE_LOAD]["outcome"] == TIMED_OUT
        assert worker.run(tmp_path / "segfault.pkl", marker)[PICKLE_LOAD]["outcome"] == "killed by SIGSEGV"
        assert worker.run(tmp_path / "memory.pkl", marker)[PICKLE_LOAD]["outcome"] == RAISED
        with pytest.raises(WorkerFailed):
            worker.run(tmp_path / "kill-worker.pkl", marker)
        answer = worker.run(tmp_path / "live.pt", marker)  # a fresh worker
    assert [c for c in CONSUMERS if answer[c]["ran"]] == [TORCH_LOAD, ZIPFILE_PICKLE]
    assert not marker.exists(), "the worker removes the marker after each consumer"
