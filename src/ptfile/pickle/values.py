"""The value types that appear in a loaded checkpoint besides Python builtins and numpy arrays.

* :class:`Global` stands for a class or function a pickle names but ptfile never imports
  (``torch.float16`` passed as a dtype argument, an unknown class referenced by a record).
* :class:`Record` is an inert instance of a class ptfile does not construct: a pickled
  ``nn.Module``, a ``torch.device``, a Lightning hyper-parameter container.  It holds
  what the pickle gave it (constructor arguments, state, items) and nothing else.
* :class:`Parameter` marks arrays that torch would load as ``nn.Parameter``.
"""

from __future__ import annotations

import reprlib
from typing import Any

import numpy as np

__all__ = ["Global", "Record", "Parameter", "brief"]


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

    def __init__(self, cls: Global, args: tuple[Any, ...] = (), state: Any = None) -> None:
        self.cls = cls
        self.args = args
        self.state = state
        self.items: dict[Any, Any] = {}
        self.listitems: list[Any] = []

    @property
    def classname(self) -> str:
        return self.cls.path

    def __repr__(self) -> str:
        parts = [self.cls.path]
        if self.args:
            parts.append(f"args={brief(self.args)}")
        if isinstance(self.state, dict):
            parts.append(f"state keys={brief(list(self.state))}")
        elif self.state is not None:
            parts.append(f"state={brief(self.state)}")
        return f"<Record {' '.join(parts)}>"


class Parameter(np.ndarray):
    """An array that torch loads as ``torch.nn.Parameter``.

    It is an ordinary numpy array in every other respect; ``requires_grad`` and any
    Python attributes the parameter carried (``attributes``) are kept so that writing
    it back gives torch the same parameter.
    """

    requires_grad: bool = True
    attributes: dict[str, Any] | None = None

    def __array_finalize__(self, obj: Any) -> None:  # views and results of operations
        if obj is not None:
            self.requires_grad = getattr(obj, "requires_grad", True)


#: Integers wider than this are described by their size: repr of a huge int is slow or refused.
_BRIEF_INT_BITS = 128


class _BriefRepr(reprlib.Repr):
    """A repr whose cost is bounded whatever the value: few levels, few items, short strings."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxtuple = self.maxlist = self.maxdict = self.maxset = self.maxfrozenset = 4
        self.maxstring = self.maxother = 30

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > _BRIEF_INT_BITS:
            return f"<int of {x.bit_length()} bits>"
        return repr(x)

    def repr_bytes(self, x: bytes, level: int) -> str:
        return repr(x[: self.maxstring]) + ("..." if len(x) > self.maxstring else "")

    def repr_instance(self, x: Any, level: int) -> str:
        if type(x) in (float, bool, complex, type(None), Global):
            return repr(x)
        if type(x) is Record:
            return f"<Record {x.cls.path}>"  # its own repr shows its arguments, unbounded
        return f"<{type(x).__name__}>"


_brief = _BriefRepr()


def brief(value: Any, limit: int = 60) -> str:
    """A short description of a pickle value for error messages, at bounded cost."""
    text = _brief.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

