"""``ptfile scan``: look for malicious content in files and folders without loading it."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from typing import Any

from .. import output
from ..options import add_command, add_output_options, allow_pattern, regex
from ..output import EXIT_ERROR, EXIT_FOUND, EXIT_OK, Human, safe


def register(commands: Any) -> None:
    parser = add_command(commands, "scan", "look for malicious content without loading it", run)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to scan (folders: model-like files)")
    parser.add_argument("--strict", action="store_true", help="treat unknown calls and classes as dangerous")
    parser.add_argument("--allow", action="append", default=[], type=allow_pattern, metavar="PATTERN",
                        help="accept a third-party global, module.name or module.* (repeatable); never a known gadget")
    parser.add_argument("--verify", action="store_true",
                        help="also read every tensor record and check its CRC-32 (reads the whole file)")
    parser.add_argument("-r", "--recursive", action="store_true", help="scan folders recursively")
    parser.add_argument("--include", action="append", default=[], type=regex, metavar="REGEX",
                        help="only paths matching (repeatable)")
    parser.add_argument("--exclude", action="append", default=[], type=regex, metavar="REGEX",
                        help="skip paths matching (repeatable)")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="scan with this many processes")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="scan on a Dask cluster (tcp://host:8786)")
    add_output_options(parser, records=False, progress=True)


def candidates(paths: Sequence[str], include: list[str], exclude: list[str], recursive: bool) -> list[str]:
    """Files to scan: each path, or the model-like files below each folder; excludes win over includes.

    A DCP folder (``.metadata`` + ``*.distcp``) is scanned as one checkpoint; other files in it on their own.
    """
    from ...dcp import ITEM_SUFFIX, METADATA_FILE, is_dcp
    from ...scanner import is_scannable

    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            walker = os.walk(path) if recursive else [(path, [], os.listdir(path))]
            for folder, dirs, files in walker:
                dirs.sort()
                if is_dcp(folder):
                    found.append(folder)
                    files = [f for f in files if f != METADATA_FILE and not f.endswith(ITEM_SUFFIX)]
                inside = (os.path.join(folder, f) for f in sorted(files))
                found.extend(p for p in inside if os.path.isfile(p) and is_scannable(p))
        else:
            found.append(path)
    if include:
        found = [p for p in found if any(re.search(pattern, p) for pattern in include)]
    if exclude:
        found = [p for p in found if not any(re.search(pattern, p) for pattern in exclude)]
    return found


def run(args: argparse.Namespace) -> int:
    from ...allowlist import Allow
    from ...scanner import FAILING, INVALID, VERDICTS

    files = candidates(args.paths, args.include, args.exclude, args.recursive)
    if not files:
        output.error("nothing to scan")
        return EXIT_ERROR
    if args.jobs > 1 or args.scheduler:
        from ...fleet import connect, scan_many

        client = connect(args.scheduler) if args.scheduler else None
        try:
            results = scan_many(files, strict=args.strict, jobs=args.jobs, client=client, allow=args.allow,
                                verify=args.verify)
        finally:
            if client is not None:
                client.close()
    else:
        results = _scan_serially(files, args.strict, Allow(args.allow), args.verify,
                                 show_progress=len(files) > 1 and output.shows_progress(args))
    if args.json:
        counts = {v: sum(r.verdict == v for r in results) for v in reversed(VERDICTS)}
        output.print_json("scan", {"summary": counts, "files": [r.to_dict() for r in results]})
    else:
        render(results)
    if any(r.verdict in FAILING for r in results):
        return EXIT_FOUND
    if any(r.verdict == INVALID for r in results):
        return EXIT_ERROR
    return EXIT_OK


def _scan_serially(files: list[str], strict: bool, allow: Any, verify: bool, *, show_progress: bool) -> list:
    from ...scanner import scan

    results = []
    with output.Progress("scanning", show_progress) as progress:
        for index, path in enumerate(files, 1):
            results.append(scan(path, strict=strict, allow=allow, verify=verify))
            progress(index, len(files))
    return results


def render(results: list) -> None:
    out = Human()
    for result in results:
        out.line(f"{safe(result.path)}: ", (result.verdict, output.verdict_style(result.verdict)),
                 f" ({result.format})")
        for finding in result.findings:
            out.line(f"  {safe(finding.describe())}")
        for fault in result.faults:
            out.line(f"  fault: {safe(fault)}")
        for note in result.notes:
            out.line(f"  note: {safe(note)}")
    tally = {verdict: sum(r.verdict == verdict for r in results)
             for verdict in ("dangerous", "unknown-call", "invalid", "unknown-class")}
    out.line(f"scanned {output.count(len(results), 'file')}: {tally['dangerous']} dangerous, "
             f"{tally['unknown-call']} calling unknown globals, {tally['invalid']} invalid, "
             f"{tally['unknown-class']} with unknown classes")
