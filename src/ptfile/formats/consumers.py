"""Who reads a checkpoint file, and which bytes each of them runs.

A verdict is only as good as the readers it covers.  ``ptfile.scan`` says ``clean`` only
when every real consumer of the file would read something clean, and ``ptfile.load``
reads only files on which the consumers agree.  Each consumer finds the bytes it
unpickles (or compiles) by its own rules:

=============================  ==============================================================
consumer                       how it finds what it runs
=============================  ==============================================================
``torch.load``, zip path       ``torch.serialization._is_zipfile``: the first four bytes are
                               ``PK\\x03\\x04``, nothing else.  ``PyTorchStreamReader`` (miniz)
                               takes the last end-record signature, follows the ZIP64 locator
                               only when the end record is at byte 76 or later, looks records
                               up case-insensitively under the folder of the first entry and
                               unpickles ``data.pkl``.  An archive that ``_is_torchscript_zip``
                               recognises goes to ``torch.jit.load``.  (:mod:`ptfile.containers.ziparchive`
                               reads the directory that way and refuses a file other zip
                               readers would read differently.)
``torch.load``, legacy path    not a zip at byte 0 and a real file at offset 0: ``_legacy_load``
                               opens it with ``tarfile.open(mode="r:", format=PAX_FORMAT)``; on
                               ``tarfile.TarError`` it seeks to 0 and runs ``pickle.load`` from
                               byte 0 (magic number, protocol, sys info, the object, the
                               storage keys), then raw storage bytes.  Because the tar path can
                               fail after the header was accepted, a tar file is judged as a
                               tar AND as a pickle stream from byte 0.
``torch.jit.load``             the zip's ``code/`` records (Python-syntax TorchScript, compiled
                               and run: ``__setstate__`` runs on load), ``constants.pkl`` and
                               ``data.pkl`` with TorchScript's own unpickler.
``zipfile`` + ``pickle``       Python's ``zipfile`` finds an end record anywhere in the last
                               64 KiB, so a zip appended to a pickle, a legacy stream or a tar
                               (a polyglot) is a zip to it; a hand-written script then
                               unpickles its members.
``pickle.load`` from byte 0    any pickle at the start of the file, whatever follows.
``numpy.load(allow_pickle)``   ``.npy`` object arrays and ``.npz`` members (zip at byte 0).
DCP's loader                   ``.metadata`` by pickle; BYTE_IO items by
                               ``torch.load(weights_only=False)``, so each item is judged as a
                               file of its own (:mod:`ptfile.formats.dcp`).
=============================  ==============================================================

The loader's container (:func:`ptfile.formats.loader.open_container`) is chosen as ``torch.load``
chooses it: zip first, then tar, then the pickle stream.  This module adds the readings
that container does not cover, for the loader and the scanner alike
(:func:`other_readings`): the ``pickle.load``-from-byte-0 reading of files whose container
does not start with that pickle, and the ``zipfile`` reading of a zip appended to a file
that is not a zip at byte 0.  What these readings find is judged with the rest of the
file; where a reading cannot be followed to its end (the engine stops where CPython's
unpickler might go on), the file is reported with a fault, so its verdict is at best
``invalid`` and ``load`` refuses it.
"""

from __future__ import annotations

from typing import Any

from ..containers.ziparchive import is_zip, zipfile_directory
from ..errors import PtfileError
from ..io.source import Source, SourceFile
from ..pickle.opcodes import OPCODES
from ..policy.allowlist import new_engine
from ..tensors.context import Context
from .torchzip import detached_storage

__all__ = ["CONSUMERS", "fails_at_once", "other_readings", "byte0_reading", "appended_zip_reading",
           "run_dry"]

#: The consumers this module answers for, by name (the README's consumer table follows this).
CONSUMERS = ("torch.load (zip)", "torch.load (legacy tar, then pickle stream)", "torch.jit.load",
             "zipfile + pickle", "pickle.load from byte 0", "numpy.load(allow_pickle=True)", "DCP loader")

#: Containers that begin with the pickle ``pickle.load`` reads from byte 0: the container ran it already.
_STARTS_WITH_ITS_PICKLE = frozenset({"pickle", "legacy"})
#: Bytes run through the engine when the byte-0 pickle cannot be walked to its STOP.
MAX_BYTE0_PREFIX = 1 << 20
#: Members of an appended zip examined, and the bytes read of each; past either the file is a fault.
MAX_POLYGLOT_MEMBERS = 1_000
MAX_POLYGLOT_MEMBER_BYTES = 64 << 20


def _first_opcode_fails() -> frozenset[int]:
    """Bytes on which CPython's unpickler fails at once, before it can import or call anything.

    From the opcode table (CPython's, see :mod:`ptfile.pickle.opcodes`): a byte that is no opcode
    ("invalid load key"), an opcode that pops from the stack or needs a MARK (the stack starts
    empty: "stack underflow", "could not find MARK"), and PERSID, which ``pickle.load`` refuses
    without a ``persistent_load``.
    """
    failing = set(range(256))
    for op in OPCODES:
        if not op.reads_stack and op.name != "PERSID":
            failing.discard(op.code)
    return frozenset(failing)


