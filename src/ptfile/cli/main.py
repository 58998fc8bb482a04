"""The ``ptfile`` command: a thin layer over the library API.

Every subcommand prints a human view by default and one JSON document with
``--json`` (stdout only; messages go to stderr).  Bad input ends in a one-line
error and a non-zero exit code; ``--debug`` shows the traceback instead.

Exit codes:
    0  success (``scan``: every file clean or only unknown classes)
    1  ``scan``: a file is dangerous (a known code-execution gadget) or calls an unknown
       global (``unknown-call``: code torch.load(weights_only=False) would run); this wins
       over 2, so a payload hidden before a parse fault still fails the scan with 1
    2  usage error, unreadable or invalid input (``scan``: a file could not be scanned)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import __version__, load, save
from ..constants import Limits, Verdict, applying, limits_in_force
from ..errors import PtfileError
from ..policy.allowlist import Allow

EXIT_OK = 0
EXIT_FOUND = 1
EXIT_ERROR = 2
#: Version of the JSON documents printed with --json; bumped when a field changes meaning.
JSON_SCHEMA_VERSION = 1

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def safe(text: Any) -> str:
    """Escape control characters from names in a file, so they cannot drive the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"  # pragma: no cover


def _console(stderr: bool = False) -> Any:
    from rich.console import Console  # lazy: rich is heavy: a command imports only what it prints with

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 200  # pipes and files: never truncate numbers or names
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def _print_json(document: dict) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")


# -- inspect -------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..tools.inspection import describe  # lazy: each command imports only the modules it runs

    report = describe(args.file, records=args.records)
    if args.json:
        _print_json({"schema": JSON_SCHEMA_VERSION, "command": "inspect", **report})
        return EXIT_OK
    fold = False if args.all else True if args.collapse else None
    _render_inspect(report, tree=args.tree, fold=fold)
    return EXIT_OK


#: A listing longer than this folds its repeated numbered blocks unless ``--all`` is given.
FOLD_ABOVE_ROWS = 40
#: Tables longer than this are printed as plain aligned text: rich lays out every cell of a
#: table before printing its first line, which takes seconds for thousands of rows.
RICH_TABLE_MAX_ROWS = 200
_TENSOR_COLUMNS = ("name", "dtype", "shape", "strides", "bytes", "shared with")


def _render_inspect(report: dict, *, tree: bool, fold: bool | None) -> None:
    """The human view; ``fold``: fold numbered blocks (None: when the listing is long)."""
    from rich.text import Text  # lazy: rich is heavy: a command imports only what it prints with

    from ..tools.inspection import fold_rows  # lazy: each command imports only the modules it runs

    console = _console()
    console.print(Text(f"{safe(report['path'])}: {report['format']} checkpoint", style="bold"))
    details = [f"{k}={safe(v)}" for k, v in report["container"].items() if v is not None and k != "records"]
    if details:
        console.print(Text("  " + ", ".join(details)))
    tensors = report["tensors"]
    if fold or (fold is None and len(tensors) > FOLD_ABOVE_ROWS):
        tensors = fold_rows(tensors)
    cells = [_tensor_cells(row) for row in tensors]
    if len(cells) > RICH_TABLE_MAX_ROWS:
        console.file.flush()
        _print_plain_table(_TENSOR_COLUMNS, cells)
    elif cells:
        _print_rich_table(console, _TENSOR_COLUMNS, cells)
    if tree:
        _render_tree(console, report["values"])
    elif report["values"]:
        console.print(Text("other values:", style="bold"))
        for value in report["values"][:50]:
            console.print(Text(f"  {safe(value['name'])} = {safe(value['summary'])}"))
        if len(report["values"]) > 50:
            console.print(Text(f"  ... and {len(report['values']) - 50} more"))
    totals = report["totals"]
    by_dtype = ", ".join(f"{k} {human_bytes(v)}" for k, v in totals["bytes_by_dtype"].items())
    elements = totals.get("elements", {})
    others = "".join(f", {elements[kind]:,} {label}" for kind, label in
                     (("buffers", "in buffers and other tensors"), ("optimizer", "in optimizer state")) if elements.get(kind))
    console.print(
        Text(
            f"{totals['tensors']:,} tensors, {totals['parameters']:,} parameters{others}, "
            f"{human_bytes(totals['bytes'])} stored ({by_dtype or 'no data'})"
        )
    )
    if report["unknown_classes"]:
        console.print(Text("unknown classes: " + ", ".join(safe(c) for c in report["unknown_classes"])))
    console.print(Text(f"scan: {report['scan']['verdict']}", style=_verdict_style(report["scan"]["verdict"])))


