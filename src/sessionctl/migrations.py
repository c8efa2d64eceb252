"""Migrations: discover, checksum, ledger, apply, roll back -- over the db interface.

The ledger is wrangler's own ``d1_migrations`` table (same schema, ``name`` = the
file name), so ``wrangler d1 migrations list`` and sessionctl agree on what is
applied. wrangler keeps no checksums; sessionctl keeps them in a table of its own
(``sessionctl_migration_checksums``) so the ledger stays exactly wrangler's.

Each file is applied as ONE batch -- ledger row first, then the file's statements,
then its checksum -- so the file and its ledger row commit together or not at all.
The ledger row goes first so that a second ``migrate`` racing this one fails on
the ledger's UNIQUE name before running any of the file, and rolls back cleanly.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from sessionctl.errors import (
    ConstraintError,
    MigrationFailedError,
    MigrationsDirError,
    ModifiedMigrationError,
    SQLError,
)
from sessionctl.names import CHECKSUM_TABLE, DEFAULT_LEDGER
from sessionctl.targets.base import Database, Statement

__all__ = ["CHECKSUM_TABLE", "DEFAULT_LEDGER"]  # re-exported: callers name them from here too

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LEADING_NUMBER = re.compile(r"^(\d+)")


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
        return split_statements(self.sql)


def bundled_migrations_dir() -> Path:
    """The migrations shipped with sessionctl: inside the wheel, or the repo's top folder."""
    packaged = Path(__file__).resolve().parent / "migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "migrations"


def _order_key(name: str) -> tuple[int, int, str]:
    match = _LEADING_NUMBER.match(name)
    return (0, int(match.group(1)), name) if match else (1, 0, name)


