"""TorchScript code records judged by parsing: call resolution, the allowlist, faults, and torch as the oracle.

Real ``torch.jit.save`` output of many modules must scan clean and load; archives whose
code reaches files (``tests/corpus_tscode.py``) must be dangerous, refused by ``load``,
and shown live: ``torch.jit.load`` in a subprocess creates the marker file.
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import ptfile
from builders import G, Member, Raw, build_zip, emit, program
from corpus_tscode import code_with, live_samples, setstate_archive
from ptfile.errors import CorruptFileError, LimitExceededError
from ptfile.formats import scriptcode


def calls(code: str, module: str = "__torch__", defined: str = "") -> list[str]:
    """The paths one record calls off the allowlist (``defined`` is a second record's code)."""
    records = [("m/code/__torch__.py", module, textwrap.dedent(code))]
    if defined:
        records.append(("m/code/__torch__/lib.py", "__torch__.lib", textwrap.dedent(defined)))
    return sorted(use.path for use in scriptcode.judge_code(records).uses)


# -- resolution -------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "expected"), [
    ("def f(x: Tensor) -> Tensor:\n  return torch.relu(x)\n", []),
    ('def f(x: Tensor) -> Tensor:\n  return torch.from_file("p", True, 1)\n', ["torch.from_file"]),
    ('def f(x: Tensor) -> Tensor:\n  return torch .from_file("p")\n', ["torch.from_file"]),
    ('def f(x: Tensor) -> Tensor:\n  return ops.aten.from_file("p")\n', ["torch.from_file"]),
    ('def f(x: Tensor) -> Tensor:\n  return torch.ops.aten.from_file("p")\n', ["torch.from_file"]),
    ('def f(x: Tensor) -> Tensor:\n  return torch.autograd.from_file("p")\n', ["torch.from_file"]),
    ('def f(x: Tensor) -> Tensor:\n  _0 = torch.from_file\n  return _0("p")\n', ["torch.from_file"]),
    ('def f(x: Tensor) -> Tensor:\n  a = ops\n  b = a.aten\n  return b.from_file("p")\n', ["torch.from_file"]),
    ('def f(x: Tensor) -> Tensor:\n  return getattr(torch, "from_file")("p")\n', ["torch.from_file"]),
    ('def f(x: Tensor, name: str) -> Tensor:\n  return getattr(torch, name)("p")\n', ["builtins.getattr", "builtins.torch"]),
    ('def f(x: Tensor) -> Tensor:\n  return fork(torch.from_file, "p")\n', ["torch.from_file"]),
    ('def f(x: Tensor) -> Tensor:\n  return [torch.save][0](x, "p")\n', ["torch.save"]),
    ('def f(x: Tensor) -> Tensor:\n  return fork((s := torch.save), x, "p")\n', ["torch.save"]),
    ('def f(x: Tensor = torch.save) -> Tensor:\n  return x\n', ["torch.save"]),
    ('import torch as t\ndef f(x: Tensor) -> Tensor:\n  return t.save(x, "p")\n', ["torch.save"]),
    ('def f(x: Tensor) -> Tensor:\n  return open("p")\n', ["builtins.open"]),
    ('def f(x: Tensor) -> Tensor:\n  return os.system("p")\n', ["os.system"]),
    ("def f(x: Tensor) -> Tensor:\n  return ops.c10d.barrier(x)\n", ["ops.c10d.barrier"]),
    ("def f(x: Tensor) -> Tensor:\n  return torch.not_an_operator(x)\n", ["torch.not_an_operator"]),
    # a name that is both a value and an alias: every reading is judged
    ("def f(torch: Tensor) -> Tensor:\n  return torch.from_file(torch)\n", ["builtins.torch", "torch.from_file"]),
    # methods of values, getattr of values, values called, types: plumbing
    ('def f(self: __torch__.M, x: Tensor) -> Tensor:\n  _0 = getattr(self, "0")\n  return (_0).forward(x.relu(), )\n', []),
    ("def f(x: Optional[__torch__.torch.classes.q.P]) -> Tensor:\n"
     "  y = annotate(List[__torch__.torch.classes.q.P], [])\n  return unchecked_cast(Tensor, x)\n", []),
    ("def f(x: Tensor) -> Tensor:\n  return CONSTANTS.c0\n", []),
])
def test_call_targets_resolve_to_paths(code: str, expected: list[str]) -> None:
    assert calls(code) == expected


