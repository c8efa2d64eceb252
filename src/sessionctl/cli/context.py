"""What the global options resolve to, and how a command opens its target."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from sessionctl.errors import MigrationsDirError, RefusedError
from sessionctl.migrations import (
    DEFAULT_LEDGER,
    MigrationFile,
    bundled_migrations_dir,
    check_table_name,
    discover_migrations,
)
from sessionctl.targets.base import Database

DEFAULT_DB = Path("sessions.db")
SESSIONS_MIGRATION = "003_server_sessions_d1.sql"


@dataclass
class Settings:
    db_path: Path | None = None
    migrations_dir: Path | None = None
    migrations_table: str = DEFAULT_LEDGER
    timeout: float = 5.0
    debug: bool = False
    quiet: bool = False

    def open(self, *, create: bool = False) -> Database:
        """Open the target; only ``migrate`` (create=True) may create a database file."""
        from sessionctl.targets.sqlite_file import open_sqlite_file

        path = self.db_path or DEFAULT_DB
        db = open_sqlite_file(path, create=create, timeout=self.timeout)
        if not self.quiet:
            print(f"sessionctl: target: {db.description}", file=sys.stderr)
        return db

    @property
    def ledger(self) -> str:
        return check_table_name(self.migrations_table)

    def migrations(self) -> list[MigrationFile]:
        return discover_migrations(self.migrations_dir or bundled_migrations_dir())

    def sessions_migration(self) -> MigrationFile:
        for migration in self.migrations():
            if migration.name == SESSIONS_MIGRATION:
                return migration
        where = self.migrations_dir or bundled_migrations_dir()
        raise MigrationsDirError(f"{SESSIONS_MIGRATION} not found in {where}")


def confirm_or_refuse(question: str, yes: bool, refusal: str) -> None:
    """Go on with --yes; ask on a terminal; refuse (exit 2) in a non-interactive run."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise RefusedError(f"{refusal}: not confirmed (pass --yes in a non-interactive run)")
    import typer

    if not typer.confirm(question, default=False):
        raise RefusedError(f"{refusal}: not confirmed")
