"""The restricted pickle engine on benign data: it must agree with CPython's unpickler.

Plain data (numbers, strings, bytes, containers, shared and recursive references,
OrderedDict, Counter, Namespace, numpy scalars and arrays) is pickled by CPython at
every protocol 0-5.  When every global that pickle names is in ptfile's allowlist,
the engine's result must equal ``pickle.loads`` exactly (types, values, identity of
shared objects); when it is not, the engine must not produce the object but a
refusal the judge calls unsafe.  Opcodes that CPython 3 never writes (INST, OBJ,
Python 2 strings, POP_MARK ...) are assembled by hand and checked the same way.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import io
import math
import pickle
import pickletools
from collections import Counter, OrderedDict

import numpy as np
import pytest

from builders import G, binunicode, emit, frame, glob, proto, sbu
from ptfile import CorruptFileError
from ptfile.constants import Verdict
from ptfile.formats.loader import Context
from ptfile.pickle.engine import Engine, brief
from ptfile.pickle.inventory import GlobalUse
from ptfile.pickle.values import Global, Record
from ptfile.policy import allowlist

PROTOCOLS = range(6)


def run(data: bytes, persistent_load=None) -> tuple[object, list[GlobalUse]]:
    """Run the engine over a whole pickle; return its value and inventory."""
    inventory: list[GlobalUse] = []
    engine = Engine(data, lookup=allowlist.lookup, persistent_load=persistent_load, context=Context(None, False),
                    record="t.pkl", inventory=inventory, use_factory=GlobalUse)
    value, end = engine.run()
    assert end == len(data)
    return value, inventory


class _GlobalRecorder(pickle._Unpickler):  # the Python unpickler exposes .proto
    """CPython's (pure Python) unpickler, noting every global after its Python 2 renaming."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.globals: set[tuple[str, str]] = set()

    def find_class(self, module: str, name: str):
        if self.proto < 3:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        self.globals.add((module, name))
        return super().find_class(module, name)


def cpython_load(data: bytes) -> tuple[object, set[tuple[str, str]]]:
    unpickler = _GlobalRecorder(data)
    return unpickler.load(), unpickler.globals


def same(left, right, seen: dict | None = None) -> bool:
    """Exact structural equality: same types, values, array layouts; cycles and sharing mirrored."""
    seen = {} if seen is None else seen
    if id(left) in seen:
        return seen[id(left)] is right
    if type(left) is not type(right):
        return False
    if isinstance(left, np.ndarray):
        return (left.dtype == right.dtype and left.dtype.byteorder == right.dtype.byteorder and left.shape == right.shape
                and left.flags.f_contiguous == right.flags.f_contiguous and left.tobytes("A") == right.tobytes("A"))
    if isinstance(left, np.generic):
        return left.dtype == right.dtype and left.tobytes() == right.tobytes()
    if type(left) is float:
        return left == right or (math.isnan(left) and math.isnan(right))
    if isinstance(left, (list, tuple, dict, argparse.Namespace)):
        seen[id(left)] = right
    if isinstance(left, (list, tuple)):
        return len(left) == len(right) and all(same(a, b, seen) for a, b in zip(left, right, strict=True))
    if isinstance(left, dict):
        if not (list(left) == list(right) and all(same(left[k], right[k], seen) for k in left)):
            return False
        return type(left) is dict or same(vars(left), vars(right), seen)  # OrderedDict attributes
    if isinstance(left, argparse.Namespace):
        return same(vars(left), vars(right), seen)
    return left == right


def _recursive_list() -> list:
    value: list = [1]
    value.append(value)
    return value


def _recursive_dict() -> dict:
    value: dict = {"a": 1}
    value["self"] = value
    return value


def _shared() -> list:
    inner = [1, "x"]
    text = "shared text"
    return [inner, inner, (inner, text), {"k": inner, "t": text}]


def _ordered_with_attributes() -> OrderedDict:
    value = OrderedDict([("w", 1.0), ("b", [1, 2])])
    value._metadata = OrderedDict([("", {"version": 1})])
    return value


