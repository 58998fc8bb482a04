"""The scanner on a corpus of every attack class of the security notes, and on benign checkpoints.

The corpus (``tests/corpus.py``) is written to a temporary folder from raw bytes: every
malicious sample must be ``dangerous`` (or ``invalid`` where the notes allow refusing it
as malformed), never ``clean``; no benign one may be ``dangerous``.  Each payload would
create a marker file; the tests check that CPython's own unpickler does create it (the
payloads are live) and that scanning never does.  The command is run in a subprocess
for its JSON document and exit codes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ptfile
from builders import build_zip, program, torch_zip
from corpus import (
    BENIGN,
    MALFORMED,
    MALICIOUS,
    MARKER_NAME,
    build_corpus,
    os_system,
    torchscript_save_sample,
)
from ptfile.scanning import scanner
from test_cli import run


@pytest.fixture()
def corpus(scan_corpus: tuple[Path, list]) -> tuple[Path, list]:
    return scan_corpus


def test_corpus_covers_every_attack_class(corpus) -> None:
    _, samples = corpus
    classes = {s.cls for s in samples}
    expected = {f"{group}{n}" for group, count in (("A", 10), ("B", 10), ("C", 10), ("D", 5), ("E", 5))
                for n in range(1, count + 1)}
    assert expected <= classes
    kinds = {s.label for s in samples}
    assert kinds == {MALICIOUS, MALFORMED, BENIGN}
    assert sum(s.label == BENIGN for s in samples) >= 30


def test_every_sample_gets_the_verdict_its_manifest_names(corpus) -> None:
    folder, samples = corpus
    wrong = {}
    for sample in samples:
        verdict = ptfile.scan(folder / sample.name).verdict
        if verdict not in sample.expect:
            wrong[sample.name] = (verdict, sample.expect)
    assert not wrong
    assert not (folder / MARKER_NAME).exists(), "a payload ran while scanning"


def test_malicious_is_never_clean_and_benign_never_dangerous(corpus) -> None:
    folder, samples = corpus
    for sample in samples:
        result = ptfile.scan(folder / sample.name)
        if sample.label == MALICIOUS:
            assert result.verdict in ("dangerous", "invalid"), sample.name
        if sample.label == BENIGN:
            assert result.verdict != "dangerous", (sample.name, [f.describe() for f in result.findings])


def test_manifest_matches_the_files(corpus) -> None:
    folder, samples = corpus
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["marker"] == MARKER_NAME
    assert [entry["name"] for entry in manifest["samples"]] == [s.name for s in samples]
    for entry in manifest["samples"]:
        assert (folder / entry["name"]).exists()
        assert set(entry) >= {"name", "cls", "label", "expect", "about", "kind"}


#: Bare pickles of the corpus that CPython's pickle.loads runs (the rest live in containers).
LIVE_PICKLES = ["A1-os.system-p0-raw.pkl", "A1-os.system-p4-raw.pkl", "B3-missing-memo-after-payload.pkl",
                "B3-memo-poison.pkl", "B4-truncated.pkl", "B5-stacked.pkl", "B7-stack-left-over.pkl",
                "B9-plain-pickle.bin", "B9-protocol0.pth", "B9-plain-pickle.ckpt", "B9-polyglot.pt"]


def test_payloads_are_live(tmp_path: Path) -> None:
    """CPython's unpickler runs the bare samples' payloads (stacked ones through a second load)."""
    samples = {s.name: s for s in build_corpus(tmp_path / "ran")}
    script = textwrap.dedent(
        """
        import io, pickle, sys
        for name in sys.argv[1:]:
            stream = io.BytesIO(open(name, "rb").read())
            for _ in range(2):
                try:
                    pickle.load(stream)
                except Exception:
                    pass
        """
    )
    for name in LIVE_PICKLES:
        marker = tmp_path / "ran"
        marker.unlink(missing_ok=True)
        path = tmp_path / name
        path.write_bytes(samples[name].data)
        subprocess.run([sys.executable, "-c", script, str(path)], cwd=tmp_path, timeout=60, capture_output=True)
        assert marker.exists(), f"{name}: the payload did not run under CPython's pickle"


def test_torchscript_code_calls_are_named_and_judged(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = ptfile.scan(torchscript_save_sample(marker))
    assert result.verdict == "dangerous"
    assert any("TorchScript source" in note and "torch.save" in note for note in result.notes)
    assert [f.path for f in result.findings] == ["torch.save"]
    assert result.findings[0].uses[0].record == "m/code/__torch__.py"
    with pytest.raises(ptfile.UnsafeGlobalError, match=r"torch\.save \[dangerous\]"):
        ptfile.load(torchscript_save_sample(marker))
    assert not marker.exists()


def test_real_torchscript_is_clean_with_a_code_note() -> None:
    result = ptfile.scan(Path(__file__).parent / "fixtures" / "formats" / "scripted.pt")
    assert result.verdict == "clean"
    assert any("TorchScript source" in note for note in result.notes)
    assert not any("calls" in note for note in result.notes)


# -- archives load does not read ----------------------------------------------------------------


def _evil_zip(tmp_path: Path) -> bytes:
    return torch_zip(program(os_system(tmp_path / "pwned"), 2))


def _tar_gz(members: dict[str, bytes]) -> bytes:
    import gzip

    from builders import tar_archive

    return gzip.compress(tar_archive(members), mtime=0)


def test_nesting_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = _evil_zip(tmp_path)
    for _ in range(2):  # gzip, tar, gzip, tar, then the checkpoint: four archive levels
        blob = _tar_gz({"inner": blob})
    assert ptfile.scan(blob).verdict == "dangerous"
    monkeypatch.setattr(scanner, "MAX_ARCHIVE_DEPTH", 2)
    result = ptfile.scan(blob)
    assert result.verdict == "invalid"
    assert any("nested more than 2 deep" in fault for fault in result.faults)


def test_members_over_the_size_limit_are_faults(tmp_path: Path) -> None:
    blob = _tar_gz({"model.pt": _evil_zip(tmp_path)})
    assert ptfile.scan(blob).verdict == "dangerous"  # within the default limit, the member is examined
    result = ptfile.scan(blob, limits=ptfile.Limits(max_member_bytes=64))
    assert result.verdict == "invalid"
    hint = "over max_member_bytes (64); pass limits=ptfile.Limits(max_member_bytes=...) to raise it"
    assert any(hint in fault and fault.endswith("not examined") for fault in result.faults), result.faults


def test_a_decompression_bomb_stops_at_the_archive_limit() -> None:
    import gzip

    result = ptfile.scan(gzip.compress(b"\0" * (8 << 20)), limits=ptfile.Limits(max_member_bytes=1 << 20))
    assert result.verdict == "invalid"
    assert any("inflates past 1048576 bytes, over max_member_bytes (1 MiB)" in fault for fault in result.faults)


def test_seven_zip_without_py7zr_is_never_clean(corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, samples = corpus
    names = [s.name for s in samples if s.name.endswith(".7z")]
    if not names:
        pytest.skip("py7zr is not installed, so the corpus has no 7z samples")
    monkeypatch.setitem(sys.modules, "py7zr", None)
    for name in names:
        result = ptfile.scan(folder / name)
        assert result.verdict == "invalid"
        assert any("needs py7zr" in fault for fault in result.faults)


def test_a_broken_archive_is_a_fault_not_a_crash() -> None:
    import gzip

    blob = gzip.compress(b"x" * 1000)[:-30]
    assert ptfile.scan(blob).verdict == "invalid"
    assert ptfile.scan(b"7z\xbc\xaf\x27\x1c" + b"\0" * 40).verdict == "invalid"
    assert ptfile.scan(b"PK\x03\x04" + b"\0" * 40).verdict == "invalid"


# -- shard folders -------------------------------------------------------------------------------


def _shards(tmp_path: Path) -> Path:
    import numpy as np

    folder = tmp_path / "shards"
    state = {f"w{i}": np.full((8, 8), i, dtype=np.float32) for i in range(3)}
    ptfile.save_sharded(state, folder, max_shard_size=300)
    return folder


def test_shard_folder_is_scanned_as_its_index_names_it(tmp_path: Path) -> None:
    folder = _shards(tmp_path)
    assert ptfile.scan(folder).verdict == "clean"
    index = next(folder.glob("*.index.json"))
    assert ptfile.scan(index).verdict == "clean"
    shard = sorted(folder.glob("*.bin"))[-1]
    shard.write_bytes(_evil_zip(tmp_path))
    result = ptfile.scan(folder)
    assert result.verdict == "dangerous" and [f.path for f in result.findings] == ["os.system"]
    assert not (tmp_path / "pwned").exists()


def test_shard_lacking_a_name_of_the_index_is_invalid(tmp_path: Path) -> None:
    folder = _shards(tmp_path)
    shard = sorted(folder.glob("*.bin"))[-1]
    shard.write_bytes(torch_zip(program({}, 2)))
    result = ptfile.scan(folder)
    assert result.verdict == "invalid" and any("lacks it" in fault for fault in result.faults)
    with pytest.raises(ptfile.PtfileError):
        ptfile.load(folder)


# -- the command ---------------------------------------------------------------------------------


def test_command_json_and_exit_codes(corpus) -> None:
    folder, samples = corpus
    result = run("scan", "-r", folder, "--json")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == 2 and document["command"] == "scan"
    assert set(document["summary"]) == {"clean", "unknown-class", "invalid", "unknown-call", "dangerous"}
    assert sum(document["summary"].values()) == len(document["files"])
    for entry in document["files"]:
        assert set(entry) == {"path", "verdict", "format", "findings", "faults", "notes", "globals"}
        for finding in entry["findings"]:
            called = any(use["use"] == "call" for use in finding["uses"])
            expected = {"global", "severity", "uses"} | ({"reason"} if finding["severity"] == "dangerous" else set())
            assert set(finding) == expected | ({"calls", "arguments"} if called else set())
            assert all(set(use) == {"use", "record", "offset"} for use in finding["uses"])
    by_name = {Path(e["path"]).name: e["verdict"] for e in document["files"]}
    assert by_name["A1-os.system-p0-raw.pkl"] == "dangerous"
    assert by_name["benign-state_dict.pt"] == "clean"
    assert not (folder / MARKER_NAME).exists()


def test_command_exit_codes_per_verdict(corpus) -> None:
    folder, _ = corpus
    assert run("scan", folder / "benign-state_dict.pt").returncode == 0
    assert run("scan", folder / "benign-built-unknown-class.pt").returncode == 0
    assert run("scan", "--strict", folder / "benign-built-unknown-class.pt").returncode == 1
    assert run("scan", folder / "D1-storage-past-record.pt").returncode == 2
    assert run("scan", folder / "benign-checkpoint.tar.gz").returncode == 2
    dangerous = run("scan", folder / "C7-torchscript-torch.save.pt")
    assert dangerous.returncode == 1 and "torch.save" in dangerous.stdout


def test_command_include_exclude(corpus) -> None:
    folder, _ = corpus
    result = run("scan", "-r", folder, "--json", "--include", r"benign-", "--exclude", r"unknown-class|module|subclass",
                 "--exclude", r"\.7z$|tar\.gz$")
    document = json.loads(result.stdout)
    paths = [Path(e["path"]).relative_to(folder) for e in document["files"]]
    assert paths and all(p.parts[0].startswith("benign-") for p in paths)
    assert not any(".7z" in str(p) or "module" in str(p) for p in paths)
    assert result.returncode == 0, document["summary"]
    assert document["summary"]["dangerous"] == 0


def test_command_reads_a_zip_member_named_txt(tmp_path: Path) -> None:
    from builders import Member

    path = tmp_path / "renamed.pt"
    path.write_bytes(build_zip([Member("archive/data.txt", program(os_system(tmp_path / "pwned"), 2)),
                                Member("archive/version", b"3\n")]))
    result = run("scan", path)
    assert result.returncode == 1 and "os.system" in result.stdout
    assert not (tmp_path / "pwned").exists()
