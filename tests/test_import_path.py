"""What the common path imports, each case in a fresh interpreter.

``import ptfile`` and the first load of a small zip or legacy checkpoint import ptfile's
reader of that container and nothing that only other formats, commands or optional
extras need: no format reader of safetensors, numpy or shard files, no TorchScript code
parser, no ``argparse``, ``pathlib``, ``json``, ``tarfile``, ``zipfile``, ``ml_dtypes``,
``rich``, ``fsspec`` or ``torch``.  What each of those does is imported when a file needs
it, and the tests at the end show that it still is.  No timing is asserted here
(``benchmarks/command_speed.py import`` measures it).
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import ptfile
from builders import G, program, torch_zip
from ptfile.tensors import dtypes

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
ZIP_FILE = FIXTURES / "state_dict.pt"  # torch.save's zip, float tensors
LEGACY_FILE = FIXTURES / "legacy" / "state_dict.pt"  # _use_new_zipfile_serialization=False

#: Modules beyond ``import numpy`` that no common-path case may import.
NEVER = frozenset({
    "argparse", "pathlib", "json", "tarfile", "zipfile", "tempfile", "dataclasses_json", "ml_dtypes", "rich",
    "fsspec", "torch", "py7zr", "jax", "mlx", "gzip", "bz2", "lzma", "urllib.parse", "gettext",
    "ptfile.formats.stformat", "ptfile.formats.npformat", "ptfile.formats.sharded", "ptfile.formats.dcp",
    "ptfile.formats.torchscript", "ptfile.formats.scriptcode", "ptfile.formats.writer", "ptfile.io.atomic",
    "ptfile.scanning.scanner", "ptfile.tools", "ptfile.cli",
})

#: The standard-library modules the common path imports on purpose beyond numpy's own, each for a reason.
DELIBERATE = frozenset({
    "zlib",  # CRC-32 and inflate of zip records
    "mmap",  # files are mapped, not read
    "bisect", "_bisect",  # positioned reads find their chunk
    "gc",  # the engine pauses collection while it builds a tree
    "copy",  # framework conversion copies dict subclasses with their attributes
    "dataclasses",  # the records of the zip directory, views and judgements
    "__future__",  # postponed annotations
})


def modules_added(code: str, baseline: str = "import numpy") -> set[str]:
    """The modules ``code`` imports in a fresh interpreter beyond what ``baseline`` imported."""
    program = (f"import sys\n{baseline}\nbefore = set(sys.modules)\n{code}\n"
               "print(sorted(set(sys.modules) - before))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))


def forbidden(added: set[str]) -> list[str]:
    """The modules of ``added`` that :data:`NEVER` names, or that live under one it names."""
    return sorted(m for m in added if any(m == name or m.startswith(name + ".") for name in NEVER))


def undeliberate(added: set[str]) -> list[str]:
    """The modules of ``added`` outside ptfile that :data:`DELIBERATE` does not list."""
    return sorted(m for m in added if m != "ptfile" and not m.startswith("ptfile.") and m not in DELIBERATE)


@pytest.mark.parametrize("path", [ZIP_FILE, LEGACY_FILE], ids=["zip", "legacy"])
def test_first_load_imports_only_its_reader(path: Path) -> None:
    added = modules_added(f"import ptfile\ntree = ptfile.load({str(path)!r})\nassert tree")
    assert forbidden(added) == []
    assert undeliberate(added) == []
    assert {"ptfile.formats.loader", "ptfile.pickle.engine", "ptfile.formats.opener"} <= added  # it did read
    assert ("ptfile.formats.legacy" in added) == (path == LEGACY_FILE)


def test_import_alone_imports_no_format_reader() -> None:
    added = modules_added("import ptfile")
    assert forbidden(added) == []
    assert undeliberate(added) == []
    assert "ptfile.formats.opener" not in added and "ptfile.formats.legacy" not in added


def test_open_and_info_of_a_zip_file_stay_on_the_common_path() -> None:
    added = modules_added(f"import ptfile\nwith ptfile.open({str(ZIP_FILE)!r}) as h:\n"
                          "    assert h.info(next(iter(h.keys()))).shape is not None")
    assert forbidden(added) == []


def test_the_checks_see_what_they_must() -> None:
    """The helpers report a forbidden module and an unlisted one (so a pass above means something)."""
    added = modules_added("import json, ptfile.formats.stformat")
    assert {"json", "ptfile.formats.stformat"} <= set(forbidden(added))
    assert "json" in undeliberate(added)


# -- what is off the common path is still imported when a file needs it -------------------------


def test_ml_dtypes_names_are_its_own() -> None:
    """The table names ml_dtypes types without importing ml_dtypes: the names must be the ones it gives."""
    named = [info for info in dtypes.all_infos() if isinstance(info.numpy_type, str)]
    assert {info.torch_name for info in named} >= {"bfloat16", "complex32", "float8_e4m3fn"}
    for info in named:
        assert np.dtype(getattr(ml_dtypes, info.numpy_type)).name == info.numpy_type == info.numpy_name
        assert info.numpy == np.dtype(getattr(ml_dtypes, info.numpy_type))
        assert dtypes.by_numpy(info.numpy) is info


def test_a_bfloat16_file_imports_ml_dtypes_when_it_needs_it(tmp_path: Path) -> None:
    path = tmp_path / "bf16.pt"
    ptfile.save({"w": np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16)}, path)
    added = modules_added(f"import ptfile\nw = ptfile.load({str(path)!r})['w']\n"
                          "assert w.dtype.name == 'bfloat16' and w.astype('float32').tolist() == [0, 1, 2, 3, 4, 5]")
    assert "ml_dtypes" in added


def test_a_namespace_and_a_path_import_what_they_need(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    ptfile.save({"args": argparse.Namespace(lr=0.5, name="run"), "w": np.ones(2, np.float32)}, path)
    with_path = tmp_path / "path.pt"  # ptfile.save writes no paths: the pickle torch.save would write
    with_path.write_bytes(torch_zip(program({"where": G("pathlib", "PosixPath")("a", "b.txt")}, 2)))
    check = (f"import ptfile\ntree = ptfile.load({str(path)!r})\ntree.update(ptfile.load({str(with_path)!r}))\n"
             "import argparse, pathlib\n"
             "assert type(tree['args']) is argparse.Namespace and vars(tree['args']) == {'lr': 0.5, 'name': 'run'}\n"
             "assert type(tree['where']) is pathlib.PurePosixPath and str(tree['where']) == 'a/b.txt'")
    added = modules_added(check)
    assert {"argparse", "pathlib"} <= added


def test_a_namespace_is_converted_to_torch_in_a_fresh_process(tmp_path: Path) -> None:
    """The framework conversion walks into a Namespace it did not import argparse for."""
    pytest.importorskip("torch")
    path = tmp_path / "meta.pt"
    ptfile.save({"args": argparse.Namespace(scale=np.arange(3, dtype=np.float32))}, path)
    modules_added(f"import ptfile, torch\ntree = ptfile.load({str(path)!r}, framework='torch')\n"
                  "import argparse\nassert type(tree['args']) is argparse.Namespace\n"
                  "assert torch.equal(tree['args'].scale, torch.arange(3, dtype=torch.float32))")


#: What ``ptfile inspect`` of a zip checkpoint must not import: it reads and scans the file with the
#: common path plus the scanner (the command itself needs argparse and json).
NOT_FOR_INSPECT = frozenset({
    "ml_dtypes", "tarfile", "zipfile", "fsspec", "torch", "py7zr", "ptfile.formats.stformat",
    "ptfile.formats.npformat", "ptfile.formats.sharded", "ptfile.formats.dcp", "ptfile.formats.torchscript",
    "ptfile.formats.scriptcode", "ptfile.formats.writer", "ptfile.io.atomic", "ptfile.tools.convert",
    "ptfile.tools.compare", "ptfile.tools.statistics", "ptfile.tools.fleet",
})


@pytest.mark.parametrize("json_flag", [True, False], ids=["json", "piped-table"])
def test_inspect_of_a_zip_file_imports_no_other_reader(json_flag: bool) -> None:
    """``ptfile inspect`` imports the scanner and its own tool, not the readers of other formats; printed as
    JSON or piped (a plain table), it never imports rich."""
    argv = ["inspect", "--json", str(ZIP_FILE)] if json_flag else ["inspect", str(ZIP_FILE)]
    added = modules_added(f"from ptfile.cli.main import main\nassert main({argv!r}) == 0")
    assert {"ptfile.scanning.scanner", "ptfile.tools.inspection"} <= added
    assert sorted(added & NOT_FOR_INSPECT) == []
    assert [m for m in added if m == "rich" or m.startswith("rich.")] == []


def test_global_use_is_a_value_as_the_frozen_record_it_replaces() -> None:
    """GlobalUse is a plain class now (cheaper to import): equal by value, hashable, immutable, picklable."""
    import copy
    import pickle

    from ptfile.pickle.inventory import GlobalUse

    use = GlobalUse("os", "system", "call", 7, "archive/data.pkl", "('id',)")
    same = GlobalUse("os", "system", "call", 7, "archive/data.pkl", "('id',)")
    assert use == same and hash(use) == hash(same) and len({use, same}) == 1
    assert use != GlobalUse("os", "system", "call", 8, "archive/data.pkl", "('id',)")
    assert use != ("os", "system", "call", 7, "archive/data.pkl", "('id',)")
    assert pickle.loads(pickle.dumps(use)) == use and copy.deepcopy(use) == use
    with pytest.raises(AttributeError):
        use.offset = 0
    assert "os" in repr(use) and use.describe() == "os.system (called at byte 7 (archive/data.pkl))"
