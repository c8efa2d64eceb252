"""A plain connection to a test's database file, beside sessionctl's own: to read or damage it.

It is APSW with no sessionctl code in between, so it checks sessionctl's logic independently --
and it is NOT the standard library's sqlite3. Two SQLite libraries in one process break each
other's POSIX locks: when a connection of one closes the file, the other loses its locks, and a
reader opened later sees a stale snapshot (shown while building this: three commits through one
library, a reader of the other kept seeing the first). Every in-process reader or writer of a
file that sessionctl has open therefore goes through the same library; the standard library's
sqlite3 is kept for files only other processes touch.

The API is the part of sqlite3's the tests use: ``execute`` / ``executemany`` / ``executescript``
returning a cursor with ``fetchone`` / ``fetchall``, ``with conn:`` as one transaction, ``commit``,
``close``, ``iterdump`` (schema and rows, for before/after comparisons), ``set_progress_handler``,
and ``row_factory`` (any value: rows come back as dicts).
Errors are raised as sqlite3's classes so the tests read naturally.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Iterable

import apsw


def _translated(exc: apsw.Error) -> sqlite3.Error:
    if isinstance(exc, apsw.ConstraintError):
        return sqlite3.IntegrityError(str(exc))
    if isinstance(exc, (apsw.NotADBError, apsw.CorruptError)):
        return sqlite3.DatabaseError(str(exc))
    return sqlite3.OperationalError(str(exc))


class RawConnection:
    def __init__(self, path: str | Path, timeout: float = 5.0):
        try:
            self._conn = apsw.Connection(str(path))
        except apsw.Error as exc:
            raise _translated(exc) from None
        self._conn.set_busy_timeout(int(timeout * 1000))

    def execute(self, sql: str, params: Iterable[Any] = ()) -> apsw.Cursor:
        try:
            return self._conn.execute(sql, tuple(params))
        except apsw.Error as exc:
            raise _translated(exc) from None

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> apsw.Cursor:
        try:
            return self._conn.executemany(sql, [tuple(row) for row in rows])
        except apsw.Error as exc:
            raise _translated(exc) from None

    executescript = execute  # APSW runs every statement of the text

    @property
    def row_factory(self) -> Any:
        return self._conn.row_trace

    @row_factory.setter
    def row_factory(self, _factory: Any) -> None:
        self._conn.row_trace = lambda cursor, row: dict(zip((d[0] for d in cursor.get_description()), row))

    def set_progress_handler(self, handler: Any, steps: int) -> None:
        self._conn.set_progress_handler(handler, steps)

    def iterdump(self) -> Iterable[str]:
        """The schema and every row of every table, as text lines (not runnable SQL)."""
        schema = self.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        for kind, name, sql in schema:
            yield f"{kind} {name}: {sql}"
            if kind == "table":
                quoted = '"' + name.replace('"', '""') + '"'
                for row in self.execute(f"SELECT * FROM {quoted} ORDER BY rowid"):
                    yield f"  {name}: {row!r}"

    def commit(self) -> None:
        """Statements commit as they run (autocommit); ``with conn:`` groups them."""

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "RawConnection":
        self.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if self._conn.in_transaction:
            self.execute("COMMIT" if kind is None else "ROLLBACK")


def connect(path: str | Path, timeout: float = 5.0, **_ignored: Any) -> RawConnection:
    return RawConnection(path, timeout)
