"""What the pickle engine saw: every global it met and how the pickle used it.

The engine appends one :class:`GlobalUse` per event.  Loading and scanning read the
same inventory and judge it with the same function (:func:`ptfile.policy.allowlist.judge`),
so the loader can never accept what the scanner would not call clean.
"""

from __future__ import annotations

__all__ = ["GlobalUse", "USES"]

#: How a pickle can use a global.  ``call`` runs it (REDUCE, INST, OBJ, NEWOBJ_EX);
#: ``new`` creates an instance without calling it (NEWOBJ); ``build`` sets the state of
#: such an instance (BUILD); ``reference`` only names it (GLOBAL / STACK_GLOBAL).
USES = ("call", "new", "build", "reference")
#: Each use as a reader says it.
USE_WORDS = {"call": "called", "new": "created without a call", "build": "given state",
             "reference": "named (not called)"}


class GlobalUse:
    """One use of a global: ``module.name``, how it was used, and where.

    Immutable and compared by value.  A plain class, not a dataclass: building a dataclass
    costs about a millisecond at import.
    """

    __slots__ = ("module", "name", "use", "offset", "record", "args")

    def __init__(self, module: str, name: str, use: str, offset: int, record: str = "", args: str = "") -> None:
        set_field = object.__setattr__
        set_field(self, "module", module)
        set_field(self, "name", name)
        set_field(self, "use", use)  # one of USES
        set_field(self, "offset", offset)  # byte offset of the opcode within its pickle
        set_field(self, "record", record)  # the archive record (or stream part) holding the pickle
        set_field(self, "args", args)  # for a call outside the allowlist: a bounded summary of its arguments

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"GlobalUse is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"GlobalUse is immutable: cannot delete {name!r}")

    def _key(self) -> tuple:
        return (self.module, self.name, self.use, self.offset, self.record, self.args)

    def __eq__(self, other: object) -> bool:
        if type(other) is not GlobalUse:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self) -> tuple:
        # pickled by its constructor (scan results cross process boundaries): the default
        # reduction of a slotted class would set the fields one by one, which this class refuses
        return (GlobalUse, self._key())

    def __repr__(self) -> str:
        return (f"GlobalUse(module={self.module!r}, name={self.name!r}, use={self.use!r}, offset={self.offset!r}, "
                f"record={self.record!r}, args={self.args!r})")

    @property
    def path(self) -> str:
        return f"{self.module}.{self.name}"

    def where(self) -> str:
        """``at byte 119 (archive/data.pkl)``: the offset and the pickle it lies in.

        Offsets count from the start of the file wherever the pickle lies in it in place (a stored
        zip record, a legacy stream, a tar member); inside a compressed record, from the record's start.
        """
        return f"at byte {self.offset} ({self.record})" if self.record else f"at byte {self.offset}"

    def action(self) -> str:
        """The use in plain words, followed by where: ``called at byte 119 (archive/data.pkl)``."""
        return f"{USE_WORDS[self.use]} {self.where()}"

    def describe(self) -> str:
        return f"{self.path} ({self.action()})"
