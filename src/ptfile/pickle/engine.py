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


class _Mark:
    """Sentinel type: never a value, so a stray MARK can be told from data."""


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
    """

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
        self._fresh: dict[int, Any] = {}
        # Keys by hash per dict or set that got a non-str key, by id; the container is held so
        # that its id cannot be reused by another while this engine runs.
        self._key_hashes: dict[int, tuple[Any, dict[int, list]]] = {}

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

    def run(self, pos: int = 0) -> tuple[Any, int]:  # noqa: C901 - one flat loop is the fast path
        """Interpret the pickle starting at ``pos``; return the value and the offset after STOP."""
        data = self.data
        end = len(data)
        stack: list = []
        append = stack.append
        metastack: list = []
        memo: dict = {}
        frame_end = -1
        first = pos
        record = self.record
        max_nesting = self.max_nesting

        def need(n: int, at: int) -> None:
            if n < 0 or at + n > end:
                raise CorruptFileError(f"{record}: length {n} at byte {at} runs past the end of the pickle")

        start = pos
        try:
            while True:
                if frame_end >= 0 and pos >= frame_end:
                    if pos > frame_end:
                        raise CorruptFileError(f"{record}: opcode before byte {pos} straddles the end of its frame")
                    frame_end = -1
                start = pos
                op = data[pos]  # past the end: IndexError, reported below as a missing STOP
                pos += 1
                # The most frequent opcodes of torch checkpoints come first (LONG_BINPUT is a
                # quarter of all opcodes once a file has more than 256 memo entries).
                if op == 0x72:  # LONG_BINPUT
                    (idx,) = _unpack_I(data, pos)
                    memo[idx] = stack[-1]
                    pos += 4
                elif op == 0x71:  # BINPUT
                    memo[data[pos]] = stack[-1]
                    pos += 1
                elif op == 0x68:  # BINGET
                    append(memo[data[pos]])
                    pos += 1
                elif op == 0x58:  # BINUNICODE
                    (n,) = _unpack_I(data, pos)
                    pos += 4
                    need(n, pos)
                    append(str(data[pos : pos + n], "utf-8", "surrogatepass"))
                    pos += n
                elif op == 0x4B:  # BININT1
                    append(data[pos])
                    pos += 1
                elif op == 0x4D:  # BININT2
                    (value,) = _unpack_H(data, pos)
                    append(value)
                    pos += 2
                elif op == 0x28:  # MARK
                    if len(metastack) >= max_nesting:
                        raise LimitExceededError(f"{record}: MARKs nested more than {max_nesting} deep, "
                                                 f"{over_limit('max_pickle_nesting')}")
                    metastack.append(stack)
                    stack = []
                    append = stack.append
                elif op == 0x74:  # TUPLE
                    items = tuple(stack)
                    stack = metastack.pop()
                    append = stack.append
                    append(items)
                elif op == 0x52:  # REDUCE
                    args = stack.pop()
                    stack[-1] = self.call(stack[-1], args, start)
                elif op == 0x86:  # TUPLE2
                    second = stack.pop()
                    stack[-1] = (stack[-1], second)
                elif op == 0x85:  # TUPLE1
                    stack[-1] = (stack[-1],)
                elif op == 0x51:  # BINPERSID
                    if self.persistent_load is None:
                        raise CorruptFileError(f"{record}: persistent id at byte {start} where none is allowed")
                    stack[-1] = self.persistent_load(stack[-1])
                elif op == 0x29:  # EMPTY_TUPLE
                    append(())
                elif op == 0x89:  # NEWFALSE
                    append(False)
                elif op == 0x88:  # NEWTRUE
                    append(True)
                elif op == 0x6A:  # LONG_BINGET
                    (idx,) = _unpack_I(data, pos)
                    append(memo[idx])
                    pos += 4
                elif op == 0x4A:  # BININT
                    (value,) = _unpack_i(data, pos)
                    append(value)
                    pos += 4
                elif op == 0x75:  # SETITEMS
                    items = stack
                    stack = metastack.pop()
                    append = stack.append
                    self.setitems(stack[-1], items, start)
                elif op == 0x73:  # SETITEM
                    value = stack.pop()
                    key = stack.pop()
                    self.setitems(stack[-1], [key, value], start)
                elif op == 0x87:  # TUPLE3
                    third = stack.pop()
                    second = stack.pop()
                    stack[-1] = (stack[-1], second, third)
                elif op == 0x7D:  # EMPTY_DICT
                    append({})
                elif op == 0x5D:  # EMPTY_LIST
                    append([])
                elif op == 0x65:  # APPENDS
                    items = stack
                    stack = metastack.pop()
                    append = stack.append
                    self.extend(stack[-1], items, start)
                elif op == 0x61:  # APPEND
                    value = stack.pop()
                    self.extend(stack[-1], [value], start)
                elif op == 0x63:  # GLOBAL
                    nl1 = data.index(b"\n", pos)
                    nl2 = data.index(b"\n", nl1 + 1)
                    module = str(data[pos:nl1], "utf-8")
                    name = str(data[nl1 + 1 : nl2], "utf-8")
                    pos = nl2 + 1
                    append(self.find_global(module, name, start))
                elif op == 0x47:  # BINFLOAT
                    append(_unpack_d(data, pos)[0])
                    pos += 8
                elif op == 0x4E:  # NONE
                    append(None)
                elif op == 0x62:  # BUILD
                    state = stack.pop()
                    self.build(stack[-1], state, start)
                elif op == 0x81:  # NEWOBJ
                    args = stack.pop()
                    stack[-1] = self.new(stack[-1], args, start)
                elif op == 0x2E:  # STOP
                    if metastack or len(stack) != 1:
                        raise CorruptFileError(
                            f"{record}: STOP at byte {start} leaves {len(stack)} values and {len(metastack)} open MARKs"
                        )
                    return stack[0], pos
                elif op == 0x80:  # PROTO
                    if start != first:
                        raise CorruptFileError(f"{record}: PROTO at byte {start} is not the first opcode")
                    self.protocol = data[pos]
                    pos += 1
                    if self.protocol > 5:
                        raise CorruptFileError(f"{record}: unsupported pickle protocol {self.protocol}")
                else:
                    pos = self._rare(op, start, pos, stack, metastack, memo)
                    if type(pos) is tuple:  # MARK-consuming rare opcodes swap the stack
                        pos, stack = pos
                        append = stack.append
                    elif pos < 0:  # FRAME
                        pos = -pos
                        if frame_end >= 0 and start < frame_end:
                            raise CorruptFileError(f"{record}: FRAME at byte {start} inside another frame")
                        frame_end = pos + self._frame_len
                        need(self._frame_len, pos)
        except PtfileError as exc:
            _locate(exc, record, start, self.origin)
            raise
        except RecursionError:  # pragma: no cover - defensive; the loop itself never recurses
            raise CorruptFileError(f"{record}: pickle nested too deeply at byte {self.origin + start}") from None
        except MemoryError:
            raise LimitExceededError(
                f"{record}: pickle at byte {self.origin + start} asks for more memory than is available") from None
        except IndexError as exc:
            if start >= end:  # the opcode itself could not be read
                raise CorruptFileError(f"{record}: pickle ends at byte {self.origin + start} without STOP") from None
            raise CorruptFileError(
                f"{record}: malformed pickle at byte {self.origin + start}: {type(exc).__name__}: {exc}") from None
        except (KeyError, TypeError, ValueError, OverflowError, struct.error, UnicodeError) as exc:
            raise CorruptFileError(
                f"{record}: malformed pickle at byte {self.origin + start}: {type(exc).__name__}: {exc}") from None

    def _rare(self, op: int, start: int, pos: int, stack: list, metastack: list, memo: dict) -> Any:
        """Opcodes that real checkpoints use rarely; returns the new position."""
        data = self.data
        record = self.record
        need = self._need  # methods, not closures: making two closures per call slowed every rare opcode
        line = self._line
        append = stack.append
        if op == 0x8C:  # SHORT_BINUNICODE
            n = data[pos]
            need(n, pos + 1)
            append(str(data[pos + 1 : pos + 1 + n], "utf-8", "surrogatepass"))
            return pos + 1 + n
        if op == 0x8D:  # BINUNICODE8
            (n,) = _unpack_Q(data, pos)
            need(n, pos + 8)
            append(str(data[pos + 8 : pos + 8 + n], "utf-8", "surrogatepass"))
            return pos + 8 + n
        if op == 0x43:  # SHORT_BINBYTES
            n = data[pos]
            need(n, pos + 1)
            append(data[pos + 1 : pos + 1 + n])
            return pos + 1 + n
        if op == 0x42:  # BINBYTES
            (n,) = _unpack_I(data, pos)
            need(n, pos + 4)
            append(data[pos + 4 : pos + 4 + n])
            return pos + 4 + n
        if op == 0x8E:  # BINBYTES8
            (n,) = _unpack_Q(data, pos)
            need(n, pos + 8)
            append(data[pos + 8 : pos + 8 + n])
            return pos + 8 + n
        if op == 0x96:  # BYTEARRAY8
            (n,) = _unpack_Q(data, pos)
            need(n, pos + 8)
            append(bytearray(data[pos + 8 : pos + 8 + n]))
            return pos + 8 + n
        if op == 0x55:  # SHORT_BINSTRING
            n = data[pos]
            need(n, pos + 1)
            append(str(data[pos + 1 : pos + 1 + n], "utf-8"))
            return pos + 1 + n
        if op == 0x54:  # BINSTRING
            (n,) = _unpack_i(data, pos)
            need(n, pos + 4)
            append(str(data[pos + 4 : pos + 4 + n], "utf-8"))
            return pos + 4 + n
        if op == 0x53:  # STRING
            text, pos = line(pos)
            if len(text) < 2 or text[:1] != text[-1:] or text[:1] not in (b"'", b'"'):
                raise CorruptFileError(f"{record}: STRING at byte {start} is not quoted")
            append(str(_unescape(text[1:-1]), "utf-8"))
            return pos
        if op == 0x56:  # UNICODE
            text, pos = line(pos)
            append(str(text, "raw-unicode-escape"))
            return pos
        if op == 0x49:  # INT
            text, pos = line(pos)
            append(int_operand(text))
            return pos
        if op == 0x4C:  # LONG: CPython reads the digits with int(text, 0), so 0x... is hex
            text, pos = line(pos)
            append(int(text[:-1] if text.endswith(b"L") else text, 0))
            return pos
        if op == 0x46:  # FLOAT
            text, pos = line(pos)
            append(float(text))
            return pos
        if op == 0x8A:  # LONG1
            n = data[pos]
            need(n, pos + 1)
            append(int.from_bytes(data[pos + 1 : pos + 1 + n], "little", signed=True))
            return pos + 1 + n
        if op == 0x8B:  # LONG4
            (n,) = _unpack_i(data, pos)
            need(n, pos + 4)
            append(int.from_bytes(data[pos + 4 : pos + 4 + n], "little", signed=True))
            return pos + 4 + n
        if op == 0x70:  # PUT
            text, pos = line(pos)
            index = int(text)
            if not 0 <= index <= MAX_MEMO_INDEX:
                raise CorruptFileError(f"{record}: PUT index at byte {start} is out of range (CPython refuses it too)")
            memo[index] = stack[-1]
            return pos
        if op == 0x67:  # GET
            text, pos = line(pos)
            append(memo[int(text)])
            return pos
        if op == 0x94:  # MEMOIZE
            memo[len(memo)] = stack[-1]
            return pos
        if op == 0x93:  # STACK_GLOBAL
            name = stack.pop()
            module = stack.pop()
            append(self.find_global(module, name, start))
            return pos
        if op == 0x30:  # POP
            if stack:
                stack.pop()
                return pos
            return pos, metastack.pop()  # CPython: POP on an empty stack pops the mark
        if op == 0x31:  # POP_MARK
            return pos, metastack.pop()
        if op == 0x32:  # DUP
            append(stack[-1])
            return pos
        if op == 0x6C:  # LIST
            items = stack
            stack = metastack.pop()
            stack.append(items)
            return pos, stack
        if op == 0x64:  # DICT
            items = stack
            stack = metastack.pop()
            result: dict = {}
            self.setitems(result, items, start)
            stack.append(result)
            return pos, stack
        if op == 0x8F:  # EMPTY_SET
            append(set())
            return pos
        if op == 0x90:  # ADDITEMS
            items = stack
            stack = metastack.pop()
            self.additems(stack[-1], items, start)
            return pos, stack
        if op == 0x91:  # FROZENSET
            items = stack
            stack = metastack.pop()
            check_keys(items)
            stack.append(frozenset(items))
            return pos, stack
        if op == 0x69:  # INST
            module, pos = line(pos)
            name, pos = line(pos)
            args = tuple(stack)
            stack = metastack.pop()
            cls = self.find_global(str(module, "utf-8"), str(name, "utf-8"), start)
            if type(cls) is not GlobalRef:
                raise CorruptFileError(f"{record}: INST of a value at byte {start}")
            stack.append(self.call(cls, args, start))
            return pos, stack
        if op == 0x6F:  # OBJ
            items = stack
            stack = metastack.pop()
            if not items:
                raise CorruptFileError(f"{record}: OBJ without a class at byte {start}")
            stack.append(self.call(items[0], tuple(items[1:]), start))
            return pos, stack
        if op == 0x92:  # NEWOBJ_EX
            kwargs = stack.pop()
            args = stack.pop()
            cls = stack.pop()
            if type(kwargs) is not dict:
                raise CorruptFileError(f"{record}: NEWOBJ_EX keyword arguments at byte {start} are not a dict")
            if kwargs:
                args = (*args, kwargs) if type(args) is tuple else args
            append(self.call(cls, args, start))
            return pos
        if op == 0x95:  # FRAME
            (n,) = _unpack_Q(data, pos)
            self._frame_len = n
            return -(pos + 8)
        if op == 0x50:  # PERSID
            raise CorruptFileError(f"{record}: text persistent id (PERSID) at byte {start}; torch never writes one")
        if op in (0x82, 0x83, 0x84):  # EXT1, EXT2, EXT4
            raise CorruptFileError(f"{record}: extension-registry opcode at byte {start} is refused")
        if op in (0x97, 0x98):  # NEXT_BUFFER, READONLY_BUFFER
            raise CorruptFileError(f"{record}: out-of-band buffer opcode at byte {start} is refused")
        raise CorruptFileError(f"{record}: unknown opcode 0x{op:02x} at byte {start}")

    def _need(self, n: int, at: int) -> None:
        if n < 0 or at + n > len(self.data):
            raise CorruptFileError(f"{self.record}: length {n} at byte {at} runs past the end of the pickle")

    def _line(self, at: int) -> tuple[bytes, int]:
        data = self.data
        nl = data.index(b"\n", at)
        return data[at:nl], nl + 1


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
