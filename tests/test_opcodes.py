"""The one opcode table against CPython's, and everything derived from it.

``ptfile.pickle.opcodes`` is written out by hand (so that ptfile does not depend on pickletools'
internals); every row must match ``pickletools.opcodes``, and the engine's dispatch, the
emitter's constants, the stream walker and the consumers' first-opcode test must follow it.
"""

from __future__ import annotations

import io
import pickle
import pickletools

import pytest

from builders import proto
from ptfile import CorruptFileError
from ptfile.formats import consumers, legacy
from ptfile.formats.loader import Context
from ptfile.io.source import MappedSource
from ptfile.pickle import engine, opcodes, pickler
from ptfile.policy import allowlist

#: pickletools' argument descriptors by how ptfile names their shape.
_COUNTED = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}
#: The opcodes through which CPython's unpickler reaches outside the pickle, named independently of the table.
_IMPORTS = {"GLOBAL", "STACK_GLOBAL", "INST", "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"}
_CALLS = {"REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"}


def _shape(info: pickletools.OpcodeInfo) -> tuple[int, int, bool]:
    arg = info.arg
    if arg is None:
        return opcodes.NO_ARG, 0, False
    if arg.n >= 0:
        return opcodes.FIXED, arg.n, False
    if arg.n == pickletools.UP_TO_NEWLINE:
        return opcodes.LINES, 2 if arg.name.endswith("_pair") else 1, False
    size, signed = _COUNTED[arg.n]
    return opcodes.COUNTED, size, signed


def test_table_is_pickletools_table_row_by_row() -> None:
    assert [op.name for op in opcodes.OPCODES] == [info.name for info in pickletools.opcodes]
    for op, info in zip(opcodes.OPCODES, pickletools.opcodes, strict=True):
        assert op.byte == info.code.encode("latin-1"), op.name
        assert op.code == op.byte[0]
        assert (op.arg, op.size, op.signed) == _shape(info), op.name
        assert op.proto == info.proto, op.name
        assert op.reads_stack == bool(info.stack_before), op.name
        assert op.imports == (op.name in _IMPORTS), op.name
        assert op.calls == (op.name in _CALLS), op.name
    assert len(opcodes.BY_CODE) == len(opcodes.BY_NAME) == len(opcodes.OPCODES)


def test_table_bytes_are_the_pickle_module_constants() -> None:
    for op in opcodes.OPCODES:
        assert getattr(pickle, op.name) == op.byte, op.name


def test_emitter_constants_are_the_pickle_module_constants() -> None:
    names = [name for name in dir(pickler) if name.isupper() and isinstance(getattr(pickler, name), bytes)]
    assert len(names) >= 30
    for name in names:
        assert getattr(pickler, name) == getattr(pickle, name), name


def test_dispatch_covers_every_opcode_and_refuses_every_other_byte() -> None:
    hot = set(engine._HOT)
    assert len(hot) == len(engine._HOT) and hot <= set(opcodes.BY_CODE)
    for code in range(256):
        handler = engine._DISPATCH[code]
        if code in opcodes.BY_CODE and code not in hot:
            assert handler.__name__ == f"_load_{opcodes.BY_CODE[code].name.lower()}" or handler.__name__.startswith(
                "_refuse_"), (hex(code), handler.__name__)
        else:
            assert handler is engine.Engine._load_unknown, hex(code)


def _run(data: bytes) -> object:
    ran = allowlist.new_engine(data, "t.pkl", [], Context(None, False), None)
    return ran.run()[0]


@pytest.mark.parametrize("code", [code for code in range(256) if code not in opcodes.BY_CODE])
def test_a_byte_that_is_no_opcode_is_refused_like_cpython(code: int) -> None:
    data = proto(2) + bytes((code,)) + b"."
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(data)
    with pytest.raises(CorruptFileError, match=rf"unknown opcode 0x{code:02x} at byte 2"):
        _run(data)


def test_hot_and_handled_opcodes_agree_with_cpython_on_one_pickle() -> None:
    value = {"a": [1, 300, 70000, -5, 2**70, 1.5, None, True, False], "b": ("x", (1,), (1, 2), (1, 2, 3), ()),
             "c": {b"raw", frozenset({1, 2})}, "d": bytearray(b"z")}
    value["e"] = value["a"]
    for protocol in range(6):
        data = pickle.dumps(value, protocol=protocol)
        assert _run(data) == pickle.loads(data), protocol


def test_walker_steps_over_every_opcode_as_cpython_reads_it() -> None:
    """pickle_end, driven by the table, ends where CPython's unpickler stops, for every protocol."""
    value = {"k": [1, 2**40, "s" * 300, b"b" * 300, 1.25, (1, 2), {3}], "t": (None, True)}
    for protocol in range(6):
        data = pickle.dumps(value, protocol=protocol)
        stream = io.BytesIO(data + b"tail")
        pickle.load(stream)
        source = MappedSource(data + b"tail", "t")
        seen: set[int] = set()
        assert legacy.pickle_end(source, 0, source.size, "t", seen) == stream.tell(), protocol
        assert seen == {ord(info.code) for info, _, _ in pickletools.genops(data)}


def test_first_opcode_failures_follow_cpython() -> None:
    """fails_at_once(b) is true exactly when pickle.loads fails on b alone, before any import."""
    for code in range(256):
        head = bytes((code,))
        op = opcodes.BY_CODE.get(code)
        if op is None or op.reads_stack:
            with pytest.raises(Exception):  # noqa: B017, PT011 - any refusal: "invalid load key", "underflow"
                pickle.loads(head)
            assert consumers.fails_at_once(head), hex(code)
    assert not consumers.fails_at_once(opcodes.byte_of("GLOBAL"))
    assert consumers.fails_at_once(opcodes.byte_of("PERSID"))
    assert {opcodes.BY_CODE[code].name for code in consumers._EFFECT_OPCODES} == _IMPORTS


def test_run_names_the_hot_opcodes_in_their_table_order() -> None:
    """run() unpacks _HOT into local names; each name must be the opcode it stands for."""
    local_names = [name for name in engine.Engine.run.__code__.co_varnames if name.isupper()]
    assert local_names == [opcodes.BY_CODE[code].name for code in engine._HOT]
