"""``ptfile scan``: look for malicious content in files and folders without loading it."""

from __future__ import annotations

import argparse
from typing import Any

from ...constants import Verdict, limits_in_force
from ...policy.allowlist import Allow
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
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="list each path a folder scan passed over, and why (--json always lists them)")
    parser.add_argument("--include", action="append", default=[], type=regex, metavar="REGEX",
                        help="only paths matching (repeatable)")
    parser.add_argument("--exclude", action="append", default=[], type=regex, metavar="REGEX",
                        help="skip paths matching (repeatable)")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="scan with this many processes")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="scan on a Dask cluster (tcp://host:8786)")
    add_output_options(parser, records=False, progress=True)


def run(args: argparse.Namespace) -> int:
    from ...scanning.scanner import FAILING, VERDICTS, walk_for_scan  # lazy: scanning only

    walk = walk_for_scan(args.paths, recursive=args.recursive, include=args.include, exclude=args.exclude)
    files = walk.files
    if not files:
        if not args.json:
            render_passed_over(walk.passed_over, verbose=args.verbose)
        output.error("nothing to scan")
        return EXIT_ERROR
    if args.jobs > 1 or args.scheduler:
        from ...tools.fleet import connect, scan_many  # lazy: the command imports only the tools it runs

        client = connect(args.scheduler) if args.scheduler else None
        try:
            results = scan_many(files, strict=args.strict, jobs=args.jobs, client=client, allow=args.allow,
                                verify=args.verify, limits=limits_in_force())
        finally:
            if client is not None:
                client.close()
    else:
        results = _scan_serially(files, args.strict, Allow(args.allow), args.verify,
                                 show_progress=len(files) > 1 and output.shows_progress(args))
    if args.json:
        counts = {v.value: sum(r.verdict == v for r in results) for v in reversed(VERDICTS)}
        output.print_json("scan", {"summary": counts, "files": [r.to_dict() for r in results],
                                   "passed_over": [p.to_dict() for p in walk.passed_over]})
    else:
        render(results)
        render_passed_over(walk.passed_over, verbose=args.verbose)
    if any(r.verdict in FAILING for r in results):
        return EXIT_FOUND
    if any(r.verdict == Verdict.INVALID for r in results):
        return EXIT_ERROR
    return EXIT_OK


def _scan_serially(files: list[str], strict: bool, allow: Any, verify: bool, *, show_progress: bool) -> list:
    from ...scanning.scanner import scan  # lazy: scanning only

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
    tally = {verdict: sum(r.verdict == verdict for r in results) for verdict in Verdict}
    out.line(f"scanned {output.count(len(results), 'file')}: {tally[Verdict.DANGEROUS]} dangerous, "
             f"{tally[Verdict.UNKNOWN_CALL]} calling unknown globals, {tally[Verdict.INVALID]} invalid, "
             f"{tally[Verdict.UNKNOWN_CLASS]} with unknown classes")


def render_passed_over(passed_over: list, *, verbose: bool) -> None:
    """What a folder scan did not judge: each path and why with --verbose, else how many."""
    if not passed_over:
        return
    out = Human()
    if not verbose:
        out.line(f"passed over {output.count(len(passed_over), 'path')} (--verbose lists them and why)")
        return
    out.line(f"passed over {output.count(len(passed_over), 'path')}:")
    for item in passed_over:
        out.line(f"  {safe(item.path)}: {safe(item.reason)}")
