"""Byte sources: where a container's bytes come from.

A source answers two questions, ``size`` and "the bytes at ``[offset, offset+n)``",
and nothing above it knows whether it holds a memory map, an in-memory buffer or
an open file read with positioned reads.

* :class:`MappedSource` wraps a read-only ``mmap`` of a file or a bytes-like object;
  :meth:`view` is zero-copy.
* :class:`FileSource` reads with ``os.pread`` (or seek + readinto) and never maps:
  a lazy handle opened with ``mmap=False`` reads only what it is asked for.
* :class:`BufferSource` is a whole file read into one private buffer at once: what
  ``load(mmap=False)`` uses, so loading costs one read of the file (not one per storage)
  and one copy of its bytes, and storages are writable views of that buffer rather than
  copies of it.  A large buffer is memory advised to use huge pages, so the read is not
  slowed by a page fault per 4 KiB, and a large file is read in chunks by one thread per
  core (:meth:`FileSource.read_all_into`).
"""

from __future__ import annotations

import bisect
import contextlib
import io
import mmap
import os
import time
from typing import Any, Protocol

import numpy as np

from ..constants import limits_in_force, over_limit
from ..errors import CheckpointNotFoundError, CorruptFileError, LimitExceededError, PtfileError

__all__ = ["ByteSource", "MappedSource", "FileSource", "BufferSource", "read_whole"]


class ByteSource:
    """Bytes by offset and length, with every range checked against the real size."""

    size: int
    name: str
    #: Bytes served from memory (a map or a buffer): a view of them costs nothing until touched.
    mapped = False

    def check(self, offset: int, length: int, what: str) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise CorruptFileError(
                f"{what}: bytes [{offset}, {offset + length}) lie outside the {self.size}-byte file"
            )

    def read(self, offset: int, length: int, what: str = "read") -> bytes:
        raise NotImplementedError

    def view(self, offset: int, length: int, what: str = "read") -> Any:
        """A buffer over the bytes: zero-copy where the source allows it."""
        return self.read(offset, length, what)

    def read_ranges(self, ranges: list[tuple[int, int]], what: str = "read") -> list[bytes]:
        """The bytes of several ``(offset, length)`` ranges; a remote source asks for them in one batch."""
        return [self.read(offset, length, what) for offset, length in ranges]

    def array(self, offset: int, length: int, what: str, *, copy: bool) -> np.ndarray:
        """The bytes as a uint8 array: a read-only view, or an owned writable copy."""
        raise NotImplementedError

    def release(self, offset: int, length: int) -> None:
        """A hint that bytes streamed through once are not needed again (nothing is invalidated)."""

    def close(self) -> None:
        pass


class MappedSource(ByteSource):
    """A memory map of a file, or any bytes-like object held in memory."""

    #: Set on the read-only maps :func:`open_source` makes, whose pages :meth:`release` may drop.
    read_only_map = False
    mapped = True

    def __init__(self, buffer: Any, name: str, closer: Any = None) -> None:
        self._buffer = buffer
        self._view = memoryview(buffer).cast("B")
        self.size = len(self._view)
        self.name = name
        self._closer = closer

    def read(self, offset: int, length: int, what: str = "read") -> bytes:
        self.check(offset, length, what)
        if type(self._buffer) is bytes and length == self.size:  # immutable already: no second copy
            return self._buffer
        return bytes(self._view[offset : offset + length])

    def view(self, offset: int, length: int, what: str = "read") -> memoryview:
        self.check(offset, length, what)
        return self._view[offset : offset + length]

    def array(self, offset: int, length: int, what: str, *, copy: bool) -> np.ndarray:
        self.check(offset, length, what)
        arr = np.frombuffer(self._buffer, dtype=np.uint8, count=length, offset=offset) if length else np.empty(0, np.uint8)
        if copy:
            return arr.copy()
        if arr.flags.writeable:  # bytearray or writable buffers: never let a view write back
            arr.flags.writeable = False
        return arr

    def release(self, offset: int, length: int) -> None:
        """Drop the mapped pages of a range streamed through (a CRC check of a 2 GB file).

        The map is read-only and backed by the file, so the pages come back from the page cache
        if touched again; without this, every page verified stays in the process's resident set.
        """
        if not self.read_only_map or not hasattr(mmap, "MADV_DONTNEED"):
            return  # only a read-only map of a file gives pages back unchanged; a copy-on-write one would lose writes
        start = offset - offset % mmap.PAGESIZE
        end = min(offset + length, self.size)
        if end > start:
            with contextlib.suppress(OSError, ValueError):  # only a hint
                self._buffer.madvise(mmap.MADV_DONTNEED, start, end - start)


