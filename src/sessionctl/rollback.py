"""Roll back migration 003 as the seed's rollback plan says -- after a verified backup.

The seed's rollback plan::

    DROP TABLE IF EXISTS server_sessions;
    DROP INDEX IF EXISTS idx_server_sessions_expires;

This is the one rollback: ``sessionctl rollback`` and ``deploy --rollback-on-failure``
both plan and run it here. Its invariant: afterwards the ledger never records a
migration whose objects are gone, and never unrecords one whose objects remain.

- Migrations applied after 003 that change ``server_sessions`` (a column, an index, a
  trigger on it) lose their objects with the table: rolling back refuses by default and
  names them; ``through_later=True`` drops the table and unrecords them with 003.
  Which later files touch the table is decided by replaying them in memory and
  comparing the table's objects before and after each one, not by reading their text.
- Later migrations that touch other tables only keep their objects, so they stay recorded.
- The backup holds every column the table has now (later ones included), and its rows
  restore through ``sessions import``; it is read by key, a page per request on remote D1.
  The backup is written from a copy of the table taken in one transaction
  (``sessionctl_rollback_<run>``), and the drop runs in ONE transaction (on remote D1 one
  ``sql`` text, the form D1 documents as atomic) that starts with a guard comparing the
  table with that copy, every column of every row: if anything changed after the copy
  (a save that kept ``updated_at`` included), nothing is dropped. The copy goes with it.
- On remote D1 a Time Travel bookmark is taken after the backup and before the drop, and
  the wrangler command that restores the whole database to it is handed to the caller
  and written beside the backup (``<backup>.restore.txt``). Without a bookmark nothing is
  dropped, unless the caller says so (``require_bookmark=False``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from sessionctl.backup import write_rows_file, write_text_file
from sessionctl.errors import LaterMigrationsError, NoRestorePointError, RollbackError, SessionctlError, SQLError
from sessionctl.migrations import MigrationEngine, SchemaObject, schema_objects, table_exists
from sessionctl.names import INDEX, ROLLBACK_COPY_PREFIX, SESSIONS_MIGRATION, TABLE
from sessionctl.repository import COLUMNS
from sessionctl.targets.base import Database, RestorePoint, Row, Statement, SupportsTimeTravel

MIGRATION_NAME = SESSIONS_MIGRATION
SEED_ROLLBACK_SQL = (
    f"DROP TABLE IF EXISTS {TABLE}",
    f"DROP INDEX IF EXISTS {INDEX}",
)

def _guard_sql(copy: str) -> str:
    """Fails the whole transaction (json() of non-JSON raises) unless the table still equals
    ``copy``, the copy the backup was written from: every column of every row, both ways.

    An INSERT of no row rather than a SELECT: D1 keeps a SELECT that is not the last statement
    of a text open, and a DROP TABLE after it then fails with "database table is locked".
    """
    return (
        f"INSERT INTO {TABLE} (user_id) SELECT NULL WHERE "
        f"CASE WHEN NOT EXISTS (SELECT * FROM {TABLE} EXCEPT SELECT * FROM {copy}) "
        f"AND NOT EXISTS (SELECT * FROM {copy} EXCEPT SELECT * FROM {TABLE}) "
        "THEN 0 ELSE json('server_sessions changed after the backup') END"
    )


def _drop(table: str) -> Statement:
    return Statement(f"DROP TABLE IF EXISTS {table}", repeatable=True)


@dataclass
class RollbackPlan:
    table_exists: bool
    rows: int
    in_ledger: bool
    statements: list[Statement]
    later: list[str] = field(default_factory=list)  # unrecorded with 003 (through_later)
    kept: list[str] = field(default_factory=list)  # applied after 003, other tables only: stay recorded

    @property
    def needed(self) -> bool:
        return self.table_exists or self.in_ledger


@dataclass
class RollbackOutcome:
    rows_backed_up: int | None
    backup_path: Path | None
    restore_point: RestorePoint | None = None  # remote D1: how to undo the whole rollback
    restore_file: Path | None = None  # where that command was written (beside the backup)


def _count(db: Database) -> int:
    return db.query(f"SELECT count(*) AS n FROM {TABLE}")[0]["n"]


def _copy_statements(db: Database, copy: str) -> tuple[list[Statement], tuple[str, ...]]:
    """Drop the copies killed rollbacks left, and copy the table now into ``copy``, in one
    transaction (its last statement's ``changes`` is how many rows were copied); with the
    table's columns.

    The copy has the table's columns in its order (so ``SELECT *`` of both compare) and
    user_id as its key (so a remote backup reads it a page at a time by key). A rollback
    running at the same time loses its copy here, and its guard then drops nothing.
    """
    info, stale = db.query_many([
        Statement(f"PRAGMA table_info({TABLE})"),
        Statement("SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, ?) = ?",
                  (len(ROLLBACK_COPY_PREFIX), ROLLBACK_COPY_PREFIX)),
    ])
    definition = ", ".join(
        f"{_quote(row['name'])} {row['type'] or ''}".rstrip() + (" PRIMARY KEY" if row["name"] == "user_id" else "")
        for row in info)
    return [
        *(_drop(_quote(row["name"])) for row in stale),
        Statement(f"CREATE TABLE {copy} ({definition})", repeatable=True),
        Statement(f"INSERT INTO {copy} SELECT * FROM {TABLE}", repeatable=True),
    ], tuple(row["name"] for row in info)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def plan_rollback(engine: MigrationEngine, *, through_later: bool = False) -> RollbackPlan:
    """What rolling back 003 means on this target now; raises LaterMigrationsError if later
    migrations changed the table and ``through_later`` is not given."""
    db = engine.db
    state = engine.ledger_state()
    has_table = table_exists(db, TABLE)
    rows = _count(db) if has_table else 0
    applied = engine.applied_names(state)
    in_ledger = MIGRATION_NAME in applied
    touching, kept = later_migrations(engine, applied)
    if touching and not through_later:
        raise LaterMigrationsError(touching)
    statements = [Statement(sql) for sql in SEED_ROLLBACK_SQL]
    statements += engine.unrecord_statements([MIGRATION_NAME, *touching], state)
    return RollbackPlan(has_table, rows, in_ledger, statements, touching, kept)


def later_migrations(engine: MigrationEngine, applied: list[str]) -> tuple[list[str], list[str]]:
    """The migrations applied after 003, split into (those that change server_sessions, the rest).

    Raises RollbackError for a later file that changes the table AND creates objects
    elsewhere: unrecording it would lie about those, keeping it would lie about the table.
    """
    if MIGRATION_NAME not in applied:
        return [], []
    after = applied[applied.index(MIGRATION_NAME) + 1:]
    if not after:
        return [], []
    # The table does not depend on what came before 003: replay from 003 on.
    replay = engine.replay([MIGRATION_NAME])
    if not replay.complete:
        replay.close()
        raise RollbackError(f"{MIGRATION_NAME} cannot be replayed ({replay.reason}), so which later "
                            f"migrations changed {TABLE} cannot be told; nothing was dropped")
    touching, kept = [], []
    try:
        for name in after:
            before = schema_objects(replay.db, engine.ledger)
            migration = engine.file(name)
            if migration is None:
                raise RollbackError(
                    f"{name} was applied after {MIGRATION_NAME} but is not in the migrations folder: "
                    "whether it changed server_sessions cannot be told; nothing was dropped"
                )
            try:
                replay.db.batch(engine.plan(migration))
            except SQLError as exc:
                raise RollbackError(
                    f"{name} (applied after {MIGRATION_NAME}) does not replay on its own: {exc}; "
                    "nothing was dropped"
                ) from None
            now = schema_objects(replay.db, engine.ledger)
            changed = {n for n in before.keys() | now.keys() if _definition(before.get(n)) != _definition(now.get(n))}
            on_table = {n for n in changed if (now.get(n) or before[n]).table == TABLE}
            elsewhere = sorted(changed - on_table)
            if on_table and elsewhere:
                raise RollbackError(
                    f"{name} changes {TABLE} and also {', '.join(elsewhere)}: rolling back would drop "
                    "part of it; undo it by hand first. Nothing was dropped"
                )
            (touching if on_table else kept).append(name)
    finally:
        replay.close()
    return touching, kept


def _check_the_backup_restores(backup_path: Path, extra: tuple[str, ...]) -> None:
    """Read the backup back exactly as ``sessions import`` will, before anything is dropped.

    The table accepts values import refuses (an empty user_id, a REAL time written by hand):
    such a backup would be a promise that cannot be kept, so the rollback stops here.
    """
    from sessionctl.backup import read_rows
    from sessionctl.errors import ImportValidationError

    try:
        with open(backup_path, encoding="utf-8") as lines:
            for _ in read_rows(lines, str(backup_path), extra):
                pass
    except ImportValidationError as exc:
        reason = str(exc).removesuffix("; nothing was imported")
        raise RollbackError(f"the backup would not restore ({reason}); nothing was dropped: "
                            "fix that row in the table, then roll back again") from None


def _definition(obj: SchemaObject | None) -> tuple[str, str, str] | None:
    return None if obj is None else (obj.type, obj.table, obj.normalised_sql)


def _all_columns(db: Database, table: str) -> Iterator[Row]:
    """Every row with every column the table has (later migrations' columns included)."""
    from sessionctl.repository import iter_rows_by_key

    return iter_rows_by_key(db, "*", table=table)


def roll_back(db: Database, plan: RollbackPlan, backup_path: Path | None, *, require_bookmark: bool = True,
              on_restore_point: Callable[[RestorePoint], None] | None = None) -> RollbackOutcome:
    """Back up (unless ``backup_path`` is None), take a Time Travel bookmark (remote D1), then
    drop in one guarded transaction.

    ``on_restore_point`` hears of the bookmark before anything is dropped (so the way back
    is known even if the drop's answer is lost). Without a bookmark NoRestorePointError is
    raised and nothing is dropped, unless ``require_bookmark`` is False.
    """
    statements = list(plan.statements)
    written = None
    guarded = plan.table_exists and backup_path is not None
    copy = f"{ROLLBACK_COPY_PREFIX}{secrets.token_hex(6)}"
    if guarded:
        statements_to_copy, columns = _copy_statements(db, copy)
        copied = db.batch(statements_to_copy)[-1].changes
        try:
            rows = _all_columns(db, copy)
            try:
                written = write_rows_file(rows, backup_path)
            finally:
                close = getattr(rows, "close", None)
                if close is not None:  # a read left open keeps the copy from being dropped
                    close()
            if written != copied:
                raise RollbackError(
                    f"backup {backup_path} holds {written} rows but the table had {copied}; "
                    "nothing was dropped, run rollback again"
                )
            _check_the_backup_restores(backup_path, tuple(c for c in columns if c not in COLUMNS))
        except BaseException:
            _drop_quietly(db, copy)
            raise
        statements = [Statement(_guard_sql(copy)), *statements, _drop(copy)]
    try:
        restore, restore_file = _restore_point(db, backup_path if written is not None else None, require_bookmark,
                                               copy if guarded else None)
        if restore is not None and on_restore_point is not None:
            on_restore_point(restore)
        db.script(statements)
    except SQLError as exc:
        changed = guarded and _changed_since_the_copy(db, copy)
        if guarded:
            _drop_quietly(db, copy)
        if changed:
            raise RollbackError(
                "server_sessions changed while the backup was written; nothing was dropped "
                "(run rollback again)"
            ) from exc
        raise RollbackError(f"rollback failed, nothing was dropped: {exc}") from exc
    except BaseException:
        if guarded:
            _drop_quietly(db, copy)
        raise
    return RollbackOutcome(written, backup_path if written is not None else None, restore, restore_file)


def _changed_since_the_copy(db: Database, copy: str) -> bool:
    try:
        return bool(db.query(
            f"SELECT EXISTS (SELECT * FROM {TABLE} EXCEPT SELECT * FROM {copy}) "
            f"OR EXISTS (SELECT * FROM {copy} EXCEPT SELECT * FROM {TABLE}) AS changed")[0]["changed"])
    except SessionctlError:
        return False  # the copy is gone (another rollback): the guard refused for that


def _drop_quietly(db: Database, copy: str) -> None:
    try:
        db.batch([_drop(copy)])
    except SessionctlError:
        pass  # the next rollback drops it; verify and status never count it


def _restore_point(db: Database, backup_path: Path | None, required: bool,
                   copy: str | None = None) -> tuple[RestorePoint | None, Path | None]:
    """The bookmark to undo the drop with, written beside the backup; (None, None) locally."""
    if not isinstance(db, SupportsTimeTravel):
        return None, None
    try:
        point = db.restore_point()
    except SessionctlError as exc:
        if required:
            raise NoRestorePointError(str(exc)) from exc
        return None, None
    if backup_path is None:
        return point, None
    path = Path(f"{backup_path}.restore.txt")
    write_text_file(path, restore_note(point, getattr(db, "description", ""), copy))
    return point, path


def restore_note(point: RestorePoint, target: str, copy: str | None = None) -> str:
    """What ``<backup>.restore.txt`` says: where it came from, and the one command that goes back."""
    return (
        f"# sessionctl rollback of {TABLE} on {target}\n"
        f"# Time Travel bookmark taken at {point.taken_at}, after this backup and before anything was dropped.\n"
        + (f"# The database restored to it also holds {copy}, the copy of {TABLE} the rollback compared with\n"
           f"# (sessionctl's own, ignored by verify): drop it when you are back, or the next rollback will.\n"
           if copy else "")
        + "# This command puts the WHOLE database back to that moment (later writes are undone too):\n"
        f"{point.command}\n"
    )
