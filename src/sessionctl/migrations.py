"""Migrations: discover, checksum, ledger, apply, roll back -- over the db interface.

The ledger is wrangler's own ``d1_migrations`` table (same schema, ``name`` = the
file name), so ``wrangler d1 migrations list`` and sessionctl agree on what is
applied. wrangler keeps no checksums; sessionctl keeps them in a table of its own
(``sessionctl_migration_checksums``) so the ledger stays exactly wrangler's.

Files are found, ordered and read exactly as wrangler reads them
(``sessionctl.wrangler_sql``): the same statements reach the engine, comments
stripped, a ``BEGIN TRANSACTION;``/``COMMIT;`` wrapper removed, wrangler's own
ledger INSERT last. Each file is applied as ONE transaction -- its statements, its
ledger row, its checksum -- so the file and its ledger row commit together or
not at all. Remote D1 gets it as ONE ``sql`` text (the statements joined with
``;``, the checksum written in as literals), the form D1 documents as one
transaction and the one wrangler sends. A second ``migrate`` racing this one
fails on the ledger's UNIQUE name (or on the file's own objects, already there)
and its transaction rolls back; finding the name in the ledger then tells it the
file was applied meanwhile.

Reading where things stand costs at most two requests: which of the two tables
exist, then both of them in one ``query_many``.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from sessionctl.errors import (
    MigrationFailedError,
    MigrationsDirError,
    ModifiedMigrationError,
    RequestTooLargeError,
    SQLError,
)
from sessionctl.names import CHECKSUM_TABLE, DEFAULT_LEDGER, OWN_TABLE_PREFIX
from sessionctl.targets.base import Database, Row, Statement, inline
from sessionctl.wrangler_sql import (
    SeveralTransactionsError,
    SqlStatement,
    TransactionControlError,
    read_migration,
    split_sql,
    wrangler_order,
)

# CHECKSUM_TABLE and DEFAULT_LEDGER are re-exported: callers name them from here too.

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# What D1 answers a BEGIN, COMMIT, ROLLBACK or SAVEPOINT with, word for word.
D1_REFUSES_TRANSACTIONS = (
    "To execute a transaction, please use the state.storage.transaction() or "
    "state.storage.transactionSync() APIs instead of the SQL BEGIN TRANSACTION or SAVEPOINT statements"
)


def ledger_ddl(table: str) -> str:
    """wrangler's ledger statement (4.x), byte for byte but for the table name.

    Identical text means identical ``sqlite_master.sql`` whichever tool made the ledger.
    """
    return (
        f"CREATE TABLE IF NOT EXISTS {table}(\n"
        "\t\tid         INTEGER PRIMARY KEY AUTOINCREMENT,\n"
        "\t\tname       TEXT UNIQUE,\n"
        "\t\tapplied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL\n"
        ");"
    )


CHECKSUM_DDL = (
    f"CREATE TABLE IF NOT EXISTS {CHECKSUM_TABLE}(ledger TEXT NOT NULL, name TEXT NOT NULL, "
    "sha256 TEXT NOT NULL, PRIMARY KEY (ledger, name))"
)


def check_table_name(table: str) -> str:
    if not _IDENTIFIER.match(table) or table.lower().startswith(("sqlite_", "_cf_")):
        raise MigrationsDirError(f"invalid migrations table name: {table!r}")
    return table


# -- files -----------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationFile:
    name: str
    path: Path
    sql: str
    sha256: str

    @property
    def statements(self) -> list[str]:
        """The file's own statements as D1 receives them (no ledger INSERT)."""
        return [statement.sql for statement in split_sql(self.sql)]

    def statements_for(self, ledger: str) -> list[SqlStatement]:
        """What applying the file sends: its statements, then wrangler's ledger INSERT.

        Raises MigrationFailedError, before anything runs, for a file D1 would refuse
        part-way through (transaction control inside it).
        """
        try:
            return read_migration(self.sql, ledger, self.name)
        except SeveralTransactionsError as exc:
            raise MigrationFailedError(
                self.name,
                "could not process the provided SQL file, as it contains several transactions "
                "(a second BEGIN TRANSACTION; D1 runs each file in one transaction of its own)",
                exc.line,
            ) from None
        except TransactionControlError as exc:
            raise MigrationFailedError(
                self.name,
                f"{exc.keyword}: {D1_REFUSES_TRANSACTIONS} (D1 runs each file in one transaction "
                "of its own; only a BEGIN TRANSACTION;/COMMIT; wrapper around the whole file is removed)",
                exc.line,
            ) from None


