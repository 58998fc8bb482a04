"""ptfile against golden checkpoints written by torch 2.13 (no torch needed here).

Each fixture in ``tests/fixtures`` comes with a description of what torch reads from
it (see ``make_fixtures.py``).  Every fixture is loaded every way ptfile offers (a
path, an open file, bytes; memory-mapped or copied; whole with ``load`` or lazily
with ``open``) and compared exactly.  A big-endian copy of each fixture, built here
by swapping its storages, must read back to the same values.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest

import ptfile
from goldencheck import (
    FIXTURES,
    big_endian,
    check_lazy,
    check_loaded,
    compare_tree,
    fixture_names,
    load_expected,
    read_zip,
    write_zip,
    zip_entries,
)

NAMES = fixture_names()
#: Every fixture make_fixtures.py writes; a missing one means the set was not regenerated.
REQUIRED = {
    "align4096", "buffer", "conj_neg", "dtypes", "edge_shapes", "no_crc", "optimizer", "packed",
    "parameters", "renamed", "shared", "small", "state_dict", "training", "views",
}


def _path(name: str) -> Any:
    return load_expected(name).path


def _file(name: str) -> Any:
    return open(load_expected(name).path, "rb")  # noqa: SIM115 - closed by the caller's with-block


def _bytes(name: str) -> Any:
    return load_expected(name).path.read_bytes()


SOURCES: dict[str, Callable[[str], Any]] = {"path": _path, "file": _file, "bytes": _bytes}


def _complex32_paths(expected) -> frozenset[str]:
    return frozenset(t["path"] for t in expected.tensors if t["torch_dtype"] == "complex32")


def test_fixture_set_is_complete() -> None:
    assert set(NAMES) >= REQUIRED
    total = sum(p.stat().st_size for p in FIXTURES.iterdir() if p.suffix != ".py")
    assert total < 400_000, f"fixtures take {total} bytes; keep them small"


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "copy"])
@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("name", NAMES)
def test_load(name: str, source: str, mmap: bool) -> None:
    expected = load_expected(name)
    src = SOURCES[source](name)
    tree = ptfile.load(src, mmap=mmap)
    if isinstance(src, io.IOBase):
        src.close()
    check_loaded(tree, expected, writable=not mmap)


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "copy"])
@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("name", NAMES)
def test_open(name: str, source: str, mmap: bool) -> None:
    expected = load_expected(name)
    src = SOURCES[source](name)
    with ptfile.open(src, mmap=mmap) as ckpt:
        check_lazy(ckpt, expected, writable=not mmap)
    if isinstance(src, io.IOBase):
        src.close()


@pytest.mark.parametrize("name", NAMES)
def test_open_agrees_with_load(name: str) -> None:
    expected = load_expected(name)
    arrays = compare_tree(ptfile.load(expected.path), expected.meta["tree"], expected)
    with ptfile.open(expected.path) as ckpt:
        for key in ckpt:
            lazy, whole = ckpt[key], arrays[key]
            assert (lazy.dtype, lazy.shape, lazy.strides) == (whole.dtype, whole.shape, whole.strides)
            assert lazy.tobytes() == whole.tobytes()
            assert type(lazy) is type(whole)


def test_open_keeps_parameter_attributes() -> None:
    expected = load_expected("parameters")
    assert any(t["attributes"] for t in expected.tensors)
    with ptfile.open(expected.path) as ckpt:
        check_lazy(ckpt, expected, writable=False, attributes=True)


def test_state_dict_metadata() -> None:
    """The nested ``_metadata`` of a state dict, spelled out (the generic check compares it too)."""
    state = ptfile.load(load_expected("state_dict").path)
    blocks = [f"blocks.{i}{sub}" for i in range(2) for sub in ("", ".conv", ".norm", ".gate", ".gate.0", ".gate.1")]
    assert list(state._metadata) == ["", "embed", "blocks", *blocks, "head"]
    versions = {name: entry["version"] for name, entry in state._metadata.items()}
    assert {name for name, version in versions.items() if version == 2} == {"blocks.0.norm", "blocks.1.norm"}
    assert state["blocks.1.norm.num_batches_tracked"].dtype.name == "int64"
    assert "scratch" not in state  # a non-persistent buffer


def test_renamed_prefix_reads_the_same() -> None:
    """One object saved under two file names: different archive prefixes, same contents."""
    a, b = load_expected("state_dict"), load_expected("renamed")
    assert read_zip(a.path.read_bytes())[0][0].startswith("state_dict/")
    assert read_zip(b.path.read_bytes())[0][0].startswith("renamed.weights/")
    assert a.tensors == b.tensors and a.blobs == b.blobs
    check_loaded(ptfile.load(b.path), a, writable=False)


def test_buffer_prefix_is_archive() -> None:
    assert all(name.startswith("archive/") for name, _ in read_zip(load_expected("buffer").path.read_bytes()))


def test_no_crc_fixture_has_no_crcs() -> None:
    """torch wrote CRC 0 for every record (config.save.compute_crc32 = False); ptfile must not care."""
    entries = zip_entries(load_expected("no_crc").path.read_bytes())
    assert entries and all(e.crc == 0 for e in entries if e.size)
    assert any(e.crc for e in zip_entries(load_expected("views").path.read_bytes()))


def test_align4096_fixture_is_aligned() -> None:
    data = load_expected("align4096").path.read_bytes()
    records = dict(read_zip(data))
    assert records["align4096/.storage_alignment"] == b"4096"
    assert all(e.start % 4096 == 0 for e in zip_entries(data))


def test_zip_rewriter_round_trips() -> None:
    """The test's own zip writer gives a file ptfile reads like the original."""
    expected = load_expected("views")
    data = write_zip(read_zip(expected.path.read_bytes()))
    check_loaded(ptfile.load(data), expected, writable=False)


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "copy"])
@pytest.mark.parametrize("name", NAMES)
def test_big_endian(name: str, mmap: bool) -> None:
    expected = load_expected(name)
    data = big_endian(expected.path.read_bytes(), expected)
    writable = not mmap
    check_loaded(ptfile.load(data, mmap=mmap), expected, writable=writable)
    with ptfile.open(data, mmap=mmap) as ckpt:
        check_lazy(ckpt, expected, writable=writable)


def test_big_endian_mmap_is_read_only() -> None:
    expected = load_expected("small")
    tree = ptfile.load(big_endian(expected.path.read_bytes(), expected), mmap=True)
    check_loaded(tree, expected, writable=False)


@pytest.mark.parametrize("name", ["dtypes", "views", "conj_neg"])
def test_big_endian_complex32(name: str) -> None:
    expected = load_expected(name)
    paths = _complex32_paths(expected)
    assert paths
    data = big_endian(expected.path.read_bytes(), expected)
    others = frozenset(t["path"] for t in expected.tensors) - paths
    check_loaded(ptfile.load(data), expected, writable=False, skip=others)