class SeekableFile(Protocol):
    """A binary file object ptfile reads by position: ``readinto`` and ``fileno`` are used when it has them."""

    def read(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...

    def close(self) -> None: ...


class FileSource(ByteSource):
    """An open binary file read with positioned reads; never mapped."""

    def __init__(self, file: SeekableFile, name: str, owned: bool) -> None:
        self._file = file
        self._owned = owned
        self.name = name
        fileno = getattr(file, "fileno", None)  # in-memory file objects have none, or one that raises
        try:
            self._fd: int | None = fileno() if fileno is not None else None
        except (OSError, AttributeError, io.UnsupportedOperation):
            self._fd = None
        file.seek(0, os.SEEK_END)
        self.size = file.tell()

    def _readinto(self, offset: int, buf: Any) -> None:
        view = memoryview(buf).cast("B")
        done = 0
        while done < len(view):
            if self._fd is not None and hasattr(os, "preadv"):
                n = os.preadv(self._fd, [view[done:]], offset + done)
            else:
                self._file.seek(offset + done)
                n = _read_into(self._file, view[done:])
            if not n:
                raise CorruptFileError(f"{self.name}: file shrank while it was read (at byte {offset + done})")
            done += n

    def read_all_into(self, buffer: np.ndarray) -> None:
        """The whole file into the fresh memory of :func:`whole_file_buffer`, at the speed that memory allows.

        Reading into fresh memory costs more in page faults (the kernel providing and zeroing
        each page) than in the copy itself.  A large file is read in chunks by one thread per
        core, so the faults of different cores overlap.  Memory advised to use huge pages is
        faulted in 2 MiB at a time, which is several times faster, except on virtual machines
        where part of the free memory costs more in huge pages than in 512 small ones (seen
        where the host takes back memory the guest reports free): once a chunk reads slower
        than :data:`HUGE_PAGE_MIN_RATE`, the chunks after it are read into ordinary pages.
        """
        if self._fd is None or not hasattr(os, "preadv") or self.size < PARALLEL_READ_BYTES:
            self._readinto(0, buffer)
            return
        import threading  # lazy: only a large file read whole starts reader threads

        chunks = iter(range(0, self.size, READ_CHUNK_BYTES))  # shared: next() hands each chunk out once
        pages = _PageAdvice(buffer)
        failures: list[BaseException] = []

        def work() -> None:
            try:
                for start in chunks:
                    if failures:  # another reader failed: the read is over
                        return
                    end = min(start + READ_CHUNK_BYTES, self.size)
                    began = pages.before()
                    self._readinto(start, buffer[start:end])
                    pages.after(began, end - start)
            except BaseException as error:  # re-raised in the caller's thread
                failures.append(error)

        threads = [threading.Thread(target=work, name="ptfile-read") for _ in range(_reader_threads(self.size) - 1)]
        for thread in threads:
            thread.start()
        work()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]

    def read(self, offset: int, length: int, what: str = "read") -> bytes:
        self.check(offset, length, what)
        buf = bytearray(length)
        self._readinto(offset, buf)
        return bytes(buf)

    def array(self, offset: int, length: int, what: str, *, copy: bool) -> np.ndarray:
        self.check(offset, length, what)
        arr = np.empty(length, dtype=np.uint8)
        if length:
            self._readinto(offset, arr)
        return arr

    def close(self) -> None:
        if self._owned:
            self._file.close()


