"""The pickle opcodes, in one table: the engine, the emitters and the walkers derive theirs from it.

Modelled on CPython's ``pickletools.opcodes`` (tests check every row against it): each
opcode's byte, name, the shape of its argument in the stream, the protocol that introduced
it, whether it reads the stack, and what it can reach outside the pickle:

* ``imports``: the opcode can bring an object from outside the pickle onto the stack (a
  global by name, an extension-registry entry, a persistent object).  A pickle without
  one has nothing callable on its stack.
* ``calls``: the opcode calls an object from the stack (a constructor, ``__setstate__``,
  ``__reduce__``'s callable) or, for INST, imports and calls at once.

Argument shapes (``arg``, ``size``, ``signed``):

* :data:`NO_ARG` -- the opcode is one byte;
* :data:`FIXED` -- ``size`` bytes follow;
* :data:`LINES` -- ``size`` newline-terminated text lines follow;
* :data:`COUNTED` -- a little-endian length of ``size`` bytes (``signed`` or not) follows,
  then that many bytes.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Opcode", "OPCODES", "BY_CODE", "BY_NAME", "NO_ARG", "FIXED", "LINES", "COUNTED", "byte_of", "code_of",
           "codes"]

NO_ARG, FIXED, LINES, COUNTED = 0, 1, 2, 3


class Opcode(NamedTuple):
    """One pickle opcode (see the module docstring for the columns)."""

    code: int
    name: str
    arg: int
    size: int
    signed: bool
    proto: int
    reads_stack: bool
    imports: bool
    calls: bool

    @property
    def byte(self) -> bytes:
        """The opcode as it is written in a pickle."""
        return bytes((self.code,))


def _op(code: int, name: str, arg: int, size: int, proto: int, reads_stack: bool = False, *,
        signed: bool = False, imports: bool = False, calls: bool = False) -> Opcode:
    return Opcode(code, name, arg, size, signed, proto, reads_stack, imports, calls)


#: Every opcode of protocols 0-5, in pickletools' order.
OPCODES: tuple[Opcode, ...] = (
    # integers
    _op(0x49, "INT", LINES, 1, 0),
    _op(0x4A, "BININT", FIXED, 4, 1),
    _op(0x4B, "BININT1", FIXED, 1, 1),
    _op(0x4D, "BININT2", FIXED, 2, 1),
    _op(0x4C, "LONG", LINES, 1, 0),
    _op(0x8A, "LONG1", COUNTED, 1, 2),
    _op(0x8B, "LONG4", COUNTED, 4, 2, signed=True),
    # strings and bytes
    _op(0x53, "STRING", LINES, 1, 0),
    _op(0x54, "BINSTRING", COUNTED, 4, 1, signed=True),
    _op(0x55, "SHORT_BINSTRING", COUNTED, 1, 1),
    _op(0x42, "BINBYTES", COUNTED, 4, 3),
    _op(0x43, "SHORT_BINBYTES", COUNTED, 1, 3),
    _op(0x8E, "BINBYTES8", COUNTED, 8, 4),
    _op(0x96, "BYTEARRAY8", COUNTED, 8, 5),
    _op(0x97, "NEXT_BUFFER", NO_ARG, 0, 5),
    _op(0x98, "READONLY_BUFFER", NO_ARG, 0, 5, True),
    # constants
    _op(0x4E, "NONE", NO_ARG, 0, 0),
    _op(0x88, "NEWTRUE", NO_ARG, 0, 2),
    _op(0x89, "NEWFALSE", NO_ARG, 0, 2),
    _op(0x56, "UNICODE", LINES, 1, 0),
    _op(0x8C, "SHORT_BINUNICODE", COUNTED, 1, 4),
    _op(0x58, "BINUNICODE", COUNTED, 4, 1),
    _op(0x8D, "BINUNICODE8", COUNTED, 8, 4),
    _op(0x46, "FLOAT", LINES, 1, 0),
    _op(0x47, "BINFLOAT", FIXED, 8, 1),
    # containers
    _op(0x5D, "EMPTY_LIST", NO_ARG, 0, 1),
    _op(0x61, "APPEND", NO_ARG, 0, 0, True),
    _op(0x65, "APPENDS", NO_ARG, 0, 1, True),
    _op(0x6C, "LIST", NO_ARG, 0, 0, True),
    _op(0x29, "EMPTY_TUPLE", NO_ARG, 0, 1),
    _op(0x74, "TUPLE", NO_ARG, 0, 0, True),
    _op(0x85, "TUPLE1", NO_ARG, 0, 2, True),
    _op(0x86, "TUPLE2", NO_ARG, 0, 2, True),
    _op(0x87, "TUPLE3", NO_ARG, 0, 2, True),
    _op(0x7D, "EMPTY_DICT", NO_ARG, 0, 1),
    _op(0x64, "DICT", NO_ARG, 0, 0, True),
    _op(0x73, "SETITEM", NO_ARG, 0, 0, True),
    _op(0x75, "SETITEMS", NO_ARG, 0, 1, True),
    _op(0x8F, "EMPTY_SET", NO_ARG, 0, 4),
    _op(0x90, "ADDITEMS", NO_ARG, 0, 4, True),
    _op(0x91, "FROZENSET", NO_ARG, 0, 4, True),
    # stack and memo
    _op(0x30, "POP", NO_ARG, 0, 0, True),
    _op(0x32, "DUP", NO_ARG, 0, 0, True),
    _op(0x28, "MARK", NO_ARG, 0, 0),
    _op(0x31, "POP_MARK", NO_ARG, 0, 1, True),
    _op(0x67, "GET", LINES, 1, 0),
    _op(0x68, "BINGET", FIXED, 1, 1),
    _op(0x6A, "LONG_BINGET", FIXED, 4, 1),
    _op(0x70, "PUT", LINES, 1, 0),
    _op(0x71, "BINPUT", FIXED, 1, 1),
    _op(0x72, "LONG_BINPUT", FIXED, 4, 1),
    _op(0x94, "MEMOIZE", NO_ARG, 0, 4, True),
    # objects from outside the pickle, and calls
    _op(0x82, "EXT1", FIXED, 1, 2, imports=True),
    _op(0x83, "EXT2", FIXED, 2, 2, imports=True),
    _op(0x84, "EXT4", FIXED, 4, 2, imports=True),
    _op(0x63, "GLOBAL", LINES, 2, 0, imports=True),
    _op(0x93, "STACK_GLOBAL", NO_ARG, 0, 4, True, imports=True),
    _op(0x52, "REDUCE", NO_ARG, 0, 0, True, calls=True),
    _op(0x62, "BUILD", NO_ARG, 0, 0, True, calls=True),
    _op(0x69, "INST", LINES, 2, 0, True, imports=True, calls=True),
    _op(0x6F, "OBJ", NO_ARG, 0, 1, True, calls=True),
    _op(0x81, "NEWOBJ", NO_ARG, 0, 2, True, calls=True),
    _op(0x92, "NEWOBJ_EX", NO_ARG, 0, 4, True, calls=True),
    # framing and control
    _op(0x80, "PROTO", FIXED, 1, 2),
    _op(0x2E, "STOP", NO_ARG, 0, 0, True),
    _op(0x95, "FRAME", FIXED, 8, 4),
    _op(0x50, "PERSID", LINES, 1, 0, imports=True),
    _op(0x51, "BINPERSID", NO_ARG, 0, 1, True, imports=True),
)

BY_CODE: dict[int, Opcode] = {op.code: op for op in OPCODES}
BY_NAME: dict[str, Opcode] = {op.name: op for op in OPCODES}


def code_of(name: str) -> int:
    """The byte of the opcode called ``name`` (KeyError for a name that is no opcode)."""
    return BY_NAME[name].code


def codes(*names: str) -> frozenset[int]:
    """The bytes of the opcodes called ``names``."""
    return frozenset(BY_NAME[name].code for name in names)


def byte_of(name: str) -> bytes:
    """The opcode called ``name`` as it is written in a pickle."""
    return BY_NAME[name].byte
