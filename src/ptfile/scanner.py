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
:func:`ptfile.dcp.scan_folder`: its ``.metadata`` and every item of its ``.distcp`` files;
a Hugging Face shard folder (or its ``*.index.json``) as the shards its index names.

Archives ``ptfile.load`` does not read (a zip or tar that is not a checkpoint, 7z, gzip,
bzip2, xz: a checkpoint recompressed to slip past scanners) are opened with the standard
library (7z with ``py7zr``, the optional ``ptfile[archives]`` extra) and every member that
looks like a pickle or an archive is scanned in turn, down to :data:`MAX_ARCHIVE_DEPTH`
levels and within :data:`MAX_MEMBER_BYTES` / :data:`MAX_ARCHIVE_BYTES`.  Such a file is
never clean, since ``load`` refuses it: it is ``dangerous`` when a member is, else
``invalid``.  What cannot be opened (no py7zr, a member over a limit, encryption) is a fault.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import allowlist
from .engine import gc_paused
from .errors import PtfileError, UnsafeGlobalError
from .inventory import GlobalUse
from .loader import Checkpoint, Context, detached_storage, new_engine
from .source import MappedSource, Source, open_source
from .ziparchive import ZipArchive, is_zip

__all__ = ["ScanResult", "scan", "VERDICTS"]