def _read_into(file: SeekableFile, view: memoryview) -> int:
    """Bytes read into ``view`` from the file's position: by ``readinto``, or by ``read`` where it has none."""
    readinto = getattr(file, "readinto", None)
    if readinto is not None:
        return int(readinto(view) or 0)
    data = file.read(len(view))
    if not isinstance(data, (bytes, bytearray)):
        raise PtfileError("the file object must be opened in binary mode")
    data = data[:len(view)]  # a read never fills more than it was asked for
    view[:len(data)] = data
    return len(data)


class BufferSource(MappedSource):
    """A whole file in one private, writable buffer: storages are handed out as views of it.

    The buffer belongs to this source alone, so ``array(copy=True)`` can return a view
    instead of a second copy, as long as no byte is handed out twice: a range that
    overlaps one already given out is copied, so two storages never alias unless the
    caller makes one a slice of the other (as legacy views are).
    """

    def __init__(self, buffer: np.ndarray, name: str) -> None:
        super().__init__(buffer, name)
        self._given: list[tuple[int, int]] = []  # sorted (start, end) ranges handed out as views

    def array(self, offset: int, length: int, what: str, *, copy: bool) -> np.ndarray:
        self.check(offset, length, what)
        if not copy or not length or not self._claim(offset, offset + length):
            return super().array(offset, length, what, copy=copy)
        # Through the memoryview, so the array's base is no ndarray: each storage is its own
        # root to the writer (which saves an array's whole root), not the whole file.
        return np.frombuffer(self._view, dtype=np.uint8, count=length, offset=offset)

    def _claim(self, start: int, end: int) -> bool:
        """Record ``[start, end)`` as handed out; False when it overlaps a range already given."""
        given = self._given
        index = bisect.bisect_left(given, (start, end))
        if index and given[index - 1][1] > start:
            return False
        if index < len(given) and given[index][0] < end:
            return False
        given.insert(index, (start, end))
        return True


class SliceSource(ByteSource):
    """The bytes ``[offset, offset + length)`` of another source, as a source of their own.

    Ranges are checked against the slice, so a zip inside it can never reach the bytes
    of its neighbours.  The parent stays open and owned by whoever opened it.
    """

    def __init__(self, parent: ByteSource, offset: int, length: int, name: str) -> None:
        parent.check(offset, length, name)
        self.parent = parent
        self.start = offset
        self.size = length
        self.name = name
        self.mapped = parent.mapped

    def read(self, offset: int, length: int, what: str = "read") -> bytes:
        self.check(offset, length, what)
        return self.parent.read(self.start + offset, length, what)

    def read_ranges(self, ranges: list[tuple[int, int]], what: str = "read") -> list[bytes]:
        for offset, length in ranges:
            self.check(offset, length, what)
        return self.parent.read_ranges([(self.start + offset, length) for offset, length in ranges], what)

    def view(self, offset: int, length: int, what: str = "read") -> Any:
        self.check(offset, length, what)
        return self.parent.view(self.start + offset, length, what)

    def array(self, offset: int, length: int, what: str, *, copy: bool) -> np.ndarray:
        self.check(offset, length, what)
        return self.parent.array(self.start + offset, length, what, copy=copy)

    def release(self, offset: int, length: int) -> None:
        self.parent.release(self.start + offset, length)


class SourceFile(io.RawIOBase):
    """A read-only file object over a :class:`ByteSource`, for the standard library's archive readers."""

    def __init__(self, source: ByteSource) -> None:
        self.source = source
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.source.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        count = max(0, min(len(buffer), self.source.size - self.pos))
        buffer[:count] = self.source.read(self.pos, count, "archive")
        self.pos += count
        return count


def read_whole(source: ByteSource) -> ByteSource:
    """A positioned-read source as one buffer read at once; others as they are."""
    if type(source) is not FileSource:
        return source
    buffer = whole_file_buffer(source.size)
    if source.size:
        source.read_all_into(buffer)
    source.close()
    return BufferSource(buffer, source.name)


