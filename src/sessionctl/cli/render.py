"""The one renderer: rows to table, json, ndjson or csv; checks to ✓/✗ lines; the one rich Console.

rich is imported only when something is drawn with it, and csv and the JSON encoders
only when that format is written, so ``--version``, scripted runs and cron jobs never
pay for what they do not print.
"""

from __future__ import annotations

import sys
from enum import Enum
from typing import TYPE_CHECKING, Any, Iterable, Sequence, TextIO

if TYPE_CHECKING:
    from rich.console import Console


class Format(str, Enum):
    """For commands that print rows."""

    table = "table"
    json = "json"
    ndjson = "ndjson"
    csv = "csv"


class ObjectFormat(str, Enum):
    """For commands that print one object or a list of checks."""

    table = "table"
    json = "json"


def console(out: TextIO | None = None, *, stderr: bool = False) -> Console:
    """The rich Console every command draws with (tables, show, stats, the progress bar).

    On a terminal it is the terminal's width. Piped or redirected it is as wide as the
    content needs, so a row or a JSON value stays on its line for grep and scripts. No
    highlighting: stored text is shown as it is, never coloured by what it looks like.
    """
    from rich.console import Console

    out = out or (sys.stderr if stderr else sys.stdout)
    wide = None if out.isatty() else 1_000
    return Console(file=out, width=wide, highlight=False, soft_wrap=False)


def render_rows(
    rows: Iterable[dict[str, Any]],
    fmt: Format,
    columns: Sequence[str],
    *,
    title: str | None = None,
    out: TextIO | None = None,
) -> int:
    """Write ``rows`` in ``fmt``; json/ndjson/csv stream row by row. Returns the row count."""
    out = out or sys.stdout
    count = 0
    if fmt is Format.json:
        from sessionctl.encoding import dumps_for_output

        out.write("[")
        for count, row in enumerate(rows, 1):
            out.write(("\n  " if count == 1 else ",\n  ") + dumps_for_output(row))
        out.write("\n]\n" if count else "]\n")
    elif fmt is Format.ndjson:
        from sessionctl.encoding import dumps_for_output

        for count, row in enumerate(rows, 1):
            out.write(dumps_for_output(row) + "\n")
    elif fmt is Format.csv:
        import csv

        from sessionctl.encoding import dumps_for_output, printable

        writer = csv.writer(out, lineterminator="\n")
        # csv quotes a field holding \n but not one holding a lone \r (it is not in the line
        # terminator), and a reader then splits the row there: such rows are quoted whole.
        quoting_all = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow(columns)
        for count, row in enumerate(rows, 1):
            cells = [
                dumps_for_output(v) if isinstance(v, (dict, list)) else ("" if v is None else printable(str(v)))
                for v in (row.get(c) for c in columns)
            ]
            (quoting_all if any("\r" in cell for cell in cells) else writer).writerow(cells)
    else:
        from rich.table import Table
        from rich.text import Text

        from sessionctl.encoding import printable

        table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
        cells = [["" if row.get(c) is None else printable(str(row.get(c))) for c in columns] for row in rows]
        count = len(cells)
        for i, column in enumerate(columns):
            if i < len(columns) - 1:
                # Never cut a key column (a migration's name, its state) to fit the width;
                # the last column wraps instead.
                widest = max([len(column)] + [len(line[i]) for line in cells])
                table.add_column(column, min_width=widest, no_wrap=True)
            else:
                table.add_column(column, overflow="fold")
        for line in cells:
            table.add_row(*(Text(cell) for cell in line))  # stored text, never rich markup
        console(out).print(table, soft_wrap=True)
    out.flush()
    return count


def render_fields(fields: Sequence[tuple[str, str, str]], out: TextIO | None = None) -> None:
    """Label / value lines (``sessions show``): each field is (label, text, flag), the flag a
    warning drawn in bold red after the text ("EXPIRED" on its line; a flag starting with a
    newline on a line of its own). Texts are shown as they are, never as markup.

    On a terminal rich draws the grid; piped or redirected the same lines are written as plain
    text (no trailing padding), without importing rich: scripts and cron pay only for what
    they read.
    """
    out = out or sys.stdout
    if not out.isatty():
        width = max((len(label) for label, _, _ in fields), default=0) + 2
        for label, text, flag in fields:
            first, *rest = (text + ("" if flag.startswith("\n") or not flag else "  ") + flag).split("\n")
            out.write(f"{label.ljust(width)}{first}".rstrip() + "\n")
            for line in rest:
                out.write(f"{' ' * width}{line}".rstrip() + "\n")
        out.flush()
        return
    from rich.markup import escape
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, text, flag in fields:
        shown = escape(text)
        if flag:
            shown += ("\n" if flag.startswith("\n") else "  ") + f"[bold red]{escape(flag.lstrip(chr(10)))}[/]"
        grid.add_row(label, shown)
    console(out).print(grid)


def render_object(obj: dict[str, Any], out: TextIO | None = None) -> None:
    from sessionctl.encoding import dumps_for_output

    out = out or sys.stdout
    out.write(dumps_for_output(obj, indent=2) + "\n")


def _mark(ok: bool, out: TextIO, judged: bool = True) -> str:
    if not judged:  # nothing here can tell right from wrong: neither a pass nor a failure
        return "·"
    symbol = "✓" if ok else "✗"
    if out.isatty():
        return f"\033[32m{symbol}\033[0m" if ok else f"\033[31m{symbol}\033[0m"
    return symbol


def render_checks(checks: Sequence[Any], fmt: Format, out: TextIO | None = None) -> None:
    """``✓ name  detail`` lines, or ``{"ok": bool, "checks": [...]}`` in json."""
    out = out or sys.stdout
    if fmt in (Format.json, Format.ndjson):
        render_object(
            {"ok": all(c.ok for c in checks), "checks": [c.as_dict() for c in checks]}, out
        )
        return
    width = max((len(c.name) for c in checks), default=0)
    for check in checks:
        out.write(f"{_mark(check.ok, out, getattr(check, 'judged', True))} {check.name.ljust(width)}  {check.detail}\n")
