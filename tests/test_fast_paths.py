"""Fast paths must give exactly what the general code gives.

Each optimised path (the serialization-id set, one-read loading, the paused collector,
the gathered and threaded zip writes, the pickler's tensor writer) is checked against a
literal reference or the general path on the same inputs.
"""

from __future__ import annotations

import gc
import io
import mmap
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ptfile
from ptfile.containers import zipwriter
from ptfile.io import source
from ptfile.io.open import open_source
from ptfile.pickle import engine, pickler


class _LiteralUnorderedSet(zipwriter._UnorderedSet):
    """The libstdc++ node list kept literally: O(n) per insert, obviously right."""

    def __init__(self) -> None:
        super().__init__()
        self._list: list[tuple[bytes, int]] = []

    def add(self, name: bytes) -> None:
        count = len(self._list)
        if count + 1 > self._next_resize:
            wanted = max(count + 1, 0 if self._next_resize else zipwriter._FIRST_BUCKETS)
            if wanted >= self._buckets:
                self._buckets = self._next_bucket_count(max(wanted + 1, self._buckets * 2))
                relinked: list[tuple[bytes, int]] = []
                for node in self._list:
                    relinked = self._put(relinked, node)
                self._list = relinked
            else:
                self._next_resize = self._buckets
        self._list = self._put(self._list, (name, zipwriter.std_string_hash(name)))

    def _put(self, nodes: list, node: tuple[bytes, int]) -> list:
        bucket = node[1] % self._buckets
        for index, other in enumerate(nodes):
            if other[1] % self._buckets == bucket:
                return [*nodes[:index], node, *nodes[index:]]
        return [node, *nodes]

    def hashes(self) -> list[int]:
        return [h for _, h in self._list]


def test_unordered_set_order_matches_the_literal_node_list():
    fast, literal = zipwriter._UnorderedSet(), _LiteralUnorderedSet()
    names = [f"data/{i}".encode() for i in range(700)] + [b"data.pkl", b"version", b".data/version"]
    for count, name in enumerate(names, 1):
        fast.add(name)
        literal.add(name)
        if count in (1, 2, 11, 12, 13, 24, 100, 400, len(names)):  # around and past rehashes
            assert fast.hashes() == literal.hashes(), count


# -- load(mmap=False): one read of the file, storages as disjoint views of it ------------------

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ZIP_AND_LEGACY = sorted(
    p for p in [*FIXTURES.glob("*.pt"), *(FIXTURES / "legacy").glob("*.pt"), *(FIXTURES / "formats").glob("*.pt")]
    if p.name != "scripted.pt"
)


def _arrays(tree: Any) -> list[tuple[str, np.ndarray]]:
    found: list[tuple[str, np.ndarray]] = []
    pending = [("", tree)]
    while pending:
        path, node = pending.pop()
        if isinstance(node, np.ndarray):
            found.append((path, node))
        elif isinstance(node, dict):
            pending.extend((f"{path}.{k}", v) for k, v in node.items())
        elif isinstance(node, (list, tuple)):
            pending.extend((f"{path}.{i}", v) for i, v in enumerate(node))
    return sorted(found, key=lambda item: item[0])


def _sharing(arrays: list[tuple[str, np.ndarray]]) -> set[tuple[str, str]]:
    return {(a, b) for i, (a, x) in enumerate(arrays) for b, y in arrays[i + 1 :] if np.shares_memory(x, y)}


@pytest.mark.parametrize("path", ZIP_AND_LEGACY, ids=lambda p: p.name)
def test_copy_load_matches_mapped_load(path: Path) -> None:
    """mmap=False gives the values, sharing and types of mmap=True, as writable arrays."""
    try:
        mapped = ptfile.load(path, records=True)
    except ptfile.PtfileError as exc:
        with pytest.raises(type(exc)):
            ptfile.load(path, mmap=False, records=True)
        return
    copied = ptfile.load(path, mmap=False, records=True)
    left, right = _arrays(mapped), _arrays(copied)
    assert [k for k, _ in left] == [k for k, _ in right]
    for (key, a), (_, b) in zip(left, right, strict=True):
        assert type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape and a.strides == b.strides, key
        assert a.tobytes() == b.tobytes(), key
        assert b.flags.writeable or b.size == 0, key
    assert _sharing(left) == _sharing(right)


