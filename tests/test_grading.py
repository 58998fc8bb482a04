"""Checkpoints from the wild, and findings graded in four levels.

* Files torch 0.4 wrote (``backward_hooks`` pickled as ``None``) load as torch loads them.
* A checkpoint whose hyper-parameters hold an Enum member (a REDUCE of a class ptfile
  does not know), a namedtuple and a class with its own ``__reduce__``, written by
  ``torch.save``: ``unknown-call``, read with ``records=True`` or accepted with ``allow``.
* Known gadgets stay ``dangerous`` in every mode, whatever ``allow`` says.
* The scan's exit codes, JSON shape and ``--allow``; offsets in messages are file offsets.
"""

from __future__ import annotations

import enum
import json
import pickle
import re
from collections import OrderedDict, namedtuple
from pathlib import Path

import numpy as np
import pytest

import ptfile
from builders import (
    ORDERED_DICT,
    REBUILD_V2,
    Call,
    G,
    Raw,
    build_zip,
    emit,
    legacy_stream,
    program,
    state_dict,
    storage_pid,
    tensor_v2,
    torch_members,
    torch_zip,
)
from ptfile.errors import UnsafeGlobalError
from ptfile.policy import allowlist
from test_cli import run

FLOATS = np.arange(6, dtype=np.float32)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """The file a payload would create; it must never appear."""
    return tmp_path / "pwned"
BIAS = np.array([0.5, -1.5], dtype=np.float32)


# -- torch 0.4 files: backward hooks pickled as None -----------------------------------------


def _legacy_pid(key: str, numel: int) -> Raw:
    """BINPERSID of the legacy stream's ``('storage', torch.FloatStorage, key, 'cpu', numel, None)``."""
    return Raw(emit(("storage", G("torch", "FloatStorage"), key, "cpu", numel, None), 2) + pickle.BINPERSID)


def _torch04_file(hooks: object = None) -> bytes:
    """A legacy stream as torch 0.4 wrote it: every rebuild call passes ``None`` as its hooks."""
    weight = Call(REBUILD_V2, (_legacy_pid("0", 6), 0, (2, 3), (3, 1), False, hooks))
    bias = Call(REBUILD_V2, (_legacy_pid("1", 2), 0, (2,), (1,), False, hooks))
    parameter = G("torch._utils", "_rebuild_parameter")(weight, True, hooks)
    tree = state_dict({"net.weight": parameter, "net.bias": bias})
    return legacy_stream(program(tree, 2), {"0": FLOATS.tobytes(), "1": BIAS.tobytes()})


def test_torch04_hooks_none_load_as_torch_loads_them(tmp_path: Path) -> None:
    path = tmp_path / "lpips_like.pth"
    path.write_bytes(_torch04_file())
    for mmap in (True, False):
        state = ptfile.load(path, mmap=mmap)
        np.testing.assert_array_equal(state["net.weight"], FLOATS.reshape(2, 3))
        np.testing.assert_array_equal(state["net.bias"], BIAS)
        assert isinstance(state["net.weight"], ptfile.Parameter)
    with ptfile.open(path) as handle:
        assert handle.keys() == ["net.weight", "net.bias"]
    result = ptfile.scan(path)
    assert (result.verdict, result.format, result.faults) == ("clean", "legacy", [])
    torch = pytest.importorskip("torch")
    loaded = torch.load(path, weights_only=True)  # the oracle: torch accepts None hooks too
    assert list(loaded) == ["net.weight", "net.bias"]
    assert isinstance(loaded["net.weight"], torch.nn.Parameter)
    np.testing.assert_array_equal(loaded["net.weight"].detach().numpy(), state["net.weight"])
    np.testing.assert_array_equal(loaded["net.bias"].numpy(), state["net.bias"])


