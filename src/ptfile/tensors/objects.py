"""Constructors for the plain-data objects checkpoints pickle besides tensors.

Containers (``OrderedDict``, ``set``, ``bytes`` via ``_codecs.encode``), numpy
arrays, dtypes and scalars, and metadata such as ``argparse.Namespace``.  Each
constructor checks the exact shape of its arguments; numpy objects are built
from validated bytes and never from anything numpy itself would unpickle.

BUILD handlers set the state of the few types that accept one: instance
attributes of ``OrderedDict`` (a state dict's ``_metadata``) and ``Namespace``,
the byte order of a fresh numpy dtype, and the contents of a fresh numpy array.
"""

from __future__ import annotations

import sys
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CorruptFileError, UnsupportedFormatError
from ..pickle.engine import check_keys
from ..pickle.values import Global, Record, brief
from .views import TensorSpec

if TYPE_CHECKING:
    import argparse

__all__ = ["build_handler", "PICKLE_BUILDERS"]

#: numpy dtype strings a pickle may name: plain numbers, bools, bytes and text.
_NUMPY_KINDS = frozenset("biufcSUM?m")
#: Largest element a numpy str or bytes dtype of a pickle may declare.
MAX_NUMPY_ELEMENT_BYTES = 1 << 20
#: numpy's datetime units, as its dtype state names them.
_DATETIME_UNITS = frozenset({b"generic", b"Y", b"M", b"W", b"D", b"h", b"m", b"s", b"ms", b"us", b"ns", b"ps",
                             b"fs", b"as"})
#: The fields of numpy's dtype state tuple, for messages.
_DTYPE_STATE_FIELDS = ("version", "byte order", "subarray", "names", "fields", "element size", "alignment",
                       "flags", "metadata")
#: NPY_ITEM_REFCOUNT (= NPY_ITEM_HASOBJECT) and NPY_ITEM_IS_POINTER: numpy reads such items as pointers.
_NPY_POINTER_FLAGS = 0x01 | 0x04


def ordered_dict(context: Any, pairs: Any = None) -> OrderedDict:
    result: OrderedDict = OrderedDict()
    if pairs is not None:
        _fill(result, pairs, "OrderedDict")
    return result


def counter(context: Any, pairs: Any = None) -> Counter:
    result: Counter = Counter()
    if pairs is not None:
        if type(pairs) is not dict:
            raise CorruptFileError("Counter must be built from a dict")
        for key, value in pairs.items():
            result[key] = value
    return result


def _fill(target: dict, pairs: Any, what: str) -> None:
    if type(pairs) is not list:
        raise CorruptFileError(f"{what} must be built from a list of pairs")
    for pair in pairs:
        if type(pair) not in (list, tuple) or len(pair) != 2:
            raise CorruptFileError(f"{what} item {brief(pair)} is not a key/value pair")
    check_keys(pair[0] for pair in pairs)
    for key, value in pairs:
        target[key] = value


def make_set(context: Any, items: Any = ()) -> set:
    if type(items) not in (list, tuple):
        raise CorruptFileError("set must be built from a list")
    check_keys(items)
    return set(items)


def make_frozenset(context: Any, items: Any = ()) -> frozenset:
    return frozenset(make_set(context, items))


def make_bytearray(context: Any, data: Any = b"", *rest: Any) -> bytearray:
    if type(data) is bytes and not rest:
        return bytearray(data)
    if type(data) is str and len(rest) == 1 and rest[0] in ("latin1", "latin-1"):
        return bytearray(data.encode("latin-1"))
    raise CorruptFileError("bytearray must be built from bytes")


def make_bytes(context: Any, *args: Any) -> bytes:
    if not args:
        return b""
    raise CorruptFileError("bytes must be written with _codecs.encode or BINBYTES")


def make_complex(context: Any, real: Any = 0.0, imag: Any = 0.0) -> complex:
    if type(real) not in (int, float) or type(imag) not in (int, float):
        raise CorruptFileError("complex must be built from two numbers")
    return complex(real, imag)


