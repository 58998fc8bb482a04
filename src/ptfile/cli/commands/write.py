"""``ptfile convert`` and ``ptfile edit``: checkpoints written from others."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import numpy as np

from ... import load, save
from .. import output
from ..options import (
    CHECKPOINT_HELP,
    add_command,
    add_dtype,
    add_key,
    add_output_options,
    add_strip_prefix,
    pair,
    regex,
    regex_pair,
)
from ..output import EXIT_OK, Human, safe


def register(commands: Any) -> None:
    convert = add_command(commands, "convert", "convert by extension: .pt/.bin/.pth <-> .safetensors, .npz",
                          run_convert)
    convert.add_argument("input", help=CHECKPOINT_HELP)
    convert.add_argument("output", help="the output file, in a folder that exists; its extension names the format")
    add_dtype(convert)
    add_key(convert, "convert only this nested state dict, e.g. model or state_dict")
    convert.add_argument("--max-shard-size", help="write shards of at most this size (e.g. 5GB) with an index")
    convert.add_argument("-v", "--verbose", action="store_true", help="list each value left out, not only the count")
    add_output_options(convert, progress=True)

    edit = add_command(commands, "edit", "rename, drop, keep or cast entries; written with ptfile.save", run_edit)
    edit.add_argument("input", help=CHECKPOINT_HELP)
    edit.add_argument("output", help="the .pt file to write, in a folder that exists (not written with --dry-run)")
    add_key(edit, "edit (and write) only this nested dict, e.g. state_dict")
    add_strip_prefix(edit, "e.g. module. (repeatable)")
    edit.add_argument("--rename", action="append", default=[], type=pair, metavar="OLD=NEW",
                      help="replace a key prefix")
    edit.add_argument("--rename-regex", action="append", default=[], type=regex_pair, metavar="PATTERN=REPL",
                      help="re.sub on keys")
    edit.add_argument("--keep", action="append", default=[], type=regex, metavar="REGEX",
                      help="keep only matching keys")
    edit.add_argument("--drop", action="append", default=[], type=regex, metavar="REGEX", help="drop matching keys")
    add_dtype(edit)
    edit.add_argument("--dry-run", action="store_true", help="show the changes, write nothing")
    add_output_options(edit, progress=True)


def run_convert(args: argparse.Namespace) -> int:
    from ...tools.convert import convert  # lazy: the command imports only the tools it runs

    with output.Progress("writing", output.shows_progress(args)) as progress:
        report = convert(args.input, args.output, dtype=args.dtype, key=args.key, records=args.records,
                         max_shard_size=args.max_shard_size, progress=progress)
    if args.json:
        output.print_json("convert", {"input": args.input, **report.__dict__})
        return EXIT_OK
    _render_left_out(report, verbose=args.verbose)
    Human().line(f"wrote {report.tensors:,} tensors to {', '.join(safe(w) for w in report.written)}")
    return EXIT_OK


def _render_left_out(report: Any, *, verbose: bool) -> None:
    """One line per kind of thing a conversion left out; each name with --verbose."""
    out = Human(stderr=True)
    skipped, aliases = report.skipped_values, report.dropped_aliases
    if skipped:
        listed = f": {', '.join(safe(n) for n in skipped)}" if verbose else " (--verbose lists them)"
        what = "is not a tensor" if len(skipped) == 1 else "are not tensors"
        out.line(f"note: left out {output.count(len(skipped), 'value')} that {what}{listed}")
    if aliases:
        listed = (": " + ", ".join(f"{safe(a)} -> {safe(k)}" for a, k in aliases.items())) if verbose \
            else " (--verbose lists them)"
        out.line(f"note: {output.count(len(aliases), 'tensor')} sharing memory with another written once, "
                 f"recorded in the metadata{listed}")


def _edit_bytes(target: Any, dtype: str | None) -> tuple[int, int]:
    """(bytes an edit casts, bytes it writes, roughly): the two phases of its progress bar."""

    from ...tools.convert import FLOAT_TYPES  # lazy: the command imports only the tools it runs

    arrays = [v for v in target.values() if isinstance(v, np.ndarray)] if isinstance(target, dict) else []
    return sum(a.nbytes for a in arrays if dtype and a.dtype.name in FLOAT_TYPES), sum(a.nbytes for a in arrays)


def run_edit(args: argparse.Namespace) -> int:
    from ...io.atomic import require_folder  # lazy: writing only (imports tempfile)
    from ...tools.convert import Phases, flatten, select  # lazy: the command imports only the tools it runs
    from ...tools.edit import EditRules, apply  # lazy: the command imports only the tools it runs

    rules = EditRules(strip=args.strip_prefix, rename=args.rename, rename_regex=args.rename_regex, keep=args.keep,
                      drop=args.drop, dtype=args.dtype)
    if not args.dry_run:
        require_folder(args.output)  # before the long part, as convert checks it
    tree = load(args.input, records=args.records)
    if args.key is None and not isinstance(tree, Mapping):
        # A module (a TorchScript archive, a pickled nn.Module): its tensors by their state-dict
        # names are what is edited, and written as a state dict, as convert writes them.
        cls = getattr(tree, "cls", None)
        kind = cls.path if cls is not None else type(tree).__name__
        tree = flatten(tree)[0]
        if not args.json:
            Human(stderr=True).line(f"note: {safe(args.input)} holds a {safe(kind)} object, not a dict: its "
                                    f"{output.count(len(tree), 'tensor')} are edited and written as a state dict")
    with output.Progress("writing", output.shows_progress(args)) as progress:
        phases = Phases(progress, *_edit_bytes(select(tree, args.key), args.dtype))
        edited, log = apply(tree, rules, args.key, phases.casting)
        if not args.dry_run:
            save(edited, args.output, progress=phases.writing)
    if args.json:
        output.print_json("edit", {"input": args.input, "output": args.output, "written": not args.dry_run,
                                   "changes": log})
        return EXIT_OK
    out = Human()
    for line in log:
        out.line(safe(line))
    out.line(f"{len(log)} changes; " + ("dry run, nothing written" if args.dry_run else f"wrote {safe(args.output)}"))
    return EXIT_OK