def test_hooks_that_hold_something_are_refused_by_both_and_reported_as_legacy_at_a_file_offset(
        tmp_path: Path) -> None:
    hooks = Raw(emit(Call(ORDERED_DICT, ()), 2) + emit(1, 2) + emit("hook", 2) + pickle.SETITEM)
    data = _torch04_file(hooks)
    path = tmp_path / "hooked.pth"
    path.write_bytes(data)
    with pytest.raises(ptfile.CorruptFileError, match="backward hooks must be None or an empty") as info:
        ptfile.load(path)
    result = ptfile.scan(path)
    assert result.format == "legacy" and result.verdict == "invalid"
    assert result.faults == [str(info.value)]  # the reader's own diagnosis, word for word
    offset = int(re.search(r"at byte (\d+)", str(info.value)).group(1))
    assert data[offset:offset + 1] == pickle.REDUCE  # a file offset: the REDUCE that called the rebuild
    assert not any("back to back" in fault or "not a ('storage'" in fault for fault in result.faults)


def test_legacy_findings_carry_file_offsets(tmp_path: Path) -> None:
    call = G("hparams", "Problem")(1)
    data = legacy_stream(program({"problem": call}, 2))
    path = tmp_path / "legacy_enum.pt"
    path.write_bytes(data)
    result = ptfile.scan(path)
    assert result.verdict == "unknown-call" and result.format == "legacy"
    (finding,) = result.findings
    for use in finding.uses:
        opcode = data[use.offset:use.offset + 1]
        assert opcode == (pickle.REDUCE if use.use == "call" else pickle.GLOBAL), use


# -- Enum, namedtuple and __reduce__ hyper-parameters, written by torch.save ---------------------


class Problem(enum.Enum):
    REGRESSION = 1
    CLASSIFICATION = 2


Point = namedtuple("Point", "x y")