def test_copy_load_storages_are_their_own_roots(tmp_path: Path) -> None:
    """Each storage array is a root for the writer: a copy load saves as the mapped load does."""
    src = FIXTURES / "shared.pt"
    ptfile.save(ptfile.load(src), tmp_path / "a.pt")
    mapped = (tmp_path / "a.pt").read_bytes()
    ptfile.save(ptfile.load(src, mmap=False), tmp_path / "a.pt")
    assert (tmp_path / "a.pt").read_bytes() == mapped


def test_buffer_source_never_hands_out_a_byte_twice() -> None:
    buffer = np.arange(100, dtype=np.uint8)
    src = source.BufferSource(buffer, "<test>")
    first = src.array(10, 20, "a", copy=True)
    again = src.array(10, 20, "b", copy=True)  # same range: a copy
    inside = src.array(15, 2, "c", copy=True)  # overlapping: a copy
    after = src.array(30, 10, "d", copy=True)  # adjacent, disjoint: a view
    assert np.shares_memory(first, buffer) and np.shares_memory(after, buffer)
    assert not np.shares_memory(again, buffer) and not np.shares_memory(inside, buffer)
    assert not isinstance(first.base, np.ndarray)  # the writer takes each storage as its own root
    view = src.array(50, 5, "e", copy=False)
    assert not view.flags.writeable
    with pytest.raises(ptfile.CorruptFileError):
        src.array(95, 10, "f", copy=True)


def test_read_whole_reads_a_file_object(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(bytes(range(256)) * 10)
    with open(path, "rb") as file:
        whole = source.read_whole(source.FileSource(file, "x", owned=False))
        assert not file.closed  # not ours to close
    assert whole.read(250, 10) == bytes(range(250, 256)) + bytes(range(4))


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Whole-file reads split into 64 KiB chunks (two threads at least), so small files take the parallel path."""
    monkeypatch.setattr(source, "READ_CHUNK_BYTES", 64 * 1024)
    monkeypatch.setattr(source, "PARALLEL_READ_BYTES", 4 * 64 * 1024)
    monkeypatch.setattr(source, "_reader_threads", lambda size: 2)
    return 64 * 1024


@pytest.mark.parametrize("costly", [False, True], ids=["huge-pages", "ordinary-pages-after-first-chunk"])
def test_a_chunked_whole_file_read_reads_every_byte(tmp_path: Path, small_chunks: int, costly: bool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks read by several threads, with or without the switch away from huge pages, give the file's bytes."""
    # Every chunk reads "too slowly" (all but the first are then read after the switch), or none does:
    # chunks this small are judged by timings too short to mean anything.
    monkeypatch.setattr(source, "HUGE_PAGE_MIN_RATE", float("inf") if costly else 0.0)
    size = source.HUGE_PAGE_BYTES * 2 + 12345  # a huge-page buffer, in 66 chunks of 64 KiB
    data = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "x.bin"
    path.write_bytes(data)
    whole = source.read_whole(open_source(path, mmap_file=False))
    assert whole.read(0, size) == data
    if hasattr(mmap, "MADV_NOHUGEPAGE") and Path("/proc/self/smaps").exists():
        buffer = whole.array(0, size, "all", copy=True)
        # A chunk judged slow advises the whole mapping against huge pages; none judged slow leaves it advised.
        assert ("nh" in _advice_of(buffer[-1:])) is costly


def test_a_file_that_shrinks_during_a_chunked_read_fails_in_the_caller(tmp_path: Path, small_chunks: int) -> None:
    """A reader thread's failure is raised in the calling thread, not lost in the thread."""
    path = tmp_path / "x.bin"
    path.write_bytes(bytes(10 * small_chunks))
    src = open_source(path, mmap_file=False)
    assert isinstance(src, source.FileSource)
    os.truncate(path, 3 * small_chunks + 1)  # after the size was taken
    with pytest.raises(ptfile.CorruptFileError, match="shrank"):
        source.read_whole(src)


def _advice_of(array: np.ndarray) -> set[str]:
    """The ``VmFlags`` of the mapping that holds ``array``'s first byte (Linux ``/proc/self/smaps``)."""
    address = array.__array_interface__["data"][0]
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                start, end = (int(part, 16) for part in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return set(line.split()[1:])
    raise AssertionError("no mapping holds the buffer")


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE") or not Path("/proc/self/smaps").exists(),
                    reason="huge page advice is Linux's")
def test_a_whole_file_read_lands_in_memory_advised_huge_pages(tmp_path: Path) -> None:
    """Reading a large file whole faults its buffer in 2 MiB pages, not 4 KiB ones, and reads every byte."""
    size = source.HUGE_PAGE_BYTES * 2 + 12345
    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "x.bin"
    path.write_bytes(data)
    whole = source.read_whole(open_source(path, mmap_file=False))
    buffer = whole.array(0, size, "all", copy=True)
    assert "hg" in _advice_of(buffer)  # MADV_HUGEPAGE was given for this very mapping
    assert buffer.flags.writeable and buffer.tobytes() == data
    small = source.whole_file_buffer(source.HUGE_PAGE_BYTES - 1)
    assert small.flags.writeable and len(small) == source.HUGE_PAGE_BYTES - 1


def test_tensors_over_a_huge_page_buffer_outlive_everything_else(tmp_path: Path) -> None:
    """The anonymous map stays alive while any tensor views it, with the loaded tree gone."""
    torch = pytest.importorskip("torch")
    import ptfile.torch as pt

    path = tmp_path / "big.pt"
    values = torch.arange(source.HUGE_PAGE_BYTES, dtype=torch.float32)
    torch.save({"a": values, "b": values[:7].clone()}, path)
    kept = pt.load(path)["a"]
    gc.collect()
    kept.add_(1)
    assert torch.equal(kept, values + 1)
    assert torch.equal(kept - 1, torch.load(path, weights_only=True)["a"])


# -- the cyclic GC is paused, then restored --------------------------------------------------


def test_gc_paused_restores_the_collector() -> None:
    assert gc.isenabled()
    with pytest.raises(RuntimeError), engine.gc_paused():
        assert not gc.isenabled()
        raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    try:
        with engine.gc_paused():
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()


def test_load_leaves_the_collector_on_after_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ptfile.PtfileError):
        ptfile.load(path, mmap=False)
    assert gc.isenabled()


