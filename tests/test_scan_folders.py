"""Folder scans: every file judged is listed, every path passed over is recorded with its reason.

``ptfile scan`` prints the judged files always, the passed-over paths with ``--verbose`` (a
count otherwise) and both in ``--json``; :func:`ptfile.scanning.scanner.walk_for_scan` is where the
rules live.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ptfile.cli.main import main as cli
from ptfile.scanning.scanner import walk_for_scan

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CHECKPOINT = (FIXTURES / "training.pt").read_bytes()


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """A folder holding one of each kind of thing a walk meets."""
    root = tmp_path / "models"
    (root / "sub").mkdir(parents=True)
    (root / "model.pt").write_bytes(CHECKPOINT)
    (root / "weights.txt").write_bytes(CHECKPOINT)  # judged by content, not by name
    (root / "model.bin").write_bytes(b"{\"not\": \"a checkpoint\"}")  # passed over by content, whatever its name
    (root / "empty.pt").write_bytes(b"")
    (root / "sub" / "inner.pt").write_bytes(CHECKPOINT)
    (root / ".hidden.pt").write_bytes(CHECKPOINT)  # hidden files are judged like any other
    (root / "dcp").mkdir()
    (root / "dcp" / ".metadata").write_bytes(b"not a pickle")
    (root / "dcp" / "__0_0.distcp").write_bytes(b"junk")
    os.symlink(root / "sub", root / "link")
    os.symlink(root / "nowhere", root / "broken.pt")
    return root


def _reasons(walk) -> dict[str, str]:
    return {Path(item.path).name: item.reason for item in walk.passed_over}


def test_a_flat_walk_judges_checkpoints_and_says_why_it_passed_over_the_rest(folder: Path) -> None:
    walk = walk_for_scan([str(folder)])
    assert sorted(Path(path).name for path in walk.files) == [".hidden.pt", "model.pt", "weights.txt"]
    reasons = _reasons(walk)
    assert set(reasons) == {"sub", "dcp", "link", "broken.pt", "empty.pt", "model.bin"}
    assert "recursion" in reasons["sub"] and "recursion" in reasons["dcp"]
    assert "not followed" in reasons["link"]
    assert reasons["broken.pt"] == "a broken link"
    assert reasons["empty.pt"] == "an empty file"
    assert "does not start like a checkpoint" in reasons["model.bin"]


def test_a_recursive_walk_enters_folders_but_never_links(folder: Path) -> None:
    walk = walk_for_scan([str(folder)], recursive=True, exclude=[r"hidden"], include=[r"\.pt$", r"dcp"])
    judged = sorted(os.path.relpath(path, folder) for path in walk.files)
    assert judged == ["dcp", "model.pt", "sub/inner.pt"]  # the link to sub is not a second way in
    reasons = _reasons(walk)
    assert reasons[".hidden.pt"] == "matches the exclude pattern 'hidden'"
    assert reasons["weights.txt"] == "matches no include pattern"
    assert reasons[".metadata"] == reasons["__0_0.distcp"] == f"part of the DCP checkpoint {folder / 'dcp'}, judged with it"
    assert "link" in reasons and "sub" not in reasons


def test_scan_lists_judged_files_and_with_verbose_what_it_passed_over(folder: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cli(["scan", str(folder)])
    out = capsys.readouterr().out
    assert f"{folder / 'model.pt'}: clean" in out and f"{folder / 'weights.txt'}: clean" in out
    assert "passed over 6 paths (--verbose lists them and why)" in out
    assert "empty.pt" not in out
    cli(["scan", str(folder), "--verbose"])
    out = capsys.readouterr().out
    assert "passed over 6 paths:" in out
    assert f"  {folder / 'empty.pt'}: an empty file" in out
    assert f"  {folder / 'link'}: a link to a folder: links to folders are not followed" in out


def test_scan_json_always_lists_what_it_passed_over(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli(["scan", "-r", str(folder), "--json"])
    report = json.loads(capsys.readouterr().out)
    judged = {Path(row["path"]).name: row["verdict"] for row in report["files"]}
    assert judged == {"model.pt": "clean", "weights.txt": "clean", ".hidden.pt": "clean", "inner.pt": "clean",
                      "dcp": "invalid"}
    assert code == 2  # the invalid DCP folder fails the run (EXIT_ERROR)
    passed = {Path(row["path"]).name: row["reason"] for row in report["passed_over"]}
    assert set(passed) == {"link", "broken.pt", "empty.pt", "model.bin", ".metadata", "__0_0.distcp"}


def test_a_folder_with_nothing_to_scan_says_what_it_passed_over(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "readme.md").write_text("# nothing here")
    assert cli(["scan", str(tmp_path), "-v"]) != 0
    captured = capsys.readouterr()
    assert f"{tmp_path / 'readme.md'}: does not start like a checkpoint" in captured.out
    assert "nothing to scan" in captured.err