#: A file read whole is read in chunks of this many bytes, by one thread per core once it is at
#: least :data:`PARALLEL_READ_BYTES` long.
READ_CHUNK_BYTES = 32 * 1024 * 1024
PARALLEL_READ_BYTES = 4 * READ_CHUNK_BYTES
#: More reader threads than this gain nothing: the page faults they share take a lock.
MAX_READ_THREADS = 4
#: Bytes per second of a reader thread's CPU time below which a chunk read into huge pages
#: shows that huge pages cost more than ordinary ones here.  On a 2-core virtual machine
#: (``benchmarks/whole_read.py``), such chunks read at 0.5-0.9 GB/s where ordinary pages read at
#: 1.1-1.3 GB/s, and the other chunks at 1.2-3.7 GB/s.
HUGE_PAGE_MIN_RATE = 1e9


def _reader_threads(size: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_READ_THREADS, -(-size // READ_CHUNK_BYTES)))


class _PageAdvice:
    """Which pages the chunks of a whole-file read go into: huge ones, until they prove costly."""

    def __init__(self, buffer: np.ndarray) -> None:
        region = buffer.base.obj if isinstance(buffer.base, memoryview) else buffer.base
        self._region = region if isinstance(region, mmap.mmap) and hasattr(mmap, "MADV_NOHUGEPAGE") else None
        self._costly = False  # set once; a stale read by another thread costs one chunk at most

    def before(self) -> float | None:
        """The thread's CPU clock when the chunk it reads next is to be judged, else None."""
        return None if self._region is None or self._costly else time.thread_time()

    def after(self, began: float | None, length: int) -> None:
        """Judge a chunk read since ``began``: once one is slow, every page not yet faulted in is ordinary.

        The advice covers the whole buffer in one call: pages already faulted in keep their size.
        """
        if began is None or self._region is None or length >= HUGE_PAGE_MIN_RATE * (time.thread_time() - began):
            return
        self._costly = True
        with contextlib.suppress(OSError, ValueError):  # only advice
            self._region.madvise(mmap.MADV_NOHUGEPAGE)


#: Buffers of at least this many bytes (one huge page) are mapped anonymously and advised to use
#: huge pages where the system offers them.
HUGE_PAGE_BYTES = 2 * 1024 * 1024


def whole_file_buffer(size: int) -> np.ndarray:
    """Fresh writable memory for ``size`` bytes read at once, in huge pages where the system has them.

    A read into fresh memory faults every page in as the kernel copies into it: in 4 KiB pages
    that is half a million faults for a 2 GB file, which cost several times the copy itself.
    Memory advised to use huge pages takes one fault per 2 MiB (Linux's ``madvise`` mode of
    transparent huge pages); where the advice is refused the map works as ordinary memory.
    """
    if size < HUGE_PAGE_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.empty(size, dtype=np.uint8)
    # Private, not the default shared map: shared anonymous memory is shmem, which huge pages
    # follow under another setting.
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(OSError):  # only advice
        region.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(region, dtype=np.uint8)


def checked_size(path: str, limit: str, what: str) -> int:
    """The size of a small file that is read whole (an index, DCP metadata), refused above the
    :class:`~ptfile.constants.Limits` field named ``limit``."""
    try:
        size = os.path.getsize(path)
    except OSError:
        raise CheckpointNotFoundError(f"{path}: no such {what}") from None
    return refuse_over(path, size, limit, what)


def refuse_over(path: str, size: int, limit: str, what: str) -> int:
    """``size``, unless a small file read whole is over the :class:`~ptfile.constants.Limits` field ``limit``."""
    if size > getattr(limits_in_force(), limit):
        raise LimitExceededError(f"{path}: a {what} of {size} bytes, {over_limit(limit)}")
    return size


def private_map(path: str) -> ByteSource | None:
    """A copy-on-write map of a file, as ``torch.load(mmap=True)`` maps it (``MAP_PRIVATE``).

    Arrays over it are read-only as from any source; a consumer that needs writable tensors
    (``ptfile.torch``) may make the storage arrays writable: writes stay in this process's
    pages and never reach the file.  None when the file cannot be mapped (empty, not a file).
    """
    try:
        with open(path, "rb") as file:
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError):
        return None
    return MappedSource(mapped, path)
