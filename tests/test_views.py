"""The view check and the tensor spec that every rebuilt tensor passes through.

``check_view`` checks a view's form and extent in one pass over its dimensions; these
tests hold it to the rule written out plainly (each part's form in turn, then the last
element against the storage, then numpy's byte limit), refusal and message alike, over
well-formed and malformed views.  Real torch's agreement on well-formed views is
tests/test_properties.py's.
"""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptfile.errors import CorruptFileError, LimitExceededError
from ptfile.tensors import dtypes
from ptfile.tensors.views import MAX_NDIM, MAX_TENSOR_BYTES, StorageRef, TensorSpec, check_view

FLOAT32 = dtypes.by_torch_name("float32")


def _bad_dims(value: object) -> bool:
    return (type(value) is not tuple or len(value) > MAX_NDIM
            or any(type(item) is not int or item < 0 for item in value))


def expected_refusal(storage: StorageRef | None, offset: object, shape: object, strides: object) -> tuple[type, str] | None:
    """What check_view must raise, as the rule reads: None for a view it must accept."""
    if _bad_dims(shape):
        return CorruptFileError, r"^tensor size (must be a tuple|.* not a non-negative integer$)"
    if _bad_dims(strides):
        return CorruptFileError, r"^tensor stride (must be a tuple|.* not a non-negative integer$)"
    if len(shape) != len(strides):
        return CorruptFileError, r"differ in length$"
    if type(offset) is not int or offset < 0:
        return CorruptFileError, r"^tensor storage offset .* is not a non-negative integer$"
    if storage is not None and 0 not in shape:
        last = offset + sum((size - 1) * stride for size, stride in zip(shape, strides, strict=True))
        if last >= storage.nbytes // FLOAT32.itemsize:
            return CorruptFileError, rf"reaches element {last} of storage"
    if math.prod(shape) * FLOAT32.itemsize > MAX_TENSOR_BYTES:
        return LimitExceededError, r"more than numpy can index$"
    return None


#: Mostly sizes and strides of the right form, sometimes a value of the wrong one.
dims = st.integers(0, 6) | st.sampled_from([-1, True, None, 1.0, 2**62])
dim_tuples = st.lists(dims, max_size=5).map(tuple) | st.lists(st.integers(0, 3), max_size=3) | st.just((1,) * (MAX_NDIM + 1))


@given(
    elements=st.integers(0, 64) | st.just(None),
    offset=st.integers(0, 70) | st.sampled_from([-1, False, None, 2.0]),
    shape=dim_tuples,
    strides=dim_tuples,
)
def test_check_view_refuses_as_the_rule_says(elements: int | None, offset: object, shape: object, strides: object) -> None:
    storage = None if elements is None else StorageRef("0", FLOAT32, elements * FLOAT32.itemsize, "cpu", "archive/data/0")
    refusal = expected_refusal(storage, offset, shape, strides)
    if refusal is None:
        assert check_view(storage, FLOAT32, offset, shape, strides) == (offset, shape, strides)
        return
    error, message = refusal
    with pytest.raises(error) as raised:
        check_view(storage, FLOAT32, offset, shape, strides)
    assert type(raised.value) is error
    assert re.search(message, str(raised.value)), str(raised.value)


def test_check_view_accepts_a_view_that_ends_on_the_last_element() -> None:
    storage = StorageRef("0", FLOAT32, 12 * FLOAT32.itemsize, "cpu", "archive/data/0")
    assert check_view(storage, FLOAT32, 1, (2, 3), (6, 2)) == (1, (2, 3), (6, 2))  # last element 1 + 6 + 4 = 11
    with pytest.raises(CorruptFileError, match="reaches element 12 of storage '0', which holds 12 float32"):
        check_view(storage, FLOAT32, 2, (2, 3), (6, 2))


def test_tensor_spec_is_frozen_and_compared_without_its_attributes() -> None:
    storage = StorageRef("0", FLOAT32, 16, "cpu", "archive/data/0")
    spec = TensorSpec(storage, FLOAT32, (2, 2), (2, 1), 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.shape = (4,)  # type: ignore[misc]
    assert not hasattr(spec, "__dict__")
    parameter = spec.as_parameter(True, {"tag": 1})
    assert (parameter.parameter, parameter.requires_grad, parameter.attributes) == (True, True, {"tag": 1})
    assert (parameter.shape, parameter.strides, parameter.offset, parameter.storage) == ((2, 2), (2, 1), 0, storage)
    assert parameter == TensorSpec(storage, FLOAT32, (2, 2), (2, 1), 0, True, True)
    assert hash(parameter) == hash(TensorSpec(storage, FLOAT32, (2, 2), (2, 1), 0, True, True))
    assert spec != parameter
    assert (spec.numel, spec.nbytes, spec.is_contiguous) == (4, 16, True)
