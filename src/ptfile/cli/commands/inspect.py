"""``ptfile inspect``: what is in a checkpoint, read without a tensor byte."""

from __future__ import annotations

import argparse
from typing import Any

from .. import output
from ..options import CHECKPOINT_HELP, add_command, add_output_options
from ..output import EXIT_OK, Human, human_bytes, safe

#: A listing longer than this folds its repeated numbered blocks unless ``--all`` is given.
FOLD_ABOVE_ROWS = 40
#: Non-tensor values listed before the rest are only counted (``--tree`` shows them all).
MAX_VALUES_LISTED = 50
TENSOR_COLUMNS = ("name", "dtype", "shape", "strides", "bytes", "shared with")


def register(commands: Any) -> None:
    parser = add_command(commands, "inspect", "what is in a checkpoint (reads no tensor bytes)", run)
    parser.add_argument("file", help=CHECKPOINT_HELP)
    parser.add_argument("--tree", action="store_true", help="show non-tensor values as a tree")
    listing = parser.add_mutually_exclusive_group()
    listing.add_argument("--all", action="store_true",
                         help=f"list every tensor (a listing of more than {FOLD_ABOVE_ROWS} folds numbered blocks)")
    listing.add_argument("--collapse", action="store_true",
                         help="fold numbered blocks (layers.{0..31}.weight  x32) even in a short listing")
    add_output_options(parser)


def run(args: argparse.Namespace) -> int:
    from ...tools.inspection import describe  # lazy: the command imports only the tools it runs

    report = describe(args.file, records=args.records)
    if args.json:
        output.print_json("inspect", report)
        return EXIT_OK
    fold = False if args.all else True if args.collapse else None
    render(report, tree=args.tree, fold=fold)
    return EXIT_OK


def render(report: dict, *, tree: bool, fold: bool | None) -> None:
    """The human view; ``fold``: fold numbered blocks (None: when the listing is long)."""
    from ...tools.inspection import fold_rows  # lazy: the command imports only the tools it runs

    out = Human()
    out.line(f"{safe(report['path'])}: {report['format']} checkpoint", style="bold")
    details = [f"{k}={safe(v)}" for k, v in report["container"].items() if v is not None and k != "records"]
    if details:
        out.line("  " + ", ".join(details))
    tensors = report["tensors"]
    if fold or (fold is None and len(tensors) > FOLD_ABOVE_ROWS):
        tensors = fold_rows(tensors)
    if tensors:
        out.table(TENSOR_COLUMNS, [_tensor_cells(row) for row in tensors])
    values = report["values"]
    if tree:
        out.tree("values", [(_safe_parts(v["name"]), f"{safe(v['name'].split('.')[-1])} = {safe(v['summary'])}")
                            for v in values])
    elif values:
        out.line("other values:", style="bold")
        for value in values[:MAX_VALUES_LISTED]:
            out.line(f"  {safe(value['name'])} = {safe(value['summary'])}")
        if len(values) > MAX_VALUES_LISTED:
            out.line(f"  ... and {len(values) - MAX_VALUES_LISTED} more")
    out.line(_totals_line(report["totals"]))
    if report["unknown_classes"]:
        out.line("unknown classes: " + ", ".join(safe(c) for c in report["unknown_classes"]))
    verdict = report["scan"]["verdict"]
    out.line(f"scan: {verdict}", style=output.verdict_style(verdict))


def _safe_parts(name: str) -> list[str]:
    return [safe(part) for part in name.split(".")]


def _totals_line(totals: dict) -> str:
    by_dtype = ", ".join(f"{k} {human_bytes(v)}" for k, v in totals["bytes_by_dtype"].items())
    elements = totals.get("elements", {})
    others = "".join(f", {elements[kind]:,} {label}" for kind, label in
                     (("buffers", "in buffers and other tensors"), ("optimizer", "in optimizer state"))
                     if elements.get(kind))
    return (f"{totals['tensors']:,} tensors, {totals['parameters']:,} parameters{others}, "
            f"{human_bytes(totals['bytes'])} stored ({by_dtype or 'no data'})")


def _tensor_cells(row: dict) -> list[str]:
    """One row of the tensor table as escaped text; a folded row's name ends in its count."""
    count = row.get("count", 1)
    return [
        safe(row["name"]) + (f"  x{count}" if count > 1 else ""),
        row["torch_dtype"] if "torch_dtype" in row else row["dtype"],  # quantized types by torch's name
        str(tuple(row["shape"])),
        "" if row.get("contiguous", True) else str(tuple(row["strides"])),
        human_bytes(row["nbytes"]),
        _shared_cell(row),
    ]


def _shared_cell(row: dict) -> str:
    """The names a row shares storage with, and how many more there are than it lists."""
    names = row.get("shared_with", [])
    more = row.get("shared_count", len(names)) - len(names)
    return safe(", ".join([*names, f"and {more:,} more"] if more > 0 else names))
