"""A SQLite file on this machine: the embedded default, and wrangler's local D1 state.

Built on the standard library's sqlite3 rather than sqlite-utils: importing
sqlite-utils costs ~75 ms on every run (measured, see README "Benchmarks"),
and this module is on the path of every command. Writes take the lock up
front with ``BEGIN IMMEDIATE`` and wait up to ``timeout`` seconds for it, so a
live bot writing beside us is never met half-way through a transaction.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence
from urllib.parse import quote

from sessionctl.errors import (
    ConstraintError,
    DatabaseLockedError,
    DatabaseNotFoundError,
    DatabaseUnavailableError,
    NotADatabaseError,
    ReadOnlyDatabaseError,
    SQLError,
)
from sessionctl.targets.base import Result, Row, Statement

DEFAULT_TIMEOUT_S = 5.0


def open_sqlite_file(
    path: str | os.PathLike[str],
    *,
    create: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
    description: str | None = None,
) -> "SqliteFileDatabase":
    """Open ``path``; only with ``create=True`` may a missing file be created."""
    path = Path(path)
    if path.is_dir():
        raise NotADatabaseError(f"{path} is a directory, not a SQLite database file")
    is_new = not path.exists()
    if is_new and not create:
        raise DatabaseNotFoundError(
            f"database not found: {path} (`sessionctl migrate` creates it; nothing was created)"
        )
    if is_new:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseUnavailableError(f"cannot create {path.parent}: {exc.strerror}") from None
    mode = "rwc" if create else "rw"
    uri = f"file:{quote(str(path.absolute()))}?mode={mode}"
    try:
        conn = sqlite3.connect(
            uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise DatabaseUnavailableError(f"cannot open {path}: {exc}") from None
    # Text that is not valid UTF-8 reads back with its bytes as surrogate escapes
    # instead of failing the whole query: one bad row must not stop a listing or a backup.
    conn.text_factory = lambda data: data.decode("utf-8", "surrogateescape")
    db = SqliteFileDatabase(conn, path, timeout, description or f"sqlite file {path}")
    # Reading the schema is what tells a text file or a truncated file from a database.
    db.query("SELECT count(*) AS n FROM sqlite_master")
    if is_new:
        # WAL lets readers (and wrangler dev) go on while we write.
        _switch_to_wal(db, timeout)
    return db


def _switch_to_wal(db: "SqliteFileDatabase", timeout: float) -> None:
    """Switch a new file to WAL, waiting up to ``timeout`` like every other statement.

    The switch needs an exclusive lock, and SQLite returns SQLITE_BUSY for it at once,
    without calling the busy handler, while another connection holds a write lock
    (a second ``migrate`` racing us onto the new file): so retry until the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.query("PRAGMA journal_mode=WAL")
            return
        except DatabaseLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class SqliteFileDatabase:
    def __init__(self, conn: sqlite3.Connection, path: Path, timeout: float, description: str):
        self.conn = conn
        self.path = path
        self.timeout = timeout
        self.description = description

    # -- reads ---------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self.iter_query(sql, params))

    def iter_query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Row]:
        with self._translated():
            cursor = self.conn.execute(sql, tuple(params))
            names = [d[0] for d in cursor.description or ()]
        while True:
            with self._translated():
                chunk = cursor.fetchmany(500)
            if not chunk:
                return
            for values in chunk:
                yield dict(zip(names, values))

    # -- writes --------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        return self.batch([Statement(sql, tuple(params))])[0]

    def batch(self, statements: Iterable[Statement]) -> list[Result]:
        results: list[Result] = []
        with self._translated():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements:
                    cursor = self.conn.execute(statement.sql, statement.params)
                    names = [d[0] for d in cursor.description or ()]
                    rows = [dict(zip(names, values)) for values in cursor.fetchall()]
                    results.append(Result(rows=rows, changes=max(cursor.rowcount, 0)))
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        return results

    # -- facts ---------------------------------------------------------------

    def size_bytes(self) -> int | None:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(f"{self.path}{suffix}")
            except OSError:
                pass
        return total

    def reopen(self) -> "SqliteFileDatabase":
        return open_sqlite_file(self.path, timeout=self.timeout, description=self.description)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Turn sqlite3's exceptions into sessionctl's typed ones, naming the file."""
        try:
            yield
        except sqlite3.IntegrityError as exc:
            raise ConstraintError(str(exc)) from exc
        except sqlite3.OperationalError as exc:
            raise self._operational(exc) from exc
        except sqlite3.DatabaseError as exc:
            message = str(exc)
            if "not a database" in message or "malformed" in message:
                raise NotADatabaseError(
                    f"{self.path} is not a usable SQLite database ({message})"
                ) from exc
            raise SQLError(message) from exc

    def _operational(self, exc: sqlite3.OperationalError) -> Exception:
        message = str(exc)
        if "locked" in message or "busy" in message:
            return DatabaseLockedError(
                f"{self.path} is locked by another process (waited {self.timeout:g} s; "
                "try again, or raise --timeout)"
            )
        if "readonly" in message or "read-only" in message:
            return ReadOnlyDatabaseError(f"{self.path} is read-only ({message})")
        if "unable to open" in message or "disk I/O" in message:
            return DatabaseUnavailableError(f"cannot use {self.path} ({message})")
        return SQLError(message)