def test_archive_code_is_allowed_only_where_the_archive_defines_it() -> None:
    lib = "def helper(x: Tensor) -> Tensor:\n  return torch.relu(x)\nclass P(Module):\n  def g(self: __torch__.lib.P) -> int:\n    return 1\n"
    code = "def f(x: Tensor) -> Tensor:\n  _0 = __torch__.lib.helper\n  y = __torch__.lib.P.g(x)\n  return _0(x)\n"
    assert calls(code, defined=lib) == []
    assert calls(code) == ["__torch__.lib.P.g", "__torch__.lib.helper"]
    # the printer writes C() as C.__new__(C): allowed for a class the archive defines, and only for one
    new = "def f(x: Tensor) -> Tensor:\n  _1 = __torch__.lib.P.__new__(__torch__.lib.P)\n  return x\n"
    assert calls(new, defined=lib) == []
    assert calls(new) == ["__torch__.lib.P.__new__"]
    # TorchBind classes are C++ registered in the process, never archive code, even when a record defines the name
    custom = "def f(x: Tensor) -> Tensor:\n  return __torch__.torch.classes.dist.Store(x)\n"
    records = [("m/code/__torch__.py", "__torch__", custom),
               ("m/code/__torch__/torch/classes/dist.py", "__torch__.torch.classes.dist", "class Store:\n  pass\n")]
    assert [u.path for u in scriptcode.judge_code(records).uses] == ["__torch__.torch.classes.dist.Store"]


def test_a_call_is_placed_at_its_byte_in_the_record() -> None:
    code = 'def f(x: Tensor) -> Tensor:\n  s = "é"\n  return torch.save(x, s)\n'
    (use,) = scriptcode.judge_code([("m/code/__torch__.py", "__torch__", code)]).uses
    assert (use.module, use.name, use.use, use.record) == ("torch", "save", "call", "m/code/__torch__.py")
    assert code.encode()[use.offset:].startswith(b"torch.save(")


@pytest.mark.parametrize(("code", "message"), [
    ("def f(x: Tensor) -> Tensor:\n  return torch.relu(x\n", "does not parse"),
    ("def f(x: Tensor) -> Tensor:\r  return torch.relu(x)\n", "control character 0x0d"),
    ("def f(x: Tensor) -> Tensor:\n\treturn torch.relu(x)\n", "control character 0x09"),
    ("def f(x: Tensor) -> Tensor:\n  return x\0\n", "control character 0x00"),
    ("def f(x):  # type: (Tensor) -> Tensor\n  return x\n", "'# type:' comment"),
    ("def f(x: Tensor) -> Tensor:\n  return x  #type: ignore\n", "'# type:' comment"),
    ("def f(x: Tensor) -> Tensor:\n  y = g(x,  # type: int\n    x)\n  return y\n", "does not parse"),
])
def test_records_torch_could_read_differently_are_faults(code: str, message: str) -> None:
    with pytest.raises(CorruptFileError, match=message):
        scriptcode.judge_code([("m/code/__torch__.py", "__torch__", code)])


def test_limits_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # written last to first, so that each round of resolution moves the namespace one step
    chain = "def f(x: Tensor) -> Tensor:\n" + "".join(f"  a{i + 1} = a{i}\n" for i in reversed(range(40))) + "  a0 = torch\n"
    with pytest.raises(LimitExceededError, match="aliases chain more than 32 steps deep"):
        calls(chain + "  return a40.relu(x)\n")
    monkeypatch.setattr(scriptcode, "MAX_PARSED_CODE_BYTES", 100)
    with pytest.raises(LimitExceededError, match="over the 100-byte limit of one parsed code record"):
        calls("def f(x: Tensor) -> Tensor:\n  return x\n" * 5)


def test_deep_expressions_end_in_a_ptfile_error_or_a_judgement() -> None:
    def sum_of(count: int, term: str) -> str:
        return "def f(x: Tensor) -> Tensor:\n  return " + "+".join([term] * count) + "\n"

    assert calls(sum_of(500, "torch.relu(x)")) == []
    assert calls(sum_of(500, "torch.save(x)")) == ["torch.save"] * 500
    with pytest.raises(CorruptFileError, match="RecursionError"):  # CPython's own bound on the tree's depth
        calls(sum_of(20000, "torch.relu(x)"))
    nested = "def f(x: Tensor) -> Tensor:\n  return " + "(" * 5000 + "x" + ")" * 5000 + "\n"
    with pytest.raises(CorruptFileError, match="does not parse"):
        calls(nested)


