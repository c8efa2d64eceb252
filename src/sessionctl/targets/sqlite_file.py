"""A SQLite file on this machine: the embedded default, and wrangler's local D1 state.

The engine is APSW, which bundles its own SQLite (3.54 at the time of writing)
on Linux, macOS and Windows, so what a migration does here does not depend on
how the user's Python was built: Python's own ``sqlite3`` can be years older
than D1's engine, and then ``concat()`` fails and ``unixepoch('subsec')`` stores
NULL. APSW imports in a few milliseconds (see README "Benchmarks"); sqlite-utils
costs ~75 ms a run, which is why this module does not use it.

Every connection follows D1's rules (``sessionctl.d1_rules``): foreign keys are
enforced, and SQL a user wrote runs under D1's authorizer, one statement at a
time (as wrangler splits them). Writes take the lock up front with ``BEGIN IMMEDIATE`` and wait up to
``timeout`` seconds for it, so a live bot writing beside us is never met
half-way through a transaction.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import apsw

from sessionctl import d1_rules
from sessionctl.errors import (
    ConstraintError,
    DatabaseLockedError,
    DatabaseNotFoundError,
    DatabaseUnavailableError,
    NotADatabaseError,
    ReadOnlyDatabaseError,
    SessionctlError,
    SQLError,
)
from sessionctl.targets.base import NO_LIMITS, Result, Row, Statement

DEFAULT_TIMEOUT_S = 5.0
SQLITE_VERSION = apsw.sqlite_lib_version()


def open_sqlite_file(
    path: str | os.PathLike[str],
    *,
    create: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
    description: str | None = None,
) -> "SqliteFileDatabase":
    """Open ``path``; only with ``create=True`` may a missing file be created."""
    path = Path(path)
    try:
        if path.is_dir():
            raise NotADatabaseError(f"{path} is a directory, not a SQLite database file")
        is_new = not path.exists()
    except OSError as exc:  # a folder on the way that this user may not enter
        raise DatabaseUnavailableError(f"cannot use {path}: {exc.strerror}") from None
    if is_new and not create:
        raise DatabaseNotFoundError(
            f"database not found: {path} ({DatabaseNotFoundError.REMEDY}; nothing was created)", path=path
        )
    if is_new:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseUnavailableError(f"cannot create {path.parent}: {exc.strerror}") from None
    flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
    try:
        conn = apsw.Connection(str(path.absolute()), flags=flags)
    except apsw.Error as exc:
        raise DatabaseUnavailableError(f"cannot open {path}: {_message(exc)}") from None
    db = SqliteFileDatabase(conn, path, timeout, description or f"sqlite file {path}")
    # Reading the schema is what tells a text file or a truncated file from a database.
    db.query("SELECT count(*) AS n FROM sqlite_master")
    if create and (is_new or db.query("PRAGMA journal_mode")[0]["journal_mode"] != "wal"):
        # WAL lets readers (and wrangler dev, and the bot) go on while we write. Checked on
        # every migrate, not only for a new file: an empty file left by a kill or a full disk
        # exists, and would otherwise stay in rollback-journal mode for good.
        db.switch_to_wal()
    return db


def open_memory_database(description: str = "in memory") -> "SqliteFileDatabase":
    """A private in-memory database with the same engine and D1 rules (to replay migrations)."""
    return SqliteFileDatabase(apsw.Connection(":memory:"), Path(":memory:"), 0, description)


class SqliteFileDatabase:
    limits = NO_LIMITS  # a local file streams: no request to bound

    def __init__(self, conn: apsw.Connection, path: Path, timeout: float, description: str):
        self.conn = conn
        self.path = path
        self.timeout = timeout
        self.description = description
        conn.set_busy_timeout(int(timeout * 1000))
        d1_rules.install(conn)

    # -- reads ---------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        # The agent's get runs here once per message: one fetch, no generator per row.
        try:
            cursor = self.conn.execute(sql, tuple(params))
            try:
                names = [d[0] for d in cursor.get_description()]
            except apsw.ExecutionCompleteError:
                return []  # no row (or a statement that returns none)
            rows = cursor.fetchall()
        except UnicodeDecodeError:
            return list(self._iter_undecodable(sql, params, skip=0))
        except apsw.Error as exc:
            raise self._translation(exc) from exc
        return [dict(zip(names, values)) for values in rows]

    def iter_query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Row]:
        # One try around the whole walk, not a context manager per row: an export reads
        # millions of rows through here.
        yielded = 0
        try:
            cursor = self.conn.execute(sql, tuple(params))
            try:
                names = [d[0] for d in cursor.get_description()]
            except apsw.ExecutionCompleteError:
                return  # no row
            for values in cursor:
                yielded += 1
                yield dict(zip(names, values))
        except UnicodeDecodeError:
            # Text that is not valid UTF-8: read the rest with its bytes as surrogate
            # escapes, so one bad row stops neither a listing nor a backup.
            yield from self._iter_undecodable(sql, params, skip=yielded)
        except apsw.Error as exc:
            raise self._translation(exc) from exc

    def _iter_undecodable(self, sql: str, params: Sequence[Any], skip: int) -> Iterator[Row]:
        with self._translated():
            names = [d[0] for d in self.conn.execute(sql, tuple(params)).get_description()]
        # TEXT comes back as its bytes, with typeof() beside it to tell it from a BLOB.
        picks = ", ".join(
            f'CASE WHEN typeof("{i}") = \'text\' THEN CAST("{i}" AS BLOB) ELSE "{i}" END, typeof("{i}")'
            for i in range(len(names))
        )
        renamed = ", ".join(f'"{i}"' for i in range(len(names)))
        wrapped = f"WITH q({renamed}) AS ({sql}) SELECT {picks} FROM q"
        with self._translated():
            cursor = self.conn.execute(wrapped, tuple(params))
            for number, values in enumerate(cursor):
                if number < skip:
                    continue
                row = {}
                for i, name in enumerate(names):
                    value, kind = values[2 * i], values[2 * i + 1]
                    if kind == "text":
                        value = value.decode("utf-8", "surrogateescape")
                    row[name] = value
                yield row

    # -- writes --------------------------------------------------------------

    def query_many(self, statements: Sequence[Statement]) -> list[list[Row]]:
        return [self.query(statement.sql, statement.params) for statement in statements]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        return self.batch([Statement(sql, tuple(params))])[0]

    def batch(self, statements: Iterable[Statement]) -> list[Result]:
        results: list[Result] = []
        index: int | None = None
        try:
            with self._translated():
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    for index, statement in enumerate(statements):
                        results.append(self._run(statement))
                    index = None  # a failure now is the commit's (a deferred foreign key)
                    self.conn.execute("COMMIT")
                except BaseException:
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    raise
        except SQLError as exc:
            exc.statement_index = index  # which statement of the batch failed, if one did
            raise
        return results

    def script(self, statements: Sequence[Statement]) -> None:
        # Locally one transaction is one transaction, whichever way the text arrives.
        self.batch(statements)

    def _run(self, statement: Statement) -> Result:
        before = self.conn.total_changes()
        if statement.from_user:
            # A piece of a migration file: under D1's rules. Like local D1, a piece that
            # wrangler's splitter left holding several statements runs all of them.
            with d1_rules.enforced(self.conn):
                cursor = self.conn.execute(statement.sql, statement.params)
                rows = self._rows(cursor)
        else:
            cursor = self.conn.execute(statement.sql, statement.params)
            rows = self._rows(cursor)
        return Result(rows=rows, changes=self.conn.total_changes() - before)

    @staticmethod
    def _rows(cursor: apsw.Cursor) -> list[Row]:
        rows: list[Row] = []
        names: list[str] | None = None
        for values in cursor:
            if names is None:
                names = [d[0] for d in cursor.get_description()]
            rows.append(dict(zip(names, values)))
        return rows

    def switch_to_wal(self) -> None:
        """Put the file in WAL mode, waiting up to ``timeout`` like every other statement.

        The switch needs an exclusive lock, and SQLite returns SQLITE_BUSY for it at once,
        without calling the busy handler, while another connection holds a write lock
        (a second ``migrate`` racing us onto the new file): so retry until the deadline.
        """
        import time

        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.query("PRAGMA journal_mode=WAL")
                return
            except DatabaseLockedError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

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
    def deferred_checkpoints(self) -> Iterator[Callable[[], None]]:
        """See ``SupportsDeferredCheckpoints``: cleanup's batches stay short, the log stays small."""
        with self._translated():
            (previous,) = self.conn.execute("PRAGMA wal_autocheckpoint").fetchone()
            self.conn.execute("PRAGMA wal_autocheckpoint=0")

        def checkpoint() -> None:
            with self._translated():
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

        restore = f"PRAGMA wal_autocheckpoint={int(previous)}"
        try:
            yield checkpoint
        except BaseException:
            try:  # the error that stopped the run is the one to report
                self.conn.execute(restore)
            except apsw.Error:
                pass
            raise
        with self._translated():
            self.conn.execute(restore)

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Turn APSW's exceptions into sessionctl's typed ones, naming the file."""
        try:
            yield
        except apsw.Error as exc:
            raise self._translation(exc) from exc

    def _translation(self, exc: apsw.Error) -> SessionctlError:
        if isinstance(exc, apsw.ConstraintError):
            return ConstraintError(_message(exc))
        if isinstance(exc, (apsw.BusyError, apsw.LockedError)):
            return DatabaseLockedError(
                f"{self.path} is locked by another process (waited {self.timeout:g} s; "
                f"try again, or {DatabaseLockedError.REMEDY})",
                path=self.path, waited_s=self.timeout,
            )
        if isinstance(exc, apsw.ReadOnlyError):
            return ReadOnlyDatabaseError(f"{self.path} is read-only ({_message(exc)})")
        if isinstance(exc, (apsw.NotADBError, apsw.CorruptError)):
            return NotADatabaseError(f"{self.path} is not a usable SQLite database ({_message(exc)})")
        if isinstance(exc, (apsw.CantOpenError, apsw.IOError, apsw.FullError)):
            return DatabaseUnavailableError(f"cannot use {self.path} ({_message(exc)})")
        if isinstance(exc, apsw.AuthError):
            return SQLError(d1_rules.refusal_message(self.conn) or _message(exc))
        return SQLError(_message(exc))


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
