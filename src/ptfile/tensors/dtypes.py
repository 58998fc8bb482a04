"""The table of tensor element types: torch's names, numpy's dtypes, sizes.

Torch names an element type three ways, and a checkpoint may use any of them:

* a dtype global, ``torch.float16`` (the canonical attribute name);
* a legacy storage class, ``torch.HalfStorage`` (17 of them exist);
* a TorchScript ``ScalarType`` storage name, ``Half`` + ``Storage``, which
  also covers types Python has no storage class for (``Float8_e4m3fnStorage``).

Each maps to one :class:`DtypeInfo`.  numpy dtypes come from numpy or from
ml_dtypes (bfloat16, float8, complex32).  Types whose element is a packed byte
(``float4_e2m1fn_x2``: two 4-bit floats; ``bits1x8``, ``bits2x4``, ``bits4x2``)
or untyped bits (``bits8``, ``bits16``) are read as torch exposes them: one
unsigned integer of the element's width per element, bit for bit, never
unpacked or widened (``raw_bits`` marks them).  Types are identified by
``dtype.name`` only: ml_dtypes' ``.char`` and ``.str`` codes collide with numpy's.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["DtypeInfo", "by_torch_name", "by_storage_name", "by_numpy"]


class DtypeInfo:
    """One element type, as torch and numpy know it: one instance per type, in :data:`_TABLE`.

    A plain class, not a dataclass: building a dataclass costs about a millisecond at import.
    """

    def __init__(self, torch_name: str, scalar_type: str, itemsize: int, numpy_type: type | str | None,
                 legacy_storage: str | None = None, quantized_base: str | None = None,
                 raw_bits: bool = False) -> None:
        self.torch_name = torch_name  # attribute of the torch module: "float16"
        self.scalar_type = scalar_type  # c10 ScalarType name: "Half"
        self.itemsize = itemsize  # bytes per element as stored
        # numpy's scalar type, or the name of an ml_dtypes type (imported when first needed); None
        # when numpy cannot represent it exactly
        self.numpy_type = numpy_type
        self.legacy_storage = legacy_storage  # "HalfStorage" when a typed storage class exists
        self.quantized_base = quantized_base  # torch_name of the integer type a quantized type stores
        self.raw_bits = raw_bits  # held as unsigned integers of its width: torch's bits* and packed x2 types

    def __repr__(self) -> str:
        return f"DtypeInfo({self.torch_name!r}, {self.scalar_type!r}, {self.itemsize}, {self.numpy_type!r})"

    @cached_property
    def numpy(self) -> np.dtype | None:
        """numpy's dtype of the type, None when numpy cannot represent it exactly."""
        if isinstance(self.numpy_type, str):
            import ml_dtypes  # lazy: costs as much as the rest of a small load; only its own types need it

            return np.dtype(getattr(ml_dtypes, self.numpy_type))
        return None if self.numpy_type is None else np.dtype(self.numpy_type)

    @cached_property
    def numpy_name(self) -> str:
        """numpy's name of the type (``bfloat16``), torch's when numpy has none; cached, as
        ``np.dtype.name`` is computed in Python on every access.  An ml_dtypes type's name is
        the name ml_dtypes gives it, known without importing it."""
        if isinstance(self.numpy_type, str):
            return self.numpy_type
        return self.numpy.name if self.numpy is not None else self.torch_name

    @property
    def is_quantized(self) -> bool:
        return self.quantized_base is not None

    @property
    def is_complex(self) -> bool:
        return self.torch_name.startswith("complex")

    @property
    def sign_magnitude(self) -> bool:
        """Negating a value flips the top bit of each component (real and imaginary part)."""
        return self.torch_name in _SIGN_MAGNITUDE


def _info(torch_name: str, scalar_type: str, itemsize: int, numpy: Any, legacy: bool = False,
          quantized_base: str | None = None, raw_bits: bool = False) -> DtypeInfo:
    storage = scalar_type + "Storage" if legacy else None
    return DtypeInfo(torch_name, scalar_type, itemsize, numpy, storage, quantized_base, raw_bits)


