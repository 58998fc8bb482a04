"""A small protocol-2 pickle emitter with CPython's memo rules.

torch.save pickles with the C pickler at protocol 2; this module writes the same
opcodes for the same objects, so that ptfile can emit torch's ``data.pkl`` byte for
byte.  The C pickler itself cannot be used: it refuses to name a class it cannot
import, and ptfile writes globals (``torch._utils._rebuild_tensor_v2``, classes of
records) it never imports.

Rules copied from CPython's ``_pickle.c`` (protocol 2, ``fix_imports=True``):

* ``None``, bools, ints and floats are written inline and never memoized.
* Every other object is memoized right after it is built (BINPUT, LONG_BINPUT past
  255), keyed by object identity; meeting it again emits BINGET.  The empty tuple is
  never memoized.  Globals are memoized by name (the C pickler keys them by the
  identity of the imported object, which is the same thing).
* ``str`` is BINUNICODE (UTF-8, surrogates passed through); ``bytes`` are
  ``_codecs.encode(latin1_text, 'latin1')`` (empty bytes: ``bytes()``).
* Tuples of 1-3 items use TUPLE1-3, longer ones MARK ... TUPLE.  A tuple that became
  memoized while its items were written (a cycle) is replaced by a memo GET.
* Lists and dicts are EMPTY_LIST / EMPTY_DICT followed by batches of 1000 items.
  Exact lists and dicts write a single item with APPEND / SETITEM and otherwise
  MARK ... APPENDS / SETITEMS for every batch; items coming from ``__reduce__``
  iterators (OrderedDict, objects) write a lone trailing item with APPEND / SETITEM.
* Python-3 names of builtins are written under their Python-2 names
  (``builtins.set`` -> ``__builtin__ set``), as ``fix_imports`` does.

Sets are written with their items sorted when the items can be compared, so that
output does not depend on hash randomization (CPython writes iteration order).
"""

from __future__ import annotations

import _compat_pickle
import struct
from collections.abc import Iterable, Iterator
from pickle import encode_long
from typing import Any

from .opcodes import byte_of

__all__ = ["Pickler", "GlobalName", "BATCHSIZE"]

#: Items per APPENDS / SETITEMS batch, as CPython's pickler writes them.
BATCHSIZE = 1000
#: Largest memo index BINPUT / BINGET can hold (one unsigned byte).
_SHORT_MEMO_MAX = 0xFF

# The opcodes the emitter writes, from the one table.
PROTO = byte_of("PROTO")
STOP = byte_of("STOP")
NONE = byte_of("NONE")
NEWTRUE = byte_of("NEWTRUE")
NEWFALSE = byte_of("NEWFALSE")
BININT1 = byte_of("BININT1")
BININT2 = byte_of("BININT2")
BININT = byte_of("BININT")
LONG1 = byte_of("LONG1")
LONG4 = byte_of("LONG4")
BINFLOAT = byte_of("BINFLOAT")
BINUNICODE = byte_of("BINUNICODE")
EMPTY_TUPLE = byte_of("EMPTY_TUPLE")
TUPLE1 = byte_of("TUPLE1")
TUPLE2 = byte_of("TUPLE2")
TUPLE3 = byte_of("TUPLE3")
MARK = byte_of("MARK")
TUPLE = byte_of("TUPLE")
POP = byte_of("POP")
POP_MARK = byte_of("POP_MARK")
EMPTY_LIST = byte_of("EMPTY_LIST")
APPEND = byte_of("APPEND")
APPENDS = byte_of("APPENDS")
EMPTY_DICT = byte_of("EMPTY_DICT")
SETITEM = byte_of("SETITEM")
SETITEMS = byte_of("SETITEMS")
GLOBAL = byte_of("GLOBAL")
REDUCE = byte_of("REDUCE")
NEWOBJ = byte_of("NEWOBJ")
BUILD = byte_of("BUILD")
BINPERSID = byte_of("BINPERSID")
BINPUT = byte_of("BINPUT")
LONG_BINPUT = byte_of("LONG_BINPUT")
BINGET = byte_of("BINGET")
LONG_BINGET = byte_of("LONG_BINGET")

_TUPLE_OPS = (EMPTY_TUPLE, TUPLE1, TUPLE2, TUPLE3)
_pack_I = struct.Struct("<I").pack
_pack_i = struct.Struct("<i").pack
_pack_H = struct.Struct("<H").pack
_pack_d = struct.Struct(">d").pack

# The one string object CPython passes to _codecs.encode for every bytes value
# (an interned identifier, so repeated bytes values share one memo entry).
_LATIN1 = "latin1"