def _namespace() -> argparse.Namespace:
    return argparse.Namespace(lr=0.1, layers=[64, 64], name="run", nested={"a": (1, 2)})


SAMPLES = {
    "none": None,
    "bools": [True, False],
    "small-ints": [0, 1, 255, 256, 65535, 65536, -1, -256],
    "int32-edges": [2**31 - 1, -(2**31), 2**31, -(2**31) - 1],
    "big-ints": [2**63, -(2**63) - 1, 2**100, -(2**100), 2 ** (8 * 300)],
    "floats": [0.0, -0.0, 1.5, -2.25, 1e308, 5e-324, math.inf, -math.inf, math.nan],
    "complex": [1 + 2j, -0.5j],
    "strings": ["", "ascii", "unicode é ☃ 𝄞", "a\nb\\c\r\x00", "'quotes\"", "x" * 300],
    "surrogate": "\ud800 lone",
    "bytes": [b"", b"\x00\xff bytes", b"x" * 300],
    "bytearray": bytearray(b"ab\x00"),
    "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), ((),)],
    "lists": [[], [1, [2, [3, []]]], list(range(2500))],
    "dicts": [{}, {"a": 1, 2: "b", (1, 2): [3], None: 0.5, b"k": True}, {str(i): i for i in range(2500)}],
    "sets": [set(), {1, 2, "x", (1, 2)}, frozenset(), frozenset({1, "y"})],
    "set-in-dict": {"s": {1, 2}, "f": frozenset({3})},
    "ordered-dict": OrderedDict([("b", 2), ("a", 1)]),
    "ordered-dict-attrs": _ordered_with_attributes(),
    "counter": Counter({"a": 2, "b": 1}),
    "shared": _shared(),
    "recursive-list": _recursive_list(),
    "recursive-dict": _recursive_dict(),
    "namespace": _namespace(),
    "numpy-scalars": [np.float32(1.5), np.float64(-2.0), np.int64(-3), np.uint8(200), np.bool_(True),
                      np.complex64(1 - 1j), np.float16(0.5)],
    "numpy-arrays": [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=">i4"),
                     np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)), np.array([True, False]),
                     np.array(3.5), np.zeros((0, 3)), np.array([b"ab", b"c"]), np.array(["xy", "z"])],
}


def _cases():
    for name, value in SAMPLES.items():
        for protocol in PROTOCOLS:
            yield pytest.param(value, protocol, id=f"{name}-p{protocol}")


def _allowed(globals_used: set[tuple[str, str]]) -> bool:
    for module, name in globals_used:
        entry = allowlist.lookup(module, name)
        if entry is None:
            return False
    return True


@pytest.mark.parametrize("value, protocol", _cases())
def test_engine_matches_cpython(value, protocol: int) -> None:
    data = pickle.dumps(value, protocol)
    expected, globals_used = cpython_load(data)
    if not _allowed(globals_used):
        # Anything outside the allowlist is never rebuilt: the judge refuses the inventory.
        try:
            _, inventory = run(data)
        except CorruptFileError:
            return
        assert allowlist.judge(inventory).verdict != Verdict.CLEAN
        return
    result, inventory = run(data)
    assert same(result, expected), f"engine gave {brief(result)}, CPython {brief(expected)}"
    assert allowlist.judge(inventory).verdict == Verdict.CLEAN


def test_most_samples_are_compared() -> None:
    """The allowlist covers plain data at every protocol; only a few pairs fall back to refusal."""
    refused = []
    for name, value in SAMPLES.items():
        for protocol in PROTOCOLS:
            _, globals_used = cpython_load(pickle.dumps(value, protocol))
            if not _allowed(globals_used):
                refused.append((name, protocol, sorted(globals_used)))
    names = {name for name, _, _ in refused}
    # Protocols 0/1 reduce objects through copyreg._reconstructor; protocol 5 pickles arrays out of band.
    assert names <= {"namespace", "ordered-dict-attrs", "numpy-arrays"}, refused
    assert len(refused) <= 7, refused


