"""Constructors for the metadata objects real checkpoints carry beside their tensors.

Training frameworks pickle their bookkeeping next to the weights: numpy random
states, omegaconf (Hydra, NeMo) configs, Lightning's ``AttributeDict`` of
hyper-parameters, paths, timestamps, ``torch.__version__``, ``defaultdict``
counters, and protocol 0/1 instances written through ``copyreg._reconstructor``.

Each constructor here checks its arguments and returns plain data: a builtin
value (``str``, ``datetime``, a pure ``pathlib`` path, a ``defaultdict`` whose
factory is a builtin type), an :class:`AttributeDict`, or an inert
:class:`~ptfile.pickle.values.Record` that BUILD fills with the pickled state.  Nothing
is imported, and no framework class is ever instantiated.
"""

from __future__ import annotations

import datetime
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import CorruptFileError, UnsupportedFormatError
from ..pickle.engine import GlobalRef
from ..pickle.inventory import GlobalUse
from ..pickle.values import Global, Record, brief

if TYPE_CHECKING:
    import pathlib

__all__ = ["AttributeDict", "record_of", "TYPING_ANY"]

#: ``typing.Any``, which omegaconf stores as the type of untyped nodes.
TYPING_ANY = Global("typing", "Any")

#: Bit generators numpy pickles by class (numpy >= 1.25) or by name (older numpy).
BIT_GENERATORS = {
    "MT19937": "numpy.random._mt19937",
    "PCG64": "numpy.random._pcg64",
    "PCG64DXSM": "numpy.random._pcg64",
    "Philox": "numpy.random._philox",
    "SFC64": "numpy.random._sfc64",
}
RANDOM_STATE = Global("numpy.random.mtrand", "RandomState")
GENERATOR = Global("numpy.random._generator", "Generator")
SEED_SEQUENCE = Global("numpy.random.bit_generator", "SeedSequence")

#: Factories a ``defaultdict`` may carry: builtin types only, which make empty values.
_FACTORIES: dict[tuple[str, str], Callable[[], Any]] = {
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "set"): set,
    ("builtins", "tuple"): tuple,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "str"): str,
    ("builtins", "bool"): bool,
    ("collections", "OrderedDict"): OrderedDict,
}


class AttributeDict(dict):
    """Lightning's ``AttributeDict`` of hyper-parameters: a dict whose keys also read as attributes."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __repr__(self) -> str:
        return f"AttributeDict({dict.__repr__(self)})"


def record_of(module: str, name: str, *, no_args: bool = False) -> Callable[..., Record]:
    """A constructor giving an inert record of ``module.name``, which a later BUILD fills."""
    cls = Global(module, name)

    def make(context: Any, *args: Any) -> Record:
        if no_args and args:
            raise CorruptFileError(f"{cls.path} is created without arguments, got {brief(args)}")
        return Record(cls, args)

    return make


# -- numpy random states -------------------------------------------------------


def _bit_generator_class(value: Any) -> Global:
    if type(value) is str and value in BIT_GENERATORS:
        return Global(BIT_GENERATORS[value], value)
    if type(value) is GlobalRef and BIT_GENERATORS.get(value.name) == value.module:
        return value.as_global()
    raise CorruptFileError(f"{brief(value)} is not a numpy bit generator")


def bit_generator_ctor(context: Any, bit_generator: Any = "MT19937") -> Record:
    """``numpy.random._pickle.__bit_generator_ctor``: a bit generator whose state BUILD sets."""
    return Record(_bit_generator_class(bit_generator), ())


def _with_bit_generator(cls: Global, bit_generator: Any, ctor: Any) -> Record:
    if type(bit_generator) is Record and bit_generator.cls.name in BIT_GENERATORS:
        return Record(cls, (bit_generator,))
    return Record(cls, (Record(_bit_generator_class(bit_generator), ()),))


def randomstate_ctor(context: Any, bit_generator: Any = "MT19937", ctor: Any = None) -> Record:
    """``numpy.random._pickle.__randomstate_ctor``: a legacy ``RandomState``."""
    return _with_bit_generator(RANDOM_STATE, bit_generator, ctor)


def generator_ctor(context: Any, bit_generator: Any = "PCG64", ctor: Any = None) -> Record:
    """``numpy.random._pickle.__generator_ctor``: a ``numpy.random.Generator``."""
    return _with_bit_generator(GENERATOR, bit_generator, ctor)


def unpickle_seed_sequence(context: Any, cls: Any, checksum: Any, state: Any = None) -> Record:
    """Cython's ``__pyx_unpickle_SeedSequence(cls, checksum, state)``: its state comes by BUILD."""
    if type(cls) is not GlobalRef or cls.as_global() != SEED_SEQUENCE or type(checksum) is not int:
        raise CorruptFileError("__pyx_unpickle_SeedSequence arguments are not (SeedSequence, checksum, state)")
    return Record(SEED_SEQUENCE, (), state)


# -- small standard-library values ---------------------------------------------


def attribute_dict(context: Any, *args: Any) -> AttributeDict:
    if not args:
        return AttributeDict()
    if len(args) == 1 and type(args[0]) in (dict, OrderedDict):
        return AttributeDict(args[0])
    raise CorruptFileError("AttributeDict takes no arguments or one dict")


def pure_path(flavour: str) -> Callable[..., pathlib.PurePath]:
    """``pathlib.PosixPath(*parts)`` and friends, as pure paths (``flavour`` names the pure class):
    they never touch a file system."""

    def make(context: Any, *parts: Any) -> pathlib.PurePath:
        if not all(type(p) is str for p in parts):
            raise CorruptFileError(f"path parts {brief(parts)} are not strings")
        import pathlib  # lazy: only a checkpoint holding a path needs it (it imports urllib and more)

        return getattr(pathlib, flavour)(*parts)

    return make


