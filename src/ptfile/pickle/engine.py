"""The restricted pickle engine: opcodes in, an object tree and an inventory out.

Every reader in ptfile (zip, legacy stream, tar, TorchScript) and the scanner run
pickles through this one engine.  It interprets protocol 0-5 opcodes itself; it
never imports a module and never calls anything but the constructors an
:class:`~ptfile.policy.allowlist.Entry` hands it.

A GLOBAL (or STACK_GLOBAL) is looked up in the allowlist by its exact
``(module, name)``.  A known value (a dtype, a storage type) is pushed as is; a
known constructor is pushed as a :class:`GlobalRef` that REDUCE or NEWOBJ may
call; anything else is pushed as a :class:`GlobalRef` with no entry.  Using such
a ref never runs anything: REDUCE, INST, OBJ and NEWOBJ_EX on it yield an inert
:class:`~ptfile.pickle.values.Record`, NEWOBJ yields a Record, BUILD stores the state in
it.  Every use goes into the inventory; the caller judges the inventory and
decides whether the result may be returned (see :func:`ptfile.policy.allowlist.judge`).

Structural rules, stricter than CPython's unpickler where the two could disagree:

* PROTO only as the first opcode; STOP only with exactly one value on the stack
  and no open MARK.
* FRAME is checked (its length against the bytes left, no opcode straddling its
  end, no FRAME inside a frame) and otherwise ignored.
* EXT1/2/4 (the copyreg registry), PERSID (text persistent ids), NEXT_BUFFER and
  READONLY_BUFFER (out-of-band buffers) are refused.
* SETITEM(S) only on dicts, APPEND(S) only on lists, ADDITEMS only on sets (or
  on records, which store them).  Keys that get hashed must be plain values or
  shallow tuples of them: hashing a deeply nested tuple crashes CPython.  One dict or set
  takes at most :data:`MAX_EQUAL_HASHES` distinct keys of one hash value, since CPython's
  dicts and sets take quadratic time on colliding keys.
* Every declared length is checked against the bytes that remain before anything
  is allocated, and the memo is a dict, so a huge memo index costs one entry;
  indices CPython refuses (negative, above ``sys.maxsize``) are refused too.

Error messages quote pickle values only through :func:`brief`: a value shared
exponentially often ("billion laughs") has a cheap graph but an astronomically
long ``repr``.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import gc
import re
import struct
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..constants import limits_in_force, over_limit
from ..errors import CorruptFileError, LimitExceededError, PtfileError
from .opcodes import OPCODES, code_of
from .values import Global, Record, brief

__all__ = ["GlobalRef", "Engine", "brief", "check_key", "check_keys", "count_hash", "gc_paused"]

#: Hashing recurses in C without a depth check; keys nested deeper than this are refused.
MAX_KEY_DEPTH = 32
#: CPython keeps memo indices in a Py_ssize_t and refuses negative ones; so does ptfile.
MAX_MEMO_INDEX = sys.maxsize
#: Distinct keys with one hash value that one dict or set may receive.  CPython's dicts and sets
#: compare a new key with every earlier key of its hash, so n such keys cost n**2 / 2 comparisons
#: (60,000 int keys, 0.8 MB of pickle, take 15 s).  Keys of different values share a hash only by
#: construction (ints that differ by a multiple of ``sys.hash_info.modulus``, -1 and -2, crafted
#: tuples); str and bytes hashes are randomized per process, so only other keys are counted.
#: The memo needs no count: its indices are below 2**63, so at most four share a hash.
MAX_EQUAL_HASHES = 32

#: What C ``strtol(s, &end, 0)`` reads whole: space, a sign, then hex, octal (a leading 0) or decimal digits.
_C_STRTOL = re.compile(rb"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
#: The range of a C long (64 bits on the platforms torch supports); INT operands outside it take another path.
_C_LONG_MIN, _C_LONG_MAX = -(2**63), 2**63 - 1

_HASHABLE_SCALARS = frozenset({str, int, float, bool, bytes, complex, type(None), Global, Record})
#: Key types whose hash an attacker cannot aim (randomized per process by ``PYTHONHASHSEED``).
_RANDOMIZED_HASHES = frozenset({str, bytes})

_unpack_i = struct.Struct("<i").unpack_from
_unpack_I = struct.Struct("<I").unpack_from
_unpack_Q = struct.Struct("<Q").unpack_from
_unpack_H = struct.Struct("<H").unpack_from
_unpack_d = struct.Struct(">d").unpack_from


def int_operand(text: bytes) -> int:
    """INT's text as CPython's C unpickler reads it (``load_int``): C ``strtol`` with base 0.

    So ``010`` is octal 8 and ``0x10`` is 16; text ``strtol`` does not read whole, or a value
    outside a C long, goes to ``int(text, 0)`` (arbitrary size, underscores, surrounding space).
    A two-character ``00`` / ``01`` (any form strtol reads as 0 or 1) is False / True.
    """
    match = _C_STRTOL.fullmatch(text)
    if match is not None:
        sign, digits = match.groups()
        base = 16 if digits[1:2] in (b"x", b"X") else 8 if digits[:1] == b"0" else 10
        value = int(digits, base)
        value = -value if sign == b"-" else value
        if _C_LONG_MIN <= value <= _C_LONG_MAX:
            return bool(value) if len(text) == 2 and value in (0, 1) else value
    return int(text, 0)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Suspend the cyclic garbage collector while a large object graph is built.

    A pickle run only creates objects that stay reachable (from the memo, the stack or
    the result), so a collection can free nothing, yet each one walks every object built
    so far: on a 20,000-tensor checkpoint they cost a third of the load.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class GlobalRef:
    """A global as it sits on the engine's stack: its name and, if known, its allowlist entry."""

    __slots__ = ("module", "name", "entry", "called")

    def __init__(self, module: str, name: str, entry: Any) -> None:
        self.module = module
        self.name = name
        self.entry = entry
        self.called = False

    def as_global(self) -> Global:
        return Global(self.module, self.name)

    def __repr__(self) -> str:
        return f"<global {self.module}.{self.name}>"


