"""The errors ptfile raises.

Every failure caused by the input ends in a :class:`PtfileError`.  Each
subclass also inherits the builtin exception it resembles, so callers that
already catch ``ValueError`` or ``FileNotFoundError`` keep working.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = [
    "PtfileError",
    "CorruptFileError",
    "UnsupportedFormatError",
    "UnsafeGlobalError",
    "LimitExceededError",
    "CheckpointNotFoundError",
    "FrameworkMissingError",
    "RemoteReadError",
]


class PtfileError(Exception):
    """Base class of every error ptfile raises because of its input."""


class CorruptFileError(PtfileError, ValueError):
    """The bytes are not a well-formed checkpoint (truncated, inconsistent, out of bounds)."""


class UnsupportedFormatError(PtfileError, NotImplementedError):
    """A well-formed file in a format or with a feature ptfile does not read."""


class LimitExceededError(PtfileError, ValueError):
    """The input asks for more than one of ptfile's named safety limits allows."""


class CheckpointNotFoundError(PtfileError, FileNotFoundError):
    """The path given does not exist or is not a readable file."""


class UnsafeGlobalError(PtfileError, ValueError):
    """The pickle uses globals that ptfile will not call or instantiate.

    ``findings`` holds one :class:`ptfile.pickle.inventory.GlobalUse` per offending use,
    so callers can see each module, name, how it was used and where.
    """

    def __init__(self, message: str, findings: Iterable[Any] = ()) -> None:
        super().__init__(message)
        self.findings = tuple(findings)


class FrameworkMissingError(PtfileError, ImportError):
    """``framework=`` names a framework (torch, JAX, MLX) that cannot be imported here."""


class RemoteReadError(PtfileError, OSError):
    """A remote read failed or came back short after every retry."""
