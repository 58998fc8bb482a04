"""Remote checkpoints through fsspec: range reads, bytes moved, retries, clear failures.

A local HTTP server with Range support runs on loopback only; fsspec's memory file
system stands in for object stores.  A multi-GB checkpoint is a sparse file on disk,
so the test costs no more than its directory and pickle.
"""

from __future__ import annotations

import http.server
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest

import ptfile

fsspec = pytest.importorskip("fsspec")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TRAINING = FIXTURES / "training.pt"
BIG_BYTES = 3 * 10**9


class _SparseFile:
    """A binary file whose writes of the shared zero chunk become holes."""

    def __init__(self, file, zeros: memoryview) -> None:
        self._file, self._zeros = file, zeros

    def write(self, data) -> int:
        view = memoryview(data)
        if view.obj is self._zeros.obj:
            self._file.seek(len(view), os.SEEK_CUR)
        else:
            self._file.write(view)
        return len(view)

    def tell(self) -> int:
        return self._file.tell()


def _write_big_checkpoint(path: Path) -> None:
    """A real torch-layout checkpoint with one 3 GB storage, written sparse."""
    from ptfile.containers.zipwriter import ZipRecordWriter
    from ptfile.formats.writer import dumps_tree

    data, storages = dumps_tree({"small": np.arange(4, dtype=np.float32), "big": np.zeros(8, np.uint8)})
    zeros = memoryview(bytes(16 << 20))

    def chunks():
        left = BIG_BYTES
        while left:
            step = min(left, len(zeros))
            yield zeros[:step]
            left -= step

    with open(path, "wb") as raw:
        out = _SparseFile(raw, zeros)
        writer = ZipRecordWriter(out, path.stem)
        writer.write_record("data.pkl", _with_numel(data, BIG_BYTES))
        writer.write_record("byteorder", b"little")
        writer.write_record(f"data/{storages[0].key}", storages[0].chunks(), storages[0].nbytes)
        writer.write_record(f"data/{storages[1].key}", chunks(), BIG_BYTES)
        writer.write_record("version", b"3\n")
        writer.finish()
        raw.truncate()


def _with_numel(pickle_bytes: bytes, numel: int) -> bytes:
    """The pickle with the 8-element uint8 storage (numel and size) grown to ``numel`` elements."""
    long1 = b"\x8a\x05" + numel.to_bytes(5, "little", signed=True)  # LONG1: 3e9 needs more than BININT
    grown = pickle_bytes.replace(b"K\x08t", long1 + b"t").replace(b"K\x08\x85", long1 + b"\x85")
    assert grown.count(long1) == 2
    return grown


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one folder with HEAD and single-range GET, counting the bytes sent."""

    root: Path
    sent = 0
    fail_next = 0

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _target(self) -> Path | None:
        path = self.root / self.path.lstrip("/")
        return path if path.is_file() else None

    def do_HEAD(self) -> None:  # noqa: N802
        target = self._target()
        if target is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(target.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        target = self._target()
        if target is None:
            self.send_error(404)
            return
        size = target.stat().st_size
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        start, end = (int(match[1]), int(match[2] or size - 1)) if match else (0, size - 1)
        end = min(end, size - 1)
        if type(self).fail_next:
            type(self).fail_next -= 1
            self.send_error(503)
            return
        with open(target, "rb") as handle:
            handle.seek(start)
            body = handle.read(end - start + 1)
        self.send_response(206 if match else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)
        type(self).sent += len(body)


@pytest.fixture()
def server(tmp_path):
    pytest.importorskip("aiohttp")
    handler = type("Handler", (_RangeHandler,), {"root": tmp_path, "sent": 0, "fail_next": 0})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def test_memory_filesystem_open_load_scan():
    fs = fsspec.filesystem("memory")
    fs.pipe("/ckpt/training.pt", TRAINING.read_bytes())
    url = "memory://ckpt/training.pt"
    local = ptfile.load(TRAINING)
    with ptfile.open(url) as remote, ptfile.open(TRAINING) as ckpt:
        assert remote.keys() == ckpt.keys()
        for key in ckpt.keys():
            assert remote[key].tobytes() == ckpt[key].tobytes()
    assert ptfile.load(url)["epoch"] == local["epoch"]
    assert ptfile.scan(url).verdict == "clean"


def test_missing_remote_file():
    with pytest.raises(ptfile.CheckpointNotFoundError):
        ptfile.open("memory://nowhere/x.pt")


def test_inspecting_a_multi_gb_remote_checkpoint_moves_kilobytes(tmp_path, server):
    url, handler = server
    path = tmp_path / "big.pt"
    _write_big_checkpoint(path)
    assert path.stat().st_size > BIG_BYTES
    with ptfile.open(f"{url}/big.pt") as ckpt:
        assert ckpt.info("big").shape == (BIG_BYTES,)
        pickle_size = ckpt.container.pickle_entry.size
        moved_to_open = ckpt.source.bytes_read
        assert ckpt["small"].tolist() == [0.0, 1.0, 2.0, 3.0]
        moved_for_tensor = ckpt.source.bytes_read - moved_to_open
    print(f"opening moved {moved_to_open} bytes (pickle {pickle_size}); one tensor {moved_for_tensor}")
    assert moved_to_open < 16_000 + pickle_size  # end records, directory and a few local headers
    assert moved_for_tensor < 1_000  # a local header and 16 bytes
    assert handler.sent < 32_000


def test_remote_retries_then_succeeds(tmp_path, server):
    url, handler = server
    (tmp_path / "t.pt").write_bytes(TRAINING.read_bytes())
    handler.fail_next = 1
    with ptfile.open(f"{url}/t.pt") as ckpt:
        assert ckpt.keys()


def test_remote_failure_is_a_clear_error(tmp_path, server, monkeypatch):
    url, handler = server
    (tmp_path / "t.pt").write_bytes(TRAINING.read_bytes())
    monkeypatch.setattr("ptfile.io.remote.RETRY_DELAY", 0.0)
    with ptfile.open(f"{url}/t.pt") as ckpt:
        handler.fail_next = 100
        with pytest.raises(ptfile.PtfileError, match="failed after 3 attempts"):
            ckpt["model.0.weight"]


def test_short_read_is_never_returned_as_whole(monkeypatch):
    from ptfile.errors import RemoteReadError
    from ptfile.io.remote import RemoteSource

    fs = fsspec.filesystem("memory")
    fs.pipe("/short/t.pt", TRAINING.read_bytes())
    source = RemoteSource(fs, "/short/t.pt", "memory://short/t.pt")
    monkeypatch.setattr("ptfile.io.remote.RETRY_DELAY", 0.0)
    monkeypatch.setattr(fs, "cat_file", lambda path, start, end: b"\0" * max(0, end - start - 1))
    with pytest.raises(RemoteReadError, match="got"):
        source.read(0, 100)