def codecs_encode(context: Any, text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode(text, 'latin1')``: how protocol 2 stores bytes."""
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise CorruptFileError(f"_codecs.encode is only allowed for latin-1 text, got encoding {brief(encoding)}")
    return text.encode("latin-1")


def namespace(context: Any, *args: Any) -> argparse.Namespace:
    if args:
        raise CorruptFileError("argparse.Namespace takes no positional arguments")
    import argparse  # lazy: only a checkpoint holding a Namespace needs it (it imports gettext and more)

    return argparse.Namespace()


def is_namespace(value: Any) -> bool:
    """Whether ``value`` is exactly an ``argparse.Namespace``, without importing argparse:
    until something has imported it, no Namespace exists."""
    module = sys.modules.get("argparse")
    return module is not None and type(value) is module.Namespace


def torch_size(context: Any, dims: Any = ()) -> tuple:
    if type(dims) is not tuple or not all(type(d) is int for d in dims):
        raise CorruptFileError(f"torch.Size must be built from a tuple of integers, got {brief(dims)}")
    return dims


def torch_device(context: Any, *args: Any) -> Record:
    if not args or type(args[0]) is not str or len(args) > 2 or (len(args) == 2 and type(args[1]) is not int):
        raise CorruptFileError(f"torch.device arguments {brief(args)} are not (type[, index])")
    return Record(Global("torch", "device"), args)


# -- numpy ---------------------------------------------------------------------


def numpy_dtype(context: Any, spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype(spec, align, copy)``: a fresh dtype that a later BUILD may give a byte order."""
    if type(spec) is not str or len(spec) > 8 or type(align) is not bool:
        raise CorruptFileError(f"numpy dtype {brief(spec)} is not a simple type code")
    try:
        dtype = np.dtype(spec, align, True)
    except TypeError:
        raise CorruptFileError(f"numpy dtype {brief(spec)} is not a known type") from None
    if dtype.kind not in _NUMPY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsupportedFormatError(f"numpy dtype {brief(spec)} (kind {dtype.kind!r}) is not supported")
    return dtype


def build_numpy_dtype(context: Any, dtype: np.dtype, state: Any) -> None:
    """BUILD on a fresh dtype: only the exact state numpy itself pickles for such a dtype.

    numpy's ``__setstate__`` trusts its input: the flags byte alone can make an int64 dtype
    claim to hold object pointers (NPY_ITEM_REFCOUNT), after which arrays of it are read as
    pointers.  So the state is never checked field by field: numpy builds the dtype the state
    describes from a type string, and the state must equal what numpy pickles for that one.
    """
    # numpy's state tuple: (version, byteorder, subdescr, names, fields, elsize, alignment, flags[, metadata])
    if type(state) is not tuple or len(state) not in (8, 9) or state[0] not in (3, 4):
        raise CorruptFileError(f"numpy dtype state {brief(state)} is not understood")
    spec = _dtype_spec(dtype, state)
    try:
        expected = np.dtype(spec).__reduce__()[2]
    except (TypeError, ValueError):
        raise CorruptFileError(f"numpy dtype state {brief(state)} describes no numpy type") from None
    if state != expected:
        differ = ", ".join(f"{field} {brief(got)} (numpy writes {brief(want)})"
                           for field, got, want in zip(_DTYPE_STATE_FIELDS, state, expected, strict=False)
                           if got != want)
        raise CorruptFileError(f"numpy dtype state for {spec} is not the one numpy writes: "
                               f"{differ or f'{len(state)} fields, numpy writes {len(expected)}'}")
    dtype.__setstate__(expected)  # numpy's own state, not the file's objects that compared equal to it


def _dtype_spec(dtype: np.dtype, state: tuple) -> str:
    """The type string of the dtype a BUILD state describes for a fresh ``dtype`` (kind and size fixed by it)."""
    order = state[1] if state[1] in ("<", ">") else ""
    kind = dtype.kind
    if kind in "SU":
        elsize, unit = state[5], (4 if kind == "U" else 1)
        if type(elsize) is not int or not 0 <= elsize <= MAX_NUMPY_ELEMENT_BYTES or elsize % unit:
            raise CorruptFileError(f"numpy dtype element size {brief(elsize)} is out of range")
        if elsize != dtype.itemsize:
            raise CorruptFileError(f"numpy dtype state size {elsize} differs from its type {dtype}")
        return f"{order}{kind}{elsize // unit}"
    if kind in "Mm":
        metadata = state[8] if len(state) == 9 else None
        if (type(metadata) is not tuple or len(metadata) != 2 or metadata[0] is not None
                or type(metadata[1]) is not tuple or len(metadata[1]) != 4):
            raise CorruptFileError(f"numpy datetime state {brief(state)} has no unit")
        unit, count = metadata[1][:2]
        if unit not in _DATETIME_UNITS or type(count) is not int or not 1 <= count < (1 << 31):
            raise CorruptFileError(f"numpy datetime unit {brief(metadata[1])} is not one numpy knows")
        return f"{order}{kind}8" if unit == b"generic" else f"{order}{kind}8[{count}{unit.decode()}]"
    return f"{order}{kind}{dtype.itemsize}"


def numpy_reconstruct(context: Any, cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')``: an empty array a BUILD fills."""
    if getattr(cls, "module", None) != "numpy" or getattr(cls, "name", None) != "ndarray":
        raise CorruptFileError(f"numpy _reconstruct of {brief(cls)}; only numpy.ndarray is allowed")
    if shape != (0,) or typecode not in (b"b", "b"):
        raise CorruptFileError("numpy _reconstruct arguments are not the (0,), b'b' numpy writes")
    array = np.ndarray((0,), np.int8)
    context.fresh_arrays[id(array)] = array
    return array


def build_numpy_array(context: Any, array: np.ndarray, state: Any) -> None:
    # (version, shape, dtype, is_fortran, raw bytes); object arrays pickle a list instead.
    if context.fresh_arrays.pop(id(array), None) is not array:
        raise CorruptFileError("BUILD on a numpy array that was not just reconstructed")
    if type(state) is not tuple or len(state) != 5 or state[0] != 1:
        raise CorruptFileError(f"numpy array state {brief(state)} is not understood")
    _, shape, dtype, fortran, raw = state
    if not isinstance(dtype, np.dtype) or type(fortran) is not bool:
        raise CorruptFileError("numpy array state has no valid dtype")
    _refuse_objects(dtype)
    if type(shape) is not tuple or len(shape) > 64 or not all(type(d) is int and d >= 0 for d in shape):
        raise CorruptFileError(f"numpy array shape {brief(shape)} is not a tuple of sizes")
    if type(raw) is not bytes:
        raise UnsupportedFormatError("numpy arrays of Python objects are not supported")
    count = 1
    for dim in shape:
        count *= dim
    if count * dtype.itemsize != len(raw):
        raise CorruptFileError(f"numpy array of shape {shape} and dtype {dtype} needs {count * dtype.itemsize} bytes, got {len(raw)}")
    array.__setstate__((1, shape, dtype, fortran, raw))


def _refuse_objects(dtype: np.dtype) -> None:
    """Bytes from a file are never read as object pointers, whatever a dtype claims."""
    if dtype.hasobject or dtype.flags & _NPY_POINTER_FLAGS:
        raise UnsupportedFormatError(f"numpy dtype {dtype} holds Python objects; such arrays are refused")


def numpy_scalar(context: Any, dtype: Any, raw: Any = None) -> Any:
    """``numpy.core.multiarray.scalar(dtype, bytes)``: one number of the given dtype."""
    if not isinstance(dtype, np.dtype) or type(raw) is not bytes:
        raise CorruptFileError("numpy scalar needs a dtype and its bytes")
    _refuse_objects(dtype)
    if len(raw) != dtype.itemsize:
        raise CorruptFileError(f"numpy scalar of {dtype} needs {dtype.itemsize} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, count=1)[0]


# -- BUILD ---------------------------------------------------------------------


def build_attributes(context: Any, obj: Any, state: Any) -> None:
    """Instance attributes from a BUILD dict: a state dict's ``_metadata``, a Namespace's fields."""
    if type(state) is tuple and len(state) == 2 and state[1] is None:
        state = state[0]  # (dict, slots) form with no slots
    if type(state) not in (dict, OrderedDict):
        raise CorruptFileError(f"BUILD state for {type(obj).__name__} must be a dict, got {type(state).__name__}")
    for key in state:
        if type(key) is not str or (key.startswith("__") and key.endswith("__")):
            raise CorruptFileError(f"BUILD may not set attribute {brief(key)}")
    obj.__dict__.update(state)


_BUILD_HANDLERS = {
    OrderedDict: build_attributes,
    np.ndarray: build_numpy_array,
}


def build_handler(obj: Any) -> Any:
    """The BUILD handler for ``obj``'s exact type, or None when BUILD on it is refused."""
    if isinstance(obj, np.dtype):  # numpy 2 dtypes are instances of per-type subclasses
        return build_numpy_dtype
    if is_namespace(obj):
        return build_attributes
    return _BUILD_HANDLERS.get(type(obj))


# -- torch.jit._pickle ---------------------------------------------------------


def _typed_list(kinds: tuple[type, ...], what: str) -> Callable[..., list]:
    def build(context: Any, items: Any) -> list:
        if type(items) is not list:
            raise CorruptFileError(f"torch.jit._pickle.build_{what}list needs a list, got {type(items).__name__}")
        if not all(type(item) in kinds for item in items):
            raise CorruptFileError(f"torch.jit._pickle.build_{what}list holds something that is not a {what}")
        return items

    return build


def _tensor_list(context: Any, items: Any) -> list:
    if type(items) is not list:
        raise CorruptFileError(f"torch.jit._pickle.build_tensorlist needs a list, got {type(items).__name__}")
    if not all(isinstance(item, (np.ndarray, TensorSpec)) for item in items):
        raise CorruptFileError("torch.jit._pickle.build_tensorlist holds something that is not a tensor")
    return items


def _restore_type_tag(context: Any, value: Any, type_str: Any) -> Any:
    """``restore_type_tag(obj, "Dict[str, float]")``: the type tag is for the TorchScript runtime only."""
    if type(type_str) is not str:
        raise CorruptFileError("torch.jit._pickle.restore_type_tag needs a type string")
    if not isinstance(value, (dict, list)):
        raise CorruptFileError(f"torch.jit._pickle.restore_type_tag on a {type(value).__name__}, not a dict or list")
    return value


def _tensor_from_id(context: Any, *args: Any) -> Any:
    raise UnsupportedFormatError("TorchScript archives of torch < 1.4 (model.json, build_tensor_from_id) are not supported")


PICKLE_BUILDERS: dict[str, Callable[..., Any]] = {
    "build_intlist": _typed_list((int,), "int"),
    "build_doublelist": _typed_list((float,), "double"),
    "build_boollist": _typed_list((bool,), "bool"),
    "build_tensorlist": _tensor_list,
    "restore_type_tag": _restore_type_tag,
    "build_tensor_from_id": _tensor_from_id,
}