_FAILS_AT_ONCE = _first_opcode_fails()
#: Opcodes through which a pickle imports anything: without one, nothing on the stack is callable.
_EFFECT_OPCODES = frozenset(op.code for op in OPCODES if op.imports)


def fails_at_once(head: bytes) -> bool:
    """Whether ``pickle.load`` of bytes starting with ``head`` fails on its first opcode."""
    return not head or head[0] in _FAILS_AT_ONCE


def other_readings(source: Source, fmt: str | None, inventory: list, context: Any = None) -> list[str]:
    """Judge what consumers other than the container's own read: globals into ``inventory``.

    Args:
        source: the whole file.
        fmt: the format of the container the loader opened (``zip``, ``tar``, ``legacy``,
            ``pickle``, ``torchscript``), or None when none opened it.
        inventory: where every global use of these readings goes, to be judged with the rest.
        context: the engine context for dry runs (tensor specs, never arrays); a fresh one by default.

    Returns the faults: readings that could not be followed to their end.
    """
    context = context if context is not None else Context()
    faults: list[str] = []
    if fmt not in _STARTS_WITH_ITS_PICKLE:
        faults.extend(byte0_reading(source, inventory, context))
    if not is_zip(source.read(0, min(4, source.size), "file header")):  # a zip at byte 0 is the zip reading
        faults.extend(appended_zip_reading(source, inventory, context))
    return faults


def byte0_reading(source: Source, inventory: list, context: Any) -> list[str]:
    """``pickle.load`` from byte 0 (torch's legacy fallback, any script): the first pickle, run dry.

    Only the pickle's own bytes are read: its end is found by walking opcode lengths first.
    A reading that fails before any opcode that can import or call (:data:`_EFFECT_OPCODES`)
    fails in CPython too without running anything (the walk follows CPython's own opcode
    table), so it adds nothing; one that stops after such an opcode is a fault.
    """
    head = source.read(0, min(source.size, 1), "file header")
    if fails_at_once(head):
        return []
    from .legacy import pickle_end  # lazy: the pre-1.6 formats only; a zip checkpoint never needs them

    seen: set[int] = set()
    fault: PtfileError | None = None
    try:
        end = pickle_end(source, 0, source.size, f"{source.name}: pickle from byte 0", seen)
    except PtfileError as exc:
        if not seen & _EFFECT_OPCODES:
            return []
        end, fault = min(source.size, MAX_BYTE0_PREFIX), exc  # the globals met before the fault still count
    found = len(inventory)
    engine = new_engine(source.read(0, end, "pickle from byte 0"), "pickle from byte 0", inventory, context, None)
    try:
        engine.run()
    except PtfileError as exc:
        fault = fault or exc
    if fault is None or (not seen & _EFFECT_OPCODES and len(inventory) == found):
        return []
    return [f"{source.name}: pickle.load from byte 0 (torch's legacy fallback) reads a pickle "
            f"ptfile cannot follow to its end: {fault}"]


def appended_zip_reading(source: Source, inventory: list, context: Any) -> list[str]:
    """``zipfile`` + ``pickle`` on a file that is not a zip at byte 0: every pickle-like member, run dry.

    A file with a zip directory at its end is a zip to ``zipfile`` (and to a script that
    extracts and unpickles its members) whatever its first bytes say, so it is two files at
    once: its members are judged, and the file is reported as a polyglot (a fault).  The
    members are read by ``zipfile`` itself, the consumer in question, within
    :data:`MAX_POLYGLOT_MEMBER_BYTES`.
    """
    if zipfile_directory(source) is None:
        return []
    import zipfile  # lazy: only for files that also read as a zip: zipfile stays off the common path

    faults = [f"{source.name}: a zip archive lies at the end of this file (a polyglot): "
              f"zipfile reads its records while torch.load reads the file from byte 0"]
    try:  # zipfile on hostile bytes raises more than BadZipFile (struct.error, OverflowError, ...)
        with zipfile.ZipFile(SourceFile(source)) as archive:
            for info in archive.infolist()[:MAX_POLYGLOT_MEMBERS]:
                with archive.open(info) as member:
                    data = member.read(MAX_POLYGLOT_MEMBER_BYTES + 1)
                if len(data) > MAX_POLYGLOT_MEMBER_BYTES:
                    faults.append(f"{source.name}: zip member {info.filename!r} is over "
                                  f"{MAX_POLYGLOT_MEMBER_BYTES} bytes; not examined")
                elif info.filename.lower().endswith(".pkl") or not fails_at_once(data[:1]):
                    faults.extend(run_dry(data, f"{source.name}!{info.filename}", inventory, context))
    except Exception as exc:  # noqa: BLE001 - any failure of the stdlib reader is a fault, never a crash
        faults.append(f"{source.name}: zipfile stopped reading the appended archive: {type(exc).__name__}: {exc}")
    return faults


def run_dry(data: bytes, record: str, inventory: list, context: Any) -> list[str]:
    """Run one pickle through the engine into ``inventory``; its fault, if any."""
    engine = new_engine(data, record, inventory, context, detached_storage)
    try:
        engine.run()
    except PtfileError as exc:
        return [str(exc)]
    return []
