"""Scanning: the loader run dry, with a verdict instead of an object tree.

``ptfile.scan`` opens a file with the same container readers and runs every
pickle through the same restricted engine as ``ptfile.load``; nothing is
imported, called or materialized.  The inventory is graded by the same
:func:`ptfile.allowlist.judge`, so a file ``load`` refuses is never ``clean`` here.

Verdicts, worst first:

* ``dangerous``: a call outside the allowlist, or a known code-execution global anywhere;
* ``invalid``: the file could not be parsed to the end (what was found before the fault
  is still reported; a payload followed by garbage is ``dangerous``);
* ``unknown-class``: only instances of classes ptfile does not know (whole pickled
  models); ``strict`` makes these ``dangerous``;
* ``clean``: only allowlisted globals, used as allowed.

Files that are not checkpoints are read as what they are: a torch zip is examined
record by record (pickles under any name, anomalies such as wrong CRCs or
mismatched local names); anything else is read as a stream of pickles from byte 0,
which is what ``torch.load`` does with a file that does not start with a zip header;
a zip archive appended after such a pickle (a polyglot) is examined too.  A
``torch.distributed.checkpoint`` folder is scanned as one checkpoint by
:func:`ptfile.dcp.scan_folder`: its ``.metadata`` and every item of its ``.distcp`` files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from . import allowlist
from .errors import PtfileError, UnsafeGlobalError
from .inventory import GlobalUse
from .loader import Checkpoint, Context, detached_storage, new_engine
from .source import Source, open_source
from .ziparchive import ZipArchive, is_zip

__all__ = ["ScanResult", "scan", "VERDICTS"]

INVALID = "invalid"
#: Verdicts from worst to best; the CLI's exit code and sorting follow this order.
VERDICTS = (allowlist.DANGEROUS, INVALID, allowlist.UNKNOWN_CLASS, allowlist.CLEAN)
#: Archives whose content ptfile cannot open are never clean.
_COMPRESSED_MAGICS = {b"7z\xbc\xaf\x27\x1c": "7z", b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}


@dataclass
class ScanResult:
    """What a scan found in one file."""

    path: str
    verdict: str
    format: str
    findings: list[allowlist.Finding] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)  # why parsing stopped early
    notes: list[str] = field(default_factory=list)  # container anomalies worth a look
    globals: list[GlobalUse] = field(default_factory=list)  # every use of every global

    @property
    def clean(self) -> bool:
        return self.verdict == allowlist.CLEAN

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description; its shape is stable (see the README)."""
        return {
            "path": self.path,
            "verdict": self.verdict,
            "format": self.format,
            "findings": [
                {
                    "global": f.path,
                    "severity": f.severity,
                    "uses": [{"use": u.use, "record": u.record, "offset": u.offset} for u in f.uses],
                }
                for f in self.findings
            ],
            "faults": list(self.faults),
            "notes": list(self.notes),
            "globals": sorted({u.path for u in self.globals}),
        }


def is_scannable(path: str) -> bool:
    """Whether a file met while walking a folder could hold a model: sniffed, never judged by name.

    Zip, tar and compressed archives and anything that starts like a pickle qualify, whatever
    the extension; text, JSON and other data files are passed over.  Files named explicitly
    are always scanned.
    """
    from .legacy import TAR_BLOCK, is_tar
    from .loader import looks_like_pickle

    try:
        with open(path, "rb") as handle:
            head = handle.read(TAR_BLOCK)
    except OSError:
        return True  # let the scan report why it cannot be read
    return (is_zip(head) or is_tar(head) or looks_like_pickle(head)
            or any(head.startswith(magic) for magic in _COMPRESSED_MAGICS))


def scan(src: Any, *, strict: bool = False) -> ScanResult:
    """Scan one checkpoint (path, file object, bytes or DCP folder) without loading anything from it.

    Args:
        src: what to scan.
        strict: treat instances of unknown classes as dangerous.
    """
    name = os.fspath(src) if isinstance(src, (str, os.PathLike)) else getattr(src, "name", "<bytes>")
    from .dcp import is_dcp, scan_folder

    if is_dcp(src):  # a DCP folder is one checkpoint: its .metadata and every item in it
        return scan_folder(src, strict=strict)
    try:
        source = open_source(src, mmap_file=True)
    except PtfileError as exc:
        return ScanResult(str(name), INVALID, "unreadable", faults=[str(exc)])
    try:
        return _scan_source(source, strict)
    finally:
        source.close()


