"""What the global options resolve to -- the target, its migrations and ledger -- and confirmation."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sessionctl.errors import MigrationsDirError, RefusedError
from sessionctl.names import DEFAULT_DB_FILE, DEFAULT_LEDGER, SESSIONS_MIGRATION

if TYPE_CHECKING:  # imported when a command needs them, not at start-up
    from sessionctl.migrations import MigrationEngine, MigrationFile
    from sessionctl.targets.base import Database
    from sessionctl.targets.resolve import ResolvedTarget, TargetRequest

DEFAULT_DB = Path(DEFAULT_DB_FILE)


@dataclass
class Settings:
    db_path: Path | None = None
    db_from_env: bool = False  # SESSIONCTL_DB, which explicit wrangler options override
    config: Path | None = None
    database: str | None = None
    env: str | None = None  # the --env option ("" is the top level)
    local: bool = False
    remote: bool = False
    persist_to: Path | None = None
    migrations_dir: Path | None = None
    migrations_table: str | None = None
    timeout: float | None = None  # None: the target's own default
    debug: bool = False
    quiet: bool = False
    _target: "ResolvedTarget | None" = field(default=None, repr=False)
    _announced: bool = field(default=False, repr=False)

    # -- which database: the library decides (sessionctl.targets.resolve) -------------

    def request(self) -> "TargetRequest":
        from sessionctl.targets.resolve import TargetRequest

        return TargetRequest(
            db_path=self.db_path, db_from_env=self.db_from_env, config=self.config, database=self.database,
            env=self.env, local=self.local, remote=self.remote, persist_to=self.persist_to, timeout=self.timeout,
        )

    def target(self) -> "ResolvedTarget":
        if self._target is None:
            from sessionctl.targets.resolve import resolve_target

            self._target = resolve_target(self.request())
            for warning in self._target.warnings:
                print(f"sessionctl: warning: {warning}", file=sys.stderr)
        return self._target

    def open(self, *, create: bool = False) -> "Database":
        """Open the target; only ``migrate`` (create=True) may create a database file."""
        from sessionctl.targets.resolve import open_target

        target = self.target()
        if target.remote is not None:
            db = open_target(target)  # a missing or malformed token is refused before the target line
            self.announce()
            return db
        self.announce()  # first, so that a missing file is reported under the line naming it
        return open_target(target, create=create)

    def announce(self) -> None:
        """The one stderr line naming the target (not with --quiet)."""
        if not self.quiet and not self._announced:
            print(f"sessionctl: target: {self.target().description}", file=sys.stderr)
            self._announced = True

    # -- which migrations and ledger ---------------------------------------------------

    @property
    def ledger(self) -> str:
        from sessionctl.migrations import check_table_name

        return check_table_name(self.migrations_table or self.target().migrations_table or DEFAULT_LEDGER)

    def migrations_folder(self) -> Path:
        from sessionctl.migrations import bundled_migrations_dir

        return self.migrations_dir or self.target().migrations_dir or bundled_migrations_dir()

    def migrations(self) -> "list[MigrationFile]":
        from sessionctl.migrations import discover_migrations

        return discover_migrations(self.migrations_folder())

    def engine(self, db: "Database", files: "list[MigrationFile] | None" = None) -> "MigrationEngine":
        """The migration engine for this target's folder and ledger."""
        from sessionctl.migrations import MigrationEngine

        return MigrationEngine(db, self.migrations() if files is None else files, self.ledger)

    def note_missing_sessions_migration(self, files: "list[MigrationFile]") -> None:
        """A project folder without 003 gets one stderr line saying where the seed's copy is."""
        if any(migration.name == SESSIONS_MIGRATION for migration in files):
            return
        from sessionctl.migrations import bundled_migrations_dir

        print(
            f"sessionctl: note: {SESSIONS_MIGRATION} is not in {self.migrations_folder()}; "
            f"copy it there from {bundled_migrations_dir() / SESSIONS_MIGRATION}",
            file=sys.stderr,
        )

    def sessions_migration(self, files: "list[MigrationFile] | None" = None) -> "MigrationFile":
        for migration in self.migrations() if files is None else files:
            if migration.name == SESSIONS_MIGRATION:
                return migration
        raise MigrationsDirError(f"{SESSIONS_MIGRATION} not found in {self.migrations_folder()}")


def confirm_or_refuse(question: str, yes: bool, refusal: str) -> None:
    """Go on with --yes; ask on a terminal; refuse (exit 2) in a non-interactive run."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise RefusedError(f"{refusal}: not confirmed (pass --yes in a non-interactive run)")
    import contextlib

    import typer

    # The question goes to stderr, so `... > file` still asks on the terminal and keeps it out of
    # the file (click writes a stray space to stdout even with err=True: redirect it too).
    with contextlib.redirect_stdout(sys.stderr):
        confirmed = typer.confirm(question, default=False, err=True)
    if not confirmed:
        raise RefusedError(f"{refusal}: not confirmed")
