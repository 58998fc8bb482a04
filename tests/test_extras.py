"""Each optional extra, installed alone from this checkout into a fresh virtual environment.

``pip install 'ptfile[remote]'`` must bring everything ``ptfile inspect http://...`` needs,
``ptfile[archives]`` what ``ptfile scan x.7z`` needs, ``ptfile[fleet]`` what ``ptfile scan -j 2``
needs, and plain ``ptfile`` must still read local files and say which extra a URL needs.  The
test suite's own environment holds every extra at once, so it cannot see a missing one.

Slow and online (pip downloads the dependencies): skipped unless ``PTFILE_TEST_EXTRAS=1``;
``.ci/run`` runs it once.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.extras,
    pytest.mark.skipif(os.environ.get("PTFILE_TEST_EXTRAS") != "1", reason="set PTFILE_TEST_EXTRAS=1 (slow, online)"),
]

ROOT = Path(__file__).resolve().parent.parent
#: Top-level modules each extra must bring (dask, under fleet, brings fsspec of its own accord).
MODULES = {"remote": ["fsspec", "aiohttp", "requests"], "archives": ["py7zr"], "fleet": ["distributed"]}
WRITE_SMALL = "import sys, numpy as np, ptfile; ptfile.save({'w': np.arange(6, dtype=np.float32)}, sys.argv[1])"


class Venv:
    def __init__(self, folder: Path, extra: str | None) -> None:
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=300)
        self.bin = folder / "bin"
        spec = f"{ROOT}[{extra}]" if extra else str(ROOT)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.env = env
        subprocess.run([str(self.bin / "python"), "-m", "pip", "install", "--quiet", spec], check=True, env=env,
                       timeout=1800)

    def run(self, *args: str, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd,
                              env=self.env, timeout=600)

    def has(self, module: str, cwd: Path) -> bool:
        return self.run("python", "-c", f"import {module}", cwd=cwd).returncode == 0


def make_small(venv: Venv, path: Path) -> None:
    result = venv.run("python", "-c", WRITE_SMALL, str(path), cwd=path.parent)
    assert result.returncode == 0, result.stderr


def only_its_own(venv: Venv, extra: str | None, cwd: Path) -> None:
    """The extra's modules are there; with no extra, none of them is (the test is not fooled)."""
    for name, modules in MODULES.items():
        for module in modules:
            if name == extra:
                assert venv.has(module, cwd), f"ptfile[{extra}] did not install {module}"
            elif extra is None:
                assert not venv.has(module, cwd), f"{module} is installed with plain ptfile"


@pytest.fixture
def server(tmp_path) -> Iterator[str]:
    """An HTTP server (with range requests, as fsspec asks) over ``tmp_path / "served"``."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(RangeHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` plus single ``Range: bytes=a-b`` requests."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        wanted = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not wanted or not path.is_file():
            return super().do_GET()
        data = path.read_bytes()
        start, _, end = wanted.removeprefix("bytes=").partition("-")
        first, last = int(start or 0), min(int(end) if end else len(data) - 1, len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(data[first : last + 1])


def test_remote_extra_reads_http(tmp_path, server):
    venv = Venv(tmp_path / "venv", "remote")
    only_its_own(venv, "remote", tmp_path)
    make_small(venv, tmp_path / "served" / "small.pt")
    result = venv.run("ptfile", "inspect", f"{server}/small.pt", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [row["name"] for row in json.loads(result.stdout)["tensors"]] == ["w"]


def test_archives_extra_scans_7z(tmp_path):
    venv = Venv(tmp_path / "venv", "archives")
    only_its_own(venv, "archives", tmp_path)
    make_small(venv, tmp_path / "small.pt")
    pack = ("import py7zr, sys\nwith py7zr.SevenZipFile(sys.argv[1], 'w') as z:\n    z.write(sys.argv[2], 'small.pt')")
    assert venv.run("python", "-c", pack, "models.7z", "small.pt", cwd=tmp_path).returncode == 0
    result = venv.run("ptfile", "scan", "models.7z", "--json", cwd=tmp_path)
    (scanned,) = json.loads(result.stdout)["files"]
    # a 7z is never clean (ptfile.load does not read it), but with py7zr its members are examined
    assert scanned["format"] == "7z" and "models.7z!small.pt: clean (zip)" in scanned["notes"], scanned
    assert not any("needs py7zr" in fault for fault in scanned["faults"]), scanned


def test_fleet_extra_scans_with_processes(tmp_path):
    venv = Venv(tmp_path / "venv", "fleet")
    only_its_own(venv, "fleet", tmp_path)
    make_small(venv, tmp_path / "a.pt")
    make_small(venv, tmp_path / "b.pt")
    result = venv.run("ptfile", "scan", "-j", "2", "a.pt", "b.pt", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["summary"]["clean"] == 2


def test_no_extra_reads_files_and_names_the_extra_a_url_needs(tmp_path, server):
    venv = Venv(tmp_path / "venv", None)
    only_its_own(venv, None, tmp_path)
    make_small(venv, tmp_path / "served" / "small.pt")
    assert venv.run("ptfile", "inspect", str(tmp_path / "served" / "small.pt"), cwd=tmp_path).returncode == 0
    result = venv.run("ptfile", "inspect", f"{server}/small.pt", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pip install 'ptfile[remote]'" in result.stderr


def test_mlx_extra_converts_to_mlx(tmp_path):
    """``ptfile[mlx]`` brings an MLX that imports and computes (on Linux only with its CPU back end)."""
    venv = Venv(tmp_path / "venv", "mlx")
    make_small(venv, tmp_path / "small.pt")
    code = ("import sys, ptfile, mlx.core as mx\nw = ptfile.load(sys.argv[1], framework='mlx')['w']\n"
            "print(type(w).__name__, w.dtype, (w * 2).sum().item())")
    result = venv.run("python", "-c", code, "small.pt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["array", "mlx.core.float32", "30.0"]