# -- the zip writer: gathered writes and the helper-thread CRC give the same bytes -------------


def _archive(records: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    writer = zipwriter.ZipRecordWriter(out, "m")
    for name, data in records:
        writer.write_record(name, [memoryview(data)], len(data))
    writer.finish()
    return out.getvalue()


def test_parallel_crc_and_gathered_writes_give_the_same_archive(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    records = [(f"data/{i}", rng.integers(0, 256, size, dtype=np.uint8).tobytes())
               for i, size in enumerate([0, 1, 7, 4096, 70_000, 300_000, 5])]
    fast = _archive(records)
    monkeypatch.setattr(zipwriter, "CHUNK", 64 << 10)  # several chunks per record
    monkeypatch.setattr(zipwriter, "PARALLEL_CRC", 1)  # every chunk through the helper thread
    monkeypatch.setattr(zipwriter, "GATHER", 1)  # every write straight to the file
    slow = _archive(records)
    assert fast == slow
    with zipfile.ZipFile(io.BytesIO(fast)) as archive:
        assert archive.testzip() is None  # every CRC checks out
        assert [archive.read(f"m/{name}") for name, _ in records] == [data for _, data in records]


# -- the pickler's int-tuple writer writes what save() writes for the tuple ------------------


@given(st.lists(st.integers(min_value=0, max_value=2**40), max_size=6), st.integers(min_value=0, max_value=300))
def test_save_int_tuple_matches_save(items: list[int], memo_before: int) -> None:
    def pickle_with(method: str) -> bytes:
        p = pickler.Pickler()
        for _ in range(memo_before):  # push memo indices past BINPUT's one byte sometimes
            p.memoize(object())
        value = tuple(items)
        getattr(p, method)(value)
        getattr(p, method)(value)  # the second time: a memo GET (or EMPTY_TUPLE again)
        return bytes(p.out)

    assert pickle_with("save_int_tuple") == pickle_with("save")


# -- the dispatch loop reads opcodes without a bounds test: the errors stay apart ------------


def test_a_pickle_without_stop_is_named_as_such() -> None:
    with pytest.raises(ptfile.CorruptFileError, match=r"pickle ends at byte 3 without STOP"):
        ptfile.load(b"\x80\x02]")


def test_an_index_error_inside_an_opcode_is_a_malformed_pickle() -> None:
    with pytest.raises(ptfile.CorruptFileError, match=r"malformed pickle at byte 2: IndexError"):
        ptfile.load(b"\x80\x02q\x00.")  # BINPUT with nothing on the stack