def discover_migrations(directory: Path) -> list[MigrationFile]:
    """``*.sql`` files in ``directory``, by leading number then name (as wrangler orders them)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MigrationsDirError(f"migrations folder not found: {directory}")
    files = []
    for path in sorted(directory.glob("*.sql"), key=lambda p: _order_key(p.name)):
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MigrationsDirError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        files.append(MigrationFile(path.name, path, text, hashlib.sha256(data).hexdigest()))
    return files


def split_statements(sql: str) -> list[str]:
    """Split a SQL script into complete statements, respecting strings, comments and triggers."""
    statements, buffer = [], ""
    for piece in re.split(r"(;)", sql):
        buffer += piece
        if piece == ";" and sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            if _has_code(statement):
                statements.append(statement)
            buffer = ""
    if _has_code(buffer):
        statements.append(buffer.strip())
    return statements


def _has_code(sql: str) -> bool:
    without_comments = re.sub(r"--[^\n]*|/\*.*?\*/", "", sql, flags=re.S)
    return bool(without_comments.strip(" \t\r\n;"))


# -- ledger and status -------------------------------------------------------------


@dataclass(frozen=True)
class MigrationState:
    name: str
    state: str  # applied | pending | modified | applied-without-file
    applied_at: str | None = None
    checksum: str | None = None  # match | mismatch | unrecorded (for applied ones)

    @property
    def detail(self) -> str:
        if self.state == "applied" and self.checksum == "unrecorded":
            return "no checksum recorded (applied outside sessionctl)"
        if self.state == "modified":
            return "file changed since it was applied"
        if self.state == "applied-without-file":
            return "in the ledger, no file in the migrations folder"
        return ""


def table_exists(db: Database, table: str) -> bool:
    rows = db.query("SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
    return bool(rows)


def read_ledger(db: Database, table: str = DEFAULT_LEDGER) -> dict[str, str]:
    """``{name: applied_at}`` for every ledger row, in the order they were applied."""
    check_table_name(table)
    if not table_exists(db, table):
        return {}
    rows = db.query(f"SELECT name, applied_at FROM {table} ORDER BY id")
    return {row["name"]: row["applied_at"] for row in rows}


def read_checksums(db: Database, table: str = DEFAULT_LEDGER) -> dict[str, str]:
    if not table_exists(db, CHECKSUM_TABLE):
        return {}
    rows = db.query(f"SELECT name, sha256 FROM {CHECKSUM_TABLE} WHERE ledger = ?", (table,))
    return {row["name"]: row["sha256"] for row in rows}


def migration_status(
    db: Database, files: list[MigrationFile], table: str = DEFAULT_LEDGER
) -> list[MigrationState]:
    """Every migration known to the folder or the ledger, with its state."""
    ledger = read_ledger(db, table)
    checksums = read_checksums(db, table)
    states = []
    for migration in files:
        if migration.name not in ledger:
            states.append(MigrationState(migration.name, "pending"))
            continue
        recorded = checksums.get(migration.name)
        if recorded is None:
            checksum = "unrecorded"
        else:
            checksum = "match" if recorded == migration.sha256 else "mismatch"
        state = "modified" if checksum == "mismatch" else "applied"
        states.append(MigrationState(migration.name, state, ledger[migration.name], checksum))
    on_disk = {migration.name for migration in files}
    for name, applied_at in ledger.items():
        if name not in on_disk:
            states.append(MigrationState(name, "applied-without-file", applied_at))
    return states


def unrecord_statements(db: Database, names: list[str], table: str = DEFAULT_LEDGER) -> list[Statement]:
    """The statements that forget ``names`` in the ledger and the checksum table (where they exist)."""
    statements = []
    if table_exists(db, table):
        statements += [Statement(f"DELETE FROM {table} WHERE name = ?", (name,)) for name in names]
    if table_exists(db, CHECKSUM_TABLE):
        statements += [
            Statement(f"DELETE FROM {CHECKSUM_TABLE} WHERE ledger = ? AND name = ?", (table, name))
            for name in names
        ]
    return statements


# -- apply -------------------------------------------------------------------------


@dataclass(frozen=True)
class ApplyOutcome:
    name: str
    outcome: str  # applied | applied-concurrently | would-apply


def plan_statements(migration: MigrationFile, table: str) -> list[Statement]:
    """The one batch that applies ``migration``: ledger row, its SQL, its checksum."""
    return [
        Statement(ledger_ddl(table)),
        Statement(CHECKSUM_DDL),
        Statement(f"INSERT INTO {table} (name) VALUES (?)", (migration.name,)),
        *(Statement(sql) for sql in migration.statements),
        Statement(
            f"INSERT OR REPLACE INTO {CHECKSUM_TABLE} (ledger, name, sha256) VALUES (?, ?, ?)",
            (table, migration.name, migration.sha256),
        ),
    ]


def pending_migrations(
    db: Database, files: list[MigrationFile], table: str = DEFAULT_LEDGER
) -> list[MigrationFile]:
    """The files not in the ledger; raises ModifiedMigrationError if an applied file changed."""
    states = {state.name: state for state in migration_status(db, files, table)}
    modified = [name for name, state in states.items() if state.state == "modified"]
    if modified:
        raise ModifiedMigrationError(modified)
    return [migration for migration in files if states[migration.name].state == "pending"]


def apply_migrations(
    db: Database, files: list[MigrationFile], table: str = DEFAULT_LEDGER
) -> Iterable[ApplyOutcome]:
    """Apply pending files in order, each in one transaction; yield what happened to each.

    A failing file raises MigrationFailedError naming it and SQLite's message; it
    leaves nothing of itself behind and the files before it stay applied.
    """
    check_table_name(table)
    for migration in pending_migrations(db, files, table):
        try:
            db.batch(plan_statements(migration, table))
        except ConstraintError as exc:
            if migration.name in read_ledger(db, table):
                # Another migrate committed this file first: its ledger row beat ours.
                yield ApplyOutcome(migration.name, "applied-concurrently")
                continue
            raise MigrationFailedError(migration.name, str(exc)) from exc
        except SQLError as exc:
            raise MigrationFailedError(migration.name, str(exc)) from exc
        yield ApplyOutcome(migration.name, "applied")
