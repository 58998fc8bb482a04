"""What the pickle engine saw: every global it met and how the pickle used it.

The engine appends one :class:`GlobalUse` per event.  Loading and scanning read the
same inventory and judge it with the same function (:func:`ptfile.policy.allowlist.judge`),
so the loader can never accept what the scanner would not call clean.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GlobalUse", "USES"]

#: How a pickle can use a global.  ``call`` runs it (REDUCE, INST, OBJ, NEWOBJ_EX);
#: ``new`` creates an instance without calling it (NEWOBJ); ``build`` sets the state of
#: such an instance (BUILD); ``reference`` only names it (GLOBAL / STACK_GLOBAL).
USES = ("call", "new", "build", "reference")
#: Each use as a reader says it.
USE_WORDS = {"call": "called", "new": "created without a call", "build": "given state",
             "reference": "named (not called)"}


@dataclass(frozen=True)
class GlobalUse:
    """One use of a global: ``module.name``, how it was used, and where."""

    module: str
    name: str
    use: str  # one of USES
    offset: int  # byte offset of the opcode within its pickle
    record: str = ""  # the archive record (or stream part) holding the pickle
    args: str = ""  # for a call outside the allowlist: a bounded summary of its arguments

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