def check_key(key: Any) -> None:
    """Refuse a dict or set key whose hash could crash or mislead the interpreter."""
    if type(key) in _HASHABLE_SCALARS:
        return
    pending = [(key, 0)]
    while pending:
        value, depth = pending.pop()
        kind = type(value)
        if kind in _HASHABLE_SCALARS:
            continue
        if kind is tuple or kind is frozenset:
            if depth >= MAX_KEY_DEPTH:
                raise CorruptFileError(f"dict or set key nested deeper than {MAX_KEY_DEPTH} levels")
            pending.extend((item, depth + 1) for item in value)
            continue
        raise CorruptFileError(f"unhashable or unsupported {kind.__name__} used as a dict or set key")


def count_hash(key: Any, seen: dict[int, list]) -> None:
    """Note a (checked) key of one container in ``seen``, its keys by hash; refuse too many per hash.

    Callers skip str keys before calling (the common case stays one type test).  Each hash's
    list stays below :data:`MAX_EQUAL_HASHES` entries, so the membership test is bounded too.
    """
    if type(key) in _RANDOMIZED_HASHES:
        return
    same = seen.setdefault(hash(key), [])
    if key in same:
        return  # the same key again replaces a value; CPython finds it among the same few
    if len(same) >= MAX_EQUAL_HASHES:
        raise LimitExceededError(
            f"more than {MAX_EQUAL_HASHES} distinct keys with one hash value in one dict or set "
            f"(limit MAX_EQUAL_HASHES; a hash-collision attack would make it take quadratic time)"
        )
    same.append(key)


def check_keys(keys: Any) -> None:
    """:func:`check_key` and :func:`count_hash` for all the keys of one container built at once."""
    seen: dict[int, list] = {}
    for key in keys:
        check_key(key)
        if type(key) is not str:
            count_hash(key, seen)


#: :attr:`Engine._frame_end` while no FRAME is open: beyond every position.
_NO_FRAME = sys.maxsize


class _Stop(Exception):  # noqa: N818 - not an error: how STOP leaves the dispatch loop, as in pickle.py
    """Raised by STOP with the pickle's value and the offset after it."""

    def __init__(self, value: Any, end: int) -> None:
        super().__init__()
        self.value = value
        self.end = end


