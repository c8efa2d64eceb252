"""The one renderer: rows to table, json, ndjson or csv; checks to ✓/✗ lines.

rich is imported only when a table is drawn, so scripted (json/csv) runs and
cron jobs never pay for it.
"""

from __future__ import annotations

import csv
import json
import sys
from enum import Enum
from typing import Any, Iterable, Sequence, TextIO


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


def _dumps(value: Any, **kwargs: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str, **kwargs)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # stored bytes that are not UTF-8: keep them, as \udcXX escapes
        text = json.dumps(value, ensure_ascii=True, default=str, **kwargs)
    return text


def printable(text: str) -> str:
    """Text for a terminal: bytes that are not UTF-8 shown as U+FFFD instead of failing the write."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


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
        out.write("[")
        for count, row in enumerate(rows, 1):
            out.write(("\n  " if count == 1 else ",\n  ") + _dumps(row))
        out.write("\n]\n" if count else "]\n")
    elif fmt is Format.ndjson:
        for count, row in enumerate(rows, 1):
            out.write(_dumps(row) + "\n")
    elif fmt is Format.csv:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for count, row in enumerate(rows, 1):
            writer.writerow(
                _dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else printable(str(v)))
                for v in (row.get(c) for c in columns)
            )
    else:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

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
        Console(file=out, soft_wrap=True).print(table)
    out.flush()
    return count


def render_object(obj: dict[str, Any], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    out.write(_dumps(obj, indent=2) + "\n")


def console(out: TextIO | None = None):
    """A rich Console: the terminal's width on a terminal; piped, as wide as the content needs."""
    from rich.console import Console

    out = out or sys.stdout
    wide = None if out.isatty() else 1_000
    return Console(file=out, width=wide, highlight=False, soft_wrap=False)


def _mark(ok: bool, out: TextIO) -> str:
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
        out.write(f"{_mark(check.ok, out)} {check.name.ljust(width)}  {check.detail}\n")
