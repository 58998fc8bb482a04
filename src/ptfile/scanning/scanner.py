"""Scanning: the loader run dry, with a verdict instead of an object tree.

``ptfile.scan`` opens a file with the same container readers and runs every
pickle through the same restricted engine as ``ptfile.load``; nothing is
imported, called or materialized.  The inventory is graded by the same
:func:`ptfile.policy.allowlist.judge`, so a file ``load`` refuses is never ``clean`` here.

Verdicts, worst first (the four levels of :func:`ptfile.policy.allowlist.judge`, and ``invalid``):

* ``dangerous``: a known code-execution gadget is named or called anywhere;
* ``unknown-call``: a global outside the allowlist, and no known gadget, is called: the
  file runs third-party code under ``torch.load(weights_only=False)``; each finding says
  how often and with what arguments;
* ``invalid``: the file could not be parsed to the end (what was found before the fault
  is still reported; a payload followed by garbage is ``dangerous`` or ``unknown-call``);
* ``unknown-class``: only instances of classes ptfile does not know (whole pickled
  models);
* ``clean``: only allowlisted globals, used as allowed.

``strict`` grades unknown calls and classes as ``dangerous``; ``allow`` accepts named
third-party globals (never a gadget), whose findings become notes.

A scan reads what its verdict needs: the zip directory, the pickles and the small records
beside them, never a tensor byte.  A stored storage record (raw tensor bytes, which no
consumer unpickles) is checked as ``load`` checks it before handing out its bytes (central
entry, local header, where its data ends), without reading it; ``verify=True`` also streams
every one through a CRC-32 check in chunks.  Torch never checks a CRC, so a mismatch is a
note, not a verdict.  A compressed storage (torch never writes one) is inflated in any case:
``load`` would inflate it, and a scan must fail what ``load`` refuses.

Files that are not checkpoints are read as what they are: a torch zip is examined
record by record (pickles under any name, anomalies such as wrong CRCs or
mismatched local names); anything else is read as a stream of pickles from byte 0
(at most :data:`MAX_STREAM_PICKLES` of them; more is a fault), which is what ``torch.load``
does with a file that does not start with a zip header;
a zip archive appended after such a pickle (a polyglot) is examined too.  A
``torch.distributed.checkpoint`` folder is scanned as one checkpoint by
:func:`scan_folder`: its ``.metadata`` and every item of its ``.distcp`` files;
a Hugging Face shard folder (or its ``*.index.json``) as the shards its index names.

Archives ``ptfile.load`` does not read (a zip or tar that is not a checkpoint, 7z, gzip,
bzip2, xz: a checkpoint recompressed to slip past scanners) are opened with the standard
library (7z with ``py7zr``, the optional ``ptfile[archives]`` extra; a tar with ptfile's own
bounded header parser, :func:`ptfile.formats.legacy.walk_tar`) and every member that looks like a
pickle or an archive is scanned in turn, down to :data:`MAX_ARCHIVE_DEPTH` levels and within
:data:`MAX_MEMBER_BYTES` / :data:`MAX_ARCHIVE_BYTES`.  Such a file is never clean, since
``load`` refuses it: it is ``dangerous`` when a member is, else ``invalid``.  What cannot be
opened (no py7zr, a member over a limit, encryption) is a fault.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..containers.ziparchive import FLAG_ENCRYPTED, STORED, ZipArchive, is_zip
from ..errors import PtfileError, UnsafeGlobalError
from ..formats import consumers
from ..formats.legacy import TAR_BLOCK, has_magic_number, is_tar, walk_tar
from ..formats.loader import Checkpoint, Context, detached_storage, looks_like_pickle, new_engine
from ..formats.opener import SNIFF_BYTES, Format, detect, is_readable, resolve
from ..io.folders import folders_for
from ..io.open import open_source
from ..io.source import MappedSource, SliceSource, Source, SourceFile
from ..pickle.engine import gc_paused
from ..pickle.inventory import GlobalUse
from ..policy import allowlist

if TYPE_CHECKING:
    from ..formats.dcp import DcpLayout

__all__ = ["ScanResult", "scan", "scan_opened", "VERDICTS", "FolderWalk", "PassedOver", "walk_for_scan"]

INVALID = "invalid"
#: Verdicts from worst to best; the CLI's exit code and sorting follow this order.
VERDICTS = (allowlist.DANGEROUS, allowlist.UNKNOWN_CALL, INVALID, allowlist.UNKNOWN_CLASS, allowlist.CLEAN)
#: Verdicts that fail a scan: code would run under ``torch.load(weights_only=False)``.
FAILING = (allowlist.DANGEROUS, allowlist.UNKNOWN_CALL)
#: Archives ``load`` does not read; the scanner opens them and scans their members.
_COMPRESSED_MAGICS = {b"7z\xbc\xaf\x27\x1c": "7z", b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
#: Archives inside archives are opened this many levels down (a checkpoint in a tar.gz is two).
MAX_ARCHIVE_DEPTH = 4
#: A member of such an archive is read into memory up to this size; a larger one is not examined.  A
#: megabyte of gzip inflates to a gigabyte, and the member is then parsed in memory: the limit keeps
#: both the bytes and the time to run them through the engine small (the verdict is never clean anyway).
MAX_MEMBER_BYTES = 32 << 20
#: All members of one archive together: a decompression bomb stops here.  7z members are extracted
#: all at once, so this is also what one 7z archive may hold in memory.
MAX_ARCHIVE_BYTES = 64 << 20
#: Members are decompressed in pieces of this size, so a bomb is stopped one piece past the limit.
READ_CHUNK_BYTES = 1 << 20
#: Members of one archive examined; the rest are reported as not examined.
MAX_ARCHIVE_MEMBERS = 10_000
#: Pickles back to back in a non-checkpoint file that are run; past this the rest is a fault.  A legacy
#: checkpoint holds five; millions of tiny ones would otherwise cost a full engine start each.
MAX_STREAM_PICKLES = 1_000


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
            "findings": [_finding_dict(f) for f in self.findings],
            "faults": list(self.faults),
            "notes": list(self.notes),
            "globals": sorted({u.path for u in self.globals}),
        }


def _finding_dict(finding: allowlist.Finding) -> dict[str, Any]:
    found: dict[str, Any] = {
        "global": finding.path,
        "severity": finding.severity,
        "uses": [{"use": u.use, "record": u.record, "offset": u.offset} for u in finding.uses],
    }
    if finding.severity == allowlist.DANGEROUS:
        found["reason"] = finding.reason
    if finding.calls:
        found["calls"] = finding.calls
        found["arguments"] = finding.arguments
    return found


def is_scannable(path: str) -> bool:
    """Whether a file met while walking a folder could hold a model: sniffed, never judged by name.

    Whatever ptfile reads (torch's containers, pickles, safetensors, numpy files) and
    compressed archives qualify, whatever the extension; text, JSON and other data files
    are passed over.  Files named explicitly are always scanned.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
        size = os.path.getsize(path)
    except OSError:
        return True  # let the scan report why it cannot be read
    return _worth_scanning(head, size)


@dataclass(frozen=True)
class PassedOver:
    """A path a folder scan met and did not judge, and why, in plain words."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class FolderWalk:
    """What a scan of files and folders judges (``files``), and what it passed over and why."""

    files: list[str] = field(default_factory=list)
    passed_over: list[PassedOver] = field(default_factory=list)


def walk_for_scan(paths: list[str], *, recursive: bool = False, include: list[Any] | None = None,
                  exclude: list[Any] | None = None) -> FolderWalk:
    """Every file (or DCP folder) a scan of ``paths`` judges, and every path it passes over with the reason.

    A path named is judged whatever it is; in a folder, files are sniffed (:func:`is_scannable`),
    a DCP folder is judged as one checkpoint with its item files, folders inside are entered
    with ``recursive`` only, and links to folders are never followed.  ``include`` and
    ``exclude`` are regular expressions searched in each path found; excludes win.
    """
    from ..formats.dcp import is_dcp, members  # lazy: DCP folders only

    walk = FolderWalk()
    found: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            found.append(path)
            continue
        for folder, dirs, files in os.walk(path):
            dirs.sort()
            for name in list(dirs):
                inside = os.path.join(folder, name)
                if os.path.islink(inside):
                    walk.passed_over.append(PassedOver(inside, "a link to a folder: links to folders are not followed"))
                elif not recursive:
                    walk.passed_over.append(PassedOver(inside, "a folder inside the folder: scanned only with recursion"))
            if not recursive:
                dirs.clear()
            covered: set[str] = set()  # the files a DCP folder's own scan judges
            if is_dcp(folder):
                found.append(folder)
                with contextlib.suppress(PtfileError):  # over a limit: the folder's scan says so, its files are judged alone
                    covered = members(folder, files)
            for name in sorted(files):
                file = os.path.join(folder, name)
                if name in covered:
                    walk.passed_over.append(PassedOver(file, f"part of the DCP checkpoint {folder}, judged with it"))
                    continue
                why = _why_passed_over(file)
                if why:
                    walk.passed_over.append(PassedOver(file, why))
                else:
                    found.append(file)
    for path in found:
        matched = [getattr(pattern, "pattern", pattern) for pattern in exclude or () if re.search(pattern, path)]
        if include and not any(re.search(pattern, path) for pattern in include):
            walk.passed_over.append(PassedOver(path, "matches no include pattern"))
        elif matched:
            walk.passed_over.append(PassedOver(path, f"matches the exclude pattern {matched[0]!r}"))
        else:
            walk.files.append(path)
    return walk


def _why_passed_over(path: str) -> str:
    """Why a file met in a folder is not judged; empty when it is."""
    if not os.path.exists(path):
        return "a broken link"
    if not os.path.isfile(path):
        return "not a regular file (a pipe, socket or device)"
    try:
        if os.path.getsize(path) == 0:
            return "an empty file"
    except OSError:
        return ""  # the scan reports why it cannot be read
    if not is_scannable(path):
        return "does not start like a checkpoint, a pickle or an archive (sniffed, whatever its name)"
    return ""


def _worth_scanning(head: bytes, size: int) -> bool:
    """Whether bytes (the first :data:`SNIFF_BYTES` of a ``size``-byte file) start like a checkpoint or an archive."""
    return is_readable(head, size) or any(head.startswith(magic) for magic in _COMPRESSED_MAGICS)


def scan(src: Any, *, strict: bool = False, allow: allowlist.Allow | None = None,
         verify: bool = False) -> ScanResult:
    """Scan one checkpoint (path, file object, bytes, DCP or shard folder) without loading anything from it.

    Args:
        src: what to scan.
        strict: treat unknown calls and instances of unknown classes as dangerous.
        allow: third-party globals to accept (see :class:`ptfile.policy.allowlist.Allow`).
        verify: also read every storage record and check its CRC-32 (reads the whole file).
    """
    allow = allowlist.as_allow(allow)
    name = os.fspath(src) if isinstance(src, (str, os.PathLike)) else getattr(src, "name", "<bytes>")

    try:
        kind, target = resolve(src)
    except PtfileError as exc:
        return ScanResult(str(name), INVALID, "unreadable", faults=[str(exc)])
    if kind == "dcp":  # a DCP folder is one checkpoint: its metadata files and every item in them
        return scan_folder(target, strict=strict, allow=allow)
    if kind == "sharded":  # a shard folder or index is the shards its index names, as load reads them
        return _scan_shards(os.fspath(target), strict, allow, verify)
    try:
        source = open_source(target, mmap_file=True)
    except PtfileError as exc:
        return ScanResult(str(name), INVALID, "unreadable", faults=[str(exc)])
    try:
        with gc_paused():  # the engine only builds objects that stay reachable: a collection frees nothing
            return _scan_source(source, strict, allow, verify=verify)
    finally:
        source.close()


def scan_opened(checkpoint: Checkpoint, *, strict: bool = False, allow: allowlist.Allow | None = None) -> ScanResult:
    """The scan of a torch checkpoint ``ptfile.open`` has already opened (what ``inspect`` reports).

    Its pickles ran when the handle opened, under the same engine and into the same inventory a
    scan uses, so they are judged as they are instead of being run a second time (half the time
    of inspecting a 20,000-tensor file).  Everything else a scan looks at (records beside the
    pickle, archives inside records, the small records' CRCs) is looked at as :func:`scan` does
    it; a plain pickle is read again as the stream of pickles it may be.  The handle stays open.
    """
    allow = allowlist.as_allow(allow)
    opened = checkpoint if checkpoint.format != "pickle" else None
    with gc_paused():
        return _scan_source(checkpoint.source, strict, allow, opened=opened)


def _scan_source(source: Source, strict: bool, allow: allowlist.Allow, depth: int = 0, *,
                 verify: bool = False, opened: Checkpoint | None = None) -> ScanResult:
    head = source.read(0, min(source.size, TAR_BLOCK), "file header")
    inventory: list[GlobalUse] = []
    notes: list[str] = []
    if not head:
        return ScanResult(source.name, INVALID, "empty", faults=[f"{source.name}: the file is empty"])
    for magic, kind in _COMPRESSED_MAGICS.items():
        if head.startswith(magic):
            return _scan_archive(source, kind, strict, allow, depth)
    tensor_format = detect(source)
    if tensor_format.name != "torch":
        return _scan_tensor_file(source, tensor_format, strict, allow)
    fmt, faults, inert, archive = _examine(source, inventory, notes, verify, opened)
    if fmt is None and (is_zip(head) or is_tar(head)):  # an archive, but not a checkpoint: its members
        readings = _other_readings(source, strict, allow)  # and what pickle.load from byte 0 or zipfile would run
        return _scan_archive(source, "zip" if is_zip(head) else "tar", strict, allow, depth, faults, readings)
    # Not a checkpoint: every pickle in the file, as torch's non-zip path meets them.  A plain pickle the
    # loader read to its end without a fault is that one pickle, and its other readings are judged: no rerun.
    if fmt is None or (fmt == "pickle" and faults):
        inventory.clear()
        refused = faults  # why load refuses the file (no container opens it, or a storage it cannot resolve)
        fmt, faults = _scan_stream(source, inventory, notes)
        faults = refused + faults + consumers.appended_zip_reading(source, inventory, Context())
    nested: list[ScanResult] = []
    if is_zip(head):
        nested = _examine_unread_records(source, archive, inventory, notes, strict, allow, depth)
    judgement = allowlist.judge(inventory, inert_classes=inert, allow=allow)
    result = scan_result(source.name, fmt, judgement, faults, notes, inventory, strict=strict)
    return _with_nested(result, nested)


def _examine_unread_records(source: Source, archive: ZipArchive | None, inventory: list[GlobalUse], notes: list[str],
                            strict: bool, allow: allowlist.Allow, depth: int) -> list[ScanResult]:
    """Records of a checkpoint zip the loader could not read as pickles, examined anyway.

    A stored record whose flags claim encryption (torch's reader ignores the flag) is run
    dry as the pickle it is; a pickle record (``*.pkl``) that is itself an archive (a torch
    zip inside ``data.pkl``) is scanned as one, down to :data:`MAX_ARCHIVE_DEPTH` levels.
    Storages are never taken for archives: their bytes are data.  Their faults stay (the
    file is never clean), but a dangerous finding outranks them.  ``archive``: the directory
    the loader's container already read (a file of 20,000 records is not read twice), if any.
    """
    if archive is None:
        try:
            archive = ZipArchive(source)
        except PtfileError:
            return []  # the loader's reading already reported why
    nested = []
    for name, entry in archive.entries.items():
        if entry.method != STORED or entry.size != entry.compressed_size or entry.size > MAX_MEMBER_BYTES:
            continue  # compressed, inconsistent or oversized records: the loader's reading reported them
        if entry.flags & FLAG_ENCRYPTED:
            try:
                data = source.read(archive.data_offset(entry), entry.size, f"zip record {name!r}")
            except PtfileError:
                continue
            if looks_like_pickle(data[:64]):
                notes.append(f"record {name!r} claims encryption but holds a stored pickle; run dry anyway")
                _run_dry(data, name, inventory)
            continue
        if not name.endswith(".pkl") or depth + 1 >= MAX_ARCHIVE_DEPTH:
            continue
        try:
            head = source.read(archive.data_offset(entry), min(entry.size, TAR_BLOCK), "record header")
            if _is_archive(head):
                data = source.read(archive.data_offset(entry), entry.size, f"zip record {name!r}")
                nested.append(_scan_source(MappedSource(data, f"{source.name}!{name}"), strict, allow, depth + 1))
        except PtfileError:
            continue
    return nested


def _run_dry(data: bytes, record: str, inventory: list[GlobalUse]) -> None:
    """Every pickle in ``data`` run through the engine for its globals; faults are the caller's to report."""
    engine = new_engine(data, record, inventory, Context(None, False), detached_storage)  # type: ignore[arg-type]
    pos = 0
    try:
        while pos < len(data):
            _, pos = engine.run(pos)
    except PtfileError:
        pass  # the globals met before the fault are in the inventory


def _is_archive(head: bytes) -> bool:
    return is_zip(head) or is_tar(head) or any(head.startswith(magic) for magic in _COMPRESSED_MAGICS)


def _with_nested(result: ScanResult, nested: list[ScanResult]) -> ScanResult:
    """A result with the archives found inside its records: the worst verdict, everything they found."""
    for inner in nested:
        result.notes.append(f"{inner.path}: {inner.verdict} ({inner.format}), an archive inside a record")
        result.findings.extend(inner.findings)
        result.faults.extend(inner.faults)
        result.notes.extend(f"{inner.path}: {note}" for note in inner.notes)
        result.globals.extend(inner.globals)
        result.verdict = min(result.verdict, inner.verdict, key=VERDICTS.index)
    if result.faults and result.verdict not in FAILING:
        result.verdict = INVALID
    return result


def _scan_tensor_file(source: Source, fmt: Format, strict: bool, allow: allowlist.Allow) -> ScanResult:
    """A safetensors or numpy file: clean when its header holds (ranges inside the file, no overlap
    or hole) and no other consumer would read anything else; an object array's pickle is judged."""
    inventory: list[GlobalUse] = []
    faults = consumers.other_readings(source, fmt.name, inventory)
    try:
        fmt.open(source, False, False, allow)
    except PtfileError as exc:
        faults.insert(0, str(exc))
    if fmt.name in ("npz", "npy"):
        faults.extend(_judge_object_arrays(source, inventory))
    judgement = allowlist.judge(inventory, allow=allow)
    return scan_result(source.name, fmt.name, judgement, faults, [], inventory, strict=strict)


def _judge_object_arrays(source: Source, inventory: list[GlobalUse]) -> list[str]:
    """Run the pickle of every object array dry (``numpy.load(allow_pickle=True)`` would unpickle it)."""
    from ..formats.npformat import object_pickles  # lazy: a format reader, imported for files of its format

    try:
        pickles = object_pickles(source)
    except PtfileError as exc:
        return [str(exc)]
    return [fault for record, data in pickles for fault in consumers.run_dry(data, record, inventory, Context())]


def _other_readings(source: Source, strict: bool, allow: allowlist.Allow) -> ScanResult:
    """The readings of consumers other than the loader's container (see :mod:`ptfile.formats.consumers`)."""
    inventory: list[GlobalUse] = []
    faults = consumers.other_readings(source, None, inventory)
    judgement = allowlist.judge(inventory, allow=allow)
    return scan_result(source.name, "other readings", judgement, faults, [], inventory, strict=strict)


def scan_result(name: str, fmt: str, judgement: allowlist.Judgement, faults: list[str], notes: list[str],
                inventory: list[GlobalUse], *, strict: bool) -> ScanResult:
    """The verdict from a judgement and the faults met: a fault makes anything short of a failing verdict invalid."""
    verdict = judgement.verdict
    if strict and verdict in (allowlist.UNKNOWN_CALL, allowlist.UNKNOWN_CLASS):
        verdict = allowlist.DANGEROUS
    if faults and verdict not in FAILING:
        verdict = INVALID
    notes = [*notes, *(f"allowed: {f.describe()}" for f in judgement.allowed)]
    return ScanResult(name, verdict, fmt, list(judgement.findings), faults, notes, inventory)


def examine_checkpoint(source: Source, inventory: list[GlobalUse], notes: list[str], *,
                       zip_file: bool = True, verify: bool = False) -> tuple[str, list[str], Any]:
    """Run a file's pickles dry with the loader's own containers into ``inventory``.

    Returns its format (``pickle`` when it is none of the loader's containers), the faults
    met, and the container's inert classes.  ``verify``: check storage records' CRCs too.
    """
    fmt, faults, inert, _ = _examine(source, inventory, notes, verify)
    if fmt is None:
        return ("zip" if zip_file else "pickle"), faults, None
    return fmt, faults, inert


def _examine(source: Source, inventory: list[GlobalUse], notes: list[str], verify: bool = False,
             opened: Checkpoint | None = None) -> tuple[str | None, list[str], Any, ZipArchive | None]:
    """:func:`examine_checkpoint`, with the format None when no container of the loader opens the file,
    and the zip directory the container read, if any.

    ``opened``: a checkpoint whose pickles already ran to the end (an open handle); its inventory
    is taken as it is.  It opened, so no pickle and no other consumer's reading stopped on a fault.
    """
    if opened is not None:
        inventory.extend(opened.inventory)
        return _examined(opened, inventory, notes, verify, [])
    try:
        checkpoint = Checkpoint(source, copy=False, records=True)
    except UnsafeGlobalError as exc:  # refused while opening (a legacy file's first pickles)
        inventory.extend(use for finding in exc.findings for use in finding.uses)
        return "pickle stream", [], None, None
    except PtfileError as exc:
        if has_magic_number(source, source.read(0, min(source.size, TAR_BLOCK), "file header")):
            # torch reads it as a legacy stream: the legacy reader's own diagnosis stands, and the
            # stream reading (whose storage ids are not the legacy ones) only adds every pickle's globals
            _scan_stream(source, inventory, notes)
            return "legacy", [str(exc), *consumers.appended_zip_reading(source, inventory, Context())], None, None
        return None, [str(exc)], None, None
    inventory.extend(checkpoint.inventory)  # what the container ran while opening
    checkpoint.inventory = inventory
    try:
        faults = checkpoint.examine()
    except PtfileError as exc:  # a record it reads is out of bounds: a fault; the globals met so far are still judged
        faults = [str(exc)]
    return _examined(checkpoint, inventory, notes, verify, faults)


def _examined(checkpoint: Checkpoint, inventory: list[GlobalUse], notes: list[str], verify: bool,
              faults: list[str]) -> tuple[str, list[str], Any, ZipArchive | None]:
    """What a scan adds to a checkpoint's run pickles: its code records, its records' form and CRCs."""
    notes.extend(_code_notes(checkpoint.container))
    archive = getattr(checkpoint.container, "archive", None)
    if archive is not None:
        for name in archive.order:
            if not name.startswith(archive.prefix + "/"):
                notes.append(f"record {name!r} lies outside the archive folder {archive.prefix!r}")
        # examine() met some of them already when the container checked its records
        faults.extend(fault for fault in _check_records(archive, checkpoint.container, verify) if fault not in faults)
        notes.extend(archive.anomalies)
    return checkpoint.format, faults, getattr(checkpoint.container, "inert_classes", None), archive


def _check_records(archive: ZipArchive, container: Any, verify: bool) -> list[str]:
    """Every record's form, and the CRC of every record but stored storages (of every one with ``verify``).

    Records outside the storage folders (pickles, version, byteorder, code) are small and read
    anyway.  A stored storage record is raw tensor bytes, which no consumer unpickles: without
    ``verify`` it is checked as ``load`` checks it before a tensor is read (central entry, local
    header, data range) and its bytes are left unread.  Returns the faults: an unreadable record
    (encrypted, bad deflate, a local header elsewhere) is a fault, not a crash.
    """
    storage_dirs = tuple(archive.full_name(folder) for folder in getattr(container, "storage_folders", ()))
    faults = []
    for name, entry in archive.entries.items():
        try:
            if verify or entry.method != STORED or not name.startswith(storage_dirs):
                archive.verify_crc(entry)
            else:
                archive.stored_range(entry)
        except PtfileError as exc:
            faults.append(str(exc))
    return faults


def _code_notes(container: Any) -> list[str]:
    """TorchScript code records are code: say so, and name the calls off the code allowlist.

    The calls themselves are in the inventory (see :func:`ptfile.formats.scriptcode.judge_code`), so they
    are judged; the note says which record holds code at all.
    """
    calls = getattr(container, "code_calls", {})
    notes = []
    for record in getattr(container, "code", {}):
        detail = f"; it calls {', '.join(calls[record])}" if record in calls else ""
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
        if count == MAX_STREAM_PICKLES:
            faults.append(f"{source.name}: more than {MAX_STREAM_PICKLES} pickles back to back (limit "
                          f"MAX_STREAM_PICKLES); the rest, from byte {pos}, were not examined")
            break
        try:
            _, pos = engine.run(pos)
        except PtfileError as exc:
            faults.append(str(exc))
            break
        count += 1
    if count > 1:
        faults.append(f"{source.name}: {count} pickles back to back; a checkpoint loader reads only the first")
    return "pickle", faults


# -- archives load does not read -------------------------------------------------------------


#: One member: its name, then its bytes, or None and why it was not read.
Member = tuple[str, "bytes | None", str]


def _bounded(name: str, size: int, read: Any, budget: list[int]) -> Member:
    """Read one member through ``read(limit)`` unless it is, or turns out to be, over a limit."""
    if size > MAX_MEMBER_BYTES:
        return name, None, f"declares {size} bytes, over the {MAX_MEMBER_BYTES}-byte limit MAX_MEMBER_BYTES; not examined"
    if size > budget[0]:
        return name, None, f"members inflate past the {MAX_ARCHIVE_BYTES}-byte limit of one archive, MAX_ARCHIVE_BYTES; not examined"
    limit, which = min((MAX_MEMBER_BYTES, "MAX_MEMBER_BYTES"), (budget[0], "MAX_ARCHIVE_BYTES (what is left of it)"))
    data = _read_up_to(read, limit + 1)
    if data is None:
        return name, None, f"inflates past the {limit}-byte limit {which}; not examined"
    budget[0] -= len(data)
    return name, data, ""


def _read_up_to(read: Any, limit: int) -> bytes | None:
    """All of a member in pieces, or None once it reaches ``limit`` bytes.

    One ``read(limit)`` call would make the decompressor allocate the whole limit up front even
    for a small member; reading pieces into one growing buffer holds at most one copy plus a piece.
    """
    buffer = io.BytesIO()
    while True:
        piece = read(min(READ_CHUNK_BYTES, limit - buffer.tell()))
        if not piece:
            return buffer.getvalue()  # hands over the buffer's bytes without a copy
        buffer.write(piece)
        if buffer.tell() >= limit:
            return None


def _stream_members(file: Any, kind: str, budget: list[int]) -> Iterator[Member]:
    import bz2  # lazy: compressed wrappers are rare: their codecs stay off the common scan
    import gzip  # lazy: compressed wrappers are rare: their codecs stay off the common scan
    import lzma  # lazy: compressed wrappers are rare: their codecs stay off the common scan

    opener = {"gzip": gzip.GzipFile, "bzip2": bz2.BZ2File, "xz": lzma.LZMAFile}[kind]
    with opener(fileobj=file) if kind == "gzip" else opener(file) as stream:
        yield _bounded("content", 0, stream.read, budget)


def _zip_members(file: Any, budget: list[int]) -> Iterator[Member]:
    import zipfile  # lazy: zip-wrapped checkpoints are rare: zipfile stays off the common scan

    with zipfile.ZipFile(file) as archive:
        for info in archive.infolist():
            if not info.filename.endswith("/"):  # ZipInfo.is_dir() fails on an empty name
                with archive.open(info) as member:
                    yield _bounded(info.filename, info.file_size, member.read, budget)


def _tar_members(source: Source, budget: list[int]) -> Iterator[Member]:
    """Members as tarfile lists them, walked by ptfile's own bounded header parser.

    The standard library's reader is never handed the archive: its PAX parser is quadratic
    on Python <= 3.11.9 (CVE-2024-6232), and a header it would read another way ends the walk.
    """
    for member in walk_tar(source):
        if member.has_data:
            yield _bounded(member.name, member.size, _TarMemberReader(source, member).read, budget)


class _TarMemberReader:
    """``read(limit)`` over one tar member's bytes, in order, as a file's read would give them."""

    def __init__(self, source: Source, member: Any) -> None:
        self.source = source
        self.member = member
        self.pos = 0

    def read(self, limit: int) -> bytes:
        count = max(0, min(limit, self.member.size - self.pos))
        data = self.source.read(self.member.data + self.pos, count, f"tar member {self.member.name}")
        self.pos += count
        return data


def _seven_zip_members(file: Any, budget: list[int]) -> Iterator[Member]:
    try:
        import py7zr  # lazy: optional dependency (ptfile[archives])
        from py7zr.io import BytesIOFactory  # lazy: optional dependency (ptfile[archives])
    except ImportError:
        yield "", None, "reading 7z needs py7zr (pip install 'ptfile[archives]'); not examined"
        return
    with py7zr.SevenZipFile(file, "r") as archive:
        infos = [info for info in archive.list() if not info.is_directory]
        wanted, budget_left = [], budget[0]
        for info in infos:
            size = info.uncompressed or 0
            if size > MAX_MEMBER_BYTES or size > budget_left:
                yield info.filename, None, f"declares {size} bytes, over MAX_MEMBER_BYTES or MAX_ARCHIVE_BYTES; not examined"
            else:
                wanted.append(info.filename)
                budget_left -= size
        factory = BytesIOFactory(MAX_MEMBER_BYTES + 1)  # writes past the limit are dropped, then caught below
        archive.extract(targets=wanted, factory=factory)
        for name in wanted:
            product = factory.products.get(name)
            if product is None:
                yield name, None, "not extracted"
                continue
            product.seek(0)
            yield _bounded(name, 0, product.read, budget)


def _archive_members(source: Source, kind: str) -> Iterator[Member]:
    """Every member of a zip, tar, 7z or compressed stream, read within the size limits."""
    budget = [MAX_ARCHIVE_BYTES]
    file = SourceFile(source)
    readers = {"zip": lambda: _zip_members(file, budget), "tar": lambda: _tar_members(source, budget),
               "7z": lambda: _seven_zip_members(file, budget)}
    members = readers[kind]() if kind in readers else _stream_members(file, kind, budget)
    try:
        for count, member in enumerate(members):
            if count == MAX_ARCHIVE_MEMBERS:
                yield "", None, f"more than {MAX_ARCHIVE_MEMBERS} members; the rest were not examined"
                return
            yield member
    except Exception as exc:  # noqa: BLE001 - see below
        # These readers are not ptfile's and were not written for hostile bytes: on a damaged
        # archive they raise whatever their internals hit (LZMAError from xz, AssertionError,
        # AttributeError, OverflowError or TypeError from py7zr's header parser), and no list of
        # types stays complete.  Whatever they raise ends the walk as a fault: never clean, never
        # a traceback.  Nothing from the archive has been run, so nothing else needs undoing.
        yield "", None, f"the {kind} reader stopped: {type(exc).__name__}: {str(exc)[:200]}"


def _scan_archive(source: Source, kind: str, strict: bool, allow: allowlist.Allow, depth: int,
                  faults: list[str] | None = None, readings: ScanResult | None = None) -> ScanResult:
    """A zip, tar, 7z or compressed file load does not read: never clean, dangerous if a member is.

    ``readings``: what other consumers of the whole file would read, judged with the members.
    """
    faults = [f"{source.name}: a {kind} archive that ptfile.load does not read; its members were scanned",
              *(faults or [])]
    results: list[ScanResult] = [readings] if readings is not None else []
    notes: list[str] = []
    if depth >= MAX_ARCHIVE_DEPTH:
        faults.append(f"{source.name}: archives nested more than {MAX_ARCHIVE_DEPTH} deep; not examined")
        return combine_results(source.name, kind, results, faults, notes)
    for name, data, why in _archive_members(source, kind):
        where = f"{source.name}!{name}" if name else source.name
        if data is None:
            faults.append(f"{where}: {why}")
        elif _worth_scanning(data[:SNIFF_BYTES], len(data)):
            results.append(_scan_source(MappedSource(data, where), strict, allow, depth + 1))
        else:
            notes.append(f"member {name!r} is neither a pickle nor an archive; passed over")
    return combine_results(source.name, kind, results, faults, notes)


def combine_results(name: str, fmt: str, results: list[ScanResult], faults: list[str],
                    notes: list[str]) -> ScanResult:
    """One result for several parts (archive members, shards): the worst verdict, everything found."""
    verdict = min((r.verdict for r in results), key=VERDICTS.index, default=allowlist.CLEAN)
    faults = list(faults)
    notes = list(notes)
    findings: list[allowlist.Finding] = []
    inventory: list[GlobalUse] = []
    for result in results:
        notes.append(f"{result.path}: {result.verdict} ({result.format})")
        notes.extend(note if note.startswith(result.path) else f"{result.path}: {note}" for note in result.notes)
        faults.extend(result.faults)
        findings.extend(result.findings)
        inventory.extend(result.globals)
    if faults and verdict not in FAILING:
        verdict = INVALID
    return ScanResult(name, verdict, fmt, findings, faults, notes, inventory)


# -- shard folders -----------------------------------------------------------------------------


def _scan_shards(path: str, strict: bool, allow: allowlist.Allow, verify: bool) -> ScanResult:
    """The shards a Hugging Face index names, each scanned; the index's own checks as load makes them."""
    from ..formats.sharded import (  # lazy: a format reader, imported for files of its format
        ShardedCheckpoint,
        index_of,
        read_index,
    )

    try:
        index, folder = index_of(path)
        weight_map = read_index(index)
    except PtfileError as exc:
        return ScanResult(path, INVALID, "sharded", faults=[str(exc)])
    shards = list(dict.fromkeys(weight_map.values()))
    folders = folders_for(folder)
    results = [scan(folders.join(folder, shard), strict=strict, allow=allow, verify=verify) for shard in shards]
    faults: list[str] = []
    if all(r.verdict not in (*FAILING, INVALID) for r in results):
        # every name the index places in a shard must be there: load refuses the folder otherwise
        with ShardedCheckpoint(index, records=True) as handle:
            for shard in shards:
                try:
                    handle.shard(shard)
                except PtfileError as exc:
                    faults.append(str(exc))
    return combine_results(path, "sharded", results, faults, [f"shard index {os.path.basename(index)!r}"])


# -- DCP folders --------------------------------------------------------------------


def _worst(*judgements: allowlist.Judgement) -> allowlist.Judgement:
    verdict = min((j.verdict for j in judgements), key=allowlist.LEVELS.index)
    return allowlist.Judgement(verdict, tuple(f for j in judgements for f in j.findings),
                               tuple(f for j in judgements for f in j.allowed))


def scan_folder(folder: Any, *, strict: bool = False, allow: allowlist.Allow | None = None) -> Any:
    """Scan a DCP folder: every metadata file a reader may read and every item, each run dry through the engine.

    The DCP dataclasses are vouched for in the metadata files only; the items are judged as
    ordinary checkpoints.  If a metadata file cannot be read, each ``.distcp`` file is
    examined as a whole instead (which finds less, and is never clean).  A folder of DCP's
    safetensors shards has no pickle: each file's header is checked and the chunks merged
    as when it is opened.  Returns a :class:`ScanResult` for the folder.
    """
    from ..formats.dcp import METADATA_FILE, is_data_class, metadata_files  # lazy: DCP folders only

    path = os.fspath(folder)
    meta_inventory: list[GlobalUse] = []
    item_inventory: list[GlobalUse] = []
    faults: list[str] = []
    notes: list[str] = []
    try:
        names = metadata_files(path)
    except PtfileError as exc:
        faults.append(str(exc))
        names = []
    if names == [METADATA_FILE]:
        _scan_fallback_metadata(path, meta_inventory, notes)
    if names:
        layouts = _scan_metadata_files(path, names, meta_inventory, faults)
        if layouts is not None:
            _scan_items(path, layouts, names, item_inventory, faults, notes)
        else:
            _scan_whole_files(path, item_inventory, faults, notes)
    elif not faults:
        _scan_safetensors(path, faults, notes)
    judgement = _worst(allowlist.judge(meta_inventory, inert_classes=is_data_class, allow=allow),
                       allowlist.judge(item_inventory, allow=allow))
    return scan_result(path, "dcp", judgement, faults, notes, meta_inventory + item_inventory, strict=strict)


def _scan_metadata_files(folder: str, names: list[str], inventory: list[GlobalUse],
                         faults: list[str]) -> list[DcpLayout] | None:
    """Every metadata file run dry into ``inventory``; their layouts if all parse and agree."""
    from ..formats.dcp import FIRST_RANK_METADATA, METADATA_FILE, check_ranks_agree  # lazy: DCP folders only

    layouts = [_scan_metadata(folder, name, inventory, faults) for name in names]
    if any(layout is None for layout in layouts):
        return None
    found = [layout for layout in layouts if layout is not None]
    if names[0] not in (METADATA_FILE, FIRST_RANK_METADATA):
        faults.append(f"{folder}: per-rank metadata without {FIRST_RANK_METADATA}; a single process fails to read it")
    for name, layout in zip(names[1:], found[1:], strict=True):
        try:
            check_ranks_agree(found[0], layout, names[0], name)
        except PtfileError as exc:
            faults.append(str(exc))
    return found


def _scan_fallback_metadata(folder: str, inventory: list[GlobalUse], notes: list[str]) -> None:
    """Per-rank metadata beside ``.metadata``: torch's loader unpickles its rank's file when ``.metadata``
    fails to load, so each is judged too; what is wrong in them only matters then, and is noted."""
    from ..formats.dcp import METADATA_FILE, rank_metadata_files  # lazy: DCP folders only

    try:
        names = rank_metadata_files(folder)
    except PtfileError as exc:
        notes.append(str(exc))
        return
    for name in names:
        problems: list[str] = []
        _scan_metadata(folder, name, inventory, problems)
        notes.append(f"{name} is read only if {METADATA_FILE} fails to load"
                     + (f"; {problems[0]}" if problems else ""))


def _scan_metadata(folder: str, name: str, inventory: list[GlobalUse], faults: list[str]) -> DcpLayout | None:
    from ..formats.dcp import METADATA_FILE, metadata_checkpoint, parse_layout  # lazy: DCP folders only

    try:
        checkpoint = metadata_checkpoint(folder, records=True, name=name)
    except PtfileError as exc:
        faults.append(str(exc))
        return None
    checkpoint.inventory = inventory
    try:
        return parse_layout(checkpoint.run(materialize=False))
    except UnsafeGlobalError:
        return None  # graded from the inventory
    except PtfileError as exc:
        faults.append(f"{name}: {exc}" if name != METADATA_FILE else str(exc))
        return None
    finally:
        checkpoint.close()


def _scan_safetensors(folder: str, faults: list[str], notes: list[str]) -> None:
    """DCP's safetensors shards: every header checked and the chunks merged, as opening them does."""
    from ..formats.dcp import SAFETENSORS_SUFFIX, SHARDING_INFO_KEY, safetensors_layout  # lazy: DCP folders only

    try:
        layout = safetensors_layout(folder)
    except PtfileError as exc:
        faults.append(str(exc))
        return
    notes.append(f"{len({item.file for item in layout.items})} safetensors files merged by {SHARDING_INFO_KEY}; "
                 "no pickle")
    folders = folders_for(folder)
    for name in folders.names(folder):
        if not name.endswith(SAFETENSORS_SUFFIX) and folders.is_file(folders.join(folder, name)):
            notes.append(f"file {name!r} is not part of the checkpoint (scan it on its own)")


def _scan_items(folder: str, layouts: list[DcpLayout], names: list[str], inventory: list[GlobalUse],
                faults: list[str], notes: list[str]) -> None:
    from ..formats.dcp import RANK_METADATA_FILE  # lazy: DCP folders only

    folders = folders_for(folder)
    sources: dict[str, Source] = {}
    used: dict[str, list[tuple[int, int]]] = {}
    try:
        for item in dict.fromkeys(item for layout in layouts for item in layout.items):
            try:
                if item.file not in sources:
                    sources[item.file] = open_source(folders.join(folder, item.file), mmap_file=True)
                blob = SliceSource(sources[item.file], item.offset, item.length, folders.join(folder, str(item)))
            except PtfileError as exc:
                faults.append(f"item {item}: {exc}")
                continue
            used.setdefault(item.file, []).append((item.offset, item.offset + item.length))
            _, item_faults, _ = examine_checkpoint(blob, inventory, notes)
            faults.extend(item_faults)
        notes.extend(_unread_bytes(used, {name: source.size for name, source in sources.items()}))
    finally:
        for source in sources.values():
            source.close()
    values = sum(len(layout.values) for layout in layouts)
    if values:
        notes.append(f"{values} non-tensor items: torch.distributed.checkpoint.load unpickles "
                     "them with weights_only=False")
    if len(names) > 1:
        notes.append(f"{len(names)} per-rank metadata files: each rank reads its own; ptfile reads {names[0]}")
    present = folders.names(folder)
    listed = set(used) | set(names) | {name for name in present if RANK_METADATA_FILE.fullmatch(name)}
    for name in present:
        if name not in listed and folders.is_file(folders.join(folder, name)):
            notes.append(f"file {name!r} is not part of the checkpoint (scan it on its own)")


def _unread_bytes(used: dict[str, list[tuple[int, int]]], sizes: dict[str, int]) -> list[str]:
    """Byte ranges of item files no item covers: torch never reads them, so they are worth a look."""
    notes = []
    for name, ranges in sorted(used.items()):
        position = 0
        for start, end in sorted(ranges) + [(sizes[name], sizes[name])]:
            if start > position:
                notes.append(f"bytes [{position}, {start}) of {name!r} belong to no item")
            position = max(position, end)
    return notes


def _scan_whole_files(folder: str, inventory: list[GlobalUse], faults: list[str], notes: list[str]) -> None:
    from ..formats.dcp import ITEM_SUFFIX  # lazy: DCP folders only

    faults.append(f"{folder}: items not located, as its metadata could not be read; "
                  f"each {ITEM_SUFFIX} file is examined whole")
    folders = folders_for(folder)
    for name in folders.names(folder):
        if not name.endswith(ITEM_SUFFIX):
            continue
        try:
            source = open_source(folders.join(folder, name), mmap_file=True)
        except PtfileError as exc:
            faults.append(str(exc))
            continue
        try:
            faults.extend(examine_checkpoint(source, inventory, notes)[1])
        finally:
            source.close()