INVALID = "invalid"
#: Verdicts from worst to best; the CLI's exit code and sorting follow this order.
VERDICTS = (allowlist.DANGEROUS, INVALID, allowlist.UNKNOWN_CLASS, allowlist.CLEAN)
#: Archives ``load`` does not read; the scanner opens them and scans their members.
_COMPRESSED_MAGICS = {b"7z\xbc\xaf\x27\x1c": "7z", b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
#: Archives inside archives are opened this many levels down (a checkpoint in a tar.gz is two).
MAX_ARCHIVE_DEPTH = 4
#: A member of such an archive is read into memory up to this size; a larger one is not examined.
MAX_MEMBER_BYTES = 512 << 20
#: All members of one archive together: a decompression bomb stops here.
MAX_ARCHIVE_BYTES = 2 << 30
#: Members of one archive examined; the rest are reported as not examined.
MAX_ARCHIVE_MEMBERS = 10_000


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
    from .legacy import TAR_BLOCK

    try:
        with open(path, "rb") as handle:
            head = handle.read(TAR_BLOCK)
    except OSError:
        return True  # let the scan report why it cannot be read
    return _worth_scanning(head)


def _worth_scanning(head: bytes) -> bool:
    """Whether bytes (the first tar block of them) start like a pickle or an archive."""
    from .legacy import is_tar
    from .loader import looks_like_pickle

    return (is_zip(head) or is_tar(head) or looks_like_pickle(head)
            or any(head.startswith(magic) for magic in _COMPRESSED_MAGICS))


def scan(src: Any, *, strict: bool = False) -> ScanResult:
    """Scan one checkpoint (path, file object, bytes, DCP or shard folder) without loading anything from it.

    Args:
        src: what to scan.
        strict: treat instances of unknown classes as dangerous.
    """
    name = os.fspath(src) if isinstance(src, (str, os.PathLike)) else getattr(src, "name", "<bytes>")
    from .dcp import is_dcp, scan_folder
    from .sharded import is_sharded

    if is_dcp(src):  # a DCP folder is one checkpoint: its .metadata and every item in it
        return scan_folder(src, strict=strict)
    if is_sharded(src):  # a shard folder or index is the shards its index names, as load reads them
        return _scan_shards(os.fspath(src), strict)
    try:
        source = open_source(src, mmap_file=True)
    except PtfileError as exc:
        return ScanResult(str(name), INVALID, "unreadable", faults=[str(exc)])
    try:
        with gc_paused():  # the engine only builds objects that stay reachable: a collection frees nothing
            return _scan_source(source, strict)
    finally:
        source.close()


def _scan_source(source: Source, strict: bool, depth: int = 0) -> ScanResult:
    from .legacy import TAR_BLOCK, is_tar

    head = source.read(0, min(source.size, TAR_BLOCK), "file header")
    inventory: list[GlobalUse] = []
    notes: list[str] = []
    if not head:
        return ScanResult(source.name, INVALID, "empty", faults=[f"{source.name}: the file is empty"])
    for magic, kind in _COMPRESSED_MAGICS.items():
        if head.startswith(magic):
            return _scan_archive(source, kind, strict, depth)
    fmt, faults, inert = _examine(source, inventory, notes)
    if fmt is None and (is_zip(head) or is_tar(head)):  # an archive, but not a checkpoint: its members
        return _scan_archive(source, "zip" if is_zip(head) else "tar", strict, depth, faults)
    if fmt in (None, "pickle"):  # not a checkpoint: every pickle in the file, as torch's non-zip path meets them
        inventory.clear()
        refused_by_load = faults if fmt == "pickle" else []  # e.g. a storage reference load cannot resolve
        fmt, faults = _scan_stream(source, inventory, notes)
        faults = [*refused_by_load, *faults]
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
    fmt, faults, inert = _examine(source, inventory, notes)
    if fmt is None:
        return ("zip" if zip_file else "pickle"), faults, None
    return fmt, faults, inert


def _examine(source: Source, inventory: list[GlobalUse], notes: list[str]) -> tuple[str | None, list[str], Any]:
    """:func:`examine_checkpoint`, with the format None when no container of the loader opens the file."""
    try:
        checkpoint = Checkpoint(source, copy=False, records=True)
    except UnsafeGlobalError as exc:  # refused while opening (a legacy file's first pickles)
        inventory.extend(use for finding in exc.findings for use in finding.uses)
        return "pickle stream", [], None
    except PtfileError as exc:
        return None, [str(exc)], None
    inventory.extend(checkpoint.inventory)  # what the container ran while opening
    checkpoint.inventory = inventory
    try:
        faults = checkpoint.examine()
    except PtfileError as exc:  # a record it reads is out of bounds: a fault; the globals met so far are still judged
        faults = [str(exc)]
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


# -- archives load does not read -------------------------------------------------------------


class _SourceFile(io.RawIOBase):
    """A read-only file object over a :class:`Source`, for the standard library's archive readers."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.source.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        count = max(0, min(len(buffer), self.source.size - self.pos))
        buffer[:count] = self.source.read(self.pos, count, "archive")
        self.pos += count
        return count


#: One member: its name, then its bytes, or None and why it was not read.
Member = tuple[str, "bytes | None", str]


def _bounded(name: str, size: int, read: Any, budget: list[int]) -> Member:
    """Read one member through ``read(limit)`` unless it is, or turns out to be, over a limit."""
    if size > MAX_MEMBER_BYTES:
        return name, None, f"declares {size} bytes, over the {MAX_MEMBER_BYTES}-byte limit; not examined"
    if size > budget[0]:
        return name, None, f"members inflate past the {MAX_ARCHIVE_BYTES}-byte limit of one archive; not examined"
    data = read(min(MAX_MEMBER_BYTES, budget[0]) + 1)
    if len(data) > min(MAX_MEMBER_BYTES, budget[0]):
        return name, None, f"inflates past the {min(MAX_MEMBER_BYTES, budget[0])}-byte limit; not examined"
    budget[0] -= len(data)
    return name, data, ""


def _stream_members(file: Any, kind: str, budget: list[int]) -> Iterator[Member]:
    import bz2
    import gzip
    import lzma

    opener = {"gzip": gzip.GzipFile, "bzip2": bz2.BZ2File, "xz": lzma.LZMAFile}[kind]
    with opener(fileobj=file) if kind == "gzip" else opener(file) as stream:
        yield _bounded("content", 0, stream.read, budget)


def _zip_members(file: Any, budget: list[int]) -> Iterator[Member]:
    import zipfile

    with zipfile.ZipFile(file) as archive:
        for info in archive.infolist():
            if not info.filename.endswith("/"):  # ZipInfo.is_dir() fails on an empty name
                with archive.open(info) as member:
                    yield _bounded(info.filename, info.file_size, member.read, budget)


def _tar_members(file: Any, budget: list[int]) -> Iterator[Member]:
    import tarfile

    with tarfile.open(fileobj=file, mode="r:") as archive:
        for info in archive:
            if info.isreg():
                member = archive.extractfile(info)
                yield _bounded(info.name, info.size, member.read if member else (lambda n: b""), budget)


def _seven_zip_members(file: Any, budget: list[int]) -> Iterator[Member]:
    try:
        import py7zr
        from py7zr.io import BytesIOFactory
    except ImportError:
        yield "", None, "reading 7z needs py7zr (pip install 'ptfile[archives]'); not examined"
        return
    with py7zr.SevenZipFile(file, "r") as archive:
        infos = [info for info in archive.list() if not info.is_directory]
        wanted, budget_left = [], budget[0]
        for info in infos:
            size = info.uncompressed or 0
            if size > MAX_MEMBER_BYTES or size > budget_left:
                yield info.filename, None, f"declares {size} bytes, over a size limit; not examined"
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
    import lzma
    import tarfile
    import zipfile
    import zlib

    budget = [MAX_ARCHIVE_BYTES]
    file = _SourceFile(source)
    readers = {"zip": lambda: _zip_members(file, budget), "tar": lambda: _tar_members(file, budget),
               "7z": lambda: _seven_zip_members(file, budget)}
    members = readers[kind]() if kind in readers else _stream_members(file, kind, budget)
    # The readers raise their own errors for hostile input; each ends the walk as a fault.
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError, RuntimeError, NotImplementedError,
                                               zipfile.BadZipFile, tarfile.TarError, zlib.error, lzma.LZMAError, KeyError)
    try:
        import py7zr.exceptions

        errors += (py7zr.exceptions.ArchiveError, py7zr.exceptions.UnsupportedCompressionMethodError)
    except ImportError:
        pass
    try:
        for count, member in enumerate(members):
            if count == MAX_ARCHIVE_MEMBERS:
                yield "", None, f"more than {MAX_ARCHIVE_MEMBERS} members; the rest were not examined"
                return
            yield member
    except errors as exc:
        yield "", None, f"the {kind} reader stopped: {type(exc).__name__}: {exc}"


def _scan_archive(source: Source, kind: str, strict: bool, depth: int, faults: list[str] | None = None) -> ScanResult:
    """A zip, tar, 7z or compressed file load does not read: never clean, dangerous if a member is."""
    faults = [f"{source.name}: a {kind} archive that ptfile.load does not read; its members were scanned",
              *(faults or [])]
    results: list[ScanResult] = []
    notes: list[str] = []
    if depth >= MAX_ARCHIVE_DEPTH:
        faults.append(f"{source.name}: archives nested more than {MAX_ARCHIVE_DEPTH} deep; not examined")
        return combine_results(source.name, kind, results, faults, notes)
    for name, data, why in _archive_members(source, kind):
        where = f"{source.name}!{name}" if name else source.name
        if data is None:
            faults.append(f"{where}: {why}")
        elif _worth_scanning(data[:512]):
            results.append(_scan_source(MappedSource(data, where), strict, depth + 1))
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
    if faults and verdict != allowlist.DANGEROUS:
        verdict = INVALID
    return ScanResult(name, verdict, fmt, findings, faults, notes, inventory)


# -- shard folders -----------------------------------------------------------------------------


def _scan_shards(path: str, strict: bool) -> ScanResult:
    """The shards a Hugging Face index names, each scanned; the index's own checks as load makes them."""
    from .sharded import ShardedCheckpoint, find_index, read_index

    try:
        index = find_index(path) if os.path.isdir(path) else path
        weight_map = read_index(index)
    except PtfileError as exc:
        return ScanResult(path, INVALID, "sharded", faults=[str(exc)])
    folder = os.path.dirname(os.path.abspath(index))
    shards = list(dict.fromkeys(weight_map.values()))
    results = [_scan_shard(os.path.join(folder, shard), strict) for shard in shards]
    faults: list[str] = []
    if all(r.verdict in (allowlist.CLEAN, allowlist.UNKNOWN_CLASS) for r in results):
        # every name the index places in a shard must be there: load refuses the folder otherwise
        with ShardedCheckpoint(index, records=True) as handle:
            for shard in shards:
                try:
                    handle.shard(shard)
                except PtfileError as exc:
                    faults.append(str(exc))
    return combine_results(path, "sharded", results, faults, [f"shard index {os.path.basename(index)!r}"])


def _scan_shard(path: str, strict: bool) -> ScanResult:
    if not path.endswith(".safetensors"):
        return scan(path, strict=strict)
    from .stformat import read_safetensors

    try:
        read_safetensors(path, mmap=True)  # no pickle in it: only the header can be wrong
    except PtfileError as exc:
        return ScanResult(path, INVALID, "safetensors", faults=[str(exc)])
    return ScanResult(path, allowlist.CLEAN, "safetensors")
