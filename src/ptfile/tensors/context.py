"""The context the restricted engine hands every constructor it calls.

Constructors (``rebuild.py``, ``objects.py``, ``special.py``) build tensors, parameters and
objects through it, so one engine serves a real load (arrays over the checkpoint's storages)
and a dry run (tensor specs only, for scanning and for every reading of
:mod:`ptfile.formats.consumers`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CorruptFileError
from ..pickle.values import Parameter
from . import objects
from .views import TensorSpec

__all__ = ["Context"]


class Context:
    """What the engine hands every constructor: how to make tensors, what BUILD may touch.

    ``checkpoint`` (a :class:`ptfile.formats.loader.CheckpointReader`, or None for a dry run) turns a tensor
    spec into an array when ``materialize`` is set; without one, constructors build specs only.
    """

    build_handler = staticmethod(objects.build_handler)

    def __init__(self, checkpoint: Any = None, materialize: bool = False, *, storages_readable: bool = False) -> None:
        self.fresh_arrays: dict[int, np.ndarray] = {}
        self._checkpoint = checkpoint
        self.materialize = materialize  # False while a lazy handle lists tensors: specs, not arrays
        # the object pickle's storages can be read; a side pickle's are checked for form only
        self._storages_readable = storages_readable and checkpoint is not None
        self.inventory = checkpoint.inventory if checkpoint is not None else []  # copyreg._reconstructor notes its class

    def tensor(self, spec: TensorSpec) -> Any:
        if self.materialize and self._checkpoint is not None:
            return self._checkpoint.array(spec)
        if self._storages_readable and spec.storage is not None:
            self._checkpoint.check_swappable(spec)  # the one check array() makes that the spec alone cannot
        return spec

    def check_parts(self, value: Any) -> None:
        """Make the checks loading makes on a special tensor's parts, on a copy that is dropped."""
        if self._storages_readable:
            value.materialize(self._checkpoint.array)

    def parameter(self, data: Any, requires_grad: bool, attributes: dict | None) -> Any:
        if type(data) is TensorSpec:
            return data.as_parameter(requires_grad, attributes)
        if not isinstance(data, np.ndarray):
            raise CorruptFileError(f"parameter built from a {type(data).__name__}, not a tensor")
        param = data.view(Parameter)
        param.requires_grad = requires_grad
        param.attributes = attributes
        return param
