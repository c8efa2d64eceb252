"""Fixtures shared by the whole battery.

Every test runs in its own empty working directory with no SESSIONCTL_* variables,
so the default ./sessions.db (and ./backups/) never touch the repository.
"""

from __future__ import annotations

import os
import raw_sqlite
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from sessionctl.migrations import apply_migrations, bundled_migrations_dir, discover_migrations
from sessionctl.targets.sqlite_file import open_sqlite_file

REPO_ROOT = Path(__file__).resolve().parents[1]
MIGRATIONS_DIR = REPO_ROOT / "migrations"
SESSIONS_MIGRATION = "003_server_sessions_d1.sql"
SESSIONCTL = Path(sys.executable).parent / "sessionctl"

# wrangler's ledger statement as its documentation gives it (one line) ...
REFERENCE_LEDGER_DDL = (
    "CREATE TABLE IF NOT EXISTS d1_migrations(id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "name TEXT UNIQUE, applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL)"
)
# ... and as the pinned wrangler sends it, byte for byte (its initMigrationsTable): sqlite_master
# keeps this text.
WRANGLER_LEDGER_DDL = (
    "CREATE TABLE IF NOT EXISTS d1_migrations(\n"
    "\t\tid         INTEGER PRIMARY KEY AUTOINCREMENT,\n"
    "\t\tname       TEXT UNIQUE,\n"
    "\t\tapplied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL\n"
    ");"
)


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("SESSIONCTL_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where a test's database goes; not created."""
    return tmp_path / "sessions.db"


@pytest.fixture
def migrated_db(db_path: Path):
    """An open SqliteFileDatabase on a freshly migrated file (through the library)."""
    db = open_sqlite_file(db_path, create=True)
    outcomes = list(apply_migrations(db, discover_migrations(bundled_migrations_dir())))
    assert [o.name for o in outcomes] == [SESSIONS_MIGRATION]
    yield db
    db.close()


@pytest.fixture
def cli() -> Callable[..., object]:
    """Run the Typer app in-process; the Result has .exit_code, .stdout and .stderr apart."""
    from sessionctl.cli import app

    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None):
        return runner.invoke(
            app, [str(a) for a in args], input=input, env=env, prog_name="sessionctl"
        )

    return invoke


@pytest.fixture
def run_sessionctl() -> Callable[..., subprocess.CompletedProcess]:
    """Run the installed console script as a real process."""

    def run(
        *args: str,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONCTL_")}
        full_env.update(env or {})
        return subprocess.run(
            [str(SESSIONCTL), *map(str, args)],
            cwd=cwd,
            env=full_env,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


# -- helpers (plain functions, imported by the test modules) -----------------------


def raw_connect(path: Path) -> raw_sqlite.RawConnection:
    """A plain connection of its own (see raw_sqlite), to read or damage a file behind the library's back."""
    return raw_sqlite.connect(path)


def copy_migrations(tmp_path: Path, name: str = "migrations") -> Path:
    """A private copy of the shipped migrations folder, safe to edit."""
    folder = tmp_path / name
    folder.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def error_lines(stderr: str) -> list[str]:
    """stderr without the 'sessionctl: target:' line every command prints."""
    return [line for line in stderr.splitlines() if not line.startswith("sessionctl: target:")]


def assert_one_error_line(stderr: str, expected: str) -> None:
    """stderr holds exactly one line besides the target line: the expected error, no traceback."""
    assert "Traceback" not in stderr, stderr
    assert error_lines(stderr) == [f"sessionctl: error: {expected}"], stderr


def not_one_of(option: str, value: str, choices) -> str:
    """The line an Enum-typed option prints for a value outside ``choices`` (click's wording).

    ``option`` as click names it: "'--sort'", or "'--format' / '-f'" with its short name.
    """
    listed = ", ".join(repr(str(choice)) for choice in choices)
    return f"Invalid value for {option}: {value!r} is not one of {listed}."