def bundled_migrations_dir() -> Path:
    """The migrations shipped with sessionctl: inside the wheel, or the repo's top folder."""
    packaged = Path(__file__).resolve().parent / "migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "migrations"


def discover_migrations(directory: Path) -> list[MigrationFile]:
    """Every ``*.sql`` entry in ``directory`` (hidden ones too), in wrangler's order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MigrationsDirError(f"migrations folder not found: {directory}")
    names = [name for name in os.listdir(directory) if name.endswith(".sql")]
    files = []
    for name in wrangler_order(names):
        path = directory / name
        if not path.is_file():
            raise MigrationsDirError(f"{path}: not a file (wrangler reads every *.sql entry as a migration)")
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MigrationsDirError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        files.append(MigrationFile(name, path, text, hashlib.sha256(data).hexdigest()))
    return files


# -- ledger and status -------------------------------------------------------------


class State(str, enum.Enum):
    """Where a migration stands (the values are what ``status`` prints)."""

    APPLIED = "applied"
    PENDING = "pending"
    MODIFIED = "modified"  # applied, and its file changed since
    APPLIED_WITHOUT_FILE = "applied-without-file"  # in the ledger, not in the folder

    def __str__(self) -> str:
        return self.value


class Checksum(str, enum.Enum):
    MATCH = "match"
    MISMATCH = "mismatch"
    UNRECORDED = "unrecorded"  # applied by wrangler or by hand: nothing to compare with

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class MigrationState:
    name: str
    state: State
    applied_at: str | None = None
    checksum: Checksum | None = None  # for applied ones

    @property
    def detail(self) -> str:
        if self.state is State.APPLIED and self.checksum is Checksum.UNRECORDED:
            return "no checksum recorded (applied outside sessionctl)"
        if self.state is State.MODIFIED:
            return "file changed since it was applied"
        if self.state is State.APPLIED_WITHOUT_FILE:
            return "in the ledger, no file in the migrations folder"
        return ""


def table_exists(db: Database, table: str) -> bool:
    rows = db.query("SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
    return bool(rows)


_TABLES_SQL = "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)"


@dataclass(frozen=True)
class LedgerState:
    """What the ledger and the checksum table hold (each empty when its table is missing)."""

    ledger_exists: bool
    applied: dict[str, str]  # name -> applied_at, in the order they were applied
    checksums: dict[str, str]  # name -> sha256


def ledger_reads(table: str, tables: set[str]) -> list[Statement]:
    """The reads of the ledger and checksum table, for those of them in ``tables`` (which exist)."""
    reads = []
    if table in tables:
        reads.append(Statement(f"SELECT name, applied_at FROM {table} ORDER BY id"))
    if CHECKSUM_TABLE in tables:
        reads.append(Statement(f"SELECT name, sha256 FROM {CHECKSUM_TABLE} WHERE ledger = ?", (table,)))
    return reads


def ledger_state(table: str, tables: set[str], answers: list[list[Row]]) -> LedgerState:
    """The LedgerState from the answers to ``ledger_reads(table, tables)``, in their order."""
    answers = list(answers)
    applied = {row["name"]: row["applied_at"] for row in answers.pop(0)} if table in tables else {}
    checksums = {row["name"]: row["sha256"] for row in answers.pop(0)} if CHECKSUM_TABLE in tables else {}
    return LedgerState(table in tables, applied, checksums)


def read_ledger_state(db: Database, table: str = DEFAULT_LEDGER) -> LedgerState:
    """The ledger and the checksums, in at most two requests (one when neither table exists)."""
    check_table_name(table)
    (present,) = db.query_many([Statement(_TABLES_SQL, (table, CHECKSUM_TABLE))])
    tables = {row["name"] for row in present}
    reads = ledger_reads(table, tables)
    return ledger_state(table, tables, db.query_many(reads) if reads else [])


def read_ledger(db: Database, table: str = DEFAULT_LEDGER) -> dict[str, str]:
    """``{name: applied_at}`` for every ledger row, in the order they were applied."""
    return read_ledger_state(db, table).applied


def read_checksums(db: Database, table: str = DEFAULT_LEDGER) -> dict[str, str]:
    return read_ledger_state(db, table).checksums


def migration_status(
    db: Database, files: list[MigrationFile], table: str = DEFAULT_LEDGER, state: LedgerState | None = None
) -> list[MigrationState]:
    """Every migration known to the folder or the ledger, with its state (``state``: already read)."""
    state = state or read_ledger_state(db, table)
    ledger, checksums = state.applied, state.checksums
    states = []
    for migration in files:
        if migration.name not in ledger:
            states.append(MigrationState(migration.name, State.PENDING))
            continue
        recorded = checksums.get(migration.name)
        if recorded is None:
            checksum = Checksum.UNRECORDED
        else:
            checksum = Checksum.MATCH if recorded == migration.sha256 else Checksum.MISMATCH
        state_of = State.MODIFIED if checksum is Checksum.MISMATCH else State.APPLIED
        states.append(MigrationState(migration.name, state_of, ledger[migration.name], checksum))
    on_disk = {migration.name for migration in files}
    for name, applied_at in ledger.items():
        if name not in on_disk:
            states.append(MigrationState(name, State.APPLIED_WITHOUT_FILE, applied_at))
    return states


def unrecord_statements(db: Database, names: list[str], table: str = DEFAULT_LEDGER,
                        state: LedgerState | None = None) -> list[Statement]:
    """The statements that forget ``names`` in the ledger and the checksum table (where they exist)."""
    if state is None:
        (present,) = db.query_many([Statement(_TABLES_SQL, (table, CHECKSUM_TABLE))])
        tables = {row["name"] for row in present}
    else:
        tables = {table} if state.ledger_exists else set()
        tables |= {CHECKSUM_TABLE} if state.checksums else set()
    statements = []
    if table in tables:
        statements += [Statement(f"DELETE FROM {table} WHERE name = ?", (name,)) for name in names]
    if CHECKSUM_TABLE in tables:
        statements += [
            Statement(f"DELETE FROM {CHECKSUM_TABLE} WHERE ledger = ? AND name = ?", (table, name))
            for name in names
        ]
    return statements


# -- apply -------------------------------------------------------------------------


class Outcome(str, enum.Enum):
    APPLIED = "applied"
    APPLIED_CONCURRENTLY = "applied-concurrently"  # another migrate committed it first

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ApplyOutcome:
    name: str
    outcome: Outcome


def ledger_statements(table: str) -> list[Statement]:
    """Create the ledger (and the checksum table) if missing: a step of its own, as in wrangler,
    so the ledger exists even when the first file fails."""
    return [Statement(ledger_ddl(table)), Statement(CHECKSUM_DDL)]


def plan_statements(migration: MigrationFile, table: str) -> list[Statement]:
    """The one transaction that applies ``migration``: its statements, its ledger row, its checksum.

    No parameters (the checksum row's values are written in as literals): remote D1 takes
    the whole as one ``sql`` text, which may carry parameters only on its last statement.
    """
    return [
        *ledger_statements(table),
        *(Statement(statement.sql, from_user=True) for statement in migration.statements_for(table)),
        inline(Statement(
            f"INSERT OR REPLACE INTO {CHECKSUM_TABLE} (ledger, name, sha256) VALUES (?, ?, ?)",
            (table, migration.name, migration.sha256),
        )),
    ]


def pending_migrations(
    db: Database, files: list[MigrationFile], table: str = DEFAULT_LEDGER, state: LedgerState | None = None
) -> list[MigrationFile]:
    """The files not in the ledger; raises ModifiedMigrationError if an applied file changed."""
    states = {s.name: s for s in migration_status(db, files, table, state)}
    modified = [name for name, state in states.items() if state.state is State.MODIFIED]
    if modified:
        raise ModifiedMigrationError(modified)
    return [migration for migration in files if states[migration.name].state is State.PENDING]


def apply_migrations(
    db: Database, files: list[MigrationFile], table: str = DEFAULT_LEDGER
) -> Iterable[ApplyOutcome]:
    """Apply pending files in order, each in one transaction; yield what happened to each.

    A failing file raises MigrationFailedError naming it and SQLite's message; it
    leaves nothing of itself behind and the files before it stay applied.
    """
    check_table_name(table)
    state = read_ledger_state(db, table)
    pending = {migration.name: migration for migration in pending_migrations(db, files, table, state)}
    if not state.ledger_exists and pending:
        db.batch(ledger_statements(table))
    for name in wrangler_order(list(pending)):
        migration = pending[name]
        statements = plan_statements(migration, table)
        try:
            db.script(statements)
        except RequestTooLargeError as exc:
            raise MigrationFailedError(
                migration.name,
                f"it is {exc.size:,} bytes of SQL with its ledger row, and D1 takes at most {exc.limit:,} "
                "in the one request that applies a file whole; split it into smaller migrations") from None
        except SQLError as exc:
            if _recorded(db, table, migration.name):
                # Another migrate committed this file first: our transaction failed on its
                # ledger row (or on its objects) and rolled back.
                yield ApplyOutcome(migration.name, Outcome.APPLIED_CONCURRENTLY)
                continue
            raise MigrationFailedError(migration.name, str(exc), _failed_line(exc, migration, table)) from exc
        yield ApplyOutcome(migration.name, Outcome.APPLIED)


def _recorded(db: Database, table: str, name: str) -> bool:
    # The ledger exists by now (it is created before the first file): one read.
    return bool(db.query(f"SELECT 1 AS x FROM {table} WHERE name = ?", (name,)))


def _failed_line(exc: SQLError, migration: MigrationFile, table: str) -> int | None:
    """The file's line where the failing statement starts, when the target says which it was."""
    failed = getattr(exc, "statement_index", None)
    statements = migration.statements_for(table)
    index = None if failed is None else failed - 2  # after the ledger and checksum DDL
    if index is None or not 0 <= index < len(statements):
        return None
    return statements[index].line


# -- the engine: one object for a folder, a ledger and a database --------------------------


class MigrationEngine:
    """The migrations folder, the ledger table and the database, checked once, used by every step.

    ``status``, ``pending``, ``apply`` and ``replay`` are the migration steps; ``migrate``,
    ``status``, ``verify``, ``rollback`` and ``deploy`` all go through one of these.
    """

    def __init__(self, db: Database, files: list[MigrationFile], ledger: str = DEFAULT_LEDGER):
        self.db = db
        self.files = list(files)
        self.ledger = check_table_name(ledger)

    @classmethod
    def from_folder(cls, db: Database, folder: Path, ledger: str = DEFAULT_LEDGER) -> "MigrationEngine":
        return cls(db, discover_migrations(folder), ledger)

    def file(self, name: str) -> MigrationFile | None:
        return next((migration for migration in self.files if migration.name == name), None)

    def ledger_state(self) -> LedgerState:
        """The ledger and the checksums, read in at most two requests."""
        return read_ledger_state(self.db, self.ledger)

    def status(self, state: LedgerState | None = None) -> list[MigrationState]:
        return migration_status(self.db, self.files, self.ledger, state)

    def applied_names(self, state: LedgerState | None = None) -> list[str]:
        """The ledger's names, in the order they were applied."""
        return list((state or self.ledger_state()).applied)

    def pending(self) -> list[MigrationFile]:
        return pending_migrations(self.db, self.files, self.ledger)

    def plan(self, migration: MigrationFile) -> list[Statement]:
        return plan_statements(migration, self.ledger)

    def apply(self) -> Iterable[ApplyOutcome]:
        return apply_migrations(self.db, self.files, self.ledger)

    def unrecord_statements(self, names: list[str], state: LedgerState | None = None) -> list[Statement]:
        return unrecord_statements(self.db, names, self.ledger, state)

    def replay(self, names: list[str]) -> "Replay":
        """Apply the files ``names`` in order to a new in-memory database, as ``migrate`` would.

        Stops at the first name without a file or whose file fails there; the Replay says
        which, so what it built can still be judged up to that point.
        """
        from sessionctl.targets.sqlite_file import open_memory_database

        memory = open_memory_database("the applied migrations, replayed in memory")
        replayed, stopped, reason = [], None, None
        for name in names:
            migration = self.file(name)
            if migration is None:
                stopped, reason = name, "no file in the migrations folder"
                break
            try:
                list(apply_migrations(memory, [migration], self.ledger))
            except MigrationError as exc:
                stopped, reason = name, str(exc)
                break
            replayed.append(name)
        return Replay(memory, replayed, stopped, reason)


@dataclass
class Replay:
    """An in-memory database built by replaying migrations, and how far the replay got."""

    db: Database
    replayed: list[str]
    stopped_at: str | None = None  # the first name that could not be replayed
    reason: str | None = None

    @property
    def complete(self) -> bool:
        return self.stopped_at is None

    def close(self) -> None:
        self.db.close()


# What a schema is made of, for comparing two: user objects only. SQLite's own (sqlite_*),
# D1's (_cf_*), the ledger and sessionctl's own tables (checksums, an import's staging table,
# a rollback's copy) are bookkeeping, not the bot's schema.
_SCHEMA_SQL = (
    "SELECT type, name, tbl_name, sql FROM sqlite_master "
    "WHERE lower(substr(name, 1, 7)) != 'sqlite_' AND substr(name, 1, 4) != '_cf_' "
    f"AND substr(name, 1, {len(OWN_TABLE_PREFIX)}) != '{OWN_TABLE_PREFIX}' "
    "AND name != ? ORDER BY type, name"
)
MASTER_SQL = "SELECT type, name, tbl_name, sql FROM sqlite_master"


@dataclass(frozen=True)
class SchemaObject:
    type: str  # table | index | view | trigger
    name: str
    table: str
    sql: str | None  # as stored; None for SQLite's automatic indexes

    @property
    def normalised_sql(self) -> str:
        """The definition with comments and layout removed: what the object IS, not how it was typed."""
        if self.sql is None:
            return ""
        text = " ".join(statement.sql for statement in split_sql(self.sql))
        return " ".join(text.split())

    @property
    def label(self) -> str:
        return f"{self.type} {self.name}"


def schema_objects(db: Database, ledger: str = DEFAULT_LEDGER) -> dict[str, SchemaObject]:
    """The database's own objects by name (no sqlite_*, _cf_*, ledger or sessionctl_* table)."""
    rows = db.query(_SCHEMA_SQL, (ledger,))
    return {row["name"]: SchemaObject(row["type"], row["name"], row["tbl_name"], row["sql"]) for row in rows}


def schema_objects_in(master: list[Row], ledger: str = DEFAULT_LEDGER) -> dict[str, SchemaObject]:
    """As ``schema_objects``, from every row of ``MASTER_SQL`` already read (same rule, same order)."""
    own = [row for row in master
           if row["name"][:7].lower() != "sqlite_" and not row["name"].startswith("_cf_")
           and not row["name"].startswith(OWN_TABLE_PREFIX) and row["name"] != ledger]
    own.sort(key=lambda row: (row["type"], row["name"]))  # code point order is UTF-8's byte order
    return {row["name"]: SchemaObject(row["type"], row["name"], row["tbl_name"], row["sql"]) for row in own}