#: Opcodes the engine must have exercised against CPython, from its pickles or the hand-made ones below.
ENGINE_OPCODES = {
    "MARK", "STOP", "POP", "POP_MARK", "DUP", "FLOAT", "INT", "BININT", "BININT1", "LONG", "BININT2", "NONE",
    "REDUCE", "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "APPEND", "BUILD", "GLOBAL", "DICT",
    "EMPTY_DICT", "APPENDS", "GET", "BINGET", "INST", "LONG_BINGET", "LIST", "EMPTY_LIST", "OBJ", "PUT", "BINPUT",
    "LONG_BINPUT", "SETITEM", "TUPLE", "EMPTY_TUPLE", "SETITEMS", "BINFLOAT", "PROTO", "NEWOBJ", "TUPLE1", "TUPLE2",
    "TUPLE3", "NEWTRUE", "NEWFALSE", "LONG1", "LONG4", "BINBYTES", "SHORT_BINBYTES", "SHORT_BINUNICODE",
    "BINUNICODE8", "BINBYTES8", "EMPTY_SET", "ADDITEMS", "FROZENSET", "NEWOBJ_EX", "STACK_GLOBAL", "MEMOIZE", "FRAME",
    "BYTEARRAY8", "BINPERSID",
}


def _opcodes(data: bytes) -> set[str]:
    return {op.name for op, _, _ in pickletools.genops(data)}


def _hand_made() -> list[bytes]:
    """Opcodes CPython 3 never writes (or only for huge objects), as valid pickles of allowlisted data."""
    od = glob("collections", "OrderedDict")
    big8 = b"\x8d" + (3).to_bytes(8, "little") + b"abc"  # BINUNICODE8, normally only for strings over 4 GiB
    return [
        b"(((S'k'\nI1\nll" + b"i" + b"collections\nOrderedDict\n" + b".",  # INST with a list of pairs
        b"(" + od + b"]" + sbu("k") + b"K\x01" + b"\x86" + b"a" + b"o.",  # OBJ
        b"K\x01K\x020.",  # POP
        b"(I1\nI2\n1N.",  # POP_MARK
        b"K\x05" + b"2" + b"\x86.",  # DUP
        b"U\x03abcT\x03\x00\x00\x00def\x86.",  # SHORT_BINSTRING, BINSTRING (Python 2 str)
        b"S'esc\\x41\\n'\n.",  # STRING with escapes
        proto(4) + frame(big8 + b"\x8e" + (2).to_bytes(8, "little") + b"\x00\xff" + b"\x86" + b"."),  # BINUNICODE8, BINBYTES8
        proto(4) + od + b")" + b"}" + b"\x92" + b".",  # NEWOBJ_EX with no keywords
        b"\x80\x02" + b"\x8b" + (300).to_bytes(4, "little") + b"\x01" * 300 + b".",  # LONG4
        b"\x80\x02]q\x00" + b"r\x00\x01\x00\x00" + b"j\x00\x01\x00\x00" + b"a.",  # LONG_BINPUT, LONG_BINGET
    ]


@pytest.mark.parametrize("data", _hand_made(), ids=lambda d: "-".join(sorted(_opcodes(d) - {"PROTO", "STOP"}))[:60])
def test_hand_made_opcodes_match_cpython(data: bytes) -> None:
    expected, globals_used = cpython_load(data)
    assert _allowed(globals_used)
    result, _ = run(data)
    assert same(result, expected), f"engine gave {brief(result)}, CPython {brief(expected)}"


class _Persister(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, str) and obj.startswith("pid:"):
            return ("storage", obj[4:])
        return None


class _Resolver(pickle.Unpickler):
    def persistent_load(self, pid):
        return f"loaded {pid[1]}"


def _persistent(protocol: int) -> bytes:
    buffer = io.BytesIO()
    _Persister(buffer, protocol).dump({"a": "pid:0", "b": ["pid:1", "plain"]})
    return buffer.getvalue()