def test_every_record_torch_could_compile_is_code() -> None:
    assert all(map(scriptcode.is_code_record, ["code/__torch__.py", "CODE/__torch__.py", "code/__torch__.PY",
                                               "Code/x.txt", "extra/helper.py"]))
    assert not any(map(scriptcode.is_code_record, ["code/__torch__.py.debug_pkl", "data.pkl", "extra/notes.txt"]))


def test_non_utf8_code_is_invalid() -> None:
    data = setstate_archive(code_with()).replace(b"return (v, training)", b"return (v, tr\xffining)")
    assert ptfile.scan(data).verdict == "invalid"
    with pytest.raises(ptfile.PtfileError, match="not UTF-8"):
        ptfile.load(data)


def test_code_outside_code_folder_is_judged() -> None:
    members = [Member("m/extra/helper.py", b'def f(x: Tensor) -> Tensor:\n  return torch.save(x, "p")\n')]
    base = zipfile.ZipFile(io.BytesIO(setstate_archive(code_with())))
    members += [Member(info.filename, base.read(info)) for info in base.infolist()]
    members.sort(key=lambda m: not m.name.endswith("data.pkl"))  # the archive folder comes from the first record
    result = ptfile.scan(build_zip(members))
    assert result.verdict == "dangerous"
    assert [f.path for f in result.findings] == ["torch.save"]


# -- the allowlist against torch's own registry ------------------------------------------------


def test_allowlist_rows_name_no_operator_that_reaches_files_or_the_network() -> None:
    torch = pytest.importorskip("torch")
    schemas = torch._C._jit_get_all_schemas()
    registered = {s.name for s in schemas}
    reaching = {"aten::from_file", "aten::save", "debugprims::load_tensor"}
    assert reaching <= registered
    spelled = {("torch." + n[len("aten::"):]) if n.startswith("aten::") else "ops." + n.replace("::", ".")
               for n in reaching}
    assert not spelled & scriptcode.OPERATORS.keys()
    assert not {p for p in scriptcode.OPERATORS if p.split(".")[1] in ("c10d", "_c10d_functional", "symm_mem")}
    # a method of a value reaches only operators whose ``self`` the value is: none of these has one
    assert not {s.name for s in schemas if s.name in reaching and any(a.name == "self" for a in s.arguments)}
    assert all(reason for reason in (*scriptcode.OPERATORS.values(), *scriptcode.BUILTINS.values()))


# -- real torch.jit.save output ----------------------------------------------------------------


def _real_modules(torch):  # noqa: ANN001, ANN202 - torch is imported by the test
    nn = torch.nn

    class WithState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.v = torch.arange(3.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.v

        @torch.jit.export
        def __getstate__(self) -> tuple[torch.Tensor, bool]:
            return (self.v, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
            self.v = state[0] * 2
            self.training = state[1]

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table: dict[str, int] = {"a": 1}
            self.names: list[str] = ["x", "y"]
            self.lstm = nn.LSTM(3, 4)
            self.gru = nn.GRU(3, 4, batch_first=True)

        def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, str]:
            if y is not None:
                x = x + y
            for i in range(2):
                x = torch.where(x > float(i), x, -x)
            with torch.no_grad():  # compiled to the archive's own no_grad class and set_grad_enabled
                x = x * 1.0
            out, _ = self.lstm(x.unsqueeze(0))
            h, _ = self.gru(x.unsqueeze(0))
            words = ",".join(self.names).upper().split(",")
            return out.sum() + h.mean(), words[0] + str(len(self.table)) + f"{x.dim()}"

    @torch.jit.script
    def control(x: torch.Tensor, n: int) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        while n > 0:
            out.append(torch.clamp(x * n, min=0.0))
            n -= 1
        return out

    modules = {
        "linear": nn.Linear(3, 4), "conv": nn.Conv2d(1, 2, 3), "bn": nn.BatchNorm2d(3),
        "transformer": nn.TransformerEncoderLayer(8, 2), "seq": nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Dropout()),
        "embed": nn.EmbeddingBag(10, 3), "state": WithState(), "mixed": Mixed(),
        "quantized": torch.ao.nn.quantized.Linear(3, 4), "dynamic": torch.ao.nn.quantized.dynamic.LSTM(3, 4),
    }
    out = {name: torch.jit.script(m) for name, m in modules.items()}
    out["control"] = control
    # every torch.nn layer that scripts and saves with default or small arguments
    for name in sorted(dir(nn)):
        cls = getattr(nn, name)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or name in out:
            continue
        for args in ((), (4,), (4, 4), (4, 4, 3), (8, 2)):
            try:
                scripted = torch.jit.script(cls(*args))
                torch.jit.save(scripted, io.BytesIO())
            except Exception:  # noqa: S112 - layers that need other arguments or do not script are skipped
                continue
            out["nn." + name] = scripted
            break
    return out