def _render_tree(console: Any, values: list[dict]) -> None:
    from rich.text import Text  # lazy: rich is heavy: a command imports only what it prints with
    from rich.tree import Tree  # lazy: rich is heavy: a command imports only what it prints with

    root = Tree("values")
    nodes: dict[str, Any] = {"": root}
    for value in values:
        parts = value["name"].split(".")
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            if prefix not in nodes:
                nodes[prefix] = nodes[".".join(parts[: depth - 1])].add(Text(safe(parts[depth - 1])))
        parent = nodes[".".join(parts[:-1])]
        parent.add(Text(f"{safe(parts[-1])} = {safe(value['summary'])}"))
    console.print(root)


def _tensor_cells(row: dict) -> list[str]:
    """One row of the tensor table as escaped text; a folded row's name ends in its count."""
    count = row.get("count", 1)
    return [
        safe(row["name"]) + (f"  x{count}" if count > 1 else ""),
        row["torch_dtype"] if "torch_dtype" in row else row["dtype"],  # quantized types by torch's name
        str(tuple(row["shape"])),
        "" if row.get("contiguous", True) else str(tuple(row["strides"])),
        human_bytes(row["nbytes"]),
        safe(", ".join(row.get("shared_with", []))),
    ]


def _print_rich_table(console: Any, columns: Sequence[str], cells: list[list[str]]) -> None:
    from rich.table import Table  # lazy: rich is heavy: a command imports only what it prints with
    from rich.text import Text  # lazy: rich is heavy: a command imports only what it prints with

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in cells:
        table.add_row(*(Text(cell) for cell in row))
    console.print(table)


