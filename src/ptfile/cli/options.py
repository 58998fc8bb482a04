"""Options and arguments the commands share, each defined once with its help, and their value types.

A value type checks its option before any file is read, so a mistake is a one-line usage
error that names the option.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

from ..constants import Limits
from ..errors import PtfileError
from ..policy.allowlist import Allow
from .output import EXIT_ERROR, safe

CHECKPOINT_HELP = "a checkpoint: .pt/.pth/.bin/.ckpt, .safetensors, .npz, a shard index or folder, or a DCP folder"
#: What CHECKPOINT_HELP lists, to follow another description of a checkpoint argument.
CHECKPOINT_KINDS = CHECKPOINT_HELP.split(": ", 1)[1]


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, as every other error of the command."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {safe(message)} (see {self.prog} --help)\n")


def add_command(commands: Any, name: str, help: str, run: Callable[[argparse.Namespace], int]) -> Parser:  # noqa: A002
    """A subcommand whose arguments run ``run``."""
    parser = commands.add_parser(name, help=help)
    parser.set_defaults(func=run)
    return parser


def add_output_options(parser: argparse.ArgumentParser, *, records: bool = True, progress: bool = False) -> None:
    """The options commands share: --json, --records and (where work can take long) --quiet."""
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout (numbers as numbers); messages stay on stderr")
    if records:
        parser.add_argument("--records", action="store_true",
                            help="read instances of classes ptfile does not know as inert records "
                                 "instead of refusing the file (nothing from the file is ever run)")
    if progress:
        parser.add_argument("-q", "--quiet", action="store_true",
                            help="show no progress bar (shown on a terminal when the work takes over a second)")


def add_dtype(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", type=float_dtype, help="cast floating-point tensors, e.g. float32 or bfloat16")


def add_key(parser: argparse.ArgumentParser, help: str) -> None:  # noqa: A002
    """--key: one nested state dict of the file (``help`` says what the command does with it)."""
    parser.add_argument("--key", help=help)


def add_strip_prefix(parser: argparse.ArgumentParser, help: str) -> None:  # noqa: A002
    parser.add_argument("--strip-prefix", action="append", default=[], metavar="PREFIX", help=help)


def float_dtype(text: str) -> str:
    """A --dtype value, checked before any file is read."""
    from ..tools.convert import float_dtype as check  # lazy: the command imports only the tools it runs

    try:
        check(text)
    except PtfileError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def regex(text: str) -> str:
    """A regular expression option value, compiled once here so a mistake names the option."""
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression: {exc}") from None
    return text


def pair(text: str) -> tuple[str, str]:
    """``OLD=NEW`` of --rename."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"takes OLD=NEW, got {text!r}")
    old, new = text.split("=", 1)
    return old, new


def regex_pair(text: str) -> tuple[str, str]:
    """``PATTERN=REPLACEMENT`` of --rename-regex, the pattern compiled here."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"takes PATTERN=REPLACEMENT, got {text!r}")
    pattern, replacement = text.split("=", 1)
    return regex(pattern), replacement


def limit(text: str) -> tuple[str, int]:
    """``NAME=N`` of --limit: a field of :class:`ptfile.Limits` and its value (bytes, or a count)."""
    name, sep, value = text.partition("=")
    if not sep or name not in Limits._fields:
        raise argparse.ArgumentTypeError(f"takes NAME=N with NAME one of {', '.join(Limits._fields)}, got {text!r}")
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{name} takes a whole number, got {value!r}")
    return name, int(value)


def allow_pattern(text: str) -> str:
    """An --allow pattern, checked as the library checks it (a usage error otherwise)."""

    try:
        Allow([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