@pytest.mark.parametrize("protocol", range(1, 6))
def test_binpersid_matches_cpython(protocol: int) -> None:
    data = _persistent(protocol)
    expected = _Resolver(io.BytesIO(data)).load()
    result, _ = run(data, persistent_load=lambda pid: f"loaded {pid[1]}")
    assert result == expected == {"a": "loaded 0", "b": ["loaded 1", "plain"]}


def test_persistent_id_without_a_resolver_is_refused() -> None:
    with pytest.raises(CorruptFileError, match="persistent id at byte .* where none is allowed"):
        run(_persistent(2))


def test_every_engine_opcode_is_exercised() -> None:
    seen: set[str] = set()
    for value in SAMPLES.values():
        for protocol in PROTOCOLS:
            data = pickle.dumps(value, protocol)
            if _allowed(cpython_load(data)[1]):
                seen |= _opcodes(data)
    for data in _hand_made():
        seen |= _opcodes(data)
    seen |= _opcodes(_persistent(2))
    assert ENGINE_OPCODES - seen == set()


def test_python2_names_are_renamed_only_below_protocol_3() -> None:
    for protocol, expected in ((0, "builtins"), (2, "builtins"), (4, "__builtin__")):
        data = (proto(protocol) if protocol >= 2 else b"") + glob("__builtin__", "set") + b"(]tR."
        value, inventory = run(data)
        assert inventory[0].module == expected
        if expected == "builtins":
            assert value == set()
        else:
            assert type(value) is Record and value.cls == Global("__builtin__", "set")


def test_unknown_globals_become_inert_records() -> None:
    data = proto(2) + glob("mymodels", "Net") + b")\x81" + emit({"depth": 3}, 2) + b"b."
    value, inventory = run(data)
    assert type(value) is Record and value.classname == "mymodels.Net" and value.state == {"depth": 3}
    assert [use.use for use in inventory] == ["reference", "new", "build"]
    assert allowlist.judge(inventory).verdict == Verdict.UNKNOWN_CLASS


def test_brief_is_bounded_for_shared_and_deep_values() -> None:
    laughs: list = ["lol"]
    for _ in range(40):
        laughs = [laughs] * 10
    deep: tuple = ()
    for _ in range(10**5):
        deep = (deep,)
    record = Record(Global("m", "C"), (deep,))
    for value in (laughs, deep, record, 10**5000, b"\xff" * 10**6, "s" * 10**6):
        assert len(brief(value)) <= 60
    assert brief(record) == "<Record m.C>"


def test_memo_indices_outside_cpythons_range_are_refused() -> None:
    with pytest.raises(CorruptFileError, match="PUT index"):
        run(b"Np-1\n.")
    assert run(b"Np9223372036854775807\n.")[0] is None
    assert run(proto(2) + binunicode("x") + b"r\xff\xff\xff\xffj\xff\xff\xff\xff\x86.")[0] == ("x", "x")


def test_numpy_dtype_generic_refusal() -> None:
    data = proto(2) + glob("numpy", "dtype") + binunicode("O8") + b"\x89\x88\x87R."
    with pytest.raises(Exception, match="numpy dtype") as info:
        run(data)
    assert "PtfileError" in [cls.__name__ for cls in type(info.value).__mro__]


def test_stack_global_names_are_exact() -> None:
    value, inventory = run(proto(4) + sbu("collections") + sbu("OrderedDict") + b"\x93)R.")
    assert value == OrderedDict() and allowlist.judge(inventory).verdict == Verdict.CLEAN
    value, inventory = run(proto(4) + sbu("collections") + sbu("OrderedDict.fromkeys") + b"\x93)R.")
    assert type(value) is Record and allowlist.judge(inventory).verdict == Verdict.DANGEROUS


def test_g_builder_emits_what_cpython_reads() -> None:
    for protocol in PROTOCOLS:
        data = proto(protocol) + emit(G("collections", "OrderedDict")(), protocol) + b"." if protocol >= 2 else \
            emit(G("collections", "OrderedDict")(), protocol) + b"."
        assert pickle.loads(data) == run(data)[0] == OrderedDict()
