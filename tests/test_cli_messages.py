"""The command as a new user meets it: one-line errors that name the option, help everywhere,
typed JSON, short summaries, plain-word findings, refusals before work, and progress bars
that appear only where they belong.  Run in-process through the ``run_cli`` fixture.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ptfile
from ptfile.cli import main as cli
from ptfile.cli import output as cli_output

FIXTURES = Path(__file__).resolve().parent / "fixtures"
STATE_DICT = FIXTURES / "state_dict.pt"


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.fixture
def training(tmp_path) -> Path:
    """A training checkpoint: a model state dict beside 50 values that are not tensors."""
    path = tmp_path / "train.pt"
    model = {"fc.weight": np.ones((3, 4), np.float32), "fc.bias": np.zeros(3, np.float32)}
    ptfile.save({"state_dict": model, "epoch": 7, "name": "run1", "lr": 0.1, "best": True, "note": None,
                 "loss": float("nan"), "history": {f"step{i}": i * 0.5 for i in range(44)}}, path)
    return path


# -- usage errors: one line, naming the option, before any file is read -------------


@pytest.mark.parametrize("command", ["convert", "edit"])
def test_unknown_dtype_is_one_line_naming_the_option(run_cli, tmp_path, command):
    missing = tmp_path / "not-there.pt"  # a usage error comes first: the input is never looked at
    code, out, err = run_cli(command, missing, tmp_path / "out.pt", "--dtype", "float99")
    assert "argument --dtype" in one_line_error(code, err) and "'float99'" in err and "bfloat16" in err
    assert not out and not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("command", ["convert", "edit"])
def test_known_dtypes_are_accepted(run_cli, tmp_path, command):
    code, _, err = run_cli(command, STATE_DICT, tmp_path / "out.pt", "--dtype", "bfloat16")
    assert code == 0, err
    assert {ptfile.open(tmp_path / "out.pt").info(k).dtype for k in ptfile.open(tmp_path / "out.pt")} >= {"bfloat16"}


@pytest.mark.parametrize("option, value", [("--keep", "["), ("--drop", "(a"), ("--rename-regex", "[=x")])
def test_bad_regex_names_the_option(run_cli, tmp_path, option, value):
    code, _, err = run_cli("edit", STATE_DICT, tmp_path / "o.pt", option, value)
    assert f"argument {option}" in one_line_error(code, err) and "not a regular expression" in err


@pytest.mark.parametrize("option", ["--include", "--exclude"])
def test_bad_scan_pattern_names_the_option(run_cli, option):
    code, _, err = run_cli("scan", STATE_DICT, option, "*.pt")
    assert f"argument {option}" in one_line_error(code, err)


def test_rename_without_equals_names_the_option(run_cli, tmp_path):
    code, _, err = run_cli("edit", STATE_DICT, tmp_path / "o.pt", "--rename", "abc")
    assert "argument --rename" in one_line_error(code, err) and "OLD=NEW" in err


def test_every_option_and_positional_has_help():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == {"inspect", "scan", "diff", "stats", "match", "convert", "edit"}
    for name, sub in commands.choices.items():
        options = {s for a in sub._actions for s in a.option_strings}
        assert "--json" in options, name
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, (name, action.dest)
        text = sub.format_help()
        assert "--json" in text and "JSON" in text


def test_top_level_options_have_help():
    parser = cli.build_parser()
    for action in parser._actions:
        assert action.help, action.dest


def test_every_command_prints_json_through_the_one_envelope(run_cli, tmp_path, monkeypatch):
    made = []
    envelope = cli_output.envelope
    monkeypatch.setattr(cli_output, "envelope", lambda command, fields: made.append(command) or envelope(command, fields))
    argv = {
        "inspect": ["inspect", STATE_DICT],
        "scan": ["scan", STATE_DICT],
        "diff": ["diff", STATE_DICT, STATE_DICT],
        "stats": ["stats", STATE_DICT],
        "match": ["match", STATE_DICT, "--against", STATE_DICT],
        "convert": ["convert", STATE_DICT, tmp_path / "out.safetensors"],
        "edit": ["edit", STATE_DICT, tmp_path / "out.pt", "--dry-run"],
    }
    commands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(argv) == set(commands)  # a new command is added here too
    for command, args in argv.items():
        code, out, err = run_cli(*args, "--json")
        assert code == 0, err
        document = json.loads(out)
        assert list(document)[:2] == ["schema", "command"], command
        assert document["schema"] == cli_output.JSON_SCHEMA_VERSION and document["command"] == command
        assert made[-1] == command
    assert made == list(argv)  # one envelope per command, each made by the output layer


def test_records_and_quiet_where_they_mean_something():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in ("inspect", "diff", "stats", "match", "convert", "edit"):
        assert "--records" in commands[name].format_help(), name
    for name in ("scan", "diff", "stats", "convert", "edit"):  # the commands that can take long
        assert "--quiet" in commands[name].format_help(), name


# -- convert / edit: refusals and summaries --------------------------------------------


@pytest.mark.parametrize("command", ["convert", "edit"])
def test_output_in_a_missing_folder_is_refused_and_not_created(run_cli, tmp_path, command):
    target = tmp_path / "nowhere" / "out.safetensors"
    if command == "edit":
        target = target.with_suffix(".pt")
    code, _, err = run_cli(command, STATE_DICT, target)
    assert "does not exist" in one_line_error(code, err) and "nowhere" in err
    assert not (tmp_path / "nowhere").exists()


def test_library_convert_refuses_a_missing_folder_too(tmp_path):
    with pytest.raises(ptfile.CheckpointNotFoundError, match="does not exist"):
        ptfile_convert(STATE_DICT, tmp_path / "nowhere" / "out.npz")
    assert not (tmp_path / "nowhere").exists()


def ptfile_convert(src: Path, dst: Path, **options):
    from ptfile.tools.convert import convert

    return convert(str(src), str(dst), **options)


def test_convert_summarizes_values_left_out_in_one_line(run_cli, tmp_path, training):
    code, out, err = run_cli("convert", training, tmp_path / "m.safetensors")
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert notes == ["note: left out 50 values that are not tensors (--verbose lists them)"]
    assert out.strip() == f"wrote 2 tensors to {tmp_path / 'm.safetensors'}"
    code, _, err = run_cli("convert", training, tmp_path / "m.safetensors", "--verbose")
    (note,) = [line for line in err.splitlines() if line.startswith("note:")]
    report = ptfile_convert(training, tmp_path / "again.safetensors")
    assert len(report.skipped_values) == 50 and note.endswith(", ".join(report.skipped_values))


def test_convert_names_one_value_in_the_singular(run_cli, tmp_path):
    ptfile.save({"w": np.ones(2, np.float32), "step": 3}, tmp_path / "one.pt")
    code, _, err = run_cli("convert", tmp_path / "one.pt", tmp_path / "one.safetensors")
    assert code == 0 and "note: left out 1 value that is not a tensor (--verbose lists them)" in err


def test_convert_json_is_one_document_without_notes(run_cli, tmp_path, training):
    code, out, err = run_cli("convert", training, tmp_path / "m.safetensors", "--json")
    assert code == 0 and not err
    assert json.loads(out)["tensors"] == 2 and len(json.loads(out)["skipped_values"]) == 50


# -- JSON values keep their types -------------------------------------------------------


def test_inspect_json_values_are_typed(run_cli, training):
    code, out, _ = run_cli("inspect", training, "--json")
    assert code == 0
    values = {v["name"]: v for v in json.loads(out)["values"]}
    assert values["epoch"]["value"] == 7 and values["epoch"]["type"] == "int"
    assert values["name"]["value"] == "run1" and values["name"]["type"] == "str"
    assert values["lr"]["value"] == 0.1 and values["best"]["value"] is True and values["best"]["type"] == "bool"
    assert values["history.step3"]["value"] == 1.5
    assert "value" not in values["loss"] and values["loss"]["type"] == "float"  # NaN is not JSON
    assert values["name"]["summary"] == "'run1'"  # the human summary is unchanged
    assert "NaN" not in out  # strict JSON


def test_stats_json_numbers_are_numbers(run_cli):
    code, out, _ = run_cli("stats", STATE_DICT, "--json")
    rows = json.loads(out)["tensors"]
    assert code == 0 and rows
    for row in rows:
        assert isinstance(row["count"], int) and isinstance(row["nan"], int)
        assert row["min"] is None or isinstance(row["min"], float)


# -- match -----------------------------------------------------------------------------


def test_match_strip_prefix_and_key(run_cli, tmp_path, training):
    reference = tmp_path / "ref.pt"
    ptfile.save({"fc.weight": np.ones((3, 4), np.float32), "fc.bias": np.zeros(3, np.float32)}, reference)
    wrapped = tmp_path / "wrapped.pt"
    ptfile.save({"module.fc.weight": np.ones((3, 4), np.float32), "module.fc.bias": np.zeros(3, np.float32)}, wrapped)
    code, out, _ = run_cli("match", wrapped, "--against", reference)
    assert code == 1 and "strip the prefix 'module.'" in out and "--strip-prefix" in out
    assert run_cli("match", wrapped, "--against", reference, "--strip-prefix", "module.")[0] == 0
    assert run_cli("match", training, "--against", reference)[0] == 1
    code, out, _ = run_cli("match", training, "--against", reference, "--key", "state_dict", "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    code, _, err = run_cli("match", training, "--against", reference, "--key", "optimizer")
    assert "no tensors under 'optimizer'" in one_line_error(code, err)


def test_match_against_inspect_json(run_cli, tmp_path):
    code, out, _ = run_cli("inspect", STATE_DICT, "--json")
    document = tmp_path / "expected.json"
    document.write_text(out)
    code, out, err = run_cli("match", STATE_DICT, "--against", document)
    assert code == 0 and "would succeed" in out, err
    changed = json.loads(document.read_text())
    changed["tensors"][0]["shape"] = [*changed["tensors"][0]["shape"], 2]
    document.write_text(json.dumps(changed))
    code, out, _ = run_cli("match", STATE_DICT, "--against", document, "--json")
    result = json.loads(out)
    assert code == 1 and [m["name"] for m in result["shape_mismatch"]] == [changed["tensors"][0]["name"]]


def test_match_against_a_broken_inspect_document(run_cli, tmp_path):
    document = tmp_path / "bad.json"
    document.write_text(json.dumps({"schema": 1, "command": "inspect", "tensors": "none"}))
    code, _, err = run_cli("match", STATE_DICT, "--against", document)
    assert "inspect document" in one_line_error(code, err)


# -- scan wording --------------------------------------------------------------------------


def test_scan_counts_files_in_the_right_number(run_cli):
    assert "scanned 1 file:" in run_cli("scan", STATE_DICT)[1]
    assert "scanned 2 files:" in run_cli("scan", STATE_DICT, STATE_DICT)[1]


def test_scan_findings_in_plain_words_at_file_offsets(run_cli, tmp_path):
    marker = tmp_path / "marker"
    data = b"\x80\x02cos\nsystem\nX" + len(f"touch {marker}").to_bytes(4, "little") + f"touch {marker}".encode() \
        + b"\x85R."
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(data)
    code, out, _ = run_cli("scan", evil)
    assert code == 1 and not marker.exists()
    line = next(line for line in out.splitlines() if "os.system" in line)
    assert "called at byte" in line and "reference" not in line
    offset = int(line.split("called at byte ")[1].split()[0].rstrip(",;"))
    assert data[offset:offset + 1] == pickle.REDUCE  # the offset is where the file calls it


# -- progress --------------------------------------------------------------------------------


class Recorder:
    """Stands in for the progress bar: what it was told and whether it was enabled."""

    made: list[Recorder] = []

    def __init__(self, label: str, enabled: bool) -> None:
        self.label, self.enabled, self.calls, self.closed = label, enabled, [], False
        Recorder.made.append(self)

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def recorder(monkeypatch):
    Recorder.made = []
    monkeypatch.setattr(cli_output, "Progress", Recorder)
    return Recorder


@pytest.mark.parametrize("command, output", [("convert", "o.safetensors"), ("convert", "o.pt"), ("edit", "o.pt")])
def test_long_commands_report_progress_in_bytes(run_cli, tmp_path, recorder, command, output):
    code, _, err = run_cli(command, STATE_DICT, tmp_path / output)
    assert code == 0, err
    (bar,) = recorder.made
    assert bar.enabled and bar.closed and bar.calls
    done = [d for d, _ in bar.calls]
    assert done == sorted(done) and bar.calls[-1][0] == bar.calls[-1][1] > 0


@pytest.mark.parametrize("flag", ["--quiet", "-q", "--json"])
def test_quiet_and_json_turn_progress_off(run_cli, tmp_path, recorder, flag):
    code, out, _ = run_cli("convert", STATE_DICT, tmp_path / "o.safetensors", flag)
    assert code == 0 and not recorder.made[0].enabled
    if flag == "--json":
        assert json.loads(out)["command"] == "convert"


def test_scan_of_many_files_reports_progress(run_cli, recorder):
    code, _, _ = run_cli("scan", STATE_DICT, STATE_DICT, STATE_DICT)
    (bar,) = recorder.made
    assert code == 0 and bar.enabled and bar.calls == [(1, 3), (2, 3), (3, 3)]
    run_cli("scan", STATE_DICT, STATE_DICT, "--quiet")
    assert not recorder.made[-1].enabled


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_is_drawn_on_a_terminal_only_after_the_delay(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    clock = iter([0.5, 2.0])
    quick = cli_output.Progress("writing", True)
    quick._start, quick._clock = 0.0, lambda: next(clock)
    quick(1, 10)  # 0.5 s in: nothing yet
    assert quick._bar is None
    quick(5, 10)  # 2 s in: the bar appears
    assert quick._bar is not None
    quick.close()
    assert "writing" in terminal.getvalue()
    piped = io.StringIO()
    monkeypatch.setattr("sys.stderr", piped)
    silent = cli_output.Progress("writing", True)
    silent._start, silent._clock = 0.0, lambda: 100.0
    silent(1, 2)
    silent.close()
    assert silent._bar is None and piped.getvalue() == ""  # not a terminal: never drawn


# -- progress of the library's long writes ---------------------------------------------------------


def progress_log() -> tuple[list[tuple[int, int]], object]:
    calls: list[tuple[int, int]] = []
    return calls, lambda done, total: calls.append((done, total))


def assert_complete(calls: list[tuple[int, int]], total: int) -> None:
    assert calls and all(t == total for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == total


def test_save_sharded_reports_bytes_over_all_shards(tmp_path):
    tensors = {f"w{i}": np.full(1000, i, np.float32) for i in range(5)}
    calls, progress = progress_log()
    names = ptfile.save_sharded(tensors, tmp_path, max_shard_size=8000, progress=progress)
    assert len(names) == 4  # three shards and the index
    assert_complete(calls, 5 * 4000)


def test_save_reports_bytes(tmp_path):
    calls, progress = progress_log()
    ptfile.save({"a": np.ones(100, np.float64), "b": np.ones(10, np.int8)}, tmp_path / "s.pt", progress=progress)
    assert_complete(calls, 810)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_dcp_consolidation_reports_bytes(tmp_path, suffix):
    calls, progress = progress_log()
    report = ptfile_convert(FIXTURES / "dcp" / "ranks2", tmp_path / f"out{suffix}", progress=progress)
    with ptfile.open(tmp_path / f"out{suffix}") as written:
        total = sum(written.info(k).nbytes for k in written)
    assert report.written == [str(tmp_path / f"out{suffix}")]
    assert_complete(calls, total)


def test_diff_json_gives_shapes_as_lists_of_numbers(run_cli, tmp_path):
    ptfile.save({"w": np.zeros((2, 3), np.float32), "d": np.zeros(2, np.float32)}, tmp_path / "a.pt")
    ptfile.save({"w": np.zeros((2, 4), np.float32), "d": np.zeros(2, np.float64)}, tmp_path / "b.pt")
    code, out, _ = run_cli("diff", tmp_path / "a.pt", tmp_path / "b.pt", "--json")
    rows = {row["name"]: row for row in json.loads(out)["tensors"]}
    assert code == 1
    assert (rows["w"]["status"], rows["w"]["a"], rows["w"]["b"]) == ("shape", [2, 3], [2, 4])
    assert (rows["d"]["status"], rows["d"]["a"], rows["d"]["b"]) == ("dtype", "float32", "float64")
    code, out, _ = run_cli("diff", tmp_path / "a.pt", tmp_path / "b.pt")
    assert "w: shape [2, 3] -> [2, 4]" in out


def test_convert_with_a_cast_reports_the_cast_then_the_write(tmp_path):
    tensors = {"a": np.ones(1000, np.float16), "b": np.ones(500, np.float16), "i": np.arange(10)}
    ptfile.save(tensors, tmp_path / "h.pt")
    calls, progress = progress_log()
    ptfile_convert(tmp_path / "h.pt", tmp_path / "f.safetensors", dtype="float32", progress=progress)
    cast_bytes, written = 3000, 6000 + 80
    assert calls[:2] == [(2000, cast_bytes + 3080), (cast_bytes, cast_bytes + 3080)]  # float16 bytes read
    done = [d for d, _ in calls]
    assert done == sorted(done) and calls[-1] == (cast_bytes + written, cast_bytes + written)


def test_edit_with_a_cast_reports_the_cast_then_the_write(run_cli, tmp_path, recorder):
    ptfile.save({"a": np.ones(1000, np.float16), "i": np.arange(10)}, tmp_path / "h.pt")
    code, _, err = run_cli("edit", tmp_path / "h.pt", tmp_path / "f.pt", "--dtype", "float32")
    assert code == 0, err
    (bar,) = recorder.made
    assert bar.calls[0] == (2000, 2000 + 2080)  # the cast: float16 bytes read, of cast and write together
    done = [d for d, _ in bar.calls]
    assert done == sorted(done) and bar.calls[-1][0] == bar.calls[-1][1] == 2000 + 4080
    assert ptfile.load(tmp_path / "f.pt")["a"].dtype == np.float32


# -- the output layer: plain text off a terminal, rich on one ----------------------------------------


def test_human_output_off_a_terminal_never_imports_rich(tmp_path):
    """Piped output has no styles: inspect and scan print it without importing (or laying out with) rich."""
    script = ("import sys\nfrom ptfile.cli.main import main\n"
              f"codes = main(['inspect', {str(STATE_DICT)!r}, '--collapse']), main(['scan', {str(STATE_DICT)!r}])\n"
              "assert codes == (0, 0), codes\n"
              "assert not [m for m in sys.modules if m.split('.')[0] == 'rich'], 'rich was imported'\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(ptfile.__file__).resolve().parent.parent)})
    assert done.returncode == 0, done.stderr
    assert "blocks.{0..1}.conv.weight  x2" in done.stdout and "clean (zip)" in done.stdout


def test_a_terminal_gets_the_same_table_styled(monkeypatch):
    cells = [["a.weight", "float32", "(2, 3)"], ["b\\x1bname", "int64", "()"]]
    piped = io.StringIO()
    monkeypatch.setattr("sys.stdout", piped)
    cli_output.Human().table(("name", "dtype", "shape"), cells, right=("shape",))
    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    styled = cli_output.Human()
    styled.table(("name", "dtype", "shape"), cells, right=("shape",))
    styled.line("scan: ", ("clean", "green"))
    assert "\x1b[" in terminal.getvalue() and "\x1b[" not in piped.getvalue()
    plain_lines = piped.getvalue().splitlines()
    assert plain_lines == ["name       dtype     shape", "a.weight   float32  (2, 3)",
                           "b\\x1bname  int64        ()"]  # shape aligned right
    styled_words = [line.split() for line in re.sub(r"\x1b\[[0-9;]*m", "", terminal.getvalue()).splitlines()]
    assert styled_words[:3] == [line.split() for line in plain_lines] and styled_words[3] == ["scan:", "clean"]


def test_an_empty_table_prints_its_header(run_cli, tmp_path):
    path = tmp_path / "values.pt"
    ptfile.save({"epoch": 3}, path)
    code, out, err = run_cli("stats", path)
    assert code == 0, err
    assert out.split() == ["name", "dtype", "count", "min", "max", "mean", "std", "nan", "inf", "zeros"]


# -- human views of diff, stats, match and inspect -----------------------------------------------------


def test_diff_human_view_names_each_change(run_cli, tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    ptfile.save({"same": np.ones(3, np.float32), "grown": np.ones(2, np.float32), "moved": np.zeros(4, np.float32),
                 "gone": np.ones(1, np.float32)}, a)
    ptfile.save({"same": np.ones(3, np.float32), "grown": np.ones(5, np.float32),
                 "moved": np.array([0, 0, 0.5, 0], np.float32), "new": np.ones(1, np.float32)}, b)
    code, out, err = run_cli("diff", a, b)
    assert code == 1, err
    lines = out.splitlines()
    assert "- gone" in lines and "+ new" in lines and "! grown: shape [2] -> [5]" in lines
    assert "! moved: max abs diff 0.5, max rel diff" in out and "1 elements differ" in out
    assert lines[-1] == "1 only in A, 1 only in B, 2 changed, 1 equal, 0 equal within tolerance"


def test_stats_human_view_matches_numpy(run_cli, tmp_path):
    path = tmp_path / "s.pt"
    values = np.array([1.0, -2.0, 0.0, np.nan, np.inf], np.float32)
    ptfile.save({"w": values}, path)
    code, out, err = run_cli("stats", path)
    assert code == 0, err
    header, row = (line.split() for line in out.splitlines())
    finite = values[np.isfinite(values)].astype(np.float64)
    expected = ["w", "float32", "5", f"{finite.min():.6g}", f"{finite.max():.6g}", f"{finite.mean():.6g}",
                f"{finite.std():.6g}", "1", "1", "1"]
    assert header[0] == "name" and row == expected


def test_match_human_view_lists_missing_keys_then_counts_the_rest(run_cli, tmp_path):
    model, reference = tmp_path / "m.pt", tmp_path / "ref.pt"
    ptfile.save({"kept": np.ones(2, np.float32)}, model)
    ptfile.save({"kept": np.ones(2, np.float32), **{f"extra{i}": np.ones(1, np.float32) for i in range(60)}},
                reference)
    code, out, _ = run_cli("match", model, "--against", reference)
    assert code == 1
    assert "missing keys (60):" in out and "  ... and 10 more" in out and out.count("  extra") == 50
    assert out.splitlines()[-1] == "does not match"


def test_inspect_human_view_lists_fifty_values_then_counts(run_cli, tmp_path):
    path = tmp_path / "values.pt"
    ptfile.save({"w": np.ones(2, np.float32), "epoch": 7, "history": {f"step{i}": i * 0.5 for i in range(50)}}, path)
    code, out, err = run_cli("inspect", path)
    assert code == 0, err
    assert "other values:" in out and "  epoch = 7" in out and "  ... and 1 more" in out
    assert "history.step48" in out and "history.step49" not in out
    code, tree, _ = run_cli("inspect", path, "--tree")
    assert code == 0 and "history" in tree and "step49 = 24.5" in tree and "... and" not in tree


def test_bad_allow_pattern_and_rename_regex_are_usage_errors(run_cli, tmp_path):
    code, _, err = run_cli("scan", STATE_DICT, "--allow", "os system")
    assert "argument --allow" in one_line_error(code, err)
    code, _, err = run_cli("edit", STATE_DICT, tmp_path / "o.pt", "--rename-regex", "abc")
    assert "argument --rename-regex" in one_line_error(code, err) and "PATTERN=REPLACEMENT" in err


def test_interrupt_exits_130_without_a_traceback(run_cli, monkeypatch):
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("ptfile.tools.inspection.describe", interrupted)
    code, out, err = run_cli("inspect", STATE_DICT)
    assert code == 130 and not out and "Traceback" not in err
