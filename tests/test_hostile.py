"""Hostile checkpoints: every one must end in a PtfileError, fast, in bounded memory, running nothing.

The attack classes follow the project's security notes (A: dangerous callables,
B: pickle-level tricks, C: zip container tricks, D: tensor metadata, E: resource
exhaustion).  Each payload would create a marker file if any of its code ran;
the tests assert that the marker never appears, that the error type and message
name the reason, and (through tracemalloc) that a tiny input never costs more
than a few MiB.  Benign files built with the same builders must load, so a
refusal is known to come from the attack and not from the builder.

``test_payloads_are_live`` runs the A1 payloads through CPython's own
``pickle.loads`` in a child process and checks that they do create their
markers: the payloads are real, so their refusal by ptfile means something.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import shlex
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import ptfile
from builders import (
    ORDERED_DICT,
    REBUILD_V3,
    Call,
    G,
    Member,
    Raw,
    binunicode,
    build_zip,
    emit,
    frame,
    frame_header,
    glob,
    integer,
    mark_tuple,
    program,
    proto,
    sbu,
    stack_global,
    state_dict,
    storage_pid,
    tensor_v2,
    torch_members,
    torch_zip,
)
from ptfile import (
    CorruptFileError,
    LimitExceededError,
    PtfileError,
    UnsafeGlobalError,
    UnsupportedFormatError,
)
from ptfile.constants import Limits, applying
from ptfile.containers import ziparchive

#: A tiny hostile input may cost at most this much memory to refuse.
PEAK_LIMIT = 64 << 20
PROTOCOLS = (0, 2, 4)
DANGEROUS = r" \[dangerous\]"
TESTS_DIR = Path(__file__).resolve().parent
SRC_DIR = TESTS_DIR.parent / "src"


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


def _measure(action) -> int:
    """Peak traced memory, in bytes, while ``action`` runs."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _open_and_read(path: Path, records: bool) -> None:
    """The lazy handle: open, then read every tensor (storage errors surface only then)."""
    with ptfile.open(path, records=records) as handle:
        for key in handle:
            handle[key]


def assert_refused(tmp_path: Path, blob: bytes, error: type, match: str, *, records: bool = False,
                   marker: Path | None = None):
    """Every entry point refuses ``blob`` with ``error`` matching ``match``, cheaply, running nothing."""
    path = tmp_path / "hostile.pt"
    path.write_bytes(blob)
    caught = []

    def attempts() -> None:
        for attempt in (
            lambda: ptfile.load(path, records=records),
            lambda: ptfile.load(path, mmap=False, records=records),
            lambda: ptfile.load(blob, records=records),
            lambda: _open_and_read(path, records),
        ):
            with pytest.raises(error, match=match) as info:
                attempt()
            caught.append(info.value)

    peak = _measure(attempts)
    assert peak < PEAK_LIMIT, f"refusing a {len(blob)}-byte file peaked at {peak} bytes"
    if marker is not None:
        assert not marker.exists(), "payload code ran"
    return caught[0]


def assert_loads(tmp_path: Path, blob: bytes, *, records: bool = False):
    """``blob`` loads through every entry point within the memory bound; returns the mmap=False tree."""
    path = tmp_path / "benign.pt"
    path.write_bytes(blob)
    trees = []

    def attempts() -> None:
        trees.append(ptfile.load(path, mmap=False, records=records))
        trees.append(ptfile.load(blob, records=records))
        with ptfile.open(path, records=records) as handle:
            for key in handle:
                handle[key]

    peak = _measure(attempts)
    assert peak < PEAK_LIMIT, f"loading a {len(blob)}-byte file peaked at {peak} bytes"
    return trees[0]


def in_zip(pickle_bytes: bytes, storages: dict | None = None, **options) -> bytes:
    return torch_zip(pickle_bytes, storages, **options)


def floats(*values: float) -> bytes:
    return np.array(values, dtype=np.float32).tobytes()


# -- benign controls -----------------------------------------------------------------


def benign_state_dict() -> tuple[bytes, dict]:
    weight = storage_pid("0", 6)
    bias = storage_pid("1", 2)
    pickle_bytes = program(
        state_dict(
            {
                "fc.weight": Call(G("torch._utils", "_rebuild_parameter"),
                                  (tensor_v2(weight, 0, (2, 3), (3, 1)), True, Call(ORDERED_DICT, ()))),
                "fc.bias": tensor_v2(bias, 0, (2,), (1,)),
                "fc.weight_t": tensor_v2(weight, 0, (3, 2), (1, 3)),
            },
            {"": {"version": 1}, "fc": {"version": 1}},
        ),
        2,
    )
    storages = {"0": floats(0, 1, 2, 3, 4, 5), "1": floats(-1, 1)}
    return in_zip(pickle_bytes, storages), storages


def test_benign_state_dict_with_metadata_loads(tmp_path: Path) -> None:
    blob, _ = benign_state_dict()
    tree = assert_loads(tmp_path, blob)
    assert type(tree) is OrderedDict
    assert list(tree) == ["fc.weight", "fc.bias", "fc.weight_t"]
    assert tree._metadata == {"": {"version": 1}, "fc": {"version": 1}}
    assert isinstance(tree["fc.weight"], ptfile.Parameter)
    np.testing.assert_array_equal(tree["fc.weight"], np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(tree["fc.weight_t"], np.arange(6, dtype=np.float32).reshape(2, 3).T)
    np.testing.assert_array_equal(tree["fc.bias"], [-1, 1])


def test_benign_state_dict_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    blob, _ = benign_state_dict()
    ours = ptfile.load(blob)
    theirs = torch.load(io.BytesIO(blob), weights_only=True)
    assert list(ours) == list(theirs)
    assert ours._metadata == theirs._metadata
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key].detach().numpy())


def test_benign_namespace_and_numpy_scalar_load(tmp_path: Path) -> None:
    namespace = Raw(emit(G("argparse", "Namespace"), 2) + pickle.EMPTY_TUPLE + pickle.NEWOBJ
                    + emit({"lr": 0.5, "name": "run"}, 2) + pickle.BUILD)
    scalar = Raw(pickle.dumps(np.float64(2.5), 2)[2:-1])  # numpy's own scalar reduction, without PROTO/STOP
    blob = in_zip(program({"args": namespace, "best": scalar, "epoch": 3}, 2))
    tree = assert_loads(tmp_path, blob)
    assert vars(tree["args"]) == {"lr": 0.5, "name": "run"}
    assert type(tree["best"]) is np.float64 and tree["best"] == 2.5
    assert tree["epoch"] == 3


def test_benign_unknown_class_is_a_record_only_when_asked(tmp_path: Path) -> None:
    model = Raw(emit(G("mymodels", "Net"), 2) + pickle.EMPTY_TUPLE + pickle.NEWOBJ + emit({"depth": 3}, 2) + pickle.BUILD)
    blob = in_zip(program({"model": model}, 2))
    assert_refused(tmp_path, blob, UnsafeGlobalError, r"mymodels\.Net \[unknown-class\].*records=True")
    tree = assert_loads(tmp_path, blob, records=True)
    assert tree["model"].classname == "mymodels.Net" and tree["model"].state == {"depth": 3}


# -- A: dangerous callables ------------------------------------------------------------