def _scan_source(source: Source, strict: bool) -> ScanResult:
    head = source.read(0, min(source.size, 16), "file header")
    inventory: list[GlobalUse] = []
    notes: list[str] = []
    if not head:
        return ScanResult(source.name, INVALID, "empty", faults=[f"{source.name}: the file is empty"])
    for magic, kind in _COMPRESSED_MAGICS.items():
        if head.startswith(magic):
            fault = f"{source.name}: {kind} archive; its content cannot be examined, so it is never called clean"
            return ScanResult(source.name, INVALID, kind, faults=[fault])
    fmt, faults, inert = examine_checkpoint(source, inventory, notes, zip_file=is_zip(head))
    if fmt == "pickle":  # not a checkpoint: every pickle in the file, as torch's non-zip path meets them
        inventory.clear()
        fmt, faults = _scan_stream(source, inventory, notes)
    judgement = allowlist.judge(inventory, inert_classes=inert)
    return scan_result(source.name, fmt, judgement, faults, notes, inventory, strict=strict)


def scan_result(name: str, fmt: str, judgement: allowlist.Judgement, faults: list[str], notes: list[str],
                inventory: list[GlobalUse], *, strict: bool) -> ScanResult:
    """The verdict from a judgement and the faults met: a fault makes anything short of dangerous invalid."""
    verdict = judgement.verdict
    if faults and verdict != allowlist.DANGEROUS:
        verdict = INVALID
    if strict and verdict == allowlist.UNKNOWN_CLASS:
        verdict = allowlist.DANGEROUS
    return ScanResult(name, verdict, fmt, list(judgement.findings), faults, notes, inventory)


def examine_checkpoint(source: Source, inventory: list[GlobalUse], notes: list[str], *,
                       zip_file: bool = True) -> tuple[str, list[str], Any]:
    """Run a file's pickles dry with the loader's own containers into ``inventory``.

    Returns its format (``pickle`` when it is none of the loader's containers), the faults
    met, and the container's inert classes.
    """
    try:
        checkpoint = Checkpoint(source, copy=False, records=True)
    except UnsafeGlobalError as exc:  # refused while opening (a legacy file's first pickles)
        inventory.extend(use for finding in exc.findings for use in finding.uses)
        return "pickle stream", [], None
    except PtfileError as exc:
        return ("zip" if zip_file else "pickle"), [str(exc)], None
    inventory.extend(checkpoint.inventory)  # what the container ran while opening
    checkpoint.inventory = inventory
    faults = checkpoint.examine()
    notes.extend(_code_notes(getattr(checkpoint.container, "code", {})))
    archive = getattr(checkpoint.container, "archive", None)
    if archive is not None:
        for name in archive.order:
            if not name.startswith(archive.prefix + "/"):
                notes.append(f"record {name!r} lies outside the archive folder {archive.prefix!r}")
        for entry in archive.entries.values():
            try:
                archive.verify_crc(entry)
            except PtfileError as exc:  # an unreadable record (encrypted, bad deflate) is a fault, not a crash
                faults.append(str(exc))
        notes.extend(archive.anomalies)
    return checkpoint.format, faults, getattr(checkpoint.container, "inert_classes", None)


def _code_notes(code: dict[str, str]) -> list[str]:
    """TorchScript code records are code: say so, and name the calls that reach outside the model.

    The calls themselves are also in the inventory (see :func:`ptfile.torchscript.code_calls`), so
    they are judged; the note says which record holds code at all.
    """
    from .torchscript import CODE_CALLS

    notes = []
    for record, text in code.items():
        calls = sorted(set(CODE_CALLS.findall(text)))
        detail = f"; it calls {', '.join(calls)}" if calls else ""
        notes.append(f"code record {record!r} is TorchScript source (never run by ptfile){detail}")
    return notes


def _scan_stream(source: Source, inventory: list[GlobalUse], notes: list[str]) -> tuple[str, list[str]]:
    """Pickles back to back from byte 0: torch's non-zip path runs the first, other loaders the rest."""
    data = source.read(0, source.size, "pickle stream")
    engine = new_engine(data, "", inventory, Context(None, False), detached_storage)  # type: ignore[arg-type]
    faults: list[str] = []
    pos = 0
    count = 0
    while pos < len(data):
        try:
            _, pos = engine.run(pos)
        except PtfileError as exc:
            faults.append(str(exc))
            break
        count += 1
    if count > 1:
        faults.append(f"{source.name}: {count} pickles back to back; a checkpoint loader reads only the first")
    zip_at = data.find(b"PK\x03\x04", 1)
    if zip_at > 0:
        faults.extend(_scan_appended_zip(source, inventory, notes))
    return "pickle", faults


def _scan_appended_zip(source: Source, inventory: list[GlobalUse], notes: list[str]) -> list[str]:
    try:
        archive = ZipArchive(source)
    except PtfileError:
        return []
    notes.append("a zip archive follows the pickle (a pickle/zip polyglot)")
    faults = []
    for name, entry in archive.entries.items():
        try:
            data = archive.read(entry)
        except PtfileError as exc:
            faults.append(str(exc))
            continue
        if not (name.endswith(".pkl") or data[:1] == b"\x80"):
            continue
        engine = new_engine(data, name, inventory, Context(None, False), detached_storage)  # type: ignore[arg-type]
        try:
            engine.run()
        except PtfileError as exc:
            faults.append(str(exc))
    return faults
