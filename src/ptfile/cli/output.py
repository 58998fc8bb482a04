"""The one output layer of the command: exit codes, the JSON envelope, human text, tables, progress.

Every command prints either one JSON document (:func:`print_json`, the same envelope for all) or
human text through :class:`Human`.  Names, paths and values come from files, so every piece of
human text from a file goes through :func:`safe` before it is printed.

rich is imported only when it draws something: styled text on a terminal, a ``--tree``, a
progress bar.  Output to a pipe or file has no styles, so it is written as plain text, which
costs no import and no layout.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..constants import Verdict

EXIT_OK = 0
EXIT_FOUND = 1
EXIT_ERROR = 2
#: Version of the JSON documents printed with --json; bumped when a field changes meaning.
JSON_SCHEMA_VERSION = 2  # 2: a tensor lists at most 16 storage partners in shared_with, all counted in shared_count
#: Width of rich output that is not on a terminal: wide enough never to truncate numbers or names.
PIPE_WIDTH = 200
#: Tables longer than this are printed as plain aligned text even on a terminal: rich lays out
#: every cell of a table before printing its first line, which takes seconds for thousands of rows.
RICH_TABLE_MAX_ROWS = 200
#: Spaces between the columns of a table (as rich draws a table without borders).
COLUMN_GAP = 2

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


def count(number: int, noun: str) -> str:
    """``1 file``, ``2 files``: a count with its noun in the right number."""
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"


#: How each verdict is shown in a terminal.
_VERDICT_STYLES = {Verdict.CLEAN: "green", Verdict.UNKNOWN_CLASS: "yellow", Verdict.INVALID: "magenta",
                   Verdict.UNKNOWN_CALL: "red", Verdict.DANGEROUS: "bold red"}


def verdict_style(verdict: str) -> str:
    return _VERDICT_STYLES[Verdict(verdict)]  # also the word itself, as a JSON report holds it


def envelope(command: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON document of every command: its schema version and name first, then its fields."""
    return {"schema": JSON_SCHEMA_VERSION, "command": command, **fields}


def print_json(command: str, fields: dict[str, Any]) -> None:
    """Print a command's one JSON document on stdout (messages stay on stderr)."""

    sys.stdout.write(json.dumps(envelope(command, fields), indent=2, sort_keys=False, default=str) + "\n")


def error(message: str) -> None:
    sys.stderr.write(f"ptfile: error: {safe(message)}\n")


def console(stderr: bool = False) -> Any:
    """A rich console on stdout or stderr (imports rich: only for what rich draws)."""
    from rich.console import Console  # lazy: rich is heavy: a command imports only what it prints with

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width, emoji=False)


class Human:
    """Human output on stdout (or stderr): styled by rich on a terminal, plain text anywhere else.

    Text given here is printed as it is (never read as rich markup or emoji codes); callers
    pass names from files through :func:`safe`.
    """

    def __init__(self, *, stderr: bool = False) -> None:
        self._stderr = stderr
        self.stream = sys.stderr if stderr else sys.stdout
        self.styled = self.stream.isatty()
        self._console: Any = None

    @property
    def rich(self) -> Any:
        """The rich console, made on first use."""
        if self._console is None:
            self._console = console(stderr=self._stderr)
        return self._console

    def line(self, *pieces: str | tuple[str, str], style: str = "") -> None:
        """One line made of text pieces, each plain or ``(text, style)``; ``style`` styles the whole line."""
        if not self.styled:
            self.stream.write("".join(p if isinstance(p, str) else p[0] for p in pieces) + "\n")
            return
        from rich.text import Text  # lazy: rich is heavy: a command imports only what it prints with

        text = Text(style=style)
        for piece in pieces:
            text.append(*((piece,) if isinstance(piece, str) else piece))
        self.rich.print(text)

    def table(self, columns: Sequence[str], cells: list[list[str]], *, right: Sequence[str] = ()) -> None:
        """Rows of text under bold headers; columns named in ``right`` are aligned right."""
        if self.styled and len(cells) <= RICH_TABLE_MAX_ROWS:
            self._rich_table(columns, cells, right)
        else:
            self._plain_table(columns, cells, right)

    def _rich_table(self, columns: Sequence[str], cells: list[list[str]], right: Sequence[str]) -> None:
        from rich.table import Table  # lazy: rich is heavy: a command imports only what it prints with
        from rich.text import Text  # lazy: rich is heavy: a command imports only what it prints with

        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for column in columns:
            table.add_column(column, overflow="fold", justify="right" if column in right else "left")
        for row in cells:
            table.add_row(*(Text(cell) for cell in row))
        self.rich.print(table)

    def _plain_table(self, columns: Sequence[str], cells: list[list[str]], right: Sequence[str]) -> None:
        """Columns padded to their widest cell, one write: linear in the rows, whatever their number."""
        widths = [max([len(column), *(len(row[i]) for row in cells)]) for i, column in enumerate(columns)]
        aligns = [str.rjust if column in right else str.ljust for column in columns]
        gap = " " * COLUMN_GAP
        lines = [gap.join(align(cell, width) for cell, width, align in zip(row, widths, aligns, strict=True)).rstrip()
                 for row in [list(columns), *cells]]
        self.flush()  # what rich printed before comes first
        self.stream.write("\n".join(lines) + "\n")

    def tree(self, label: str, paths: list[tuple[list[str], str]]) -> None:
        """Dotted names as a tree: each ``(parts, leaf text)`` under the nodes of its leading parts."""
        from rich.text import Text  # lazy: rich is heavy: a command imports only what it prints with
        from rich.tree import Tree  # lazy: rich is heavy: a command imports only what it prints with

        root = Tree(label)
        nodes: dict[tuple[str, ...], Any] = {(): root}
        for parts, leaf in paths:
            for depth in range(1, len(parts)):
                if tuple(parts[:depth]) not in nodes:
                    nodes[tuple(parts[:depth])] = nodes[tuple(parts[: depth - 1])].add(Text(parts[depth - 1]))
            nodes[tuple(parts[:-1])].add(Text(leaf))
        self.rich.print(root)

    def flush(self) -> None:
        if self._console is not None:
            self._console.file.flush()
        self.stream.flush()


def shows_progress(args: Any) -> bool:
    """Whether the command may show a progress bar: never with --json or --quiet."""
    return not (args.json or args.quiet)


class Progress:
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
            from rich.progress import Progress as Bar  # lazy: rich is heavy: a command imports only what it prints with

            self._bar = Bar(console=console(stderr=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self._label, total=total)
        self._bar.update(self._task, completed=done, total=total)  # a later phase may know the total better

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
