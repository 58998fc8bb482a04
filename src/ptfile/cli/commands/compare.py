"""``ptfile diff``, ``ptfile match`` and ``ptfile stats``: checkpoints compared, and their values summed up."""

from __future__ import annotations

import argparse
from typing import Any

from .. import output
from ..options import CHECKPOINT_HELP, CHECKPOINT_KINDS, add_command, add_key, add_output_options, add_strip_prefix
from ..output import EXIT_FOUND, EXIT_OK, Human, safe

#: Missing or unexpected keys of ``match`` listed before the rest are only counted.
MAX_KEYS_LISTED = 50
STATS_COLUMNS = ("name", "dtype", "count", "min", "max", "mean", "std", "nan", "inf", "zeros")


def register(commands: Any) -> None:
    diff = add_command(commands, "diff", "compare two checkpoints (exit 1 when they differ)", run_diff)
    diff.add_argument("a", metavar="A", help=f"the first checkpoint ({CHECKPOINT_KINDS})")
    diff.add_argument("b", metavar="B", help="the second checkpoint, compared name by name with A")
    diff.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default: exact)")
    diff.add_argument("--rtol", type=float, default=0.0, help="relative tolerance (default: exact)")
    add_strip_prefix(diff, "ignore this key prefix on both sides, e.g. module. (repeatable)")
    add_output_options(diff, progress=True)

    stats = add_command(commands, "stats", "min, max, mean, std, NaN/Inf/zero counts per tensor", run_stats)
    stats.add_argument("file", help=CHECKPOINT_HELP)
    add_output_options(stats, progress=True)

    match = add_command(commands, "match", "would load_state_dict(strict=True) accept FILE? (exit 1 if not)",
                        run_match)
    match.add_argument("file", help=f"the checkpoint to check ({CHECKPOINT_KINDS})")
    match.add_argument("--against", required=True, metavar="REF",
                       help="what the model expects: a checkpoint, JSON of names and shapes, "
                            "or the output of ptfile inspect --json")
    add_key(match, "check only this nested state dict of FILE, e.g. state_dict or model")
    add_strip_prefix(match, "remove this prefix from FILE's names first, e.g. module. (repeatable)")
    add_output_options(match)


def run_diff(args: argparse.Namespace) -> int:
    from ...tools.compare import diff  # lazy: the command imports only the tools it runs

    with output.Progress("comparing", output.shows_progress(args)) as progress:
        result = diff(args.a, args.b, atol=args.atol, rtol=args.rtol, strip=args.strip_prefix,
                      records=args.records, progress=progress)
    if args.json:
        output.print_json("diff", {"a": args.a, "b": args.b, **result.to_dict()})
    else:
        _render_diff(result)
    return EXIT_OK if result.equal else EXIT_FOUND


def _render_diff(result: Any) -> None:
    out = Human()
    for name in result.only_a:
        out.line(f"- {safe(name)}", style="red")
    for name in result.only_b:
        out.line(f"+ {safe(name)}", style="green")
    changed = 0
    for item in result.tensors:
        if item.status in ("dtype", "shape"):
            out.line(f"! {safe(item.name)}: {item.status} {item.a} -> {item.b}", style="yellow")
        elif item.status == "different":
            out.line(f"! {safe(item.name)}: max abs diff {item.max_abs:.6g}, max rel diff "
                     f"{item.max_rel:.6g}, {item.mismatched:,} elements differ", style="yellow")
        else:
            continue
        changed += 1
    equal = sum(item.status == "equal" for item in result.tensors)
    close = sum(item.status == "close" for item in result.tensors)
    out.line(f"{len(result.only_a)} only in A, {len(result.only_b)} only in B, "
             f"{changed} changed, {equal} equal, {close} equal within tolerance")


def run_stats(args: argparse.Namespace) -> int:
    from ...tools.statistics import checkpoint_stats  # lazy: the command imports only the tools it runs

    with output.Progress("reading", output.shows_progress(args)) as progress:
        rows = checkpoint_stats(args.file, records=args.records, progress=progress)
    if args.json:
        output.print_json("stats", {"path": args.file, "tensors": [r.to_dict() for r in rows]})
        return EXIT_OK
    number = lambda v: "-" if v is None else f"{v:.6g}"  # noqa: E731
    cells = [[safe(r.name), r.dtype, f"{r.count:,}", number(r.min), number(r.max), number(r.mean), number(r.std),
              f"{r.nan:,}", f"{r.inf:,}", f"{r.zeros:,}"] for r in rows]
    Human().table(STATS_COLUMNS, cells, right=STATS_COLUMNS[2:])
    return EXIT_OK


def run_match(args: argparse.Namespace) -> int:
    from ...tools.compare import match  # lazy: the command imports only the tools it runs

    result = match(args.file, args.against, records=args.records, strip=args.strip_prefix, key=args.key)
    if args.json:
        output.print_json("match", result.to_dict())
    else:
        _render_match(result)
    return EXIT_OK if result.ok else EXIT_FOUND


def _render_match(result: Any) -> None:
    out = Human()
    for title, names in (("missing keys", result.missing), ("unexpected keys", result.unexpected)):
        if names:
            out.line(f"{title} ({len(names)}):", style="bold")
            for name in names[:MAX_KEYS_LISTED]:
                out.line(f"  {safe(name)}")
            if len(names) > MAX_KEYS_LISTED:
                out.line(f"  ... and {len(names) - MAX_KEYS_LISTED} more")
    for item in result.shape_mismatch:
        out.line(f"shape mismatch: {safe(item['name'])}: expected {tuple(item['expected'])}, "
                 f"found {tuple(item['found'])}")
    for item in result.dtype_mismatch:
        out.line(f"dtype differs: {safe(item['name'])}: expected {item['expected']}, found {item['found']}")
    for hint in result.suggestions:
        out.line(f"hint: {safe(hint)}", style="cyan")
    if result.suggestions:
        out.line("hint: --strip-prefix PREFIX removes a prefix; --key NAME compares a nested state dict", style="cyan")
    out.line("matches: load_state_dict(strict=True) would succeed" if result.ok else "does not match",
             style="green" if result.ok else "bold red")
