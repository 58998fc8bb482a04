"""The ``ptfile`` command on fixtures: output, JSON and exit codes.

Commands run in this process (the ``run_cli`` fixture), so coverage sees them; the installed
entry point, ``python -m ptfile`` and ``--debug`` tracebacks are run in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import ptfile

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
STATE_DICT = FIXTURES / "state_dict.pt"
TRAINING = FIXTURES / "training.pt"
SHARED = FIXTURES / "shared.pt"
SMALL = ROOT / "examples" / "small.pt"


def command() -> list[str]:
    """The installed console script when there is one, else the module."""
    script = Path(sysconfig.get_path("scripts")) / "ptfile"
    if script.exists():
        return [str(script)]
    found = shutil.which("ptfile")
    return [found] if found else [sys.executable, "-m", "ptfile"]


def run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([*command(), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)


@pytest.fixture
def run_json(run_cli):
    """``ptfile ARGS --json`` in this process: (exit code, the JSON document)."""

    def run_with_json(*args: object) -> tuple[int, dict]:
        code, out, _ = run_cli(*args, "--json")
        return code, json.loads(out)

    return run_with_json


# -- the installed entry point ---------------------------------------------------


def test_installed_command_prints_help_without_a_command():
    result = run()
    assert result.returncode == 2 and "inspect" in result.stdout and "scan" in result.stdout


def test_installed_command_and_module_give_the_same_json():
    by_script = run("inspect", STATE_DICT, "--json")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    by_module = subprocess.run([sys.executable, "-m", "ptfile", "inspect", str(STATE_DICT), "--json"],
                               capture_output=True, text=True, env=env, timeout=120)
    assert by_script.returncode == by_module.returncode == 0, by_script.stderr + by_module.stderr
    document = json.loads(by_script.stdout)
    assert document == json.loads(by_module.stdout)
    assert document["command"] == "inspect" and document["tensors"]


def test_installed_scan_exit_code_of_a_dangerous_file(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.bin"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    result = run("scan", evil)
    assert result.returncode == 1 and "dangerous" in result.stdout
    assert not marker.exists()


def test_debug_shows_traceback(tmp_path):
    result = run("--debug", "inspect", tmp_path / "nope.pt")
    assert result.returncode != 0 and "Traceback" in result.stderr


# -- errors --------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["inspect", "stats"])
def test_missing_file_is_one_line_error(run_cli, sub, tmp_path):
    code, out, err = run_cli(sub, tmp_path / "nope.pt")
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "no such file" in err and "Traceback" not in err


def test_not_a_checkpoint(run_cli, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello, this is text\n")
    code, out, err = run_cli("inspect", junk)
    assert code == 2
    assert "not a PyTorch checkpoint" in err and "Traceback" not in err


def test_hostile_file_refused_without_traceback(run_cli, tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    code, out, err = run_cli("inspect", evil)
    assert code == 2 and "os.system" in err and "Traceback" not in err
    assert not marker.exists()


def test_no_command_prints_help(run_cli):
    code, out, err = run_cli()
    assert code == 2 and "inspect" in out


# -- inspect -------------------------------------------------------------------


def test_inspect_human(run_cli, tmp_path):
    code, out, err = run_cli("inspect", STATE_DICT)
    assert code == 0, err
    with ptfile.open(STATE_DICT) as ckpt:
        for key in ckpt.keys():
            assert key in out
    assert "scan: clean" in out
    assert "tensors" in out and "parameters" in out


def test_inspect_json_matches_library(run_json):
    code, doc = run_json("inspect", STATE_DICT)
    assert code == 0
    assert doc["schema"] == 2 and doc["command"] == "inspect" and doc["format"] == "zip"
    with ptfile.open(STATE_DICT) as ckpt:
        assert [t["name"] for t in doc["tensors"]] == ckpt.keys()
        for row in doc["tensors"]:
            info = ckpt.info(row["name"])
            assert (tuple(row["shape"]), row["dtype"], row["nbytes"]) == (info.shape, info.dtype, info.nbytes)
    assert doc["totals"]["tensors"] == len(doc["tensors"])
    assert doc["totals"]["bytes"] == sum(t["nbytes"] for t in doc["tensors"])
    assert doc["scan"]["verdict"] == "clean"


def test_inspect_reports_sharing(run_json):
    code, doc = run_json("inspect", SHARED)
    assert code == 0
    rows = {t["name"]: t for t in doc["tensors"]}
    assert rows["decoder.weight"]["shared_with"] and "encoder.weight" in rows["decoder.weight"]["shared_with"]


def test_inspect_training_values_and_tree(run_cli, run_json):
    code, doc = run_json("inspect", TRAINING)
    assert code == 0
    names = {v["name"] for v in doc["values"]}
    assert "epoch" in names and any(n.startswith("args.") for n in names)
    code, out, err = run_cli("inspect", TRAINING, "--tree")
    assert code == 0 and "epoch" in out


def test_inspect_collapse(run_cli):
    code, out, err = run_cli("inspect", STATE_DICT, "--collapse")
    assert code == 0 and "blocks.{0..1}.conv.weight  x2" in out


def test_inspect_escapes_control_characters(run_cli, tmp_path):
    writer = pytest.importorskip("ptfile.formats.writer")
    del writer
    path = tmp_path / "ctl.pt"
    ptfile.save({"bad\x1b[31mname": np.zeros(2, np.float32)}, path)
    code, out, err = run_cli("inspect", path)
    assert code == 0
    assert "\x1b[31m" not in out and "\\x1b[31mname" in out


# -- scan ----------------------------------------------------------------------


def test_scan_exit_codes(run_cli, tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.bin"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 truncated")
    assert run_cli("scan", STATE_DICT)[0] == 0
    code, out, err = run_cli("scan", STATE_DICT, evil)
    assert code == 1 and "dangerous" in out and "os.system" in out
    assert run_cli("scan", broken)[0] == 2
    assert not marker.exists()


def test_scan_json_recursive_with_patterns(run_json, tmp_path):
    folder = tmp_path / "models"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(STATE_DICT, folder / "a.pt")
    shutil.copy(TRAINING, folder / "sub" / "b.pt")
    (folder / "sub" / "notes.txt").write_text("not a model")
    code, doc = run_json("scan", folder, "-r", "--exclude", r"\.txt$")
    assert code == 0
    assert sorted(Path(f["path"]).name for f in doc["files"]) == ["a.pt", "b.pt"]
    assert doc["summary"]["clean"] == 2
    code, doc = run_json("scan", folder, "-r", "--include", r"b\.pt$")
    assert [Path(f["path"]).name for f in doc["files"]] == ["b.pt"]


# -- diff / stats / match ------------------------------------------------------


def test_diff_equal_and_different(run_cli, run_json, tmp_path):
    assert run_cli("diff", STATE_DICT, STATE_DICT)[0] == 0
    code, doc = run_json("diff", STATE_DICT, TRAINING)
    assert code == 1 and not doc["equal"]
    assert doc["only_a"] and doc["only_b"]


def test_diff_strip_prefix_and_tolerance(run_cli, run_json, tmp_path):
    pytest.importorskip("ptfile.formats.writer")
    sd = {k: np.array(v) for k, v in ptfile.load(STATE_DICT).items() if isinstance(v, np.ndarray)}
    shifted = {"module." + k: (v + np.asarray(1e-3, v.dtype) if v.dtype.kind == "f" else v) for k, v in sd.items()}
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    ptfile.save(sd, a)
    ptfile.save(shifted, b)
    code, doc = run_json("diff", a, b, "--strip-prefix", "module.")
    assert code == 1 and not doc["only_a"] and not doc["only_b"]
    assert {t["status"] for t in doc["tensors"]} >= {"different"}
    assert run_cli("diff", a, b, "--strip-prefix", "module.", "--atol", "0.01")[0] == 0


def test_stats_json(run_json):
    code, doc = run_json("stats", STATE_DICT)
    assert code == 0
    with ptfile.open(STATE_DICT) as ckpt:
        arrays = {key: np.array(ckpt[key]) for key in ckpt.keys()}
    assert [row["name"] for row in doc["tensors"]] == list(arrays)
    for row in doc["tensors"]:
        values = arrays[row["name"]].astype(np.float64)
        assert row["count"] == values.size
        finite = values[np.isfinite(values)]
        if finite.size:
            assert row["min"] == finite.min() and row["max"] == finite.max()
            assert row["mean"] == pytest.approx(finite.mean(), rel=1e-12, abs=1e-12)
            assert row["std"] == pytest.approx(finite.std(), rel=1e-9, abs=1e-12)


def test_match_against_checkpoint_and_json(run_cli, run_json, tmp_path):
    assert run_cli("match", STATE_DICT, "--against", STATE_DICT)[0] == 0
    with ptfile.open(STATE_DICT) as ckpt:
        spec = {k: {"shape": list(ckpt.info(k).shape), "dtype": ckpt.info(k).dtype} for k in ckpt.keys()}
    first = next(iter(spec))
    spec["module_only"] = [1]
    spec[first]["shape"] = [*spec[first]["shape"], 7]
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps(spec))
    code, doc = run_json("match", STATE_DICT, "--against", ref)
    assert code == 1
    assert doc["missing"] == ["module_only"]
    assert [m["name"] for m in doc["shape_mismatch"]] == [first]


# -- convert / edit ------------------------------------------------------------


def test_convert_to_safetensors_read_by_safetensors(run_cli, tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    target = tmp_path / "sd.safetensors"
    code, _, err = run_cli("convert", STATE_DICT, target)
    assert code == 0, err
    loaded = safetensors_numpy.load_file(str(target))
    original = ptfile.load(STATE_DICT)
    with ptfile.open(STATE_DICT) as ckpt:
        assert sorted(loaded) == sorted(ckpt.keys())
        for key in ckpt.keys():
            np.testing.assert_array_equal(loaded[key], ckpt[key])
    del original


def test_convert_shared_records_aliases(run_cli, tmp_path):
    target = tmp_path / "shared.safetensors"
    code, _, err = run_cli("convert", SHARED, target)
    if code != 0:
        assert "share memory" in err  # partial overlaps cannot be stored: said, not lost
        return
    from ptfile.formats.stformat import read_safetensors

    tensors, metadata = read_safetensors(target)
    with ptfile.open(SHARED) as ckpt:
        for key in ckpt.keys():
            kept = metadata.get(key, key)
            assert kept in tensors, f"{key} was lost"
    assert metadata.get("format") == "pt"


def test_convert_unknown_extension(run_cli, tmp_path):
    code, out, err = run_cli("convert", STATE_DICT, tmp_path / "out.xyz")
    assert code == 2 and "extension" in err


def test_edit_rename_and_drop(run_cli, tmp_path):
    pytest.importorskip("ptfile.formats.writer")
    target = tmp_path / "edited.pt"
    code, _, err = run_cli("edit", STATE_DICT, target, "--rename", "blocks.=layers.", "--drop", r"running_")
    assert code == 0, err
    with ptfile.open(target) as edited, ptfile.open(STATE_DICT) as original:
        expected = [k.replace("blocks.", "layers.", 1) if k.startswith("blocks.") else k
                    for k in original.keys() if "running_" not in k]
        assert edited.keys() == expected