def torch_version(context: Any, *args: Any) -> str:
    """``torch.torch_version.TorchVersion``: a str subclass, kept as its text."""
    if len(args) != 1 or type(args[0]) is not str:
        raise CorruptFileError(f"TorchVersion arguments {brief(args)} are not one string")
    return args[0]


def make_defaultdict(context: Any, factory: Any = None, *rest: Any) -> defaultdict:
    """``collections.defaultdict(factory)`` with a builtin type (or no) factory; items follow by SETITEMS."""
    if rest:
        raise CorruptFileError("defaultdict takes only its factory; items follow as SETITEMS")
    if factory is None:
        return defaultdict(None)
    key = (factory.module, factory.name) if type(factory) is GlobalRef else None
    if key not in _FACTORIES:
        raise CorruptFileError(f"defaultdict factory {brief(factory)} is not a builtin type")
    return defaultdict(_FACTORIES[key])


# -- datetime ------------------------------------------------------------------

#: Lengths of the byte states CPython pickles for each datetime type.
_STATE_BYTES = {datetime.datetime: 10, datetime.date: 4, datetime.time: 6}


def _tzinfo(value: Any) -> datetime.tzinfo | None:
    if value is None or type(value) is datetime.timezone:
        return value
    raise UnsupportedFormatError(f"time zone {brief(value)} is not a fixed datetime.timezone")


def _from_state(kind: type, state: Any, *tz: Any) -> Any:
    if type(state) is not bytes or len(state) != _STATE_BYTES[kind] or len(tz) > 1:
        raise CorruptFileError(f"{kind.__name__} state must be {_STATE_BYTES[kind]} bytes")
    try:
        return kind(state, *(_tzinfo(t) for t in tz)) if kind is not datetime.date else kind(state)
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(f"{kind.__name__} state {brief(state)} is invalid: {exc}") from None


def make_datetime(context: Any, state: Any, *tz: Any) -> datetime.datetime:
    return _from_state(datetime.datetime, state, *tz)


def make_date(context: Any, state: Any) -> datetime.date:
    return _from_state(datetime.date, state)


def make_time(context: Any, state: Any, *tz: Any) -> datetime.time:
    return _from_state(datetime.time, state, *tz)


def make_timedelta(context: Any, days: Any = 0, seconds: Any = 0, microseconds: Any = 0) -> datetime.timedelta:
    if not all(type(v) is int for v in (days, seconds, microseconds)):
        raise CorruptFileError("timedelta must be built from three integers")
    try:
        return datetime.timedelta(days, seconds, microseconds)
    except OverflowError:
        raise CorruptFileError("timedelta out of range") from None


def make_timezone(context: Any, offset: Any, *name: Any) -> datetime.timezone:
    if type(offset) is not datetime.timedelta or len(name) > 1 or (name and type(name[0]) is not str):
        raise CorruptFileError("timezone must be built from a timedelta and an optional name")
    try:
        return datetime.timezone(offset, *name)
    except ValueError as exc:
        raise CorruptFileError(f"timezone offset is invalid: {exc}") from None


# -- protocol 0/1 instances ----------------------------------------------------

_BASES = {("builtins", "object"), ("builtins", "dict"), ("builtins", "list")}


def reconstructor(context: Any, cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor(cls, base, state)``: ``base.__new__(cls)`` in protocols 0 and 1.

    With ``base`` ``object`` this instantiates ``cls`` without calling it, exactly
    like NEWOBJ, so the inventory records a ``new`` use of ``cls``: an allowlisted
    class gets its own constructor, any other class an inert record.
    """
    if type(cls) is not GlobalRef or type(base) is not GlobalRef or (base.module, base.name) not in _BASES:
        raise CorruptFileError("copyreg._reconstructor needs a class and the base object, dict or list")
    _note_new(context, cls)
    if base.name == "object":
        if state is not None:
            raise CorruptFileError("copyreg._reconstructor with base object takes no state")
        if cls.entry is not None and cls.entry.new is not None:
            return cls.entry.new(context)
        return Record(cls.as_global(), ())
    result = Record(cls.as_global(), ())
    if base.name == "dict":
        if type(state) is not dict:
            raise CorruptFileError("copyreg._reconstructor with base dict needs a dict")
        result.items.update(state)
    else:
        if type(state) is not list:
            raise CorruptFileError("copyreg._reconstructor with base list needs a list")
        result.listitems.extend(state)
    return result


def _note_new(context: Any, cls: GlobalRef) -> None:
    inventory = getattr(context, "inventory", None)
    if inventory is None:
        return
    call = inventory[-1] if inventory else None  # the call of copyreg._reconstructor itself
    offset, record = (call.offset, call.record) if call is not None else (0, "")
    inventory.append(GlobalUse(cls.module, cls.name, "new", offset, record))


# -- torch.distributed.checkpoint ------------------------------------------------

#: ``torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING`` members by value.
MEM_FORMAT_MEMBERS = {0: "TORCH_CONTIGUOUS_FORMAT", 1: "TORCH_CHANNELS_LAST", 2: "TORCH_PRESERVE_FORMAT"}


def mem_format_encoding(context: Any, value: Any) -> str:
    """``_MEM_FORMAT_ENCODING(value)``, as an enum pickles: the member's name, a plain str."""
    if type(value) is not int or value not in MEM_FORMAT_MEMBERS:
        raise CorruptFileError(f"_MEM_FORMAT_ENCODING has no member {value!r:.40}")
    return MEM_FORMAT_MEMBERS[value]