class GlobalName:
    """A global written by name (``GLOBAL module name``), memoized by that name."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __repr__(self) -> str:
        return f"GlobalName({self.module!r}, {self.name!r})"


_BYTES = GlobalName("builtins", "bytes")
_CODECS_ENCODE = GlobalName("_codecs", "encode")
_SET = GlobalName("builtins", "set")
_FROZENSET = GlobalName("builtins", "frozenset")
_BYTEARRAY = GlobalName("builtins", "bytearray")
_COMPLEX = GlobalName("builtins", "complex")


class Pickler:
    """Writes one protocol-2 pickle into ``self.out``.

    Subclasses handle their own types by overriding :meth:`save_other`, using
    :meth:`save_reduce` and :meth:`save_global` as the C pickler's reduce protocol
    does.  ``self.path`` is the list of keys leading to the object being written,
    for error messages.
    """

    def __init__(self) -> None:
        self.out = bytearray()
        self._memo: dict[Any, int] = {}
        self._keep: list[Any] = []  # memoized objects stay alive so their ids stay unique
        self.path: list[str] = []

    # -- entry point -------------------------------------------------------------

    def dump(self, obj: Any) -> bytes:
        self.out += PROTO + b"\x02"
        self.save(obj)
        self.out += STOP
        return bytes(self.out)

    # -- memo --------------------------------------------------------------------

    def memoize_key(self, key: Any, keep: Any = None) -> None:
        index = len(self._memo)
        self._memo[key] = index
        if keep is not None:
            self._keep.append(keep)
        self.out += BINPUT + bytes((index,)) if index <= _SHORT_MEMO_MAX else LONG_BINPUT + _pack_I(index)

    def memoize(self, obj: Any) -> None:
        self.memoize_key(id(obj), obj)

    def memo_get(self, key: Any) -> bool:
        """Emit a GET for ``key`` if it is memoized; say whether it was."""
        index = self._memo.get(key)
        if index is None:
            return False
        self.out += BINGET + bytes((index,)) if index <= _SHORT_MEMO_MAX else LONG_BINGET + _pack_I(index)
        return True

    # -- dispatch ----------------------------------------------------------------

    def save(self, obj: Any) -> None:
        kind = type(obj)
        if obj is None:
            self.out += NONE
        elif kind is bool:
            self.out += NEWTRUE if obj else NEWFALSE
        elif kind is int:
            self.save_int(obj)
        elif kind is float:
            self.out += BINFLOAT + _pack_d(obj)
        elif self.memo_get(id(obj)):
            return
        elif kind is str:
            self.save_str(obj)
        elif kind is tuple:
            self.save_tuple(obj)
        elif kind is list:
            self.save_list(obj)
        elif kind is dict:
            self.save_dict(obj)
        elif kind is bytes:
            self.save_bytes(obj)
        elif kind is GlobalName:
            self.save_global(obj)
        elif kind in (set, frozenset):
            self.save_reduce(_SET if kind is set else _FROZENSET, (_set_items(obj),), obj)
        elif kind is bytearray:
            self.save_reduce(_BYTEARRAY, (bytes(obj),) if obj else (), obj)
        elif kind is complex:
            self.save_reduce(_COMPLEX, (obj.real, obj.imag), obj)
        else:
            self.save_other(obj)

    def save_other(self, obj: Any) -> None:
        raise TypeError(f"cannot pickle {type(obj).__name__}")

    # -- atoms -------------------------------------------------------------------

    def save_int(self, value: int) -> None:
        if 0 <= value <= 0xFF:
            self.out += BININT1 + bytes((value,))
        elif 0 <= value <= 0xFFFF:
            self.out += BININT2 + _pack_H(value)
        elif -0x80000000 <= value <= 0x7FFFFFFF:
            self.out += BININT + _pack_i(value)
        else:
            encoded = encode_long(value)
            if len(encoded) < 256:
                self.out += LONG1 + bytes((len(encoded),)) + encoded
            else:
                self.out += LONG4 + _pack_i(len(encoded)) + encoded

    def save_str_memoized(self, text: str) -> None:
        """What :meth:`save` writes for a ``str``: a memo GET if it was written before."""
        if not self.memo_get(id(text)):
            self.save_str(text)

    def save_int_tuple(self, items: tuple[int, ...]) -> None:
        """What :meth:`save` writes for a fresh tuple of ints (a shape): no path, no cycle to check."""
        if self.memo_get(id(items)):
            return
        count = len(items)
        if count == 0:
            self.out += EMPTY_TUPLE
            return
        if count > 3:
            self.out += MARK
        for item in items:
            self.save_int(item)
        self.out += _TUPLE_OPS[count] if count <= 3 else TUPLE
        self.memoize(items)

    def save_str(self, text: str) -> None:
        encoded = text.encode("utf-8", "surrogatepass")
        self.out += BINUNICODE + _pack_I(len(encoded)) + encoded
        self.memoize(text)

    def save_bytes(self, data: bytes) -> None:
        if not data:
            self.save_reduce(_BYTES, (), data)
        else:
            # decode returns CPython's shared one-character strings too, as the C pickler gets them
            self.save_reduce(_CODECS_ENCODE, (data.decode("latin-1"), _LATIN1), data)

    def save_global(self, name: GlobalName) -> None:
        key = ("global", name.module, name.name)
        if self.memo_get(key):
            return
        module, qualname = _python2_name(name.module, name.name)
        self.out += GLOBAL + module.encode("utf-8") + b"\n" + qualname.encode("utf-8") + b"\n"
        self.memoize_key(key)

    # -- containers --------------------------------------------------------------

    def save_tuple(self, items: tuple) -> None:
        count = len(items)
        if count == 0:
            self.out += EMPTY_TUPLE
            return
        if count <= 3:
            for index, item in enumerate(items):
                self.save_child(str(index), item)
            if self.memo_get(id(items)):  # a cycle through the tuple: drop the items, fetch it
                self.out[-_get_len(self._memo[id(items)]) : -_get_len(self._memo[id(items)])] = POP * count
                return
            self.out += _TUPLE_OPS[count]
            self.memoize(items)
            return
        self.out += MARK
        for index, item in enumerate(items):
            self.save_child(str(index), item)
        if self.memo_get(id(items)):
            length = _get_len(self._memo[id(items)])
            self.out[-length:-length] = POP_MARK
            return
        self.out += TUPLE
        self.memoize(items)

    def save_list(self, items: list) -> None:
        self.out += EMPTY_LIST
        self.memoize(items)
        if len(items) == 1:
            self.save_child("0", items[0])
            self.out += APPEND
            return
        for start in range(0, len(items), BATCHSIZE):
            self.out += MARK
            for index in range(start, min(start + BATCHSIZE, len(items))):
                self.save_child(str(index), items[index])
            self.out += APPENDS

    def save_dict(self, mapping: dict) -> None:
        self.out += EMPTY_DICT
        self.memoize(mapping)
        size = len(mapping)
        if size == 0:
            return
        if size == 1:
            ((key, value),) = mapping.items()
            self._save_pair(key, value)
            self.out += SETITEM
            return
        # The C pickler loops while a batch came back full, so a dict whose size is
        # a multiple of BATCHSIZE ends with an empty MARK SETITEMS.
        pairs = iter(list(mapping.items()))
        while True:
            self.out += MARK
            written = 0
            for key, value in pairs:
                self._save_pair(key, value)
                written += 1
                if written == BATCHSIZE:
                    break
            self.out += SETITEMS
            if written != BATCHSIZE:
                break

    def _save_pair(self, key: Any, value: Any) -> None:
        self.save_child(None, key)
        self.save_child(str(key), value)

    def save_child(self, key: str | None, value: Any) -> None:
        """Save a value found under ``key`` (None: the key itself, no new path level)."""
        if key is None:
            self.save(value)
            return
        self.path.append(key)
        self.save(value)
        self.path.pop()

    # -- the reduce protocol -----------------------------------------------------

    def save_reduce(
        self,
        func: GlobalName,
        args: tuple,
        obj: Any = None,
        *,
        state: Any = None,
        listitems: Iterable[Any] | None = None,
        dictitems: Iterable[tuple[Any, Any]] | None = None,
        newobj: bool = False,
        state_key: str | None = None,
    ) -> None:
        """``func(*args)`` (REDUCE) or ``func.__new__(func, *args)`` (NEWOBJ), then items and state.

        ``state_key`` names the state in error paths; None adds no path level.
        """
        self.save_global(func)
        self.save(args)
        self.out += NEWOBJ if newobj else REDUCE
        if obj is not None:
            if self.memo_get(id(obj)):  # built recursively by its own arguments
                self.out[-_get_len(self._memo[id(obj)]) : -_get_len(self._memo[id(obj)])] = POP
                return
            self.memoize(obj)
        if listitems is not None:
            self._batch(iter(listitems), APPEND, APPENDS, pairs=False)
        if dictitems is not None:
            self._batch(iter(dictitems), SETITEM, SETITEMS, pairs=True)
        if state is not None:
            self.save_child(state_key, state)
            self.out += BUILD

    def _batch(self, items: Iterator[Any], single: bytes, many: bytes, *, pairs: bool) -> None:
        index = 0

        def put(item: Any) -> None:
            nonlocal index
            if pairs:
                self._save_pair(*item)
            else:
                self.save_child(str(index), item)
            index += 1

        while True:
            first = next(items, _END)
            if first is _END:
                return
            second = next(items, _END)
            if second is _END:
                put(first)
                self.out += single
                return
            self.out += MARK
            put(first)
            count = 1
            item = second
            while item is not _END:
                put(item)
                count += 1
                if count == BATCHSIZE:
                    break
                item = next(items, _END)
            self.out += many
            if count != BATCHSIZE:
                return


_END = object()


def _get_len(index: int) -> int:
    """Bytes of the memo GET just written for ``index``."""
    return 2 if index <= _SHORT_MEMO_MAX else 5


def _python2_name(module: str, name: str) -> tuple[str, str]:
    """The name protocol 2 writes for a global, as ``fix_imports`` maps it."""
    if (module, name) in _compat_pickle.REVERSE_NAME_MAPPING:
        return _compat_pickle.REVERSE_NAME_MAPPING[(module, name)]
    return _compat_pickle.REVERSE_IMPORT_MAPPING.get(module, module), name


def _set_items(items: set | frozenset) -> list:
    try:
        return sorted(items)
    except TypeError:  # items of mixed types: keep iteration order
        return list(items)