class Engine:
    """Runs one pickle.

    Args:
        data: the bytes holding the pickle (bytes, bytearray or memoryview).
        lookup: ``(module, name) -> Entry | None``, the allowlist.
        persistent_load: turns a persistent id into a value (a storage reference).
        context: passed as first argument to every constructor.
        record: name of the archive record, for messages and the inventory.
        inventory: list to append :class:`~ptfile.pickle.inventory.GlobalUse` events to.
        origin: where ``data`` starts in the file, for a pickle cut out of a stream (the
            legacy format): every offset in the inventory and in messages is a file offset.

    Like CPython's ``pickle._Unpickler``, one small handler per opcode (or family of
    opcodes) reads its argument at the position after the opcode byte and returns the
    position after the argument; :data:`_DISPATCH` maps every byte to its handler.  The
    opcodes that make up nearly all of a torch checkpoint (:data:`_HOT`) are interpreted
    inline by :meth:`run` instead, on local variables: a call per opcode would cost a
    fifth of the engine's time.
    The stack of the innermost MARK is :attr:`stack` (its ``append`` bound once in
    :attr:`append`), the stacks under the open MARKs are :attr:`metastack`.
    """

    __slots__ = ("data", "lookup", "persistent_load", "context", "record", "inventory", "_use", "origin", "max_nesting",
                 "protocol", "_key_hashes", "stack", "append", "metastack", "memo", "_first", "_frame_end")
    # set by _start_run before each run; declared here so that run(), above it, knows their types
    stack: list[Any]
    append: Callable[[Any], None]
    metastack: list[list[Any]]
    memo: dict[int, Any]
    _first: int
    _frame_end: int

    def __init__(
        self,
        data: Any,
        *,
        lookup: Callable[[str, str], Any],
        persistent_load: Callable[[Any], Any] | None,
        context: Any,
        record: str,
        inventory: list,
        use_factory: Callable[..., Any],
        origin: int = 0,
    ) -> None:
        self.data = bytes(data) if not isinstance(data, bytes) else data
        self.lookup = lookup
        self.persistent_load = persistent_load
        self.context = context
        self.record = record
        self.inventory = inventory
        self._use = use_factory
        self.origin = origin
        #: MARKs open at once; bounds the metastack (Limits.max_pickle_nesting).
        self.max_nesting = limits_in_force().max_pickle_nesting
        self.protocol = 0
        # Keys by hash per dict or set that got a non-str key, by id; the container is held so
        # that its id cannot be reused by another while this engine runs.
        self._key_hashes: dict[int, tuple[Any, dict[int, list]]] = {}
        self._start_run(0)

    # -- helpers used by the dispatch loop ---------------------------------------

    def note(self, ref: GlobalRef, use: str, offset: int, args: str = "") -> None:
        self.inventory.append(self._use(ref.module, ref.name, use, self.origin + offset, self.record, args))

    def find_global(self, module: Any, name: Any, offset: int) -> Any:
        if type(module) is not str or type(name) is not str:
            raise CorruptFileError(f"{self.record}: global name at byte {offset} is not a pair of strings")
        if self.protocol < 3:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        entry = self.lookup(module, name)
        self.inventory.append(self._use(module, name, "reference", self.origin + offset, self.record))
        if entry is not None and entry.value is not None:
            return entry.value
        return GlobalRef(module, name, entry)

    def call(self, func: Any, args: Any, offset: int, use: str = "call") -> Any:
        """REDUCE, INST, OBJ, NEWOBJ_EX: call an allowlisted constructor, else record the attempt."""
        if type(func) is not GlobalRef:
            raise CorruptFileError(f"{self.record}: call of a non-global {type(func).__name__} at byte {offset}")
        if type(args) is not tuple:
            raise CorruptFileError(f"{self.record}: call arguments at byte {offset} are not a tuple")
        entry = func.entry
        if entry is not None and entry.call is not None:
            if not func.called:  # allowed calls: the first one is evidence enough
                func.called = True
                self.note(func, use, offset)
            return entry.call(self.context, *args)
        self.note(func, use, offset, brief(args))  # what it would have been called with, for the report
        return Record(func.as_global(), args)

    def new(self, cls: Any, args: Any, offset: int) -> Any:
        """NEWOBJ: create an allowlisted instance, else an inert record of the class."""
        if type(cls) is not GlobalRef:
            raise CorruptFileError(f"{self.record}: NEWOBJ of a non-class {type(cls).__name__} at byte {offset}")
        if type(args) is not tuple:
            raise CorruptFileError(f"{self.record}: NEWOBJ arguments at byte {offset} are not a tuple")
        self.note(cls, "new", offset)
        entry = cls.entry
        if entry is not None and entry.new is not None:
            return entry.new(self.context, *args)
        return Record(cls.as_global(), args)

    def build(self, obj: Any, state: Any, offset: int) -> None:
        if type(obj) is Record:
            self.inventory.append(self._use(obj.cls.module, obj.cls.name, "build", self.origin + offset, self.record))
            obj.state = state
            return
        handler = self.context.build_handler(obj)
        if handler is None:
            raise CorruptFileError(f"{self.record}: BUILD on a {type(obj).__name__} at byte {offset} is not allowed")
        handler(self.context, obj, state)

    def setitems(self, target: Any, items: list, offset: int) -> None:
        if isinstance(target, dict):
            pass
        elif type(target) is Record:
            target = target.items
        else:
            raise CorruptFileError(f"{self.record}: SETITEM on a {type(target).__name__} at byte {offset}")
        for i in range(0, len(items) - 1, 2):
            key = items[i]
            if type(key) is not str:
                check_key(key)
                count_hash(key, self._hashes_of(target))
            target[key] = items[i + 1]
        if len(items) % 2:
            raise CorruptFileError(f"{self.record}: SETITEMS with an odd number of values at byte {offset}")

    def extend(self, target: Any, items: list, offset: int) -> None:
        if type(target) is list:
            target.extend(items)
        elif type(target) is Record:
            target.listitems.extend(items)
        else:
            raise CorruptFileError(f"{self.record}: APPEND on a {type(target).__name__} at byte {offset}")

    def additems(self, target: Any, items: list, offset: int) -> None:
        if type(target) is not set:
            raise CorruptFileError(f"{self.record}: ADDITEMS on a {type(target).__name__} at byte {offset}")
        seen = self._hashes_of(target)
        for item in items:
            check_key(item)
            if type(item) is not str:
                count_hash(item, seen)
        target.update(items)

    def _hashes_of(self, container: Any) -> dict[int, list]:
        """The keys by hash that ``container`` received so far (see :func:`count_hash`)."""
        held = self._key_hashes.get(id(container))
        if held is None:
            held = self._key_hashes[id(container)] = (container, {})
        return held[1]

    # -- the dispatch loop -------------------------------------------------------

    def run(self, pos: int = 0) -> tuple[Any, int]:  # noqa: C901 - the fast path is one flat loop
        """Interpret the pickle starting at ``pos``; return the value and the offset after STOP."""
        self._start_run(pos)
        data = self.data
        stack = self.stack
        append = self.append
        metastack = self.metastack
        memo = self.memo
        dispatch = _DISPATCH
        frame_end = _NO_FRAME
        max_nesting = self.max_nesting
        (LONG_BINPUT, BINGET, MARK, BINUNICODE, REDUCE, BININT2, TUPLE, BININT1, TUPLE1, EMPTY_TUPLE, BINPERSID,
         NEWFALSE, BINPUT, TUPLE2, TUPLE3, NEWTRUE, BININT, LONG_BINGET, EMPTY_DICT, SETITEMS) = _HOT  # noqa: N806 - in _HOT's order
        start = pos
        try:
            while True:
                start = pos
                if pos >= frame_end:
                    self._leave_frame(pos)
                    frame_end = _NO_FRAME
                op = data[pos]  # past the end: IndexError, reported below as a missing STOP
                pos += 1
                if op == LONG_BINPUT:
                    memo[_unpack_I(data, pos)[0]] = stack[-1]
                    pos += 4
                elif op == BINGET:
                    append(memo[data[pos]])
                    pos += 1
                elif op == MARK:
                    if len(metastack) >= max_nesting:
                        raise LimitExceededError(f"{self.record}: MARKs nested more than {max_nesting} deep, "
                                                 f"{over_limit('max_pickle_nesting')}")
                    metastack.append(stack)
                    stack = []
                    append = stack.append
                elif op == BINUNICODE:
                    (n,) = _unpack_I(data, pos)
                    pos += 4
                    self._need(n, pos)
                    append(str(data[pos : pos + n], "utf-8", "surrogatepass"))
                    pos += n
                elif op == REDUCE:
                    args = stack.pop()
                    stack[-1] = self.call(stack[-1], args, start)
                elif op == BININT2:
                    append(_unpack_H(data, pos)[0])
                    pos += 2
                elif op == TUPLE:
                    made = tuple(stack)
                    stack = metastack.pop()
                    append = stack.append
                    append(made)
                elif op == BININT1:
                    append(data[pos])
                    pos += 1
                elif op == TUPLE1:
                    stack[-1] = (stack[-1],)
                elif op == EMPTY_TUPLE:
                    append(())
                elif op == BINPERSID:
                    if self.persistent_load is None:
                        raise CorruptFileError(f"{self.record}: persistent id at byte {start} where none is allowed")
                    stack[-1] = self.persistent_load(stack[-1])
                elif op == NEWFALSE:
                    append(False)
                elif op == BINPUT:
                    memo[data[pos]] = stack[-1]
                    pos += 1
                elif op == TUPLE2:
                    second = stack.pop()
                    stack[-1] = (stack[-1], second)
                elif op == TUPLE3:
                    third = stack.pop()
                    second = stack.pop()
                    stack[-1] = (stack[-1], second, third)
                elif op == NEWTRUE:
                    append(True)
                elif op == BININT:
                    append(_unpack_i(data, pos)[0])
                    pos += 4
                elif op == LONG_BINGET:
                    append(memo[_unpack_I(data, pos)[0]])
                    pos += 4
                elif op == EMPTY_DICT:
                    append({})
                elif op == SETITEMS:
                    items = stack
                    stack = metastack.pop()
                    append = stack.append
                    self.setitems(stack[-1], items, start)
                else:  # the handlers work on the engine's copy of the loop's state
                    self.stack = stack
                    self.append = append
                    pos = dispatch[op](self, pos)
                    stack = self.stack  # the handler may have closed a MARK or opened a frame
                    append = self.append
                    frame_end = self._frame_end
        except _Stop as stop:
            return stop.value, stop.end
        except PtfileError as exc:
            _locate(exc, self.record, start, self.origin)
            raise
        except RecursionError:  # pragma: no cover - defensive; the loop itself never recurses
            raise CorruptFileError(f"{self.record}: pickle nested too deeply at byte {self.origin + start}") from None
        except MemoryError:
            raise LimitExceededError(f"{self.record}: pickle at byte {self.origin + start} asks for more memory "
                                     f"than is available") from None
        except IndexError as exc:
            if start >= len(data):  # the opcode itself could not be read
                raise CorruptFileError(
                    f"{self.record}: pickle ends at byte {self.origin + start} without STOP") from None
            raise self._malformed(exc, start) from None
        except (KeyError, TypeError, ValueError, OverflowError, struct.error, UnicodeError) as exc:
            raise self._malformed(exc, start) from None

    def _start_run(self, pos: int) -> None:
        """A fresh stack, memo and frame for a pickle starting at ``pos`` (the protocol carries over)."""
        self.stack = []
        self.append = self.stack.append
        self.metastack = []
        self.memo = {}
        self._first = pos
        self._frame_end = _NO_FRAME

    def _malformed(self, exc: Exception, start: int) -> CorruptFileError:
        return CorruptFileError(
            f"{self.record}: malformed pickle at byte {self.origin + start}: {type(exc).__name__}: {exc}")

    def _leave_frame(self, pos: int) -> None:
        if pos > self._frame_end:
            raise CorruptFileError(f"{self.record}: opcode before byte {pos} straddles the end of its frame")
        self._frame_end = _NO_FRAME

    def _need(self, n: int, at: int) -> None:
        """Refuse a declared length ``n`` at ``at`` that runs past the end of the pickle."""
        if n < 0 or at + n > len(self.data):
            raise CorruptFileError(f"{self.record}: length {n} at byte {at} runs past the end of the pickle")

    def _take(self, n: int, at: int) -> bytes:
        """The ``n`` bytes at ``at``, once the declared length ``n`` is checked against the pickle."""
        self._need(n, at)
        return self.data[at : at + n]

    def _line(self, at: int) -> tuple[bytes, int]:
        """The text from ``at`` up to the next newline, and the offset after the newline."""
        data = self.data
        nl = data.index(b"\n", at)
        return data[at:nl], nl + 1

    def _pop_mark(self) -> list:
        """The values pushed since the innermost MARK; the stack under it becomes the stack."""
        items = self.stack
        self.stack = stack = self.metastack.pop()
        self.append = stack.append
        return items

    # -- control and framing -----------------------------------------------------

    def _load_proto(self, pos: int) -> int:
        if pos - 1 != self._first:
            raise CorruptFileError(f"{self.record}: PROTO at byte {pos - 1} is not the first opcode")
        self.protocol = self.data[pos]
        if self.protocol > 5:
            raise CorruptFileError(f"{self.record}: unsupported pickle protocol {self.protocol}")
        return pos + 1

    def _load_stop(self, pos: int) -> int:
        stack = self.stack
        if self.metastack or len(stack) != 1:
            raise CorruptFileError(f"{self.record}: STOP at byte {pos - 1} leaves {len(stack)} values "
                                   f"and {len(self.metastack)} open MARKs")
        raise _Stop(stack[0], pos)

    def _load_frame(self, pos: int) -> int:
        (n,) = _unpack_Q(self.data, pos)
        pos += 8
        if self._frame_end != _NO_FRAME:
            raise CorruptFileError(f"{self.record}: FRAME at byte {pos - 9} inside another frame")
        self._frame_end = pos + n
        self._need(n, pos)
        return pos

    # -- constants and numbers ---------------------------------------------------

    def _load_none(self, pos: int) -> int:
        self.append(None)
        return pos

    def _load_int(self, pos: int) -> int:
        text, pos = self._line(pos)
        self.append(int_operand(text))
        return pos

    def _load_long(self, pos: int) -> int:  # CPython reads the digits with int(text, 0), so 0x... is hex
        text, pos = self._line(pos)
        self.append(int(text[:-1] if text.endswith(b"L") else text, 0))
        return pos

    def _load_long1(self, pos: int) -> int:
        n = self.data[pos]
        self.append(int.from_bytes(self._take(n, pos + 1), "little", signed=True))
        return pos + 1 + n

    def _load_long4(self, pos: int) -> int:
        (n,) = _unpack_i(self.data, pos)
        self.append(int.from_bytes(self._take(n, pos + 4), "little", signed=True))
        return pos + 4 + n

    def _load_binfloat(self, pos: int) -> int:
        self.append(_unpack_d(self.data, pos)[0])
        return pos + 8

    def _load_float(self, pos: int) -> int:
        text, pos = self._line(pos)
        self.append(float(text))
        return pos

    # -- text and bytes ----------------------------------------------------------

    def _load_short_binunicode(self, pos: int) -> int:
        n = self.data[pos]
        self.append(str(self._take(n, pos + 1), "utf-8", "surrogatepass"))
        return pos + 1 + n

    def _load_binunicode8(self, pos: int) -> int:
        (n,) = _unpack_Q(self.data, pos)
        self.append(str(self._take(n, pos + 8), "utf-8", "surrogatepass"))
        return pos + 8 + n

    def _load_unicode(self, pos: int) -> int:
        text, pos = self._line(pos)
        self.append(str(text, "raw-unicode-escape"))
        return pos

    def _load_short_binbytes(self, pos: int) -> int:
        n = self.data[pos]
        self.append(self._take(n, pos + 1))
        return pos + 1 + n

    def _load_binbytes(self, pos: int) -> int:
        (n,) = _unpack_I(self.data, pos)
        self.append(self._take(n, pos + 4))
        return pos + 4 + n

    def _load_binbytes8(self, pos: int) -> int:
        (n,) = _unpack_Q(self.data, pos)
        self.append(self._take(n, pos + 8))
        return pos + 8 + n

    def _load_bytearray8(self, pos: int) -> int:
        (n,) = _unpack_Q(self.data, pos)
        self.append(bytearray(self._take(n, pos + 8)))
        return pos + 8 + n

    def _load_short_binstring(self, pos: int) -> int:
        n = self.data[pos]
        self.append(str(self._take(n, pos + 1), "utf-8"))
        return pos + 1 + n

    def _load_binstring(self, pos: int) -> int:
        (n,) = _unpack_i(self.data, pos)
        self.append(str(self._take(n, pos + 4), "utf-8"))
        return pos + 4 + n

    def _load_string(self, pos: int) -> int:
        start = pos - 1
        text, pos = self._line(pos)
        if len(text) < 2 or text[:1] != text[-1:] or text[:1] not in (b"'", b'"'):
            raise CorruptFileError(f"{self.record}: STRING at byte {start} is not quoted")
        self.append(str(_unescape(text[1:-1]), "utf-8"))
        return pos

    # -- stack and memo ----------------------------------------------------------

    def _load_pop(self, pos: int) -> int:
        if self.stack:
            self.stack.pop()
        else:  # CPython: POP on an empty stack pops the mark
            self._pop_mark()
        return pos

    def _load_pop_mark(self, pos: int) -> int:
        self._pop_mark()
        return pos

    def _load_dup(self, pos: int) -> int:
        self.append(self.stack[-1])
        return pos

    def _load_put(self, pos: int) -> int:
        start = pos - 1
        text, pos = self._line(pos)
        index = int(text)
        if not 0 <= index <= MAX_MEMO_INDEX:
            raise CorruptFileError(f"{self.record}: PUT index at byte {start} is out of range (CPython refuses it too)")
        self.memo[index] = self.stack[-1]
        return pos

    def _load_memoize(self, pos: int) -> int:
        memo = self.memo
        memo[len(memo)] = self.stack[-1]
        return pos

    def _load_get(self, pos: int) -> int:
        text, pos = self._line(pos)
        self.append(self.memo[int(text)])
        return pos

    # -- containers --------------------------------------------------------------

    def _load_empty_list(self, pos: int) -> int:
        self.append([])
        return pos

    def _load_list(self, pos: int) -> int:
        items = self._pop_mark()
        self.append(items)
        return pos

    def _load_append(self, pos: int) -> int:
        value = self.stack.pop()
        self.extend(self.stack[-1], [value], pos - 1)
        return pos

    def _load_appends(self, pos: int) -> int:
        items = self._pop_mark()
        self.extend(self.stack[-1], items, pos - 1)
        return pos

    def _load_dict(self, pos: int) -> int:
        items = self._pop_mark()
        result: dict = {}
        self.setitems(result, items, pos - 1)
        self.append(result)
        return pos

    def _load_setitem(self, pos: int) -> int:
        stack = self.stack
        value = stack.pop()
        key = stack.pop()
        self.setitems(stack[-1], [key, value], pos - 1)
        return pos

    def _load_empty_set(self, pos: int) -> int:
        self.append(set())
        return pos

    def _load_additems(self, pos: int) -> int:
        items = self._pop_mark()
        self.additems(self.stack[-1], items, pos - 1)
        return pos

    def _load_frozenset(self, pos: int) -> int:
        items = self._pop_mark()
        check_keys(items)
        self.append(frozenset(items))
        return pos

    # -- globals, calls and persistent ids ---------------------------------------

    def _load_global(self, pos: int) -> int:
        start = pos - 1
        module, pos = self._line(pos)
        name, pos = self._line(pos)
        self.append(self.find_global(str(module, "utf-8"), str(name, "utf-8"), start))
        return pos

    def _load_stack_global(self, pos: int) -> int:
        stack = self.stack
        name = stack.pop()
        module = stack.pop()
        self.append(self.find_global(module, name, pos - 1))
        return pos

    def _load_newobj(self, pos: int) -> int:
        stack = self.stack
        args = stack.pop()
        stack[-1] = self.new(stack[-1], args, pos - 1)
        return pos

    def _load_newobj_ex(self, pos: int) -> int:
        stack = self.stack
        kwargs = stack.pop()
        args = stack.pop()
        cls = stack.pop()
        if type(kwargs) is not dict:
            raise CorruptFileError(f"{self.record}: NEWOBJ_EX keyword arguments at byte {pos - 1} are not a dict")
        if kwargs:
            args = (*args, kwargs) if type(args) is tuple else args
        self.append(self.call(cls, args, pos - 1))
        return pos

    def _load_inst(self, pos: int) -> int:
        start = pos - 1
        module, pos = self._line(pos)
        name, pos = self._line(pos)
        args = tuple(self._pop_mark())
        cls = self.find_global(str(module, "utf-8"), str(name, "utf-8"), start)
        if type(cls) is not GlobalRef:
            raise CorruptFileError(f"{self.record}: INST of a value at byte {start}")
        self.append(self.call(cls, args, start))
        return pos

    def _load_obj(self, pos: int) -> int:
        items = self._pop_mark()
        if not items:
            raise CorruptFileError(f"{self.record}: OBJ without a class at byte {pos - 1}")
        self.append(self.call(items[0], tuple(items[1:]), pos - 1))
        return pos

    def _load_build(self, pos: int) -> int:
        stack = self.stack
        state = stack.pop()
        self.build(stack[-1], state, pos - 1)
        return pos

    # -- refused opcodes ---------------------------------------------------------

    def _load_persid(self, pos: int) -> int:
        raise CorruptFileError(f"{self.record}: text persistent id (PERSID) at byte {pos - 1}; torch never writes one")

    def _refuse_extension(self, pos: int) -> int:
        raise CorruptFileError(f"{self.record}: extension-registry opcode at byte {pos - 1} is refused")

    _load_ext1 = _load_ext2 = _load_ext4 = _refuse_extension

    def _refuse_buffer(self, pos: int) -> int:
        raise CorruptFileError(f"{self.record}: out-of-band buffer opcode at byte {pos - 1} is refused")

    _load_next_buffer = _load_readonly_buffer = _refuse_buffer

    def _load_unknown(self, pos: int) -> int:
        raise CorruptFileError(f"{self.record}: unknown opcode 0x{self.data[pos - 1]:02x} at byte {pos - 1}")



