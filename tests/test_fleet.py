"""Many files at once: a local process pool and a Dask cluster on loopback give the serial verdicts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ptfile.scanning.scanner import scan
from ptfile.tools.fleet import convert_many, scan_many

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("corpus")
    paths = []
    for index, source in enumerate(sorted(FIXTURES.rglob("*.pt"))):
        target = folder / f"{index:03d}-{source.name}"
        shutil.copy(source, target)
        paths.append(str(target))
    evil = folder / "evil.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    paths.append(str(evil))
    return paths


def _verdicts(results) -> list[tuple[str, str]]:
    return [(r.path, r.verdict) for r in results]


def test_process_pool_matches_serial(corpus):
    serial = [scan(p) for p in corpus]
    assert _verdicts(scan_many(corpus, jobs=2)) == _verdicts(serial)
    assert {r.verdict for r in serial} >= {"clean", "dangerous"}


def test_dask_local_cluster_matches_serial(corpus):
    distributed = pytest.importorskip("distributed")
    serial = [scan(p) for p in corpus]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        remote = scan_many(corpus, client=client)
    assert _verdicts(remote) == _verdicts(serial)
    assert [r.to_dict() for r in remote] == [r.to_dict() for r in serial]


def test_convert_many(tmp_path):
    pairs = [(str(FIXTURES / name), str(tmp_path / f"{Path(name).stem}.safetensors"))
             for name in ("state_dict.pt", "optimizer.pt", "parameters.pt")]
    written = convert_many(pairs, jobs=2)
    assert [w[0] for w in written] == [d for _, d in pairs]