def test_real_torchscript_scans_clean_and_loads(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import warnings

    warnings.filterwarnings("ignore")
    modules = _real_modules(torch)
    assert len(modules) > 100
    wrong = {}
    for name, module in modules.items():
        path = tmp_path / f"{name}.pt"
        torch.jit.save(module, str(path))
        result = ptfile.scan(path)
        if result.verdict != "clean":
            wrong[name] = (result.verdict, [f.describe() for f in result.findings], result.faults)
            continue
        with ptfile.open(path) as ckpt:
            assert any(record.endswith(".py") for record in ckpt.code)
            expected = torch.jit.load(str(path)).state_dict()
            assert sorted(ckpt.keys()) == sorted(k for k, v in expected.items() if not v.is_quantized)
        ptfile.load(path)
    assert not wrong


def test_fixture_torchscript_stays_clean() -> None:
    fixture = Path(__file__).parent / "fixtures" / "formats" / "scripted.pt"
    result = ptfile.scan(fixture)
    assert result.verdict == "clean" and not result.findings


# -- hostile code, live under torch ------------------------------------------------------------


_LOAD_EACH = textwrap.dedent("""
    import json, sys, torch
    marker = sys.argv[1]
    ran = {}
    import os
    for path in sys.argv[2:]:
        try:
            module = torch.jit.load(path)
            loaded = os.path.exists(marker)
            module(torch.ones(2))
        except Exception:
            loaded = os.path.exists(marker)
        ran[os.path.basename(path)] = [loaded, os.path.exists(marker)]
        if os.path.exists(marker):
            os.remove(marker)
    print(json.dumps(ran))
""")


def test_hostile_code_runs_under_torch_and_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    marker = tmp_path / "ran"
    samples = live_samples(marker)
    paths = []
    for name, (data, _) in samples.items():
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(str(path))
        result = ptfile.scan(path)
        assert result.verdict == "dangerous", name
        assert any("; it calls " in note for note in result.notes), name
        with pytest.raises(ptfile.UnsafeGlobalError):
            ptfile.load(path)
        assert not marker.exists()
    done = subprocess.run([sys.executable, "-c", _LOAD_EACH, str(marker), *paths], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    ran = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (_, on_load) in samples.items():
        loaded, called = ran[name]
        if on_load:  # __setstate__ runs while torch.jit.load rebuilds the module
            assert loaded, name
    live = {name for name, (_, called) in ran.items() if called}
    assert {"TS-torch-save-in-forward.pt", "TS-from_file-in-forward.pt", "TS-case-code-__torch__.PY.pt",
            "TS-case-CODE-__torch__.py.pt", "TS-ops-aten-from_file.pt", "TS-torch-space-from_file.pt"} <= live


# -- TorchBind classes in the pickles ---------------------------------------------------------


def test_torchbind_classes_are_inert_only_when_they_pack_weights() -> None:
    def archive(module: str, name: str) -> bytes:
        obj = Raw(emit(G(module, name), 2) + pickle.EMPTY_TUPLE + pickle.NEWOBJ + emit((b"state",), 2) + pickle.BUILD)
        tree = Raw(emit(G("__torch__", "M"), 2) + pickle.EMPTY_TUPLE + pickle.NEWOBJ + emit({"p": obj}, 2)
                   + pickle.BUILD)
        return build_zip([Member("m/data.pkl", program(tree, 2)), Member("m/code/__torch__.py", b"class M(Module):\n  pass\n"),
                          Member("m/constants.pkl", program((), 2)), Member("m/version", b"6\n")])

    assert ptfile.scan(archive("__torch__.torch.classes.quantized", "LinearPackedParamsBase")).verdict == "clean"
    # a class registered by C++ in the process: its __setstate__ is not archive code, so the archive cannot vouch
    result = ptfile.scan(archive("__torch__.torch.classes.aten", "OpaqueObject"))
    assert result.verdict == "unknown-class"
    assert [f.path for f in result.findings] == ["__torch__.torch.classes.aten.OpaqueObject"]
    with pytest.raises(ptfile.UnsafeGlobalError):
        ptfile.load(archive("__torch__.torch.classes.aten", "OpaqueObject"))
