"""The value types that appear in a loaded checkpoint besides Python builtins and numpy arrays.

* :class:`Global` stands for a class or function a pickle names but ptfile never imports
  (``torch.float16`` passed as a dtype argument, an unknown class referenced by a record).
* :class:`Record` is an inert instance of a class ptfile does not construct: a pickled
  ``nn.Module``, a ``torch.device``, a Lightning hyper-parameter container.  It holds
  what the pickle gave it (constructor arguments, state, items) and nothing else.
* :class:`Parameter` marks arrays that torch would load as ``nn.Parameter``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Global", "Record", "Parameter"]


class Global:
    """A named global (``module.name``) referenced by a pickle, never imported."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    @property
    def path(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"<global {self.path}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Global) and (self.module, self.name) == (other.module, other.name)

    def __hash__(self) -> int:
        return hash((Global, self.module, self.name))


class Record:
    """An inert stand-in for an object of a class ptfile does not construct.

    Attributes:
        cls: the :class:`Global` naming the class.
        args: the positional arguments the pickle passed when creating it.
        state: what the pickle's BUILD gave it (usually the instance ``__dict__``), or None.
        items: key/value pairs set on it (dict subclasses), in order.
        listitems: values appended to it (list subclasses), in order.
    """

    __slots__ = ("cls", "args", "state", "items", "listitems", "__weakref__")

    def __init__(self, cls: Global, args: tuple = (), state: Any = None) -> None:
        self.cls = cls
        self.args = args
        self.state = state
        self.items: dict = {}
        self.listitems: list = []

    @property
    def classname(self) -> str:
        return self.cls.path

    def __repr__(self) -> str:
        parts = [self.cls.path]
        if self.args:
            parts.append(f"args={_short(self.args)}")
        if isinstance(self.state, dict):
            parts.append(f"state keys={_short(list(self.state))}")
        elif self.state is not None:
            parts.append(f"state={_short(self.state)}")
        return f"<Record {' '.join(parts)}>"


class Parameter(np.ndarray):
    """An array that torch loads as ``torch.nn.Parameter``.

    It is an ordinary numpy array in every other respect; ``requires_grad`` and any
    Python attributes the parameter carried (``attributes``) are kept so that writing
    it back gives torch the same parameter.
    """

    requires_grad: bool = True
    attributes: dict | None = None

    def __array_finalize__(self, obj: Any) -> None:  # views and results of operations
        if obj is not None:
            self.requires_grad = getattr(obj, "requires_grad", True)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
