"""What the global options resolve to -- the target, its migrations and ledger -- and confirmation."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sessionctl.errors import MigrationsDirError, RefusedError, UsageError, WranglerConfigError
from sessionctl.names import DEFAULT_LEDGER, SESSIONS_MIGRATION

if TYPE_CHECKING:  # imported when a command needs them, not at start-up
    from sessionctl.migrations import MigrationFile
    from sessionctl.targets.base import Database
    from sessionctl.targets.wrangler import D1Database

DEFAULT_DB = Path("sessions.db")


@dataclass
class Target:
    path: Path | None  # None for remote D1
    description: str
    migrations_dir: Path | None = None  # from the wrangler config
    migrations_table: str | None = None
    remote: dict[str, str] | None = None  # base_url, account_id, database_id (never the token)


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
    timeout: float = 5.0
    debug: bool = False
    quiet: bool = False
    _target: Target | None = field(default=None, repr=False)
    _announced: bool = field(default=False, repr=False)

    # -- which database -----------------------------------------------------------

    def target(self) -> Target:
        if self._target is None:
            self._target = self._resolve_target()
        return self._target

    def _resolve_target(self) -> Target:
        wrangler_options = [
            flag for flag, value in (("--config", self.config), ("--database", self.database),
                                     ("--env", self.env), ("--local", self.local),
                                     ("--remote", self.remote), ("--persist-to", self.persist_to)) if value
        ]
        if self.local and self.remote:
            raise UsageError("--local and --remote cannot be used together")
        if self.remote and self.persist_to:
            raise UsageError("--persist-to is for the local state; it cannot be used with --remote")
        if self.db_path is not None and not (self.db_from_env and wrangler_options):
            if wrangler_options:
                raise UsageError(f"--db (or SESSIONCTL_DB) cannot be combined with {', '.join(wrangler_options)}")
            return Target(self.db_path, f"sqlite file {self.db_path}")
        from sessionctl.targets import wrangler

        config = self.config or wrangler.find_config(Path.cwd())
        if config is None:
            if wrangler_options:
                raise WranglerConfigError(
                    f"no wrangler config ({', '.join(wrangler.CONFIG_NAMES)}) in {Path.cwd()} or above "
                    f"for {wrangler_options[0]}; pass --config PATH, or --db PATH for a plain SQLite file"
                )
            return Target(DEFAULT_DB, f"sqlite file {DEFAULT_DB} (default)")
        if not config.is_file():
            raise WranglerConfigError(f"wrangler config not found: {config}")
        data = wrangler.load_config(config)
        # CLOUDFLARE_ENV counts only inside a wrangler project, as it does for wrangler.
        self.env = wrangler.chosen_env(self.env)
        if self.env and not data.get("env"):
            print(f"sessionctl: warning: no environment {self.env!r} in {config}, which defines none: "
                  "using its top level (as wrangler does)", file=sys.stderr)
        databases = wrangler.d1_databases(config, data, self.env)
        if not databases and not wrangler_options:
            # A wrangler project without D1: not ours to guess at; the embedded default applies.
            return Target(DEFAULT_DB, f"sqlite file {DEFAULT_DB} (default; {config.name} has no d1_databases)")
        chosen = wrangler.select_database(databases, self.database, config, self.env)
        if self.remote:
            return self._remote_target(chosen, data)
        path = wrangler.local_state_file(chosen, self.persist_to)
        return Target(
            path,
            f"wrangler local D1 {chosen.label} at {_shown(path)}",
            migrations_dir=chosen.migrations_dir,
            migrations_table=chosen.migrations_table,
        )

    def _remote_target(self, chosen: "D1Database", data: dict) -> Target:
        import os

        from sessionctl.targets.d1_http import DEFAULT_BASE_URL

        if not chosen.database_id:
            raise WranglerConfigError(f"{chosen.config_path}: {chosen.label} has no database_id, which --remote needs")
        section = (data.get("env") or {}).get(self.env, {}) if self.env else data
        account = os.environ.get("CLOUDFLARE_ACCOUNT_ID") or section.get("account_id") or data.get("account_id")
        if not isinstance(account, str) or not account:
            raise UsageError("--remote needs the account: set CLOUDFLARE_ACCOUNT_ID (or account_id in the config)")
        import re

        for what, value in (("account id", account), ("database_id", chosen.database_id)):
            if not re.fullmatch(r"[A-Za-z0-9-]+", value):
                raise UsageError(f"the {what} {value!r} is not an id Cloudflare uses (letters, digits and -)")
        from urllib.parse import urlsplit

        base_url = os.environ.get("CLOUDFLARE_API_BASE_URL") or DEFAULT_BASE_URL
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError("CLOUDFLARE_API_BASE_URL must be an http(s) URL with a host")
        if parts.username or parts.password:
            raise UsageError("CLOUDFLARE_API_BASE_URL must not carry a user or password (the token is the credential)")
        if parts.scheme == "http" and parts.hostname not in ("localhost", "::1") and not parts.hostname.startswith("127."):
            raise UsageError("CLOUDFLARE_API_BASE_URL must be https (plain http only to this machine): the token would travel in clear")
        remote = {"base_url": base_url, "account_id": account, "database_id": chosen.database_id}
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        return Target(
            None,
            f"remote D1 {chosen.label} database_id {chosen.database_id} via {host}",
            migrations_dir=chosen.migrations_dir,
            migrations_table=chosen.migrations_table,
            remote=remote,
        )

    def open(self, *, create: bool = False) -> "Database":
        """Open the target; only ``migrate`` (create=True) may create a database file."""
        target = self.target()
        if target.remote is not None:
            import os

            from sessionctl.targets.d1_http import D1HttpDatabase

            token = (os.environ.get("CLOUDFLARE_API_TOKEN") or "").strip()
            if not token:
                raise UsageError("--remote needs an API token: set CLOUDFLARE_API_TOKEN")
            if not all(33 <= ord(ch) < 127 for ch in token):
                raise UsageError(
                    "CLOUDFLARE_API_TOKEN holds characters no token has (spaces, control or non-ASCII characters)"
                )
            self.announce()
            return D1HttpDatabase(token=token, description=target.description, **target.remote)
        from sessionctl.targets.sqlite_file import open_sqlite_file

        self.announce()
        return open_sqlite_file(target.path, create=create, timeout=self.timeout, description=target.description)

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


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


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