def _cmd(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


def _code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _os_system(m: Path) -> Call:
    return G("os", "system")(_cmd(m))


#: A1: (expected global in the message, payload builder, live under CPython's pickle at protocols 0/2/4)
A1 = {
    "os.system": (lambda m: G("os", "system")(_cmd(m)), True),
    "posix.system": (lambda m: G("posix", "system")(_cmd(m)), True),
    "subprocess.Popen": (lambda m: G("subprocess", "Popen")(["touch", str(m)]), True),
    "subprocess.run": (lambda m: G("subprocess", "run")(["touch", str(m)]), True),
    "subprocess.check_output": (lambda m: G("subprocess", "check_output")(["touch", str(m)]), True),
    "builtins.eval": (lambda m: G("builtins", "eval")(_code(m)), True),
    "builtins.exec": (lambda m: G("builtins", "exec")(_code(m)), True),
    "builtins.compile": (lambda m: G("builtins", "exec")(G("builtins", "compile")(_code(m), "<x>", "exec")), True),
    "builtins.open": (lambda m: G("builtins", "open")(str(m), "w"), True),
    "builtins.getattr": (lambda m: G("builtins", "getattr")(G("builtins", "__import__")("os"), "system")(_cmd(m)), True),
    "builtins.__import__": (lambda m: G("builtins", "getattr")(G("builtins", "__import__")("os"), "system")(_cmd(m)), True),
    "builtins.breakpoint": (lambda m: G("builtins", "breakpoint")(), False),
}


@pytest.mark.parametrize("records", [False, True], ids=["strict", "records"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", sorted(A1))
def test_a1_dangerous_callables(tmp_path: Path, marker: Path, name: str, protocol: int, records: bool) -> None:
    build, _ = A1[name]
    blob = in_zip(program(build(marker), protocol))
    assert_refused(tmp_path, blob, UnsafeGlobalError, re.escape(name) + DANGEROUS, records=records, marker=marker)


def test_payloads_are_live(tmp_path: Path) -> None:
    """CPython's unpickler runs the A1 payloads (and the A2 Python 2 name): the refusals above matter."""
    cases = []
    for name, (build, live) in sorted(A1.items()):
        for protocol in PROTOCOLS:
            if live:
                target = tmp_path / f"{name}-{protocol}"
                cases.append((str(target), program(build(target), protocol).hex()))
    target = tmp_path / "commands-2"
    cases.append((str(target), program(G("commands", "getoutput")(_cmd(target)), 2).hex()))
    script = textwrap.dedent(
        """
        import os, pickle, sys, time
        cases = eval(sys.stdin.read())
        for target, payload in cases:
            try:
                pickle.loads(bytes.fromhex(payload))
            except Exception as exc:
                print("raised", target, exc)
        deadline = time.monotonic() + 30  # Popen returns before its child has run
        while time.monotonic() < deadline and not all(os.path.exists(t) for t, _ in cases):
            time.sleep(0.05)
        """
    )
    subprocess.run([sys.executable, "-c", script], input=repr(cases), text=True, cwd=tmp_path,
                   capture_output=True, timeout=120, check=True)
    missing = [target for target, _ in cases if not os.path.exists(target)]
    assert not missing


def test_a2_python2_names_are_normalised(tmp_path: Path, marker: Path) -> None:
    for protocol in (0, 2):
        blob = in_zip(program(G("commands", "getoutput")(_cmd(marker)), protocol))
        error = assert_refused(tmp_path, blob, UnsafeGlobalError, r"subprocess\.getoutput" + DANGEROUS, marker=marker)
        assert {f.path for f in error.findings} == {"subprocess.getoutput"}
    raw = proto(2) + glob("__builtin__", "eval") + binunicode(_code(marker)) + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP
    assert_refused(tmp_path, in_zip(raw), UnsafeGlobalError, r"builtins\.eval" + DANGEROUS, marker=marker)
    # Protocol 3+ pickles are not renamed (CPython does not either): the raw name is refused.
    raw = proto(4) + glob("__builtin__", "eval") + sbu(_code(marker)) + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP
    assert_refused(tmp_path, in_zip(raw), UnsafeGlobalError, r"__builtin__\.eval" + DANGEROUS, marker=marker)


def _dotted(module: str, name: str, *args):
    return G(module, name)(*args)


#: A3-A8: (id, expected global, payload builder, protocols).  Dotted names only resolve at protocol 4.
GADGETS = [
    ("A3-methodcaller", "operator.methodcaller",
     lambda m: G("operator", "methodcaller")("system", _cmd(m))(G("pydoc", "locate")("os")), PROTOCOLS),
    ("A3-_operator", "_operator.methodcaller",
     lambda m: G("_operator", "methodcaller")("system", _cmd(m))(G("pydoc", "locate")("os")), PROTOCOLS),
    ("A3-attrgetter", "operator.attrgetter",
     lambda m: G("operator", "attrgetter")("system")(G("importlib", "import_module")("os"))(_cmd(m)), PROTOCOLS),
    ("A3-resolve_name", "pkgutil.resolve_name", lambda m: G("pkgutil", "resolve_name")("os:system")(_cmd(m)), PROTOCOLS),
    ("A3-getattr_static", "inspect.getattr_static",
     lambda m: G("inspect", "getattr_static")(G("importlib", "import_module")("os"), "system")(_cmd(m)), PROTOCOLS),
    ("A3-partial", "functools.partial", lambda m: G("functools", "partial")(G("os", "system"), _cmd(m))(), PROTOCOLS),
    ("A4-runpy", "runpy._run_code", lambda m: G("runpy", "_run_code")(_code(m), {}), PROTOCOLS),
    ("A4-interpreter", "code.InteractiveInterpreter.runcode",
     lambda m: _dotted("code", "InteractiveInterpreter.runcode", G("code", "InteractiveInterpreter")(), _code(m)), (4,)),
    ("A4-cProfile", "cProfile.run", lambda m: G("cProfile", "run")(_code(m)), PROTOCOLS),
    ("A4-profile", "profile.run", lambda m: G("profile", "run")(_code(m)), PROTOCOLS),
    ("A4-timeit", "timeit.timeit", lambda m: G("timeit", "timeit")(_code(m), "pass", None, 1), PROTOCOLS),
    ("A4-trace", "trace.Trace.run", lambda m: _dotted("trace", "Trace.run", G("trace", "Trace")(), _code(m)), (4,)),
    ("A4-bdb", "bdb.Bdb.run", lambda m: _dotted("bdb", "Bdb.run", G("bdb", "Bdb")(), _code(m)), (4,)),
    ("A4-doctest", "doctest.debug_script", lambda m: G("doctest", "debug_script")(_code(m)), PROTOCOLS),
    ("A4-idlelib", "idlelib.pyshell.main", lambda m: G("idlelib.pyshell", "main")(), PROTOCOLS),
    ("A4-lib2to3", "lib2to3.pgen2.pgen.generate_grammar", lambda m: G("lib2to3.pgen2.pgen", "generate_grammar")(str(m)),
     PROTOCOLS),
    ("A4-runstring", "numpy.testing._private.utils.runstring",
     lambda m: G("numpy.testing._private.utils", "runstring")(_code(m), {}), PROTOCOLS),
    ("A4-f2py", "numpy.f2py.crackfortran.getlincoef",
     lambda m: G("numpy.f2py.crackfortran", "getlincoef")(_code(m), {}), PROTOCOLS),
    ("A4-codetype", "types.CodeType", lambda m: G("types", "CodeType")(0, 0, 0, 0, 0, 0, b"", (), (), (), "", "", 0, b""),
     PROTOCOLS),
    ("A4-cloudpickle", "cloudpickle._make_function", lambda m: G("cloudpickle", "_make_function")(None, {}, None, None, ()),
     PROTOCOLS),
    ("A4-forwardref", "typing.ForwardRef", lambda m: G("typing", "ForwardRef")(_code(m)), PROTOCOLS),
    ("A5-uuid", "uuid._get_command_stdout", lambda m: G("uuid", "_get_command_stdout")("touch", str(m)), PROTOCOLS),
    ("A5-osx", "_osx_support._read_output", lambda m: G("_osx_support", "_read_output")(_cmd(m)), PROTOCOLS),
    ("A5-aix", "_aix_support._read_cmd_output", lambda m: G("_aix_support", "_read_cmd_output")(_cmd(m)), PROTOCOLS),
    ("A5-imaplib", "imaplib.IMAP4_stream", lambda m: G("imaplib", "IMAP4_stream")(_cmd(m)), PROTOCOLS),
    ("A5-pty", "pty.spawn", lambda m: G("pty", "spawn")(["touch", str(m)]), PROTOCOLS),
    ("A5-fork_exec", "_posixsubprocess.fork_exec", lambda m: G("_posixsubprocess", "fork_exec")(["touch", str(m)]),
     PROTOCOLS),
    ("A5-winapi", "_winapi.CreateProcess", lambda m: G("_winapi", "CreateProcess")(None, _cmd(m)), PROTOCOLS),
    ("A5-pipepager", "pydoc.pipepager", lambda m: G("pydoc", "pipepager")("x", _cmd(m)), PROTOCOLS),
    ("A5-venv", "venv.create", lambda m: G("venv", "create")(str(m)), PROTOCOLS),
    ("A5-ensurepip", "ensurepip._run_pip", lambda m: G("ensurepip", "_run_pip")(["--version"]), PROTOCOLS),
    ("A5-pip", "pip.main", lambda m: G("pip", "main")(["--version"]), PROTOCOLS),
    ("A5-ctypes", "ctypes.CDLL", lambda m: G("ctypes", "CDLL")("libc.so.6"), PROTOCOLS),
    ("A5-asyncio", "asyncio.unix_events._UnixSubprocessTransport._start",
     lambda m: _dotted("asyncio.unix_events", "_UnixSubprocessTransport._start", None, _cmd(m), True, None, None, None, 0),
     (4,)),
    ("A6-fileio", "_io.FileIO", lambda m: G("_io", "FileIO")(str(m), "w"), PROTOCOLS),
    ("A6-filehandler", "logging.FileHandler", lambda m: G("logging", "FileHandler")(str(m)), PROTOCOLS),
    ("A6-write_file", "distutils.file_util.write_file",
     lambda m: G("distutils.file_util", "write_file")(str(m), ["x"]), PROTOCOLS),
    ("A6-shutil", "shutil.copyfile", lambda m: G("shutil", "copyfile")(__file__, str(m)), PROTOCOLS),
    ("A6-urlopen", "urllib.request.urlopen", lambda m: G("urllib.request", "urlopen")("http://127.0.0.1:9/"), PROTOCOLS),
    ("A6-requests", "requests.get", lambda m: G("requests", "get")("http://127.0.0.1:9/"), PROTOCOLS),
    ("A6-socket", "socket.create_connection", lambda m: G("socket", "create_connection")(("127.0.0.1", 9)), PROTOCOLS),
    ("A6-ssl", "ssl.get_server_certificate", lambda m: G("ssl", "get_server_certificate")(("127.0.0.1", 9)), PROTOCOLS),
    ("A6-webbrowser", "webbrowser.open", lambda m: G("webbrowser", "open")("file://" + str(m)), PROTOCOLS),
    ("A7-torch.load", "torch.load", lambda m: G("functools", "partial")(G("torch", "load"), str(m))(), PROTOCOLS),
    ("A7-load_from_bytes", "torch.storage._load_from_bytes",
     lambda m: G("torch.storage", "_load_from_bytes")(program(_os_system(m), 2)), PROTOCOLS),
    ("A7-compile_file", "torch._inductor.codecache.compile_file",
     lambda m: G("torch._inductor.codecache", "compile_file")([str(m)], str(m), [_cmd(m)]), PROTOCOLS),
    ("A7-execWrapper", "torch.jit.unsupported_tensor_ops.execWrapper",
     lambda m: G("torch.jit.unsupported_tensor_ops", "execWrapper")(_code(m), {}, {}), PROTOCOLS),
    ("A7-guards", "torch._dynamo.guards.GuardBuilder.get",
     lambda m: _dotted("torch._dynamo.guards", "GuardBuilder.get", None, _code(m)), (4,)),
    ("A7-shapeenv", "torch.fx.experimental.symbolic_shapes.ShapeEnv.evaluate_guards_expression",
     lambda m: _dotted("torch.fx.experimental.symbolic_shapes", "ShapeEnv.evaluate_guards_expression", None, _code(m), []),
     (4,)),
    ("A7-collect_env", "torch.utils.collect_env.run", lambda m: G("torch.utils.collect_env", "run")(_cmd(m)), PROTOCOLS),
    ("A7-load_config", "torch.utils._config_module.ConfigModule.load_config",
     lambda m: _dotted("torch.utils._config_module", "ConfigModule.load_config", None, b"x"), (4,)),
    ("A7-hub", "torch.hub.load", lambda m: G("torch.hub", "load")("attacker/repo", "model"), PROTOCOLS),
    ("A7-allowed-module", "torch._utils._import_dotted_name",
     lambda m: G("torch._utils", "_import_dotted_name")("os.system")(_cmd(m)), PROTOCOLS),
    ("A8-pickle", "pickle.loads", lambda m: G("pickle", "loads")(program(_os_system(m), 2)), PROTOCOLS),
    ("A8-_pickle", "_pickle.loads", lambda m: G("_pickle", "loads")(program(_os_system(m), 2)), PROTOCOLS),
    ("A8-numpy", "numpy.load", lambda m: G("numpy", "load")(str(m), None, True), PROTOCOLS),
    ("A8-joblib", "joblib.load", lambda m: G("joblib", "load")(str(m)), PROTOCOLS),
    ("A8-dill", "dill.loads", lambda m: G("dill", "loads")(b"x"), PROTOCOLS),
    ("A8-marshal", "marshal.loads", lambda m: G("marshal", "loads")(b"x"), PROTOCOLS),
]


@pytest.mark.parametrize("records", [False, True], ids=["strict", "records"])
@pytest.mark.parametrize(
    "expected, build, protocol",
    [pytest.param(name, build, p, id=f"{case}-p{p}") for case, name, build, protos in GADGETS for p in protos],
)
def test_a3_to_a8_gadgets(tmp_path: Path, marker: Path, expected: str, build, protocol: int, records: bool) -> None:
    blob = in_zip(program(build(marker), protocol))
    assert_refused(tmp_path, blob, UnsafeGlobalError, re.escape(expected) + DANGEROUS, records=records, marker=marker)


@pytest.mark.parametrize("records", [False, True], ids=["strict", "records"])
@pytest.mark.parametrize(
    "module, name",
    [("pathlib", "os.system"), ("torch.serialization", "os.system"), ("torch", "_utils._rebuild_tensor_v2"),
     ("collections", "OrderedDict.__init__.__globals__"), ("argparse", "Namespace.__init__")],
)
def test_a9_dotted_names_via_stack_global(tmp_path: Path, marker: Path, module: str, name: str, records: bool) -> None:
    pickle_bytes = proto(4) + frame(stack_global(module, name) + sbu(_cmd(marker)) + pickle.TUPLE1 + pickle.REDUCE
                                    + pickle.STOP)
    assert_refused(tmp_path, in_zip(pickle_bytes), UnsafeGlobalError, re.escape(f"{module}.{name}") + DANGEROUS,
                   records=records, marker=marker)


@pytest.mark.parametrize("records", [False, True], ids=["strict", "records"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a10_calls_without_reduce(tmp_path: Path, marker: Path, protocol: int, records: bool) -> None:
    cmd = _cmd(marker)
    inst = Call(G("os", "system"), (cmd,), how="inst")
    obj = Call(G("os", "system"), (cmd,), how="obj")
    for payload in (inst, obj):
        blob = in_zip(program(payload, protocol))
        assert_refused(tmp_path, blob, UnsafeGlobalError, r"os\.system" + DANGEROUS, records=records, marker=marker)
    # fickling's OBJ-then-POP: the call's result is discarded and the pickle returns None.
    pop = program(Raw(emit(Call(G("smtplib", "SMTP"), ("127.0.0.1",), how="obj"), protocol) + pickle.POP + pickle.NONE),
                  protocol)
    assert_refused(tmp_path, in_zip(pop), UnsafeGlobalError, r"smtplib\.SMTP" + DANGEROUS, records=records, marker=marker)
    if protocol >= 2:
        newobj = Call(G("subprocess", "Popen"), (["touch", str(marker)],), how="newobj")
        blob = in_zip(program(newobj, protocol))
        assert_refused(tmp_path, blob, UnsafeGlobalError, r"subprocess\.Popen" + DANGEROUS, records=records,
                       marker=marker)
    if protocol >= 4:
        newobj_ex = Call(G("subprocess", "Popen"), (), how="newobj_ex", kwargs={"args": ["touch", str(marker)]})
        blob = in_zip(program(newobj_ex, protocol))
        assert_refused(tmp_path, blob, UnsafeGlobalError, r"subprocess\.Popen" + DANGEROUS, records=records,
                       marker=marker)


def _thing(state_ops: bytes) -> bytes:
    return program(Raw(emit(G("mymodels", "Thing"), 2) + pickle.EMPTY_TUPLE + pickle.NEWOBJ + state_ops), 2)


def test_a10_double_build(tmp_path: Path, marker: Path) -> None:
    code = _code(marker)
    # On an unknown class: the first BUILD names exec, so even records=True refuses the file.
    first = emit({"__setstate__": G("builtins", "exec")}, 2) + pickle.BUILD
    second = emit(code, 2) + pickle.BUILD
    blob = in_zip(_thing(first + second))
    for records in (False, True):
        assert_refused(tmp_path, blob, UnsafeGlobalError, r"builtins\.exec" + DANGEROUS, records=records, marker=marker)
    # On types ptfile builds itself, BUILD sets plain attributes only; dunder names are refused.
    for target in (Call(ORDERED_DICT, ()), Call(G("argparse", "Namespace"), ())):
        ops = emit(target, 2) + emit({"__setstate__": "x"}, 2) + pickle.BUILD + emit(code, 2) + pickle.BUILD
        blob = in_zip(program(Raw(ops), 2))
        assert_refused(tmp_path, blob, CorruptFileError, r"BUILD may not set attribute '__setstate__'", marker=marker)
        ops = emit(target, 2) + emit(code, 2) + pickle.BUILD
        assert_refused(tmp_path, in_zip(program(Raw(ops), 2)), CorruptFileError, r"BUILD state for \w+ must be a dict")
    # BUILD on a plain list or a string is refused outright.
    for target in ([], "text", 5):
        ops = emit(target, 2) + emit({"a": 1}, 2) + pickle.BUILD
        assert_refused(tmp_path, in_zip(program(Raw(ops), 2)), CorruptFileError, r"BUILD on a \w+ at byte \d+ is not allowed")


@pytest.mark.parametrize(
    "target, op, expected",
    [
        ("text", pickle.APPEND, "APPEND on a str"),
        ((1, 2), pickle.APPEND, "APPEND on a tuple"),
        ({}, pickle.APPEND, "APPEND on a dict"),
        (G("torch", "float32"), pickle.APPEND, "APPEND on a TorchDtype"),
        ([], pickle.SETITEM, "SETITEM on a list"),
        (7, pickle.SETITEM, "SETITEM on a int"),
        (G("torch", "FloatStorage"), pickle.SETITEM, "SETITEM on a StorageType"),
        ([], b"ADDITEMS", "ADDITEMS on a list"),
    ],
)
def test_a10_container_ops_on_non_containers(tmp_path: Path, target, op: bytes, expected: str) -> None:
    if op == pickle.APPEND:
        ops = emit(target, 2) + emit(1, 2) + pickle.APPEND
    elif op == pickle.SETITEM:
        ops = emit(target, 2) + emit("k", 2) + emit(1, 2) + pickle.SETITEM
    else:
        ops = emit(target, 2) + pickle.MARK + emit(1, 2) + pickle.ADDITEMS
    blob = in_zip(program(Raw(ops), 4 if op == b"ADDITEMS" else 2))
    assert_refused(tmp_path, blob, CorruptFileError, re.escape(expected))
    # The same operations on a record of an unknown class are stored in it, never applied to anything.
    if op != b"ADDITEMS":
        thing = emit(G("mymodels", "Thing"), 2) + pickle.EMPTY_TUPLE + pickle.NEWOBJ
        extra = emit(1, 2) + pickle.APPEND if op == pickle.APPEND else emit("k", 2) + emit(1, 2) + pickle.SETITEM
        tree = assert_loads(tmp_path, in_zip(program(Raw(thing + extra), 2)), records=True)
        assert tree.listitems == [1] if op == pickle.APPEND else tree.items == {"k": 1}


# -- B: pickle-level tricks ---------------------------------------------------------------


def test_b1_memo_shuffle(tmp_path: Path, marker: Path) -> None:
    def remember(value: str, slot: int) -> bytes:
        return binunicode(value) + pickle.BINPUT + bytes([slot]) + pickle.POP

    body = (remember("os", 2) + remember("system", 3) + remember("torch", 0) + remember("LongStorage", 1)
            + pickle.BINGET + b"\x02" + pickle.BINGET + b"\x03" + pickle.STACK_GLOBAL
            + mark_tuple(binunicode(_cmd(marker))) + pickle.REDUCE + pickle.STOP)
    error = assert_refused(tmp_path, in_zip(proto(4) + body), UnsafeGlobalError, r"os\.system" + DANGEROUS, marker=marker)
    assert "LongStorage" not in str(error)


def test_b2_stack_global_operands_from_string_and_runtime(tmp_path: Path, marker: Path) -> None:
    cmd = _cmd(marker)
    pickle_bytes = b"S'os'\nS'system'\n" + pickle.STACK_GLOBAL + b"S" + repr(cmd).encode() + b"\n" + pickle.TUPLE1 \
        + pickle.REDUCE + pickle.STOP
    assert_refused(tmp_path, in_zip(pickle_bytes), UnsafeGlobalError, r"os\.system" + DANGEROUS, marker=marker)
    # Operands computed by a call are records, never strings: the call is refused first.
    computed = emit(G("builtins", "str")("os"), 4) + sbu("system") + pickle.STACK_GLOBAL
    blob = in_zip(proto(4) + computed + sbu(cmd) + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)
    assert_refused(tmp_path, blob, UnsafeGlobalError, r"builtins\.str" + DANGEROUS, marker=marker)
    # Operands of an allowed constructor are values, not names.
    computed = emit(Call(G("_codecs", "encode"), ("os", "latin1")), 2) + binunicode("system") + pickle.STACK_GLOBAL
    blob = in_zip(proto(2) + computed + pickle.STOP)
    assert_refused(tmp_path, blob, CorruptFileError, r"global name at byte \d+ is not a pair of strings")


def pickle_byte(n: int) -> int:
    """The file offset of byte ``n`` of ``data.pkl`` in an ``in_zip`` archive: messages give file offsets."""
    from ptfile.containers.ziparchive import ZipArchive
    from ptfile.io.source import MappedSource

    archive = ZipArchive(MappedSource(in_zip(program(None, 2)), "probe"))
    return archive.data_offset(archive.entry("archive/data.pkl")) + n


def test_b3_memo_poison(tmp_path: Path) -> None:
    missing = proto(2) + pickle.BINGET + b"\x07" + pickle.STOP
    assert_refused(tmp_path, in_zip(missing), CorruptFileError, rf"malformed pickle at byte {pickle_byte(2)}: KeyError")
    popped = proto(2) + pickle.NONE + pickle.POP + pickle.BINPUT + b"\x00" + pickle.NONE + pickle.STOP
    assert_refused(tmp_path, in_zip(popped), CorruptFileError, rf"malformed pickle at byte {pickle_byte(4)}: IndexError")
    int_as_global = proto(4) + integer(5) + pickle.BINPUT + b"\x00" + pickle.BINGET + b"\x00" + sbu("x") \
        + pickle.STACK_GLOBAL + pickle.STOP
    assert_refused(tmp_path, in_zip(int_as_global), CorruptFileError, r"is not a pair of strings")
    int_called = proto(2) + integer(5) + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.STOP
    assert_refused(tmp_path, in_zip(int_called), CorruptFileError, r"call of a non-global int")


def test_b4_broken_pickle_after_payload_is_reported_unsafe(tmp_path: Path, marker: Path) -> None:
    payload = program(_os_system(marker), 2)[:-1]  # everything up to STOP
    for tail in (b"\x00", b"", b"\xff" * 3, pickle.MARK):
        blob = in_zip(payload + tail)
        assert_refused(tmp_path, blob, UnsafeGlobalError, r"os\.system" + DANGEROUS, marker=marker)
    blob = in_zip(program(7, 2) + b"junk")
    assert_refused(tmp_path, blob, CorruptFileError, r"4 bytes follow the pickle's STOP")


def test_b5_stacked_pickle_is_never_run(tmp_path: Path, marker: Path) -> None:
    blob = in_zip(program(7, 2) + program(_os_system(marker), 2))
    assert_refused(tmp_path, blob, CorruptFileError, r"bytes follow the pickle's STOP", marker=marker)


def test_b6_frame_straddle(tmp_path: Path, marker: Path) -> None:
    # fickling's test_frame_boundary: the call hides in bytes that straddle a frame's end.
    hidden = (glob("builtins", "exec") + binunicode(_code(marker)) + pickle.TUPLE1 + pickle.REDUCE + pickle.MARK)
    hidden = hidden.ljust(0x107 + 2, pickle.NONE)
    body = (proto(5) + pickle.NONE + binunicode("a" * (131072 - 17)) + pickle.POP + pickle.MARK + frame_header(2)
            + pickle.BINBYTES + struct.pack("<I", 0x107) + hidden + pickle.POP_MARK + pickle.STOP)
    assert_refused(tmp_path, in_zip(body), CorruptFileError, r"straddles the end of its frame", marker=marker)
    nested = proto(4) + frame_header(12) + pickle.NONE + frame(pickle.NONE + pickle.POP) + pickle.STOP
    assert_refused(tmp_path, in_zip(nested), CorruptFileError, r"FRAME at byte \d+ inside another frame")
    short = proto(4) + frame_header(100) + pickle.NONE + pickle.STOP
    assert_refused(tmp_path, in_zip(short), CorruptFileError, rf"length 100 at byte {pickle_byte(11)} runs past the end")
    # Frames that follow each other are fine.
    assert ptfile.load(in_zip(proto(4) + frame(pickle.NONE) + frame(pickle.STOP))) is None


def test_b7_structural_disagreements(tmp_path: Path) -> None:
    late_proto = pickle.NONE + proto(2) + pickle.STOP
    assert_refused(tmp_path, in_zip(late_proto), CorruptFileError, rf"PROTO at byte {pickle_byte(1)} is not the first opcode")
    twice = proto(2) + proto(2) + pickle.NONE + pickle.STOP
    assert_refused(tmp_path, in_zip(twice), CorruptFileError, rf"PROTO at byte {pickle_byte(2)} is not the first opcode")
    future = proto(6) + pickle.NONE + pickle.STOP
    assert_refused(tmp_path, in_zip(future), CorruptFileError, r"unsupported pickle protocol 6")
    extra = proto(2) + pickle.NONE + pickle.NONE + pickle.STOP
    assert_refused(tmp_path, in_zip(extra), CorruptFileError, rf"STOP at byte {pickle_byte(4)} leaves 2 values and 0 open MARKs")
    leftover = proto(2) + pickle.MARK + pickle.NONE + pickle.STOP
    assert_refused(tmp_path, in_zip(leftover), CorruptFileError, r"leaves 1 values and 1 open MARKs")
    for index in (str(sys.maxsize + 1), "99999999999999999999", "-1"):
        huge_put = pickle.NONE + pickle.PUT + index.encode() + b"\n" + pickle.STOP
        assert_refused(tmp_path, in_zip(huge_put), CorruptFileError, rf"PUT index at byte {pickle_byte(1)} is out of range")
    # Indices CPython accepts cost one memo entry, not a table of that size.
    fine = pickle.NONE + pickle.PUT + str(sys.maxsize).encode() + b"\n" + pickle.GET + str(sys.maxsize).encode() \
        + b"\n" + pickle.POP + pickle.STOP
    assert assert_loads(tmp_path, in_zip(fine)) is None


def test_b9_type_confusion(tmp_path: Path, marker: Path) -> None:
    bare = program(_os_system(marker), 2)
    # a plain pickle under a checkpoint's name is read as the pickle it is: through the engine
    assert_refused(tmp_path, bare, UnsafeGlobalError, r"os\.system" + DANGEROUS, marker=marker)
    protocol0 = program(_os_system(marker), 0)
    assert_refused(tmp_path, protocol0, UnsafeGlobalError, r"os\.system" + DANGEROUS, marker=marker)
    polyglot = bare + in_zip(program(7, 2))  # torch's non-zip path runs the leading pickle
    assert_refused(tmp_path, polyglot, UnsafeGlobalError, r"os\.system" + DANGEROUS, marker=marker)
    renamed = build_zip([Member("archive/data.txt", bare), Member("archive/version", b"3\n")])
    assert_refused(tmp_path, renamed, CorruptFileError, r"zip archive has no archive/data\.pkl record", marker=marker)


def test_b10_error_paths_never_leak_other_exceptions(tmp_path: Path) -> None:
    samples = [
        proto(2) + pickle.TUPLE + pickle.STOP,  # TUPLE without MARK
        proto(2) + pickle.POP_MARK + pickle.STOP,
        proto(2) + pickle.STOP,  # empty stack
        proto(2) + pickle.BINUNICODE + b"\x02\x00\x00\x00\xff\xfe" + pickle.STOP,  # invalid utf-8
        pickle.INT + b"12x\n" + pickle.STOP,
        pickle.LONG + b"9" * 5000 + b"L\n" + pickle.STOP,  # past CPython's digit limit
        pickle.FLOAT + b"nanx\n" + pickle.STOP,
        pickle.STRING + b"'unterminated\n" + pickle.STOP,
        pickle.GLOBAL + b"os" + pickle.STOP,  # no newline
        proto(2) + pickle.EMPTY_DICT + pickle.MARK + pickle.NONE + pickle.SETITEMS + pickle.STOP,  # odd items
        proto(2) + pickle.BINFLOAT + b"\x00" + pickle.STOP,  # truncated float
        proto(4) + pickle.NONE + pickle.STACK_GLOBAL + pickle.STOP,
        proto(2) + emit(G("collections", "OrderedDict"), 2) + emit((1, 2, 3), 2) + pickle.REDUCE + pickle.STOP,
        proto(2) + emit(G("torch", "Size"), 2) + emit((["x"],), 2) + pickle.REDUCE + pickle.STOP,
    ]
    for sample in samples:
        assert_refused(tmp_path, in_zip(sample), CorruptFileError, r"archive/data\.pkl")


# -- C: zip container tricks ----------------------------------------------------------------


def _benign_members() -> list[Member]:
    return torch_members(program(tensor_v2(storage_pid("0", 2), 0, (2,), (1,)), 2), {"0": floats(1, 2)})


def test_c2_wrong_crc_loads_like_torch(tmp_path: Path) -> None:
    members = _benign_members()
    for member in members:
        member.crc = 0xDEADBEEF
    blob = build_zip(members)
    np.testing.assert_array_equal(assert_loads(tmp_path, blob), [1, 2])
    archive = ziparchive.ZipArchive(ptfile.io.source.MappedSource(blob, "x"))
    assert not archive.verify_crc(archive.entry("archive/data.pkl"))
    assert any("CRC" in note for note in archive.anomalies)
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(torch.load(io.BytesIO(blob), weights_only=True).numpy(), [1, 2])


def test_c3_local_name_differs_from_central_name(tmp_path: Path, marker: Path) -> None:
    members = torch_members(program(_os_system(marker), 2))
    members[0].local_name = "archive/datap.kl"
    assert_refused(tmp_path, build_zip(members), UnsafeGlobalError, r"os\.system" + DANGEROUS, marker=marker)
    members = _benign_members()
    members[0].local_name = "archive/data.pkl.with.a.longer.local.name"
    blob = build_zip(members)
    np.testing.assert_array_equal(assert_loads(tmp_path, blob), [1, 2])
    archive = ziparchive.ZipArchive(ptfile.io.source.MappedSource(blob, "x"))
    archive.read(archive.entry("archive/data.pkl"))
    assert any("local name" in note for note in archive.anomalies)


def test_c4_flag_bits_over_plain_data(tmp_path: Path, marker: Path) -> None:
    for flags in (0x20, 0x40):
        members = torch_members(program(_os_system(marker), 2))
        members[0].flags = 0x808 | flags
        assert_refused(tmp_path, build_zip(members), UnsafeGlobalError, r"os\.system" + DANGEROUS, marker=marker)
        members = _benign_members()
        members[0].flags = 0x808 | flags
        np.testing.assert_array_equal(assert_loads(tmp_path, build_zip(members)), [1, 2])
    members = torch_members(program(_os_system(marker), 2))
    members[0].flags = 0x809
    assert_refused(tmp_path, build_zip(members), UnsupportedFormatError, r"record 'archive/data.pkl' is encrypted",
                   marker=marker)


def test_c5_duplicate_names_refused(tmp_path: Path, marker: Path) -> None:
    members = torch_members(program(_os_system(marker), 2))
    benign = Member("archive/data.pkl", program(7, 2))
    for order in ([benign, *members], [*members, benign]):
        assert_refused(tmp_path, build_zip(order), CorruptFileError, r"zip record 'archive/data.pkl' appears twice",
                       marker=marker)


def test_c6_prefix_tricks(tmp_path: Path, marker: Path) -> None:
    evil = program(_os_system(marker), 2)
    # Records outside the prefix, extra pickles and debug pickles are never run by load, but they
    # are judged like the object pickle, so load refuses what the scanner calls dangerous.
    for extra in ("other/data.pkl", "archive/extra.pkl", "archive/code/x.debug_pkl"):
        blob = build_zip([*_benign_members(), Member(extra, evil)])
        assert_refused(tmp_path, blob, UnsafeGlobalError, re.escape(extra) + r".*os\.system|os\.system.*"
                       + re.escape(extra), marker=marker)
    benign_extras = [Member("other/data.pkl", program(7, 2)), Member("archive/extra.pkl", program([1], 2))]
    np.testing.assert_array_equal(assert_loads(tmp_path, build_zip([*_benign_members(), *benign_extras])), [1, 2])
    # The prefix is the first central entry's folder, as torch reads it.
    blob = build_zip([*torch_members(evil, prefix="evil"), *_benign_members()])
    assert_refused(tmp_path, blob, UnsafeGlobalError, r"os\.system" + DANGEROUS, marker=marker)
    blob = build_zip([Member("loose.pkl", evil), *_benign_members()])
    assert_refused(tmp_path, blob, CorruptFileError, r"first zip record 'loose.pkl' is not inside an archive folder")
    # Bytes before the first local header, and torch's preview magic.
    assert_refused(tmp_path, b"\0" * 4 + build_zip(_benign_members()), CorruptFileError, r"not a PyTorch checkpoint")
    assert_refused(tmp_path, build_zip(_benign_members(), head=evil), UnsafeGlobalError, r"os\.system" + DANGEROUS,
                   marker=marker)
    assert_refused(tmp_path, b"PYTORCH1" + build_zip(_benign_members()), UnsupportedFormatError, r"preview-release")


def test_c7_torchscript_archive_refused(tmp_path: Path, marker: Path) -> None:
    # TorchScript archives are read (their code never runs); their constants go through the engine too
    members = [*_benign_members(), Member("archive/constants.pkl", program(_os_system(marker), 2))]
    assert_refused(tmp_path, build_zip(members), UnsafeGlobalError, r"constants\.pkl", marker=marker)


@pytest.mark.parametrize("key", ["../x", "../../etc/passwd", "/abs", "a/b", "x\x00y", "C:\\x", "", "0.."])
def test_c9_storage_key_must_be_a_plain_name(tmp_path: Path, key: str) -> None:
    members = torch_members(program(tensor_v2(storage_pid(key, 2), 0, (2,), (1,)), 2), {"0": floats(1, 2)})
    assert_refused(tmp_path, build_zip(members), CorruptFileError, r"storage key .* is not a plain name")


def test_c9_zip_slip_member_names_are_inert(tmp_path: Path) -> None:
    extras = [Member("../x", b"a"), Member("/abs", b"b"), Member("archive/../../y", b"c")]
    blob = build_zip([*_benign_members(), *extras])
    np.testing.assert_array_equal(assert_loads(tmp_path, blob), [1, 2])
    assert sorted(os.listdir(tmp_path)) == ["benign.pt"]
    # Python's zipfile cuts a name at NUL: it would read this record by another name than torch does
    blob = build_zip([*_benign_members(), Member("archive/x\x00y", b"d")])
    assert_refused(tmp_path, blob, CorruptFileError, r"'archive/x\\x00y' holds a NUL byte")


def test_c10_deflate_bomb_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = b"\0" * (64 << 20)  # 64 MiB of zeros deflate to about 64 KiB
    members = torch_members(program(tensor_v2(storage_pid("0", len(bomb), "ByteStorage"), 0, (len(bomb),), (1,)), 2),
                            {"0": bomb})
    members[2].method = ziparchive.DEFLATED
    blob = build_zip(members)
    assert len(blob) < (1 << 20)
    with applying(Limits(max_inflated_record_bytes=1 << 20)):
        assert_refused(tmp_path, blob, LimitExceededError, r"inflates to 67108864 bytes, over max_inflated_record_bytes "
                       r"\(1 MiB\); pass limits=ptfile\.Limits\(max_inflated_record_bytes=\.\.\.\) to raise it")
    # A record that inflates to more than it declares stops at the declared size.
    members[2].central_size = 4
    small = torch_members(program(tensor_v2(storage_pid("0", 4, "ByteStorage"), 0, (4,), (1,)), 2))
    blob = build_zip([*small[:2], members[2], *small[2:]])
    assert_refused(tmp_path, blob, CorruptFileError, r"inflates to more than 4 bytes, not the declared 4")


def test_c10_overlapping_entries_refused(tmp_path: Path) -> None:
    storage = b"\0" * (1 << 20)
    keys = [str(i) for i in range(50)]
    tensors = [tensor_v2(storage_pid(k, len(storage), "ByteStorage"), 0, (len(storage),), (1,)) for k in keys]
    members = torch_members(program(tensors, 2), {"0": storage})
    members[2].method = ziparchive.DEFLATED
    aliases = [Member(f"archive/data/{k}", alias_of="archive/data/0") for k in keys[1:]]
    blob = build_zip([*members, *aliases])
    assert_refused(tmp_path, blob, CorruptFileError, r"overlaps the next record")
    # A local extra field that pushes the data into the next record is caught when the data is read.
    members = _benign_members()
    members[0].central_csize = members[0].central_size = len(members[0].data) + 200
    assert_refused(tmp_path, build_zip(members), CorruptFileError, r"past the start of the next record")


def test_c10_false_sizes_and_counts(tmp_path: Path) -> None:
    members = _benign_members()
    members[2].zip64 = True
    np.testing.assert_array_equal(assert_loads(tmp_path, build_zip(members)), [1, 2])  # a true ZIP64 entry is fine
    members[2].central_size = members[2].central_csize = 1 << 62
    assert_refused(tmp_path, build_zip(members), CorruptFileError, r"declares 8 bytes but its record holds 4611686018427387904")
    members = _benign_members()
    members[0].zip64 = True
    members[0].central_size = members[0].central_csize = 1 << 62
    assert_refused(tmp_path, build_zip(members), CorruptFileError, r"lie outside the \d+-byte file")
    assert_refused(tmp_path, build_zip(_benign_members(), zip64_count=10**6), CorruptFileError,
                   r"cannot hold 1000000 records")
    assert_refused(tmp_path, build_zip(_benign_members(), zip64_count=2**63), CorruptFileError, r"cannot hold")
    assert_refused(tmp_path, build_zip(_benign_members(), zip64_cd_size=2**62), CorruptFileError, r"lie outside")
    assert_refused(tmp_path, build_zip(_benign_members(), zip64_cd_offset=2**62), CorruptFileError, r"lie outside")
    assert_refused(tmp_path, build_zip(_benign_members(), locator_offset=2**63), CorruptFileError,
                   r"points at byte 9223372036854775808, where no zip64 end record fits")
    # No zip64 end record where the locator points: torch's reader (miniz) keeps the end record's own
    # fields, and Python's zipfile, reading the zip64 end record before the locator, finds the same.
    np.testing.assert_array_equal(assert_loads(tmp_path, build_zip(_benign_members(), locator_offset=0)), [1, 2])
    assert_refused(tmp_path, build_zip(_benign_members(), zip64_end=False, count=0xFFFF), CorruptFileError,
                   r"needs a zip64 record")
    members = _benign_members()
    members[0].zip64 = True
    members[0].central_offset = 1 << 40
    assert_refused(tmp_path, build_zip(members), CorruptFileError, r"overlaps|lie outside")


def test_c10_many_entries_cost_memory_in_proportion(tmp_path: Path) -> None:
    extras = [Member(f"archive/extra/{i}") for i in range(20_000)]
    blob = build_zip([*_benign_members(), *extras])
    np.testing.assert_array_equal(ptfile.load(blob), [1, 2])
    peak = _measure(lambda: ptfile.load(blob))
    assert peak < 16 * len(blob), f"a {len(blob)}-byte archive peaked at {peak} bytes"


def _small_valid_file() -> bytes:
    blob, _ = benign_state_dict()
    return blob


def test_c10_every_truncation_is_a_ptfile_error() -> None:
    blob = _small_valid_file()
    for length in range(len(blob)):
        with pytest.raises(PtfileError):
            ptfile.load(blob[:length])
        with pytest.raises(PtfileError):
            ptfile.open(blob[:length])


def _load_everything(blob: bytes) -> None:
    ptfile.load(blob)
    with ptfile.open(blob) as handle:
        for key in handle:
            handle.info(key)
            handle[key]


def test_c10_random_byte_flips_end_in_ptfile_error_or_a_load() -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    blob = _small_valid_file()

    @settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 255)), min_size=1, max_size=6))
    def flips(changes: list) -> None:
        data = bytearray(blob)
        for at, value in changes:
            data[at] = value
        with contextlib.suppress(PtfileError):
            _load_everything(bytes(data))

    flips()


# -- D: tensor and storage metadata ----------------------------------------------------------


def _tensor_file(tensor: Call, storages: dict | None = None) -> bytes:
    return in_zip(program({"t": tensor}, 2), storages if storages is not None else {"0": floats(*range(10))})


def test_d1_storage_larger_or_smaller_than_its_record(tmp_path: Path) -> None:
    big = _tensor_file(tensor_v2(storage_pid("0", 256, "LongStorage"), 0, (256,), (1,)), {"0": bytes(80)})
    assert_refused(tmp_path, big, CorruptFileError, r"storage '0' declares 2048 bytes but its record holds 80")
    small = _tensor_file(tensor_v2(storage_pid("0", 5, "LongStorage"), 0, (5,), (1,)), {"0": bytes(80)})
    assert_refused(tmp_path, small, CorruptFileError, r"declares 40 bytes but its record holds 80")
    missing = _tensor_file(tensor_v2(storage_pid("7", 10), 0, (10,), (1,)))
    assert_refused(tmp_path, missing, CorruptFileError, r"storage '7' has no record archive/data/7")


@pytest.mark.parametrize(
    "offset, size, stride, match",
    [
        (0, (11,), (1,), r"reaches element 10 of storage '0', which holds 10"),
        (10, (1,), (1,), r"reaches element 10"),
        (0, (2**62,), (1,), r"reaches element"),
        (0, (2, 5), (6, 1), r"reaches element 10"),
        (0, (-1,), (1,), r"not a non-negative integer"),
        (0, (5,), (-1,), r"not a non-negative integer"),
        (-1, (5,), (1,), r"storage offset -1 is not a non-negative integer"),
        (0, (5,), (1, 1), r"differ in length"),
        (0, (1,) * 10**5, (1,) * 10**5, r"tuple of at most 64 integers"),
        (0, [5], [1], r"must be a tuple"),
        (2**64, (1,), (1,), r"reaches element"),
    ],
)
def test_d2_views_out_of_bounds(tmp_path: Path, offset, size, stride, match: str) -> None:
    blob = _tensor_file(tensor_v2(storage_pid("0", 10), offset, size, stride))
    assert_refused(tmp_path, blob, CorruptFileError, match)


def test_d2_int64_overflow_of_the_tensor_size(tmp_path: Path) -> None:
    blob = _tensor_file(tensor_v2(storage_pid("0", 10), 0, (2**32, 2**32), (0, 0)))
    with pytest.raises(LimitExceededError, match="more than numpy can index"), ptfile.open(blob) as handle:
        handle["t"]


def test_d2_int64_overflow_refused_by_load(tmp_path: Path) -> None:
    blob = _tensor_file(tensor_v2(storage_pid("0", 10), 0, (2**32, 2**32), (0, 0)))
    with pytest.raises(LimitExceededError, match="more than numpy can index"):
        ptfile.load(blob)


def test_d2_zero_stride_view_with_neg_flag_is_not_expanded(tmp_path: Path) -> None:
    blob = _tensor_file(tensor_v2(storage_pid("0", 10), 0, (1 << 13, 1 << 12), (0, 0), metadata={"neg": True}))
    peak = _measure(lambda: ptfile.load(blob))
    assert peak < PEAK_LIMIT


def test_d3_item_assignment_on_a_tensor(tmp_path: Path) -> None:
    tensor = tensor_v2(storage_pid("0", 10), 0, (10,), (1,))
    setitems = program(Raw(emit(tensor, 2) + pickle.MARK + emit(0, 2) + emit(99, 2) + pickle.SETITEMS), 2)
    for records in (False, True):
        assert_refused(tmp_path, in_zip(setitems, {"0": floats(*range(10))}), CorruptFileError,
                       r"SETITEM on a (ndarray|TensorSpec)", records=records)
    append = program(Raw(emit(tensor, 2) + emit(5, 2) + pickle.APPEND), 2)
    assert_refused(tmp_path, in_zip(append, {"0": floats(*range(10))}), CorruptFileError, r"APPEND on a (ndarray|TensorSpec)")
    build = program(Raw(emit(tensor, 2) + emit((storage_pid("0", 10), 0, (10,), (1,)), 2) + pickle.BUILD), 2)
    assert_refused(tmp_path, in_zip(build, {"0": floats(*range(10))}), CorruptFileError,
                   r"BUILD on a (ndarray|TensorSpec)|not just reconstructed")
    parameter = Call(G("torch._utils", "_rebuild_parameter"), (tensor, True, Call(ORDERED_DICT, ())))
    build = program(Raw(emit(parameter, 2) + emit({"x": 1}, 2) + pickle.BUILD), 2)
    assert_refused(tmp_path, in_zip(build, {"0": floats(*range(10))}), CorruptFileError,
                   r"BUILD on a (Parameter|TensorSpec)")


def test_d4_tensor_arguments(tmp_path: Path, marker: Path) -> None:
    pid = storage_pid("0", 10)
    hooks = Raw(emit(Call(ORDERED_DICT, ()), 2) + emit(1, 2) + emit("hook", 2) + pickle.SETITEM)
    assert_refused(tmp_path, _tensor_file(tensor_v2(pid, 0, (10,), (1,), hooks=hooks)), CorruptFileError,
                   r"backward hooks must be None or an empty OrderedDict")
    evil_hooks = Raw(emit(Call(ORDERED_DICT, ()), 2) + emit(1, 2) + emit(_os_system(marker), 2) + pickle.SETITEM)
    assert_refused(tmp_path, _tensor_file(tensor_v2(pid, 0, (10,), (1,), hooks=evil_hooks)), UnsafeGlobalError,
                   r"os\.system" + DANGEROUS, marker=marker)
    assert_refused(tmp_path, _tensor_file(tensor_v2(pid, 0, (10,), (1,), metadata={"python": 1})), CorruptFileError,
                   r"tensor metadata .* is not a dict of 'conj' / 'neg' flags")
    from_type = Call(G("torch._tensor", "_rebuild_from_type_v2"),
                     (_os_system(marker), G("torch", "Tensor"), (), {}))
    assert_refused(tmp_path, _tensor_file(from_type), UnsafeGlobalError, r"os\.system" + DANGEROUS, marker=marker)
    from_type = Call(G("torch._tensor", "_rebuild_from_type_v2"), (REBUILD_V3, G("torch", "Tensor"), (), {}))
    # tensor subclasses are read now; a rebuild function given no arguments is a malformed file
    assert_refused(tmp_path, _tensor_file(from_type), CorruptFileError, r"missing .* required positional arguments",
                   records=True)
    v3 = Call(REBUILD_V3, (pid, 0, (10,), (1,), False, Call(ORDERED_DICT, ()), G("torch", "float16")))
    assert_refused(tmp_path, _tensor_file(v3), CorruptFileError, r"storage '0' holds float32 but is read as float16")
    v3 = Call(REBUILD_V3, (pid, 0, (10,), (1,), False, Call(ORDERED_DICT, ()), G("torch", "no_such_dtype")))
    assert_refused(tmp_path, _tensor_file(v3), UnsafeGlobalError, r"torch\.no_such_dtype")
    two_types = program([tensor_v2(storage_pid("0", 10), 0, (10,), (1,)),
                         tensor_v2(storage_pid("0", 5, "LongStorage"), 0, (5,), (1,))], 2)
    assert_refused(tmp_path, in_zip(two_types, {"0": floats(*range(10))}), CorruptFileError,
                   r"storage '0' is used with two different types or sizes")
    assert_refused(tmp_path, in_zip(program(1, 2), byteorder=b"middle"), CorruptFileError, r"byteorder record holds")


def test_d4_big_endian_storages_are_swapped(tmp_path: Path) -> None:
    pickle_bytes = program({"t": tensor_v2(storage_pid("0", 3), 0, (3,), (1,))}, 2)
    blob = in_zip(pickle_bytes, {"0": np.array([1, 2, 3], dtype=">f4").tobytes()}, byteorder=b"big")
    np.testing.assert_array_equal(assert_loads(tmp_path, blob)["t"], [1, 2, 3])


def test_d5_persistent_id_forms(tmp_path: Path) -> None:
    text_pid = program(Raw(pickle.PERSID + b"0\n"), 0)
    assert_refused(tmp_path, in_zip(text_pid), CorruptFileError, r"text persistent id \(PERSID\)")
    legacy = Raw(emit(("module", G("mymodels", "Net"), "net.py", "source"), 2) + pickle.BINPERSID)
    assert_refused(tmp_path, in_zip(program(legacy, 2)), CorruptFileError, r"is not a \('storage', \.\.\.\) tuple",
                   records=True)
    not_a_type = Raw(emit(("storage", "FloatStorage", "0", "cpu", 10), 2) + pickle.BINPERSID)
    assert_refused(tmp_path, _tensor_file(tensor_v2(not_a_type, 0, (10,), (1,))), CorruptFileError,
                   r"not a storage class")
    negative = storage_pid("0", -1)
    assert_refused(tmp_path, _tensor_file(tensor_v2(negative, 0, (1,), (1,))), CorruptFileError,
                   r"bad location or element count")


# -- E: resource exhaustion ------------------------------------------------------------------


def billion_laughs(leaf: bytes, levels: int = 9, fanout: int = 10) -> bytes:
    """``MARK*levels leaf (DUP*fanout-1 LIST)*levels``: about fanout**levels leaves from a few hundred bytes."""
    return pickle.MARK * levels + leaf + (pickle.DUP * (fanout - 1) + pickle.LIST) * levels


def test_e1_billion_laughs(tmp_path: Path) -> None:
    laughs = proto(2) + billion_laughs(binunicode("lol")) + pickle.STOP
    tree = assert_loads(tmp_path, in_zip(laughs))
    assert len(tree) == 10 and tree[0] is tree[9]
    # With a tensor as the leaf the lazy handle lists it without walking 10**9 paths.
    tensor = emit(tensor_v2(storage_pid("0", 10), 0, (10,), (1,)), 2)
    blob = in_zip(proto(2) + billion_laughs(tensor) + pickle.STOP, {"0": floats(*range(10))})
    with ptfile.open(blob) as handle:
        keys = handle.keys()
    assert 1 <= len(keys) <= 10 and keys[0] == ".".join(["0"] * 9)


def test_e1_billion_laughs_through_the_memo(tmp_path: Path) -> None:
    """billionLaughsAlt: each level is a list of ten GETs of the previous level's memo slot."""
    body = binunicode("lol") + pickle.BINPUT + b"\0" + pickle.POP
    for level in range(1, 10):
        body += pickle.MARK + (pickle.BINGET + bytes([level - 1])) * 10 + pickle.LIST + pickle.BINPUT + bytes([level])
        body += pickle.POP if level < 9 else b""
    tree = assert_loads(tmp_path, in_zip(proto(2) + body + pickle.STOP))
    assert len(tree) == 10 and tree[0] is tree[1]


def test_c10_zip_inside_zip_is_not_opened(tmp_path: Path, marker: Path) -> None:
    inner = in_zip(program(_os_system(marker), 2))
    assert_refused(tmp_path, in_zip(inner), CorruptFileError, r"text persistent id", marker=marker)
    outer = in_zip(program({"blob": inner}, 4))  # an archive carried as bytes stays bytes
    assert assert_loads(tmp_path, outer) == {"blob": inner}
    assert not marker.exists()


def _laughs_as_argument(constructor: G, wrap) -> bytes:
    laughs = Raw(billion_laughs(binunicode("lol"), levels=7))
    return in_zip(program(Call(constructor, wrap(laughs)), 2), {"0": floats(*range(10))})


@pytest.mark.parametrize(
    "constructor, wrap, match",
    [
        (G("torch", "Size"), lambda laughs: ((laughs,),), r"torch\.Size must be built"),
        (G("torch", "device"), lambda laughs: (laughs,), r"torch\.device arguments"),
        (G("numpy", "dtype"), lambda laughs: (laughs,), r"numpy dtype"),
        (G("collections", "OrderedDict"), lambda laughs: ([laughs],), r"OrderedDict item"),
    ],
)
def test_e1_laughs_in_error_messages_of_constructors(tmp_path: Path, constructor: G, wrap, match: str) -> None:
    assert_refused(tmp_path, _laughs_as_argument(constructor, wrap), CorruptFileError, match)


#: Refusing a file of a few hundred bytes costs well under this; a message that expands shared values does not.
SMALL_PEAK_LIMIT = 8 << 20


@pytest.mark.parametrize(
    "wrap",
    [
        lambda laughs: (storage_pid("0", 10), 0, (laughs,), (1,), False, Call(ORDERED_DICT, ())),
        lambda laughs: (storage_pid("0", 10), 0, (10,), (1,), False, laughs),
        lambda laughs: (Raw(emit(("storage", G("torch", "FloatStorage"), "0", laughs, 10), 2) + pickle.BINPERSID),
                        0, (10,), (1,), False, Call(ORDERED_DICT, ())),
    ],
    ids=["size", "hooks", "pid"],
)
def test_e1_laughs_in_error_messages_of_tensor_rebuilds(wrap) -> None:
    laughs = Raw(billion_laughs(binunicode("lol"), levels=6))  # 10**6 leaves: a 7 MB repr
    blob = in_zip(program(Call(G("torch._utils", "_rebuild_tensor_v2"), wrap(laughs)), 2), {"0": floats(*range(10))})

    def refuse() -> None:
        with pytest.raises(CorruptFileError, match=r"tensor|persistent id"):
            ptfile.load(blob)

    peak = _measure(refuse)
    assert peak < SMALL_PEAK_LIMIT, f"refusing a {len(blob)}-byte file peaked at {peak} bytes"


def test_e1_laughs_in_constructor_messages_cost_little() -> None:
    blob = _laughs_as_argument(G("torch", "Size"), lambda laughs: ((laughs,),))

    def refuse() -> None:
        with pytest.raises(CorruptFileError, match=r"torch\.Size must be built"):
            ptfile.load(blob)

    peak = _measure(refuse)
    assert peak < SMALL_PEAK_LIMIT, f"refusing a {len(blob)}-byte file peaked at {peak} bytes"


def test_e2_huge_memo_indices(tmp_path: Path) -> None:
    long_put = proto(2) + pickle.NONE + pickle.LONG_BINPUT + b"\xff\xff\xff\xff" + pickle.LONG_BINGET \
        + b"\xff\xff\xff\xff" + pickle.TUPLE2 + pickle.STOP
    assert assert_loads(tmp_path, in_zip(long_put)) == (None, None)
    missing = proto(2) + pickle.LONG_BINGET + b"\xff\xff\xff\xff" + pickle.STOP
    assert_refused(tmp_path, in_zip(missing), CorruptFileError, r"KeyError")


def _length_cases():
    """Each length opcode with every huge or negative length its field can hold."""
    for opcode, width in ((pickle.BINUNICODE8, "<Q"), (pickle.BINBYTES8, "<Q"), (pickle.BYTEARRAY8, "<Q"),
                          (pickle.FRAME, "<Q"), (pickle.BINUNICODE, "<I"), (pickle.BINBYTES, "<I"),
                          (pickle.LONG4, "<i"), (pickle.BINSTRING, "<i")):
        signed = width == "<i"
        bits = 8 * struct.calcsize(width)
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        for length in (2**63, 2**63 - 1, 2**32 - 1, 2**31 - 1, -1, 1000):
            if lo <= length <= hi:
                yield pytest.param(opcode, width, length, id=f"{pickletools_name(opcode)}-{length}")


def pickletools_name(opcode: bytes) -> str:
    return next(name for name in dir(pickle) if name.isupper() and getattr(pickle, name) == opcode)


@pytest.mark.parametrize("opcode, width, length", _length_cases())
def test_e3_declared_lengths_past_the_end(tmp_path: Path, opcode: bytes, width: str, length: int) -> None:
    data = proto(5) + opcode + struct.pack(width, length) + b"abc" + pickle.STOP
    assert_refused(tmp_path, in_zip(data), CorruptFileError, rf"length {length} at byte \d+ runs past the end")


def test_e4_deep_nesting(tmp_path: Path) -> None:
    marks = proto(2) + pickle.MARK * 10**5 + pickle.NONE + pickle.STOP
    assert_refused(tmp_path, in_zip(marks), LimitExceededError,
                   r"MARKs nested more than 10000 deep, over max_pickle_nesting \(10000\); "
                   r"pass limits=ptfile\.Limits\(max_pickle_nesting=\.\.\.\) to raise it")
    cyclic_list = proto(2) + pickle.EMPTY_LIST + pickle.BINPUT + b"\0" + pickle.BINGET + b"\0" + pickle.APPEND \
        + pickle.STOP
    tree = assert_loads(tmp_path, in_zip(cyclic_list))
    assert tree[0] is tree
    cyclic_dict = proto(2) + pickle.EMPTY_DICT + pickle.BINPUT + b"\0" + binunicode("self") + pickle.BINGET + b"\0" \
        + pickle.SETITEM + pickle.STOP
    tree = assert_loads(tmp_path, in_zip(cyclic_dict))
    assert tree["self"] is tree
    self_key = proto(2) + pickle.EMPTY_DICT + pickle.BINPUT + b"\0" + pickle.BINGET + b"\0" + pickle.NONE \
        + pickle.SETITEM + pickle.STOP
    assert_refused(tmp_path, in_zip(self_key), CorruptFileError, r"unhashable or unsupported dict used as a dict")
    list_key = proto(2) + pickle.EMPTY_DICT + pickle.EMPTY_LIST + pickle.NONE + pickle.SETITEM + pickle.STOP
    assert_refused(tmp_path, in_zip(list_key), CorruptFileError, r"unsupported list used as a dict or set key")


_CHILD = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{src!r}, {tests!r}]
    sys.setrecursionlimit(10**6)  # the worst case: nothing stops C recursion but ptfile itself
    import ptfile
    blob = bytes.fromhex(sys.stdin.read())
    try:
        tree = ptfile.load(blob, records=True)
        with ptfile.open(blob, records=True) as handle:
            keys = handle.keys()
        print("loaded", type(tree).__name__, len(keys))
    except ptfile.PtfileError as exc:
        print("refused", type(exc).__name__, str(exc)[:200])
    """
)


def run_in_child(blob: bytes) -> str:
    """Load ``blob`` in a fresh interpreter: a crash (segfault, stack overflow) must not take the tests down."""
    script = _CHILD.format(src=str(SRC_DIR), tests=str(TESTS_DIR))
    done = subprocess.run([sys.executable, "-c", script], input=blob.hex(), text=True, capture_output=True, timeout=300)
    assert done.returncode == 0, f"child died with {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout.strip()


#: Deep enough to overflow the C stack of any recursive C routine (hash, repr, dealloc, compare).
DEPTH = 10**6
#: Deep values are loaded and listed; the lazy handle's walk builds one path per level, so keep it smaller.
VALUE_DEPTH = 10**5


@pytest.mark.parametrize(
    "container",
    [
        pytest.param(pickle.EMPTY_DICT + b"%s" + pickle.NONE + pickle.SETITEM, id="dict-key"),
        pytest.param(emit(ORDERED_DICT, 2) + pickle.MARK + pickle.MARK + b"%s" + pickle.NONE + pickle.LIST
                     + pickle.LIST + pickle.TUPLE1 + pickle.REDUCE, id="OrderedDict-pair"),
        pytest.param(pickle.EMPTY_SET + pickle.MARK + b"%s" + pickle.ADDITEMS, id="set-item"),
        pytest.param(pickle.MARK + b"%s" + pickle.FROZENSET, id="frozenset-item"),
        pytest.param(stack_global("builtins", "set") + pickle.MARK + b"%s" + pickle.LIST + pickle.TUPLE1 + pickle.REDUCE,
                     id="set-call"),
    ],
)
def test_e4_deep_tuple_as_key_is_refused_without_crashing(container: bytes) -> None:
    deep = pickle.NONE + pickle.TUPLE1 * DEPTH
    data = proto(4) + container.replace(b"%s", deep) + pickle.STOP
    assert run_in_child(in_zip(data)).startswith("refused CorruptFileError"), "deep key was hashed"


def test_e4_deep_values_load_without_crashing() -> None:
    depth = VALUE_DEPTH
    deep_lists = proto(2) + pickle.EMPTY_LIST * depth + pickle.APPEND * (depth - 1) + pickle.STOP
    assert run_in_child(in_zip(deep_lists)) == "loaded list 0"
    deep_tuples = proto(2) + pickle.NONE + pickle.TUPLE1 * depth + pickle.STOP
    assert run_in_child(in_zip(deep_tuples)) == "loaded tuple 0"
    deep_dicts = proto(2) + (pickle.EMPTY_DICT + binunicode("k")) * depth + pickle.NONE + pickle.SETITEM * depth \
        + pickle.STOP
    assert run_in_child(in_zip(deep_dicts)) == "loaded dict 0"


def test_e4_record_with_deep_arguments_as_key() -> None:
    thing = emit(G("mymodels", "Thing"), 2) + pickle.NONE + pickle.TUPLE1 * DEPTH + pickle.TUPLE1 + pickle.NEWOBJ
    data = proto(2) + pickle.EMPTY_DICT + thing + pickle.NONE + pickle.SETITEM + pickle.STOP
    outcome = run_in_child(in_zip(data))
    assert outcome.startswith(("loaded", "refused")), outcome


@pytest.mark.parametrize(
    "opcodes, match",
    [
        (pickle.EXT1 + b"\x01", r"extension-registry opcode"),
        (pickle.EXT2 + b"\x01\x00", r"extension-registry opcode"),
        (pickle.EXT4 + b"\x01\x00\x00\x00", r"extension-registry opcode"),
        (pickle.NEXT_BUFFER, r"out-of-band buffer opcode"),
        (pickle.SHORT_BINBYTES + b"\x01x" + pickle.READONLY_BUFFER, r"out-of-band buffer opcode"),
        (b"\xff", r"unknown opcode 0xff"),
    ],
)
def test_e5_refused_opcodes(tmp_path: Path, opcodes: bytes, match: str) -> None:
    assert_refused(tmp_path, in_zip(proto(5) + opcodes + pickle.STOP), CorruptFileError, match)


def test_e5_bytearray8_is_plain_data(tmp_path: Path) -> None:
    data = proto(5) + pickle.BYTEARRAY8 + struct.pack("<Q", 3) + b"abc" + pickle.STOP
    assert assert_loads(tmp_path, in_zip(data)) == bytearray(b"abc")


#: Loading may cost a small multiple of the pickle's size (a Python object per opcode), never more.
MEMORY_PER_INPUT_BYTE = 16


def _many_nones() -> bytes:
    return in_zip(proto(2) + pickle.EMPTY_LIST + (pickle.NONE + pickle.APPEND) * 500_000 + pickle.STOP)


def test_e5_many_opcodes_cost_memory_in_proportion() -> None:
    blob = _many_nones()
    trees = []
    peak = _measure(lambda: trees.append(ptfile.load(blob)))
    assert len(trees[0]) == 500_000
    assert peak < MEMORY_PER_INPUT_BYTE * len(blob), f"a {len(blob)}-byte file peaked at {peak} bytes"


def test_e5_listing_keys_costs_memory_in_proportion() -> None:
    blob = _many_nones()
    peak = _measure(lambda: ptfile.open(blob).keys())
    assert peak < MEMORY_PER_INPUT_BYTE * len(blob), f"a {len(blob)}-byte file peaked at {peak} bytes"