class Schedule:
    """A class with its own ``__reduce__``: pickled as a call of a module-level function."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def __reduce__(self) -> tuple:
        return make_schedule, (self.steps, "cosine")


def make_schedule(steps: int, kind: str) -> Schedule:
    return Schedule(steps)


MODULE = __name__


@pytest.fixture(scope="module")
def hparams_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("hparams") / "lightning.ckpt"
    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    torch.save({"state_dict": OrderedDict(weight=weight), "epoch": 3,
                "hyper_parameters": {"problem": Problem.CLASSIFICATION, "origin": Point(1, 2),
                                     "schedule": Schedule(10)}}, path)
    return path


def test_hparams_scan_is_unknown_call_with_each_call_described(hparams_file: Path) -> None:
    result = ptfile.scan(hparams_file)
    assert result.verdict == "unknown-call"
    levels = {f.path: f.severity for f in result.findings}
    assert levels == {f"{MODULE}.Problem": "unknown-call", f"{MODULE}.make_schedule": "unknown-call",
                      f"{MODULE}.Point": "unknown-class"}
    problem = next(f for f in result.findings if f.name == "Problem")
    assert problem.calls == 1 and problem.arguments == ["(2,)"]
    assert all(u.record.endswith("data.pkl") for u in problem.uses)
    schedule = next(f for f in result.findings if f.name == "make_schedule")
    assert schedule.arguments == ["(10, 'cosine')"]
    assert "called once with (2,)" in problem.describe()
    document = result.to_dict()
    described = {f["global"]: f for f in document["findings"]}
    assert described[f"{MODULE}.Problem"]["calls"] == 1
    assert described[f"{MODULE}.Problem"]["arguments"] == ["(2,)"]
    assert "calls" not in described[f"{MODULE}.Point"]


def test_hparams_torch_oracle(hparams_file: Path) -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(pickle.UnpicklingError):  # torch's restricted loader refuses the same globals
        torch.load(hparams_file, weights_only=True)
    full = torch.load(hparams_file, weights_only=False)  # our own classes: this runs only the test's code
    assert full["hyper_parameters"]["problem"] is Problem.CLASSIFICATION
    state = ptfile.load(hparams_file, records=True)
    np.testing.assert_array_equal(state["state_dict"]["weight"], full["state_dict"]["weight"].numpy())
    assert state["epoch"] == full["epoch"]


def test_hparams_are_refused_without_records_and_read_as_records_with_them(hparams_file: Path) -> None:
    with pytest.raises(UnsafeGlobalError, match=rf"refused unknown-call globals: {MODULE}\.Problem") as info:
        ptfile.load(hparams_file)
    assert "dangerous" not in str(info.value)
    assert re.search(rf"refused unknown-class globals: {MODULE}\.Point", str(info.value))
    for mmap in (True, False):
        state = ptfile.load(hparams_file, records=True, mmap=mmap)
        problem = state["hyper_parameters"]["problem"]
        assert isinstance(problem, ptfile.Record)
        assert (problem.classname, problem.args) == (f"{MODULE}.Problem", (2,))
        schedule = state["hyper_parameters"]["schedule"]
        assert (schedule.classname, schedule.args) == (f"{MODULE}.make_schedule", (10, "cosine"))
        origin = state["hyper_parameters"]["origin"]
        assert (origin.classname, origin.args) == (f"{MODULE}.Point", (1, 2))
        np.testing.assert_array_equal(state["state_dict"]["weight"], FLOATS.reshape(2, 3))
    with pytest.raises(UnsafeGlobalError, match="unknown-call"):
        ptfile.open(hparams_file)
    with ptfile.open(hparams_file, records=True) as handle:
        assert handle.keys() == ["state_dict.weight"]
        np.testing.assert_array_equal(handle["state_dict.weight"], FLOATS.reshape(2, 3))


def test_allow_makes_scan_clean_exactly_when_load_succeeds(hparams_file: Path) -> None:
    everything = [f"{MODULE}.*"]
    exact = [f"{MODULE}.Problem", f"{MODULE}.make_schedule", f"{MODULE}.Point"]
    partial = [f"{MODULE}.Problem"]
    for allow in (everything, exact, partial, []):
        result = ptfile.scan(hparams_file, allow=allow)
        try:
            state = ptfile.load(hparams_file, allow=allow)
        except UnsafeGlobalError:
            state = None
        assert (result.verdict == "clean") == (state is not None), allow
        try:
            ptfile.open(hparams_file, allow=allow).close()
            opened = True
        except UnsafeGlobalError:
            opened = False
        assert opened == (state is not None), allow
    result = ptfile.scan(hparams_file, allow=everything)
    assert result.findings == [] and len([n for n in result.notes if n.startswith("allowed: ")]) == 3
    state = ptfile.load(hparams_file, allow=everything)
    assert state["hyper_parameters"]["problem"].args == (2,)  # still an inert record, never the class
    partly = ptfile.scan(hparams_file, allow=partial)
    assert partly.verdict == "unknown-call"
    assert {f.name for f in partly.findings} == {"make_schedule", "Point"}


@pytest.mark.parametrize("pattern", ["os", "os.", "*", "os.*.x", "os.sys tem", "", ".system", "a.b*"])
def test_allow_patterns_are_checked(pattern: str) -> None:
    with pytest.raises(ValueError, match="is not 'module.name' or 'module.\\*'"):
        ptfile.scan(b"\x80\x02N.", allow=[pattern])


# -- gadgets stay dangerous; levels in the refusal ---------------------------------------------


def _zip_with(*values: object) -> bytes:
    weight = tensor_v2(storage_pid("0", 6), 0, (2, 3), (3, 1))
    return torch_zip(program({"weight": weight, "extra": list(values)}, 2), {"0": FLOATS.tobytes()})


def test_a_gadget_is_dangerous_in_every_mode_whatever_allow_says(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "gadget.pt"
    path.write_bytes(_zip_with(G("os", "system")(f"touch {marker}"), G("hparams", "Problem")(1)))
    for allow in ([], ["os.*"], ["os.system"], ["hparams.*"]):
        result = ptfile.scan(path, allow=allow)
        assert result.verdict == "dangerous"
        (gadget,) = [f for f in result.findings if f.severity == "dangerous"]
        assert gadget.path == "os.system" and gadget.reason == "runs commands or spawns processes"
        for records in (False, True):
            with pytest.raises(UnsafeGlobalError) as info:
                ptfile.load(path, records=records, allow=allow)
            message = str(info.value)
            assert re.search(r"refused dangerous globals: os\.system \[dangerous\]", message)
            dangerous_part = message.split("refused dangerous globals:")[1].split("|")[0]
            assert "hparams.Problem" not in dangerous_part  # listed under its own level, if at all
            if "hparams.*" not in allow:
                assert "refused unknown-call globals: hparams.Problem [unknown-call]" in message
    assert not marker.exists()


@pytest.mark.parametrize(("module", "name"), [
    ("numpy.testing._private.utils", "runstring"), ("torch.storage", "_load_from_bytes"),
    ("torch.utils.collect_env", "run"), ("cProfile", "run"), ("timeit", "timeit"), ("builtins", "eval"),
    ("__builtin__", "exec"), ("torch._utils", "_import_dotted_name"), ("torch.serialization", "os.system"),
    ("pydoc", "pipepager"), ("builtins", "str"),
])
def test_gadget_table_grades_calls_dangerous(module: str, name: str) -> None:
    data = program(Call(G(module, name), ("x",)), 2)
    result = ptfile.scan(data)
    assert result.verdict == "dangerous", result
    assert result.findings[0].reason


def test_every_gadget_row_says_why() -> None:
    table = allowlist.gadgets()
    assert {"os", "subprocess", "builtins", "importlib", "runpy", "pickle", "marshal", "shutil", "socket", "pty",
            "ctypes", "torch.storage._load_from_bytes", "numpy.testing"} <= set(table)
    assert all(isinstance(reason, str) and len(reason) > 10 for reason in table.values())
    assert not any(allowlist.is_code_execution(m, n) for m, n in allowlist.entries())


def test_strict_grades_unknown_calls_and_classes_dangerous(hparams_file: Path) -> None:
    assert ptfile.scan(hparams_file, strict=True).verdict == "dangerous"


# -- the command ----------------------------------------------------------------------------


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_scan_exit_codes_per_level(tmp_path: Path, hparams_file: Path, marker: Path) -> None:
    clean = _write(tmp_path, "clean.pt", _zip_with(1))
    unknown_class = _write(tmp_path, "class.pt", _zip_with(Call(G("mymodels", "Net"), (), how="newobj")))
    invalid = _write(tmp_path, "invalid.pt", _zip_with(1)[:-30])
    gadget = program(Call(G("os", "system"), (f"touch {marker}",)), 2)
    dangerous_then_broken = _write(tmp_path, "broken.pkl", gadget[:-1] + b"\xff")
    unknown_then_broken = _write(tmp_path, "broken2.pkl", program(G("hparams", "Problem")(1), 2)[:-1] + b"\xff")
    cases = [
        ([clean], 0), ([unknown_class], 0), ([invalid], 2), ([hparams_file], 1), ([dangerous_then_broken], 1),
        ([unknown_then_broken], 1), ([invalid, hparams_file], 1), ([clean, unknown_class, invalid], 2),
    ]
    for paths, code in cases:
        result = run("scan", *paths)
        assert result.returncode == code, (paths, result.stdout, result.stderr)
    assert ptfile.scan(unknown_then_broken).verdict == "unknown-call"
    assert not marker.exists()


def test_scan_allow_option_and_json(hparams_file: Path) -> None:
    result = run("scan", hparams_file, "--json")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["summary"] == {"clean": 0, "unknown-class": 0, "invalid": 0, "unknown-call": 1, "dangerous": 0}
    (entry,) = document["files"]
    assert entry["verdict"] == "unknown-call"
    by_global = {f["global"]: f for f in entry["findings"]}
    assert by_global[f"{MODULE}.Problem"]["calls"] == 1 and by_global[f"{MODULE}.Problem"]["arguments"] == ["(2,)"]
    allowed = run("scan", hparams_file, "--json", "--allow", f"{MODULE}.*")
    assert allowed.returncode == 0, allowed.stderr
    entry = json.loads(allowed.stdout)["files"][0]
    assert entry["verdict"] == "clean" and entry["findings"] == []
    assert sum(note.startswith("allowed: ") for note in entry["notes"]) == 3
    partly = run("scan", hparams_file, "--allow", f"{MODULE}.Problem", "--allow", f"{MODULE}.make_schedule")
    assert partly.returncode == 0 and "unknown-class" in partly.stdout  # only the namedtuple class is left
    bad = run("scan", hparams_file, "--allow", "os")
    assert bad.returncode == 2 and "module.name" in bad.stderr


def test_inspect_records_reads_unknown_calls(hparams_file: Path) -> None:
    refused = run("inspect", hparams_file)
    assert refused.returncode == 2 and "unknown-call" in refused.stderr
    result = run("inspect", hparams_file, "--records", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["unknown_calls"] == [f"{MODULE}.Problem", f"{MODULE}.make_schedule"]
    assert document["scan"]["verdict"] == "unknown-call"
    assert [t["name"] for t in document["tensors"]] == ["state_dict.weight"]



def test_scan_many_passes_allow_to_every_worker(hparams_file: Path) -> None:
    from ptfile.tools.fleet import scan_many

    assert [r.verdict for r in scan_many([hparams_file, hparams_file], jobs=2)] == ["unknown-call"] * 2
    allowed = scan_many([hparams_file, hparams_file], jobs=2, allow=[f"{MODULE}.*"])
    assert [r.verdict for r in allowed] == ["clean"] * 2
    with pytest.raises(ValueError, match="module.name"):
        scan_many([hparams_file], allow=["os"])


# -- records the loader cannot read as pickles -------------------------------------------------


def test_encrypted_flag_over_a_stored_pickle_is_run_dry(marker: Path) -> None:
    members = torch_members(program(Call(G("os", "system"), (f"touch {marker}",)), 2))
    members[0].flags = 0x809
    result = ptfile.scan(build_zip(members))
    assert result.verdict == "dangerous"  # outranks the fault the unreadable record leaves
    assert any("is encrypted" in fault for fault in result.faults)
    assert [f.path for f in result.findings] == ["os.system"]
    benign = torch_members(program({"x": 1}, 2))
    benign[0].flags = 0x809
    assert ptfile.scan(build_zip(benign)).verdict == "invalid"  # never clean: load refuses it
    assert not marker.exists()


def test_a_zip_inside_the_object_pickle_is_scanned(marker: Path) -> None:
    inner = torch_zip(program(Call(G("os", "system"), (f"touch {marker}",)), 2))
    result = ptfile.scan(torch_zip(inner))
    assert result.verdict == "dangerous" and [f.path for f in result.findings] == ["os.system"]
    harmless = ptfile.scan(torch_zip(torch_zip(program({"x": 1}, 2))))
    assert harmless.verdict == "invalid" and harmless.findings == []
    assert not marker.exists()


def test_storage_bytes_that_start_like_a_zip_are_data(tmp_path: Path) -> None:
    data = np.frombuffer(b"PK\x03\x04" + bytes(20), dtype=np.float32)
    weight = tensor_v2(storage_pid("0", data.size), 0, (data.size,), (1,))
    path = tmp_path / "pk.pt"
    path.write_bytes(torch_zip(program({"w": weight}, 2), {"0": data.tobytes()}))
    assert ptfile.scan(path).verdict == "clean"
    np.testing.assert_array_equal(ptfile.load(path)["w"], data)


@pytest.mark.parametrize("name", ["A1-os.system-p2.pt", "A1-os.system-p0-raw.pkl", "C8-tar-pickle.tar",
                                  "B5-legacy-pickle5.pt"])
def test_offsets_are_file_offsets_in_scan_and_load(name: str, tmp_path: Path) -> None:
    """Every finding's offset points at the opcode in the file itself, wherever the pickle lies (a stored
    zip record, a plain pickle, a tar member, a legacy stream), and load reports the same places."""
    from corpus import build_corpus

    sample = next(s for s in build_corpus(tmp_path / "marker") if s.name == name)
    path = tmp_path / name
    path.write_bytes(sample.data)
    data = path.read_bytes()
    result = ptfile.scan(path)
    references = [u for f in result.findings for u in f.uses if u.use == "reference"]
    assert references
    for use in references:
        assert data[use.offset : use.offset + 1] in (b"c", b"\x93", b"i"), (use, data[use.offset : use.offset + 8])
    with pytest.raises(ptfile.UnsafeGlobalError) as refused:
        ptfile.load(path)
    assert f"at byte {references[0].offset} " in str(refused.value)
