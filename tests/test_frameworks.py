"""Tensors for torch, JAX and MLX, and the safetensors API, checked against the real libraries.

``ptfile.torch.load`` must give what ``torch.load`` gives: for every golden fixture the
same tensors bit for bit, with the same dtypes, shapes, strides, storage offsets,
parameter flags and the same groups of tensors sharing a storage.
"""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import ptfile
from ptfile.errors import FrameworkMissingError, PtfileError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SRC = Path(__file__).resolve().parent.parent / "src"


def test_import_ptfile_imports_no_framework() -> None:
    code = ("import sys, ptfile; ptfile.open; "
            "print(sorted(m for m in ('torch', 'jax', 'mlx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC)})
    assert out.stdout.strip() == "[]"


def test_numpy_framework_reads_without_importing_torch(tmp_path) -> None:
    path = tmp_path / "a.pt"
    ptfile.save({"w": np.arange(4, dtype=np.float32)}, path)
    code = (f"import sys, ptfile; t = ptfile.load({str(path)!r}, framework='numpy'); "
            "h = ptfile.open(" + repr(str(path)) + "); h.get_tensor('w', framework='numpy'); "
            "print(type(t['w']).__name__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC)})
    assert out.stdout.split() == ["ndarray", "False"]


def test_unknown_framework_is_refused(tmp_path) -> None:
    path = tmp_path / "a.pt"
    ptfile.save({"w": np.arange(4, dtype=np.float32)}, path)
    with pytest.raises(PtfileError, match="unknown framework 'tf'"):
        ptfile.load(path, framework="tf")
    with ptfile.open(path) as handle, pytest.raises(PtfileError, match="unknown framework"):
        handle.get_tensor("w", framework="paddle")


def test_missing_framework_says_how_to_install(tmp_path) -> None:
    """A framework that cannot be imported is a FrameworkMissingError (an ImportError too)."""
    path = tmp_path / "a.pt"
    ptfile.save({"w": np.arange(4, dtype=np.float32)}, path)
    code = ("import sys, ptfile\nsys.modules['mlx'] = None\nsys.modules['mlx.core'] = None\n"
            f"try:\n    ptfile.load({str(path)!r}, framework='mlx')\n"
            "except ptfile.errors.FrameworkMissingError as exc:\n"
            "    print(isinstance(exc, ImportError), 'pip install' in str(exc) and 'ptfile[mlx]' in str(exc))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(SRC)})
    assert out.stdout.split() == ["True", "True"], out.stderr
    assert issubclass(FrameworkMissingError, PtfileError)
