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
  restore through ``sessions import``. The drop runs in ONE batch that starts with a
  guard: if the table changed after the backup was taken, nothing is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sessionctl.backup import write_rows_file
from sessionctl.errors import LaterMigrationsError, RollbackError, SQLError
from sessionctl.migrations import MigrationEngine, SchemaObject, schema_objects, table_exists
from sessionctl.names import INDEX, SESSIONS_MIGRATION, TABLE
from sessionctl.targets.base import Database, Row, Statement

MIGRATION_NAME = SESSIONS_MIGRATION
SEED_ROLLBACK_SQL = (
    f"DROP TABLE IF EXISTS {TABLE}",
    f"DROP INDEX IF EXISTS {INDEX}",
)

_FINGERPRINT_SQL = (
    f"SELECT count(*) AS n, coalesce(max(updated_at), 0) AS newest, "
    f"coalesce(sum(updated_at % 1000000007), 0) AS digest FROM {TABLE}"
)

# Fails the whole batch (json() of non-JSON raises) unless the table still matches.
_GUARD_SQL = (
    f"SELECT CASE WHEN (SELECT count(*) FROM {TABLE}) = ? "
    f"AND (SELECT coalesce(max(updated_at), 0) FROM {TABLE}) = ? "
    f"AND (SELECT coalesce(sum(updated_at % 1000000007), 0) FROM {TABLE}) = ? "
    "THEN 1 ELSE json('server_sessions changed after the backup') END AS unchanged"
)


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


def _fingerprint(db: Database) -> tuple[int, int, int]:
    row = db.query(_FINGERPRINT_SQL)[0]
    return row["n"], row["newest"], row["digest"]


def plan_rollback(engine: MigrationEngine, *, through_later: bool = False) -> RollbackPlan:
    """What rolling back 003 means on this target now; raises LaterMigrationsError if later
    migrations changed the table and ``through_later`` is not given."""
    db = engine.db
    has_table = table_exists(db, TABLE)
    rows = _fingerprint(db)[0] if has_table else 0
    applied = engine.applied_names()
    in_ledger = MIGRATION_NAME in applied
    touching, kept = later_migrations(engine, applied)
    if touching and not through_later:
        raise LaterMigrationsError(touching)
    statements = [Statement(sql) for sql in SEED_ROLLBACK_SQL]
    statements += engine.unrecord_statements([MIGRATION_NAME, *touching])
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


def _definition(obj: SchemaObject | None) -> tuple[str, str, str] | None:
    return None if obj is None else (obj.type, obj.table, obj.normalised_sql)


def _all_columns(db: Database) -> list[Row]:
    """Every row with every column the table has now (later migrations' columns included)."""
    return db.iter_query(f"SELECT * FROM {TABLE} ORDER BY user_id")  # type: ignore[return-value]


def roll_back(db: Database, plan: RollbackPlan, backup_path: Path | None) -> RollbackOutcome:
    """Back up (unless ``backup_path`` is None), then drop in one guarded batch."""
    statements = list(plan.statements)
    written = None
    before = None
    if plan.table_exists:
        before = _fingerprint(db)
        if backup_path is not None:
            written = write_rows_file(_all_columns(db), backup_path)
            if written != before[0]:
                raise RollbackError(
                    f"backup {backup_path} holds {written} rows but the table had {before[0]}; "
                    "the table is changing: nothing was dropped, run rollback again"
                )
        statements.insert(0, Statement(_GUARD_SQL, before))
    try:
        db.batch(statements)
    except SQLError as exc:
        if before is not None and _fingerprint(db) != before:
            raise RollbackError(
                "server_sessions changed while the backup was written; nothing was dropped "
                "(run rollback again)"
            ) from exc
        raise RollbackError(f"rollback failed, nothing was dropped: {exc}") from exc
    return RollbackOutcome(written, backup_path if written is not None else None)
