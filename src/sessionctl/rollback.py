"""Roll back migration 003 as the seed's rollback plan says -- after a verified backup.

The seed (section 7, "Rollback Plan")::

    DROP TABLE IF EXISTS server_sessions;
    DROP INDEX IF EXISTS idx_server_sessions_expires;

sessionctl runs those two statements, removes 003's ledger row (so wrangler and
``migrate`` see 003 pending again) and its checksum, as ONE batch. Before that it
backs up every row and takes a fingerprint of the table; the batch starts with
a guard that aborts it if the table changed after the backup was taken, so a
row the bot wrote meanwhile is never dropped without being in the backup.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sessionctl.backup import write_rows_file
from sessionctl.errors import RollbackError, SQLError
from sessionctl.migrations import check_table_name, read_ledger, table_exists, unrecord_statements
from sessionctl.names import DEFAULT_LEDGER, INDEX, SESSIONS_MIGRATION, TABLE
from sessionctl.repository import iter_session_rows
from sessionctl.targets.base import Database, Statement

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


def plan_rollback(db: Database, ledger: str = DEFAULT_LEDGER) -> RollbackPlan:
    check_table_name(ledger)
    has_table = table_exists(db, TABLE)
    rows = _fingerprint(db)[0] if has_table else 0
    in_ledger = MIGRATION_NAME in read_ledger(db, ledger)
    statements = [Statement(sql) for sql in SEED_ROLLBACK_SQL]
    statements += unrecord_statements(db, [MIGRATION_NAME], ledger)
    return RollbackPlan(has_table, rows, in_ledger, statements)


def rollback_sessions_migration(
    db: Database, plan: RollbackPlan, backup_path: Path | None
) -> RollbackOutcome:
    """Back up (unless ``backup_path`` is None), then drop in one guarded batch."""
    statements = list(plan.statements)
    written = None
    if plan.table_exists:
        before = _fingerprint(db)
        if backup_path is not None:
            written = write_rows_file(iter_session_rows(db, "all"), backup_path)
            if written != before[0]:
                raise RollbackError(
                    f"backup {backup_path} holds {written} rows but the table had {before[0]}; "
                    "the table is changing: nothing was dropped, run rollback again"
                )
        statements.insert(0, Statement(_GUARD_SQL, before))
    try:
        db.batch(statements)
    except SQLError as exc:
        if plan.table_exists and _fingerprint(db) != before:
            raise RollbackError(
                "server_sessions changed while the backup was written; nothing was dropped "
                "(run rollback again)"
            ) from exc
        raise RollbackError(f"rollback failed, nothing was dropped: {exc}") from exc
    return RollbackOutcome(written, backup_path if written is not None else None)
