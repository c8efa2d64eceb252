"""``verify``'s checks, as data the CLI renders.

What is expected is derived from migration 003 itself: its SQL is applied to an
in-memory SQLite database and that schema is read back the same way the
target's is. There is no second, hand-written copy of the schema to drift.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Callable

from sessionctl.migrations import (
    DEFAULT_LEDGER,
    MigrationFile,
    migration_status,
)
from sessionctl.names import INDEX, TABLE
from sessionctl.repository import CLEANUP_SELECT_SQL, STATUSES
from sessionctl.errors import ConstraintError
from sessionctl.targets.base import Database, Statement
from sessionctl.targets.sqlite_file import open_memory_database


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _schema(db: Any) -> dict[str, Any]:
    """Table SQL, columns and the index's columns, read through sqlite_master and PRAGMAs."""
    table = db.query(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
    )
    index = db.query(
        "SELECT tbl_name, sql FROM sqlite_master WHERE type = 'index' AND name = ?", (INDEX,)
    )
    columns = db.query(f"PRAGMA table_info({TABLE})") if table else []
    index_columns = db.query(f"PRAGMA index_info({INDEX})") if index else []
    return {
        "table_sql": table[0]["sql"] if table else None,
        "index_table": index[0]["tbl_name"] if index else None,
        "index_columns": [row["name"] for row in index_columns],
        "columns": [
            (row["name"], row["type"].upper(), bool(row["notnull"]), int(row["pk"]))
            for row in columns
        ],
    }


def expected_schema(migration: MigrationFile) -> dict[str, Any]:
    db = open_memory_database("the migration, in memory")
    try:
        db.batch(Statement(sql, from_user=True) for sql in migration.statements)
        return _schema(db)
    finally:
        db.close()


def _describe_column(column: tuple) -> str:
    name, type_, notnull, pk = column
    return f"{name} {type_}" + (" NOT NULL" if notnull else "") + (" PK" if pk else "")


def _status_check_behaviour(table_sql: str) -> tuple[list[str], list[str]]:
    """Replay the target's own CREATE TABLE in memory; which statuses does its CHECK accept?"""
    probes = list(STATUSES) + ["bogus", "GATHERING", "", "completed "]
    db = open_memory_database("the status CHECK, in memory")
    accepted, rejected = [], []
    try:
        db.execute(table_sql)
        for status in probes:
            try:
                db.execute(
                    f"INSERT INTO {TABLE} (user_id, status, created_at, updated_at, expires_at) "
                    "VALUES (?, ?, 0, 0, 0)",
                    (f"probe-{status}", status),
                )
                accepted.append(status)
            except ConstraintError:
                rejected.append(status)
    finally:
        db.close()
    return accepted, rejected


def run_checks(
    db: Database,
    migration: MigrationFile,
    ledger: str = DEFAULT_LEDGER,
    all_migrations: list[MigrationFile] | None = None,
) -> list[Check]:
    """Every check verify reports, in order. Never writes to ``db``.

    ``all_migrations`` (the whole folder) adds a check that no applied file was edited.
    """
    expected = expected_schema(migration)
    actual = _schema(db)
    checks: list[Check] = []
    add: Callable[[str, bool, str], None] = lambda n, ok, d: checks.append(Check(n, ok, d))

    has_table = actual["table_sql"] is not None
    add("table", has_table,
        f"sqlite_master has table {TABLE}" if has_table else f"no table {TABLE} in sqlite_master")

    want_index = f"{INDEX} on {expected['index_table']}({', '.join(expected['index_columns'])})"
    got_index = (
        f"{INDEX} on {actual['index_table']}({', '.join(actual['index_columns'])})"
        if actual["index_table"] else None
    )
    add("index", got_index == want_index,
        f"sqlite_master has index {want_index}" if got_index == want_index
        else f"expected index {want_index}, found {got_index or 'none'}")

    if actual["columns"] == expected["columns"]:
        add("columns", True, f"{len(expected['columns'])} columns as in {migration.name}")
    elif not actual["columns"]:
        add("columns", False, f"no columns: table {TABLE} is missing")
    else:
        want = {c[0]: c for c in expected["columns"]}
        got = {c[0]: c for c in actual["columns"]}
        problems = [f"missing {name}" for name in want if name not in got]
        problems += [f"unexpected {name}" for name in got if name not in want]
        problems += [
            f"{name} is {_describe_column(got[name])}, expected {_describe_column(want[name])}"
            for name in want if name in got and got[name] != want[name]
        ]
        if not problems:
            problems = ["column order differs from the migration"]
        add("columns", False, "; ".join(problems))

    if has_table:
        accepted, rejected = _status_check_behaviour(actual["table_sql"])
        ok = accepted == list(STATUSES)
        detail = (
            f"CHECK accepts the {len(STATUSES)} statuses, rejects {', '.join(map(repr, rejected))}"
            if ok else
            f"CHECK accepts {accepted}; expected exactly {list(STATUSES)}"
        )
        add("status check", ok, detail)
    else:
        add("status check", False, f"no table {TABLE} to check")

    if has_table:
        plan = db.query(f"EXPLAIN QUERY PLAN {CLEANUP_SELECT_SQL}", (0, 1))
        steps = " / ".join(str(row.get("detail")) for row in plan)
        uses = re.search(rf"\b{INDEX}\b", steps) is not None
        add("cleanup uses index", uses,
            f"plan: {steps}" if uses else f"cleanup would not use {INDEX}: {steps}")
    else:
        add("cleanup uses index", False, f"no table {TABLE} to plan against")

    states = migration_status(db, all_migrations or [migration], ledger)
    state = next((s for s in states if s.name == migration.name), None)
    if state is None or state.state == "pending":
        add("ledger", False, f"{ledger} does not record {migration.name}")
    elif state.state == "modified":
        add("ledger", False,
            f"{migration.name} changed since it was applied (checksum differs from {ledger})")
    elif state.checksum == "unrecorded":
        add("ledger", True, f"{ledger} records {migration.name}; no checksum recorded (applied outside sessionctl)")
    else:
        add("ledger", True, f"{ledger} records {migration.name}, checksum matches")

    if all_migrations is not None:
        modified = [s.name for s in states if s.state == "modified"]
        add("migrations unchanged", not modified,
            f"changed since applied: {', '.join(modified)}" if modified
            else "no applied migration file was edited since it was applied")
    return checks
