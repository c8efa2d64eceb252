"""JSON Lines files of ``server_sessions`` rows: ``rollback``'s backup, ``sessions export``/``import``.

One line per row, one object keyed by column name, holding the RAW stored values:
JSON columns stay the text that was stored (even malformed text, byte for byte),
times stay epoch milliseconds. Text that is not valid UTF-8 is kept too, as
``\\udcXX`` escapes on an ASCII line. Files are written to a temporary name,
flushed to disk and renamed, so a file is either complete or absent.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import IO, Collection, Iterable, Iterator

from sessionctl import encoding
from sessionctl.encoding import dumps_keeping_bytes, stored_bytes
from sessionctl.errors import BackupError, ImportValidationError
from sessionctl.names import TABLE
from sessionctl.processes import remove_stale_temporaries
from sessionctl.repository import COLUMNS, raw_row_problem
from sessionctl.targets.base import Row

DEFAULT_BACKUP_DIR = Path("backups")


def default_backup_path(now: float | None = None) -> Path:
    """./backups/server_sessions-<UTC time>.jsonl, never the name of an existing file."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    path = DEFAULT_BACKUP_DIR / f"{TABLE}-{stamp}.jsonl"
    counter = 1
    while path.exists():
        counter += 1
        path = DEFAULT_BACKUP_DIR / f"{TABLE}-{stamp}-{counter}.jsonl"
    return path


def encode_line(row: Row) -> str:
    """One row as one JSON line: text as text, or \\u escapes where the stored bytes are not UTF-8.

    003's columns come first, in their order; columns later migrations added follow.
    """
    if tuple(row) == COLUMNS:
        values = row
    else:
        values = {column: row.get(column) for column in COLUMNS}
        values.update((column, value) for column, value in row.items() if column not in COLUMNS)
    try:
        line = dumps_keeping_bytes(values)
    except TypeError:
        column = next(c for c, v in values.items() if isinstance(v, (bytes, bytearray, memoryview)))
        raise BackupError(
            f"row {values.get('user_id')!r}: column {column} holds a BLOB, "
            "which a JSON Lines file cannot keep as stored text"
        ) from None
    return line + "\n"


def write_rows(rows: Iterable[Row], out: IO[str]) -> int:
    """Write ``rows`` as JSON Lines to ``out``; return how many were written."""
    count = 0
    for row in rows:
        out.write(encode_line(row))
        count += 1
    return count


def write_rows_file(rows: Iterable[Row], path: Path, *, overwrite: bool = False) -> int:
    """Write ``rows`` to ``path`` atomically; return the row count, checked against the file.

    A backup never replaces an existing file; an export may (``overwrite=True``).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise BackupError(f"{path} already exists; not overwriting it (choose another file)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, _TEMPORARY)
        fd, tmp_name = tempfile.mkstemp(prefix=_temporary_prefix(path, os.getpid()), dir=path.parent)
    except OSError as exc:
        raise BackupError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            written = write_rows(rows, out)
            out.flush()
            os.fsync(out.fileno())
        with open(tmp_name, encoding="utf-8") as check:
            on_disk = sum(1 for _ in check)
        if on_disk != written:
            raise BackupError(f"{path} holds {on_disk} rows, expected {written}")
        if overwrite:
            os.replace(tmp_name, path)
        else:
            os.link(tmp_name, path)  # fails if a file appeared there meanwhile: never overwrites
        _fsync_folder(path.parent)
    except FileExistsError:
        raise BackupError(f"{path} already exists; not overwriting it (choose another file)") from None
    except OSError as exc:
        raise BackupError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return written


def write_text_file(path: Path, text: str) -> None:
    """Write a small text file (a rollback's restore command) that must not replace another."""
    try:
        with open(path, "x", encoding="utf-8", newline="\n") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
    except FileExistsError:
        raise BackupError(f"{path} already exists; not overwriting it (choose another file)") from None
    except OSError as exc:
        raise BackupError(f"cannot write {path}: {exc.strerror}") from None


def _temporary_prefix(path: Path, pid: int) -> str:
    return f".{path.name}.{pid}."


# ".<file name>.<pid>.<8 characters of mkstemp>": what write_rows_file writes first.
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}")


def _fsync_folder(folder: Path) -> None:
    """Make the new name durable, not only the file's bytes."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_rows(lines: Iterable[str], source: str, extra: Collection[str] = ()) -> Iterator[Row]:
    """Parse and validate JSON Lines, yielding rows; raise at the first bad line, naming it.

    ``extra``: the columns the target table has beyond 003's (see ``extra_columns``).
    """
    seen: dict[bytes, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = encoding.loads(line)
        except ValueError as exc:
            raise ImportValidationError(
                f"{source}:{lineno}: not valid JSON ({getattr(exc, 'msg', exc)}); nothing was imported"
            ) from None
        problem = raw_row_problem(row, extra)
        # Compared as stored: "é" and the escaped bytes "\udcc3\udca9" are the same user.
        key = None if problem is not None else stored_bytes(row["user_id"])
        if problem is None and key in seen:
            problem = f"user_id {row['user_id']!r} also on line {seen[key]}"
        if problem is not None:
            raise ImportValidationError(f"{source}:{lineno}: {problem}; nothing was imported")
        seen[key] = lineno
        yield SourcedRow(row, source=source, line=lineno)


class SourcedRow(dict):
    """A row read from a file, remembering where (so a later refusal can name FILE:LINE)."""

    def __init__(self, row: Row, *, source: str, line: int):
        super().__init__(row)
        self.source = source
        self.line = line