def _print_plain_table(columns: Sequence[str], cells: list[list[str]]) -> None:
    """Columns padded to their widest cell, one write: linear in the rows, whatever their number."""
    widths = [max(len(column), *(len(row[i]) for row in cells)) for i, column in enumerate(columns)]
    lines = [" ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [list(columns), *cells]]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


#: How each verdict is shown in a terminal.
_VERDICT_STYLES = {Verdict.CLEAN: "green", Verdict.UNKNOWN_CLASS: "yellow", Verdict.INVALID: "magenta",
                   Verdict.UNKNOWN_CALL: "red", Verdict.DANGEROUS: "bold red"}


def _verdict_style(verdict: str) -> str:
    return _VERDICT_STYLES[Verdict(verdict)]  # also the word itself, as a JSON report holds it


# -- scan ----------------------------------------------------------------------


def cmd_scan(args: argparse.Namespace) -> int:
    from ..scanning.scanner import (  # lazy: each command imports only the modules it runs
        FAILING,
        VERDICTS,
        walk_for_scan,
    )

    walk = walk_for_scan(args.paths, recursive=args.recursive, include=args.include, exclude=args.exclude)
    files = walk.files
    if not files:
        if not args.json:
            _render_passed_over(walk.passed_over, verbose=args.verbose)
        _error("nothing to scan")
        return EXIT_ERROR
    if args.jobs > 1 or args.scheduler:
        from ..tools.fleet import connect, scan_many  # lazy: each command imports only the modules it runs

        client = connect(args.scheduler) if args.scheduler else None
        try:
            results = scan_many(files, strict=args.strict, jobs=args.jobs, client=client, allow=args.allow,
                                verify=args.verify, limits=limits_in_force())
        finally:
            if client is not None:
                client.close()
    else:
        results = _scan_serially(files, args.strict, Allow(args.allow), args.verify,
                                 show_progress=len(files) > 1 and _shows_progress(args))
    if args.json:
        counts = {v.value: sum(r.verdict == v for r in results) for v in reversed(VERDICTS)}
        _print_json({"schema": JSON_SCHEMA_VERSION, "command": "scan", "summary": counts,
                     "files": [r.to_dict() for r in results],
                     "passed_over": [p.to_dict() for p in walk.passed_over]})
    else:
        _render_scan(results)
        _render_passed_over(walk.passed_over, verbose=args.verbose)
    if any(r.verdict in FAILING for r in results):
        return EXIT_FOUND
    if any(r.verdict == Verdict.INVALID for r in results):
        return EXIT_ERROR
    return EXIT_OK


def _scan_serially(files: list[str], strict: bool, allow: Any, verify: bool, *, show_progress: bool) -> list:
    from ..scanning.scanner import scan  # lazy: each command imports only the modules it runs

    results = []
    with _Progress("scanning", show_progress) as progress:
        for index, path in enumerate(files, 1):
            results.append(scan(path, strict=strict, allow=allow, verify=verify))
            progress(index, len(files))
    return results


def _render_scan(results: list) -> None:
    from rich.text import Text  # lazy: rich is heavy: a command imports only what it prints with

    console = _console()
    for result in results:
        line = Text(f"{safe(result.path)}: ")
        line.append(result.verdict, style=_verdict_style(result.verdict))
        line.append(f" ({result.format})")
        console.print(line)
        for finding in result.findings:
            console.print(Text(f"  {safe(finding.describe())}"))
        for fault in result.faults:
            console.print(Text(f"  fault: {safe(fault)}"))
        for note in result.notes:
            console.print(Text(f"  note: {safe(note)}"))
    counts = {v: sum(r.verdict == v for r in results) for v in Verdict}
    console.print(Text(f"scanned {_count(len(results), 'file')}: {counts[Verdict.DANGEROUS]} dangerous, "
                       f"{counts[Verdict.UNKNOWN_CALL]} calling unknown globals, "
                       f"{counts[Verdict.INVALID]} invalid, "
                       f"{counts[Verdict.UNKNOWN_CLASS]} with unknown classes"))


def _render_passed_over(passed_over: list, *, verbose: bool) -> None:
    """What a folder scan did not judge: each path and why with --verbose, else how many."""
    if not passed_over:
        return
    from rich.text import Text  # lazy: rich is heavy: a command imports only what it prints with

    console = _console()
    if not verbose:
        console.print(Text(f"passed over {_count(len(passed_over), 'path')} (--verbose lists them and why)"))
        return
    console.print(Text(f"passed over {_count(len(passed_over), 'path')}:"))
    for item in passed_over:
        console.print(Text(f"  {safe(item.path)}: {safe(item.reason)}"))


# -- diff / stats / match ------------------------------------------------------


def _count(number: int, noun: str) -> str:
    """``1 file``, ``2 files``: a count with its noun in the right number."""
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"


def _shows_progress(args: argparse.Namespace) -> bool:
    """Whether the command may show a progress bar: never with --json or --quiet."""
    return not (args.json or args.quiet)


class _Progress:
    """The one progress bar of every command: on stderr, only on a terminal, only once work takes a while.

    Called as ``progress(done, total)``; work that ends within ``DELAY_SECONDS`` shows nothing.
    """

    DELAY_SECONDS = 1.0

    def __init__(self, label: str, enabled: bool) -> None:
        self._clock = time.monotonic
        self._start = self._clock()
        self._enabled = enabled and sys.stderr.isatty()
        self._label = label
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled or self._clock() - self._start < self.DELAY_SECONDS:
            return
        if self._bar is None:
            from rich.progress import Progress  # lazy: rich is heavy: a command imports only what it prints with

            self._bar = Progress(console=_console(stderr=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self._label, total=total)
        self._bar.update(self._task, completed=done, total=total)  # a later phase may know the total better

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def cmd_diff(args: argparse.Namespace) -> int:
    from ..tools.compare import diff  # lazy: each command imports only the modules it runs

    with _Progress("comparing", _shows_progress(args)) as progress:
        result = diff(args.a, args.b, atol=args.atol, rtol=args.rtol, strip=args.strip_prefix,
                      records=args.records, progress=progress)
    if args.json:
        _print_json({"schema": JSON_SCHEMA_VERSION, "command": "diff", "a": args.a, "b": args.b, **result.to_dict()})
    else:
        _render_diff(result)
    return EXIT_OK if result.equal else EXIT_FOUND


def _render_diff(result: Any) -> None:
    from rich.text import Text  # lazy: rich is heavy: a command imports only what it prints with

    console = _console()
    for name in result.only_a:
        console.print(Text(f"- {safe(name)}", style="red"))
    for name in result.only_b:
        console.print(Text(f"+ {safe(name)}", style="green"))
    changed = 0
    for item in result.tensors:
        if item.status in ("dtype", "shape"):
            console.print(Text(f"! {safe(item.name)}: {item.status} {item.a} -> {item.b}", style="yellow"))
        elif item.status == "different":
            console.print(Text(f"! {safe(item.name)}: max abs diff {item.max_abs:.6g}, max rel diff "
                               f"{item.max_rel:.6g}, {item.mismatched:,} elements differ", style="yellow"))
        else:
            continue
        changed += 1
    equal = sum(item.status == "equal" for item in result.tensors)
    close = sum(item.status == "close" for item in result.tensors)
    console.print(Text(f"{len(result.only_a)} only in A, {len(result.only_b)} only in B, "
                       f"{changed} changed, {equal} equal, {close} equal within tolerance"))


def cmd_stats(args: argparse.Namespace) -> int:
    from ..tools.statistics import checkpoint_stats  # lazy: each command imports only the modules it runs

    with _Progress("reading", _shows_progress(args)) as progress:
        rows = checkpoint_stats(args.file, records=args.records, progress=progress)
    if args.json:
        _print_json({"schema": JSON_SCHEMA_VERSION, "command": "stats", "path": args.file,
                     "tensors": [r.to_dict() for r in rows]})
        return EXIT_OK
    from rich.table import Table  # lazy: rich is heavy: a command imports only what it prints with
    from rich.text import Text  # lazy: rich is heavy: a command imports only what it prints with

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("name", "dtype", "count", "min", "max", "mean", "std", "nan", "inf", "zeros"):
        table.add_column(column, justify="left" if column in ("name", "dtype") else "right")
    number = lambda v: "-" if v is None else f"{v:.6g}"  # noqa: E731
    for r in rows:
        table.add_row(Text(safe(r.name)), r.dtype, f"{r.count:,}", number(r.min), number(r.max), number(r.mean),
                      number(r.std), f"{r.nan:,}", f"{r.inf:,}", f"{r.zeros:,}")
    _console().print(table)
    return EXIT_OK


def cmd_match(args: argparse.Namespace) -> int:
    from ..tools.compare import match  # lazy: each command imports only the modules it runs

    result = match(args.file, args.against, records=args.records, strip=args.strip_prefix, key=args.key)
    if args.json:
        _print_json({"schema": JSON_SCHEMA_VERSION, "command": "match", **result.to_dict()})
        return EXIT_OK if result.ok else EXIT_FOUND
    from rich.text import Text  # lazy: rich is heavy: a command imports only what it prints with

    console = _console()
    for title, names in (("missing keys", result.missing), ("unexpected keys", result.unexpected)):
        if names:
            console.print(Text(f"{title} ({len(names)}):", style="bold"))
            for name in names[:50]:
                console.print(Text(f"  {safe(name)}"))
            if len(names) > 50:
                console.print(Text(f"  ... and {len(names) - 50} more"))
    for item in result.shape_mismatch:
        console.print(Text(f"shape mismatch: {safe(item['name'])}: expected {tuple(item['expected'])}, "
                           f"found {tuple(item['found'])}"))
    for item in result.dtype_mismatch:
        console.print(Text(f"dtype differs: {safe(item['name'])}: expected {item['expected']}, found {item['found']}"))
    for hint in result.suggestions:
        console.print(Text(f"hint: {safe(hint)}", style="cyan"))
    if result.suggestions:
        console.print(Text("hint: --strip-prefix PREFIX removes a prefix; --key NAME compares a nested state dict",
                           style="cyan"))
    console.print(Text("matches: load_state_dict(strict=True) would succeed" if result.ok
                       else "does not match", style="green" if result.ok else "bold red"))
    return EXIT_OK if result.ok else EXIT_FOUND


# -- convert / edit ------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    from ..tools.convert import convert  # lazy: each command imports only the modules it runs

    with _Progress("writing", _shows_progress(args)) as progress:
        report = convert(args.input, args.output, dtype=args.dtype, key=args.key, records=args.records,
                         max_shard_size=args.max_shard_size, progress=progress)
    document = {"schema": JSON_SCHEMA_VERSION, "command": "convert", "input": args.input, **report.__dict__}
    if args.json:
        _print_json(document)
        return EXIT_OK
    _render_left_out(report, verbose=args.verbose)
    _console().print(f"wrote {report.tensors:,} tensors to {', '.join(safe(w) for w in report.written)}", markup=False)
    return EXIT_OK


def _edit_bytes(target: Any, dtype: str | None) -> tuple[int, int]:
    """(bytes an edit casts, bytes it writes, roughly): the two phases of its progress bar."""
    from ..tools.convert import FLOAT_TYPES  # lazy: each command imports only the modules it runs

    arrays = [v for v in target.values() if isinstance(v, np.ndarray)] if isinstance(target, dict) else []
    return sum(a.nbytes for a in arrays if dtype and a.dtype.name in FLOAT_TYPES), sum(a.nbytes for a in arrays)


def _render_left_out(report: Any, *, verbose: bool) -> None:
    """One line per kind of thing a conversion left out; each name with --verbose."""
    console = _console(stderr=True)
    skipped, aliases = report.skipped_values, report.dropped_aliases
    if skipped:
        listed = f": {', '.join(safe(n) for n in skipped)}" if verbose else " (--verbose lists them)"
        what = "is not a tensor" if len(skipped) == 1 else "are not tensors"
        console.print(f"note: left out {_count(len(skipped), 'value')} that {what}{listed}", markup=False)
    if aliases:
        listed = (": " + ", ".join(f"{safe(a)} -> {safe(k)}" for a, k in aliases.items())) if verbose \
            else " (--verbose lists them)"
        console.print(f"note: {_count(len(aliases), 'tensor')} sharing memory with another written once, "
                      f"recorded in the metadata{listed}", markup=False)


def cmd_edit(args: argparse.Namespace) -> int:
    from ..io.atomic import require_folder  # lazy: writing only; its tempfile import is not for the other commands
    from ..tools.convert import Phases, select  # lazy: each command imports only the modules it runs
    from ..tools.edit import EditRules, apply  # lazy: each command imports only the modules it runs

    rules = EditRules(
        strip=args.strip_prefix,
        rename=args.rename,
        rename_regex=args.rename_regex,
        keep=args.keep,
        drop=args.drop,
        dtype=args.dtype,
    )
    if not args.dry_run:
        require_folder(args.output)  # before the long part, as convert checks it
    tree = load(args.input, records=args.records)
    with _Progress("writing", _shows_progress(args)) as progress:
        phases = Phases(progress, *_edit_bytes(select(tree, args.key), args.dtype))
        edited, log = apply(tree, rules, args.key, phases.casting)
        if not args.dry_run:
            save(edited, args.output, progress=phases.writing)
    if args.json:
        _print_json({"schema": JSON_SCHEMA_VERSION, "command": "edit", "input": args.input, "output": args.output,
                     "written": not args.dry_run, "changes": log})
        return EXIT_OK
    console = _console()
    for line in log:
        console.print(safe(line), markup=False)
    console.print(f"{len(log)} changes; " + ("dry run, nothing written" if args.dry_run else f"wrote {safe(args.output)}"),
                  markup=False)
    return EXIT_OK


# -- options -------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, as every other error of the command."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(EXIT_ERROR, f"{self.prog}: error: {safe(message)} (see {self.prog} --help)\n")


def _output_options(parser: argparse.ArgumentParser, *, records: bool = True, progress: bool = False) -> None:
    """The options commands share, defined once: --json, --records and (where work can take long) --quiet."""
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout (numbers as numbers); messages stay on stderr")
    if records:
        parser.add_argument("--records", action="store_true",
                            help="read instances of classes ptfile does not know as inert records "
                                 "instead of refusing the file (nothing from the file is ever run)")
    if progress:
        parser.add_argument("-q", "--quiet", action="store_true",
                            help="show no progress bar (shown on a terminal when the work takes over a second)")


def _float_dtype(text: str) -> str:
    """A --dtype value, checked before any file is read."""
    from ..tools.convert import float_dtype  # lazy: each command imports only the modules it runs

    try:
        float_dtype(text)
    except PtfileError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _regex(text: str) -> str:
    """A regular expression option value, compiled once here so a mistake names the option."""
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression: {exc}") from None
    return text


def _pair(text: str) -> tuple[str, str]:
    """``OLD=NEW`` of --rename."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"takes OLD=NEW, got {text!r}")
    old, new = text.split("=", 1)
    return old, new


def _regex_pair(text: str) -> tuple[str, str]:
    """``PATTERN=REPLACEMENT`` of --rename-regex, the pattern compiled here."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"takes PATTERN=REPLACEMENT, got {text!r}")
    pattern, replacement = text.split("=", 1)
    return _regex(pattern), replacement


# -- entry point ---------------------------------------------------------------


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, PtfileErrorType()):
        return f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
    if isinstance(exc, KeyError):
        return str(exc.args[0]) if exc.args else "missing key"
    return str(exc)


def PtfileErrorType() -> type:  # noqa: N802 - a lazy import of the error class
    return PtfileError


def _error(message: str) -> None:
    sys.stderr.write(f"ptfile: error: {safe(message)}\n")


CHECKPOINT_HELP = "a checkpoint: .pt/.pth/.bin/.ckpt, .safetensors, .npz, a shard index or folder, or a DCP folder"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ptfile", description="Read, inspect and scan PyTorch checkpoints without torch.")
    parser.add_argument("--version", action="version", version=f"ptfile {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--limit", action="append", default=[], type=_limit, metavar="NAME=N",
                        help="set one of ptfile's limits for this command, e.g. max_safetensors_header_bytes=200000000 "
                             f"(repeatable; NAME is one of {', '.join(Limits._fields)})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    inspect = commands.add_parser("inspect", help="what is in a checkpoint (reads no tensor bytes)")
    inspect.add_argument("file", help=CHECKPOINT_HELP)
    inspect.add_argument("--tree", action="store_true", help="show non-tensor values as a tree")
    listing = inspect.add_mutually_exclusive_group()
    listing.add_argument("--all", action="store_true",
                         help=f"list every tensor (a listing of more than {FOLD_ABOVE_ROWS} folds numbered blocks)")
    listing.add_argument("--collapse", action="store_true",
                         help="fold numbered blocks (layers.{0..31}.weight  x32) even in a short listing")
    _output_options(inspect)
    inspect.set_defaults(func=cmd_inspect)

    scan = commands.add_parser("scan", help="look for malicious content without loading it")
    scan.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to scan (folders: model-like files)")
    scan.add_argument("--strict", action="store_true", help="treat unknown calls and classes as dangerous")
    scan.add_argument("--allow", action="append", default=[], type=_allow_pattern, metavar="PATTERN",
                      help="accept a third-party global, module.name or module.* (repeatable); never a known gadget")
    scan.add_argument("--verify", action="store_true",
                      help="also read every tensor record and check its CRC-32 (reads the whole file)")
    scan.add_argument("-r", "--recursive", action="store_true", help="scan folders recursively")
    scan.add_argument("-v", "--verbose", action="store_true",
                      help="list each path a folder scan passed over, and why (--json always lists them)")
    scan.add_argument("--include", action="append", default=[], type=_regex, metavar="REGEX",
                      help="only paths matching (repeatable)")
    scan.add_argument("--exclude", action="append", default=[], type=_regex, metavar="REGEX",
                      help="skip paths matching (repeatable)")
    scan.add_argument("-j", "--jobs", type=int, default=1, help="scan with this many processes")
    scan.add_argument("--scheduler", metavar="ADDRESS", help="scan on a Dask cluster (tcp://host:8786)")
    _output_options(scan, records=False, progress=True)
    scan.set_defaults(func=cmd_scan)

    diff = commands.add_parser("diff", help="compare two checkpoints (exit 1 when they differ)")
    diff.add_argument("a", metavar="A", help="the first checkpoint (" + CHECKPOINT_HELP.split(": ", 1)[1] + ")")
    diff.add_argument("b", metavar="B", help="the second checkpoint, compared name by name with A")
    diff.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default: exact)")
    diff.add_argument("--rtol", type=float, default=0.0, help="relative tolerance (default: exact)")
    diff.add_argument("--strip-prefix", action="append", default=[], metavar="PREFIX",
                      help="ignore this key prefix on both sides, e.g. module. (repeatable)")
    _output_options(diff, progress=True)
    diff.set_defaults(func=cmd_diff)

    stats = commands.add_parser("stats", help="min, max, mean, std, NaN/Inf/zero counts per tensor")
    stats.add_argument("file", help=CHECKPOINT_HELP)
    _output_options(stats, progress=True)
    stats.set_defaults(func=cmd_stats)

    match = commands.add_parser("match", help="would load_state_dict(strict=True) accept FILE? (exit 1 if not)")
    match.add_argument("file", help="the checkpoint to check (" + CHECKPOINT_HELP.split(": ", 1)[1] + ")")
    match.add_argument("--against", required=True, metavar="REF",
                       help="what the model expects: a checkpoint, JSON of names and shapes, "
                            "or the output of ptfile inspect --json")
    match.add_argument("--key", help="check only this nested state dict of FILE, e.g. state_dict or model")
    match.add_argument("--strip-prefix", action="append", default=[], metavar="PREFIX",
                       help="remove this prefix from FILE's names first, e.g. module. (repeatable)")
    _output_options(match)
    match.set_defaults(func=cmd_match)

    convert = commands.add_parser("convert", help="convert by extension: .pt/.bin/.pth <-> .safetensors, .npz")
    convert.add_argument("input", help=CHECKPOINT_HELP)
    convert.add_argument("output", help="the output file, in a folder that exists; its extension names the format")
    convert.add_argument("--dtype", type=_float_dtype, help="cast floating-point tensors, e.g. float32 or bfloat16")
    convert.add_argument("--key", help="convert only this nested state dict, e.g. model or state_dict")
    convert.add_argument("--max-shard-size", help="write shards of at most this size (e.g. 5GB) with an index")
    convert.add_argument("-v", "--verbose", action="store_true", help="list each value left out, not only the count")
    _output_options(convert, progress=True)
    convert.set_defaults(func=cmd_convert)

    edit = commands.add_parser("edit", help="rename, drop, keep or cast entries; written with ptfile.save")
    edit.add_argument("input", help=CHECKPOINT_HELP)
    edit.add_argument("output", help="the .pt file to write, in a folder that exists (not written with --dry-run)")
    edit.add_argument("--key", help="edit (and write) only this nested dict, e.g. state_dict")
    edit.add_argument("--strip-prefix", action="append", default=[], metavar="PREFIX", help="e.g. module. (repeatable)")
    edit.add_argument("--rename", action="append", default=[], type=_pair, metavar="OLD=NEW",
                      help="replace a key prefix")
    edit.add_argument("--rename-regex", action="append", default=[], type=_regex_pair, metavar="PATTERN=REPL",
                      help="re.sub on keys")
    edit.add_argument("--keep", action="append", default=[], type=_regex, metavar="REGEX",
                      help="keep only matching keys")
    edit.add_argument("--drop", action="append", default=[], type=_regex, metavar="REGEX", help="drop matching keys")
    edit.add_argument("--dtype", type=_float_dtype, help="cast floating-point tensors, e.g. float32 or bfloat16")
    edit.add_argument("--dry-run", action="store_true", help="show the changes, write nothing")
    _output_options(edit, progress=True)
    edit.set_defaults(func=cmd_edit)
    return parser


def _limit(text: str) -> tuple[str, int]:
    """``NAME=N`` of --limit: a field of :class:`ptfile.Limits` and its value in bytes (or count)."""
    name, sep, value = text.partition("=")
    if not sep or name not in Limits._fields:
        raise argparse.ArgumentTypeError(f"takes NAME=N with NAME one of {', '.join(Limits._fields)}, got {text!r}")
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{name} takes a whole number, got {value!r}")
    return name, int(value)


def _allow_pattern(text: str) -> str:
    """An --allow pattern, checked as the library checks it (a usage error otherwise)."""
    try:
        Allow([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_ERROR
    try:
        with applying(Limits(**dict(args.limit))):
            return args.func(args)
    except (PtfileError, OSError, KeyError, ValueError, argparse.ArgumentTypeError, re.error) as exc:
        if args.debug:
            raise
        _error(_message(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
