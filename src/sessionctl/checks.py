"""``verify``'s checks, as data the CLI renders.

What is expected is what the applied migrations build: every file in the ledger is
replayed, in the order it was applied, into an in-memory database with the same
engine and D1 rules as ``migrate``, and that schema is compared object by object
with the target's. A 004 that adds a column or re-creates an index is therefore
judged by its own SQL; there is no hand-written copy of the schema to drift.
Migration 003's own promises are checked on top: the CHECK on status accepts the
five statuses and nothing else, and cleanup's query is planned on an index led by
``expires_at``.

Ledger rows without a file (a bot's 001/002 applied by wrangler from another
checkout) cannot be replayed: what only they could explain is reported as "cannot
be judged here", never as a failure.

What is read from the target is read up front, in two requests (``read_target``):
``sqlite_master``, then the ledger, the checksums, each table's and index's columns
and cleanup's query plan in one ``query_many``. Everything else happens in memory.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from sessionctl.errors import ConstraintError
from sessionctl.migrations import (
    MASTER_SQL,
    LedgerState,
    MigrationEngine,
    Replay,
    SchemaObject,
    State,
    ledger_reads,
    ledger_state,
    schema_objects,
    schema_objects_in,
)
from sessionctl.names import SESSIONS_MIGRATION, TABLE
from sessionctl.repository import CLEANUP_SELECT_SQL, STATUSES
from sessionctl.targets.base import Database, Row, Statement
from sessionctl.targets.sqlite_file import open_memory_database

NOT_JUDGED = "cannot be judged here"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    judged: bool = True  # False: nothing here can say whether it is right (ok stays True)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_checks(engine: MigrationEngine) -> list[Check]:
    """Every check verify reports, in order. Never writes to the target; reads it in two requests."""
    target = read_target(engine)
    checks = _ledger_checks(engine, target)
    checks += _schema_checks(engine, target)
    checks += _sessions_table_checks(target)
    return checks


@dataclass
class TargetSchema:
    """What verify reads from the target, all of it before judging anything."""

    objects: dict[str, SchemaObject]  # the bot's own objects
    ledger: LedgerState
    columns: dict[str, list[Row]]  # table -> PRAGMA table_info
    index_columns: dict[str, list[Row]]  # index -> PRAGMA index_info
    sessions_sql: str | None  # server_sessions' CREATE TABLE, if the table exists
    cleanup_plan: list[Row]  # EXPLAIN QUERY PLAN of cleanup's query (empty without the table)


def read_target(engine: MigrationEngine) -> TargetSchema:
    """Read what verify judges: ``sqlite_master``, then everything else in one ``query_many``."""
    db = engine.db
    (master,) = db.query_many([Statement(MASTER_SQL)])
    objects = schema_objects_in(master, engine.ledger)
    tables = {row["name"] for row in master if row["type"] == "table"}
    sessions = next((row["sql"] for row in master if row["type"] == "table" and row["name"] == TABLE), None)
    described = [name for name, obj in objects.items() if obj.type in ("table", "index")]
    ledger_part = ledger_reads(engine.ledger, tables)
    info_part = [Statement(f'PRAGMA {_INFO[objects[name].type]}("{_quoted(name)}")') for name in described]
    plan_part = [Statement(f"EXPLAIN QUERY PLAN {CLEANUP_SELECT_SQL}", (0, 1))] if sessions is not None else []
    reads = [*ledger_part, *info_part, *plan_part]
    answers = db.query_many(reads) if reads else []
    infos = dict(zip(described, answers[len(ledger_part): len(ledger_part) + len(info_part)]))
    return TargetSchema(
        objects=objects,
        ledger=ledger_state(engine.ledger, tables, answers[: len(ledger_part)]),
        columns={name: rows for name, rows in infos.items() if objects[name].type == "table"},
        index_columns={name: rows for name, rows in infos.items() if objects[name].type == "index"},
        sessions_sql=sessions,
        cleanup_plan=answers[-1] if plan_part else [],
    )


_INFO = {"table": "table_info", "index": "index_info"}


def _quoted(name: str) -> str:
    return name.replace('"', '""')


# -- the ledger ------------------------------------------------------------------------


def _ledger_checks(engine: MigrationEngine, target: TargetSchema) -> list[Check]:
    ledger = engine.ledger
    states = {state.name: state for state in engine.status(target.ledger)}
    state = states.get(SESSIONS_MIGRATION)
    if state is None or state.state is State.PENDING:
        first = Check("ledger", False, f"{ledger} does not record {SESSIONS_MIGRATION}")
    elif state.state is State.MODIFIED:
        first = Check("ledger", False,
                      f"{SESSIONS_MIGRATION} changed since it was applied (checksum differs from {ledger})")
    elif state.detail:
        first = Check("ledger", True, f"{ledger} records {SESSIONS_MIGRATION}; {state.detail}")
    else:
        first = Check("ledger", True, f"{ledger} records {SESSIONS_MIGRATION}, checksum matches")
    modified = [name for name, s in states.items() if s.state is State.MODIFIED]
    unchanged = Check(
        "migrations unchanged", not modified,
        f"changed since applied: {', '.join(modified)}" if modified
        else "no applied migration file was edited since it was applied",
    )
    checks = [first, unchanged]
    without_file = [name for name, s in states.items() if s.state is State.APPLIED_WITHOUT_FILE]
    if without_file:
        checks.append(Check("applied elsewhere", True,
                            f"{NOT_JUDGED}: {', '.join(without_file)} in {ledger}, no file in the folder",
                            judged=False))
    return checks


# -- the schema the applied migrations build -------------------------------------------


def _schema_checks(engine: MigrationEngine, target: TargetSchema) -> list[Check]:
    replay = engine.replay(engine.applied_names(target.ledger))
    try:
        return _compare(engine, replay, target)
    finally:
        replay.close()


def _compare(engine: MigrationEngine, replay: Replay, target: TargetSchema) -> list[Check]:
    expected = schema_objects(replay.db, engine.ledger)
    actual = target.objects
    checks: list[Check] = []
    if replay.stopped_at is not None and engine.file(replay.stopped_at) is not None:
        # A file that is in the ledger but fails when replayed: the target cannot be judged past it.
        checks.append(Check("replay", False, f"{replay.stopped_at} does not apply on the migrations "
                                             f"before it: {replay.reason}"))
    for name, want in expected.items():
        got = actual.get(name)
        if got is None:
            checks.append(Check(want.label, False, f"missing: the applied migrations create it ({_show(want)})"))
        elif (got.type, got.table, got.normalised_sql) != (want.type, want.table, want.normalised_sql):
            difference = (_column_difference(replay.db, target.columns.get(name, []), name)
                          if want.type == got.type == "table" else "")
            checks.append(Check(want.label, False, difference or
                                f"defined differently: expected {_show(want)}, found {_show(got)}"))
        else:
            checks.append(Check(want.label, True, _summary(target, got)))
    for name, got in actual.items():
        if name in expected:
            continue
        if replay.complete:
            checks.append(Check(got.label, False, f"extra: no applied migration creates it ({_show(got)})"))
        else:
            checks.append(Check(got.label, True, f"{NOT_JUDGED}: the ledger holds migrations that are not "
                                                 "in this folder", judged=False))
    return checks


def _columns(rows: list[Row]) -> dict[str, tuple]:
    return {r["name"]: (r["name"], str(r["type"]).upper(), bool(r["notnull"]), int(r["pk"])) for r in rows}


def _describe_column(column: tuple) -> str:
    name, type_, notnull, pk = column
    return f"{name} {type_}" + (" NOT NULL" if notnull else "") + (" PK" if pk else "")


def _column_difference(expected_db: Database, actual: list[Row], table: str) -> str:
    """Column by column, what the target's table (``actual``: its table_info) lacks, adds or
    defines otherwise ("" if nothing)."""
    want = _columns(expected_db.query(f'PRAGMA table_info("{_quoted(table)}")'))
    got = _columns(actual)
    problems = [f"missing {name}" for name in want if name not in got]
    problems += [f"unexpected {name}" for name in got if name not in want]
    problems += [f"{name} is {_describe_column(got[name])}, expected {_describe_column(want[name])}"
                 for name in want if name in got and got[name] != want[name]]
    return "; ".join(problems)


def _show(obj: SchemaObject, limit: int = 160) -> str:
    text = obj.normalised_sql or f"automatic {obj.type} on {obj.table}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _summary(target: TargetSchema, obj: SchemaObject) -> str:
    if obj.type == "table":
        return f"as the applied migrations build it ({len(target.columns.get(obj.name, []))} columns)"
    if obj.type == "index":
        columns = target.index_columns.get(obj.name, [])
        return f"as the applied migrations build it, on {obj.table}({', '.join(str(c['name']) for c in columns)})"
    return f"as the applied migrations build it, on {obj.table}"


# -- migration 003's own promises --------------------------------------------------------


def _sessions_table_checks(target: TargetSchema) -> list[Check]:
    if target.sessions_sql is None:
        return [Check("status check", False, f"no table {TABLE} to check"),
                Check("cleanup uses index", False, f"no table {TABLE} to plan against")]
    accepted, rejected = _status_check_behaviour(target.sessions_sql)
    ok = accepted == list(STATUSES)
    checks = [Check(
        "status check", ok,
        f"CHECK accepts the {len(STATUSES)} statuses, rejects {', '.join(map(repr, rejected))}" if ok
        else f"CHECK accepts {accepted}; expected exactly {list(STATUSES)}",
    )]
    steps = " / ".join(str(row.get("detail")) for row in target.cleanup_plan)
    # An index led by expires_at: 003's own, or one a later migration re-created with more columns.
    uses = re.search(r"USING (?:COVERING )?INDEX \S+ \(expires_at[<>=]", steps) is not None
    checks.append(Check("cleanup uses index", uses,
                        f"plan: {steps}" if uses else f"cleanup would not use an index led by expires_at: {steps}"))
    return checks


def _status_check_behaviour(table_sql: str) -> tuple[list[str], list[str]]:
    """Replay the target's own CREATE TABLE in memory; which statuses does its CHECK accept?"""
    probes = list(STATUSES) + ["bogus", "GATHERING", "", "completed "]
    db = open_memory_database("the status CHECK, in memory")
    accepted, rejected = [], []
    try:
        db.execute(table_sql)
        # Columns that must be given (NOT NULL, no default) get 0, the rest are left out,
        # so only the CHECK on status decides -- whatever later migrations added.
        required = [row["name"] for row in db.query(f"PRAGMA table_info({TABLE})")
                    if row["notnull"] and row["dflt_value"] is None]
        for status in probes:
            values = {name: 0 for name in required}
            values.update(user_id=f"probe-{status}", status=status)
            try:
                db.execute(
                    f"INSERT INTO {TABLE} ({', '.join(values)}) VALUES ({', '.join('?' for _ in values)})",
                    tuple(values.values()),
                )
                accepted.append(status)
            except ConstraintError:
                rejected.append(status)
    finally:
        db.close()
    return accepted, rejected
