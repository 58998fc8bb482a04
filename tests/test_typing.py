"""The public API's types: the README's usage checked by ``mypy --strict``, and run.

``mypy`` over the package itself (pyproject.toml's ``[tool.mypy]``, strict on the public
modules) is a step of ``.ci/run``; here ``tests/typing/api_usage.py``, written as a user writes
it, must pass ``mypy --strict`` against this checkout's ``src``, and must also run: the types it
asserts are the types ptfile returns.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import ptfile

ROOT = Path(__file__).resolve().parent.parent
USAGE = ROOT / "tests" / "typing" / "api_usage.py"
#: mypy analyses torch's stubs on a cold cache; a warm one answers in seconds.
MYPY_TIMEOUT = 900


def strict_check(source_root: Path) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` of the usage file, resolving ``ptfile`` from ``source_root``."""
    pytest.importorskip("mypy")
    env = {**os.environ, "MYPYPATH": str(source_root)}  # searched before pyproject's mypy_path and site-packages
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", str(USAGE)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=MYPY_TIMEOUT)


def test_readme_usage_passes_mypy_strict() -> None:
    result = strict_check(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 1 source file" in result.stdout


def test_strict_check_fails_when_enter_loses_the_handle_type(tmp_path: Path) -> None:
    # the same check over a copy of the package whose Handle.__enter__ is typed Any must fail
    copy = tmp_path / "src" / "ptfile"
    shutil.copytree(ROOT / "src" / "ptfile", copy, ignore=shutil.ignore_patterns("__pycache__"))
    handle = copy / "formats" / "handle.py"
    text = handle.read_text(encoding="utf-8")
    assert text.count("def __enter__(self) -> Self:") == 1
    handle.write_text(text.replace("def __enter__(self) -> Self:", "def __enter__(self) -> Any:"), encoding="utf-8")
    result = strict_check(tmp_path / "src")
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Expression is of type "Any", not "Handle"' in result.stdout, result.stdout


def usage() -> ModuleType:
    pytest.importorskip("typing_extensions")
    spec = importlib.util.spec_from_file_location("api_usage", USAGE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_usage_runs_with_the_types_it_declares(tmp_path: Path) -> None:
    api = usage()
    path, shards = api.write(tmp_path)
    assert shards == sorted(os.listdir(tmp_path / "shards")) and all(isinstance(name, str) for name in shards)
    assert "pytorch_model.bin.index.json" in shards  # over 100 bytes: several shards and their index
    weight = np.arange(12, dtype=np.float32).reshape(3, 4)

    got = api.read(path)
    assert got["keys"] == ["encoder.weight", "embed.weight"] and got["count"] == 2 and got["found"] is True
    assert got["shapes"] == {"encoder.weight": (3, 4), "embed.weight": (8, 2)}
    assert got["dtypes"] == {"encoder.weight": "float32", "embed.weight": "float64"}
    assert got["weight"].tobytes() == weight.tobytes() and got["items"]["encoder.weight"].tobytes() == weight.tobytes()
    assert got["rows"].tolist() == [[1.0, 1.0], [1.0, 1.0]] and got["slice_shape"] == [8, 2]
    assert got["epoch"] == 3 and got["format"] == "zip" and got["metadata"] == {}
    assert got["state"]["epoch"] == 3 and got["copied"]["encoder.weight"].flags.writeable

    report = api.scan(path)
    assert report["verdict"] == "clean" and report["clean"] is True and report["findings"] == []
    assert report["json"]["verdict"] == "clean" and "torch._utils._rebuild_tensor_v2" in report["globals"]

    # GLOBAL os.system, called with "true": data to ptfile, which never runs it
    message, findings = api.refused(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.")
    assert "os.system" in message and findings == ["Finding"]
    assert api.refused(path.read_bytes()) is None

    shard_tensors = api.safe_open(tmp_path / "shards")
    assert shard_tensors["encoder.weight"].tobytes() == weight.tobytes()
    assert shard_tensors["embed.weight"].tolist() == np.ones((8, 2)).tolist()


def test_public_names_the_types_name() -> None:
    # ScanResult is imported on first use, so that `import ptfile` leaves the scanner unloaded
    code = ("import sys, ptfile; assert 'ptfile.scanning.scanner' not in sys.modules; "
            "from ptfile.scanning.scanner import ScanResult; assert ptfile.ScanResult is ScanResult; "
            "from ptfile import *; assert ScanResult is ptfile.ScanResult")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                   timeout=120)
    assert isinstance(ptfile.scan(b"\x80\x02}q\x00."), ptfile.ScanResult)
    assert ptfile.RemoteReadError is ptfile.errors.RemoteReadError and issubclass(ptfile.RemoteReadError, OSError)
    assert ptfile.Checkpoint is ptfile.Handle and ptfile.TensorInfo is ptfile.formats.loader.TensorInfo
    with pytest.raises(AttributeError, match="no attribute 'Scanresult'"):
        ptfile.Scanresult  # noqa: B018


def test_readme_torch_usage_matches_torch_load(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    api = usage()
    path, _ = api.write(tmp_path)
    back = api.torch_round_trip(path, tmp_path / "copy.pt")
    expected = torch.load(path, weights_only=True)
    assert back.keys() == expected.keys() and back["epoch"] == expected["epoch"] == 3
    for key in ("encoder.weight", "embed.weight"):
        assert back[key].dtype == expected[key].dtype and torch.equal(back[key], expected[key])
    assert isinstance(ptfile.load(tmp_path / "copy.pt")["encoder.weight"], np.ndarray)