_TABLE = (
    _info("float64", "Double", 8, np.float64, legacy=True),
    _info("float32", "Float", 4, np.float32, legacy=True),
    _info("float16", "Half", 2, np.float16, legacy=True),
    _info("bfloat16", "BFloat16", 2, "bfloat16", legacy=True),
    _info("int64", "Long", 8, np.int64, legacy=True),
    _info("int32", "Int", 4, np.int32, legacy=True),
    _info("int16", "Short", 2, np.int16, legacy=True),
    _info("int8", "Char", 1, np.int8, legacy=True),
    _info("uint8", "Byte", 1, np.uint8, legacy=True),
    _info("bool", "Bool", 1, np.bool_, legacy=True),
    _info("complex128", "ComplexDouble", 16, np.complex128, legacy=True),
    _info("complex64", "ComplexFloat", 8, np.complex64, legacy=True),
    _info("complex32", "ComplexHalf", 4, "complex32"),
    _info("uint16", "UInt16", 2, np.uint16),
    _info("uint32", "UInt32", 4, np.uint32),
    _info("uint64", "UInt64", 8, np.uint64),
    _info("float8_e5m2", "Float8_e5m2", 1, "float8_e5m2"),
    _info("float8_e4m3fn", "Float8_e4m3fn", 1, "float8_e4m3fn"),
    _info("float8_e5m2fnuz", "Float8_e5m2fnuz", 1, "float8_e5m2fnuz"),
    _info("float8_e4m3fnuz", "Float8_e4m3fnuz", 1, "float8_e4m3fnuz"),
    _info("float8_e8m0fnu", "Float8_e8m0fnu", 1, "float8_e8m0fnu"),
    # torch gives these no arithmetic and numpy has no such types: each element's bits as they are
    _info("float4_e2m1fn_x2", "Float4_e2m1fn_x2", 1, np.uint8, raw_bits=True),
    _info("bits8", "Bits8", 1, np.uint8, raw_bits=True),
    _info("bits16", "Bits16", 2, np.uint16, raw_bits=True),
    _info("bits1x8", "Bits1x8", 1, np.uint8, raw_bits=True),
    _info("bits2x4", "Bits2x4", 1, np.uint8, raw_bits=True),
    _info("bits4x2", "Bits4x2", 1, np.uint8, raw_bits=True),
    _info("qint8", "QInt8", 1, np.int8, legacy=True, quantized_base="int8"),
    _info("quint8", "QUInt8", 1, np.uint8, legacy=True, quantized_base="uint8"),
    _info("qint32", "QInt32", 4, np.int32, legacy=True, quantized_base="int32"),
    _info("quint4x2", "QUInt4x2", 1, np.uint8, legacy=True, quantized_base="uint8"),
    _info("quint2x4", "QUInt2x4", 1, np.uint8, legacy=True, quantized_base="uint8"),
)

# Float types whose top bit is a plain sign, with a -0.0: negation is exactly a bit flip.
# Not the fnuz float8 types (0x80 is their NaN, there is no -0.0) nor float8_e8m0fnu (unsigned).
_SIGN_MAGNITUDE = frozenset(
    {"float16", "bfloat16", "float32", "float64", "complex32", "complex64", "complex128", "float8_e5m2", "float8_e4m3fn"}
)

# Sub-byte integer dtypes torch lists in its weights_only allowlist but cannot
# save; a dtype global naming one is accepted as a value and refused as data.
_UNSAVEABLE = tuple(f"{sign}int{bits}" for sign in ("", "u") for bits in range(1, 8))

_BY_TORCH_NAME = {info.torch_name: info for info in _TABLE}
_BY_STORAGE_NAME = {info.scalar_type + "Storage": info for info in _TABLE}
# quantized and raw-bits types borrow an integer dtype: a uint8 array is saved as uint8, never as bits8
_BY_NUMPY_NAME = {info.numpy_name: info for info in _TABLE
                  if info.numpy_type is not None and not info.is_quantized and not info.raw_bits}

TORCH_DTYPE_NAMES = tuple(_BY_TORCH_NAME) + _UNSAVEABLE


def all_infos() -> tuple[DtypeInfo, ...]:
    """Every element type in the table."""
    return _TABLE


def by_torch_name(name: str) -> DtypeInfo | None:
    """The type torch calls ``torch.<name>``, or None."""
    return _BY_TORCH_NAME.get(name)


def by_storage_name(name: str) -> DtypeInfo | None:
    """The type of a storage class or ScalarType storage name (``HalfStorage``), or None."""
    return _BY_STORAGE_NAME.get(name)


def by_numpy(dtype: np.dtype) -> DtypeInfo | None:
    """The torch type an array of this numpy dtype is saved as, or None."""
    dtype = np.dtype(dtype)
    # ``dtype.name`` is computed in Python on every access, and a save asks once per array:
    # remember the answer by scalar type and type string, which together fix the name
    # (the type string alone does not: ml_dtypes' codes collide with numpy's).
    key = (dtype.type, dtype.str)
    try:
        return _BY_NUMPY_SEEN[key]
    except KeyError:
        pass
    info = _BY_NUMPY_SEEN[key] = _BY_NUMPY_NAME.get(dtype.name)
    return info


_BY_NUMPY_SEEN: dict[tuple[type, str], DtypeInfo | None] = {}