def _dispatch_table() -> list[Callable[[Engine, int], int]]:
    """Every byte's handler: ``Engine._load_<name>`` for each opcode of the table not run inline, else
    the refusal of an unknown opcode."""
    handlers = {op.code: getattr(Engine, f"_load_{op.name.lower()}") for op in OPCODES if op.code not in _HOT}
    return [handlers.get(code, Engine._load_unknown) for code in range(256)]


#: The opcodes :meth:`Engine.run` interprets inline, most frequent in torch checkpoints first (LONG_BINPUT
#: is a quarter of all opcodes once a file has more than 256 memo entries).
_HOT = tuple(code_of(name) for name in (
    "LONG_BINPUT", "BINGET", "MARK", "BINUNICODE", "REDUCE", "BININT2", "TUPLE", "BININT1", "TUPLE1",
    "EMPTY_TUPLE", "BINPERSID", "NEWFALSE", "BINPUT", "TUPLE2", "TUPLE3", "NEWTRUE", "BININT", "LONG_BINGET",
    "EMPTY_DICT", "SETITEMS"))


#: Handlers by opcode byte, as plain functions: ``_DISPATCH[op](engine, pos)``.
_DISPATCH = _dispatch_table()


#: How the engine's own messages name a position in the pickle.
_PICKLE_OFFSET = re.compile(r"\b(at|before) byte (\d+)")


def _locate(exc: PtfileError, record: str, offset: int, origin: int) -> None:
    """Prefix a constructor's or container's error with the pickle record and opcode offset.

    The engine's own messages were written with offsets into ``data``; for a pickle cut out
    of a file (``origin`` > 0) they are moved to file offsets here, in one place.
    """
    if not exc.args or type(exc.args[0]) is not str:
        return
    message = exc.args[0]
    if message.startswith(f"{record}:"):
        if origin:
            message = _PICKLE_OFFSET.sub(lambda m: f"{m.group(1)} byte {int(m.group(2)) + origin}", message)
    else:
        message = f"{record}: at byte {origin + offset}: {message}"
    exc.args = (message, *exc.args[1:])


def _unescape(text: bytes) -> bytes:
    """Undo the backslash escapes of a protocol-0 STRING, as CPython does."""
    return codecs.escape_decode(text)[0]
