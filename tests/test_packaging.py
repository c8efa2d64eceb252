"""What ships: the wheel carries the migrations, the library stays free of the CLI's imports."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import MIGRATIONS_DIR, REPO_ROOT, SESSIONS_MIGRATION
from sessionctl import __version__
from sessionctl.wrangler_sql import split_sql

# The SQL block under "New Table" in the design document migration 003 was made from,
# copied here as it stands there (a user's clone has nothing beside the repository).
SEED_SQL = (
    "CREATE TABLE IF NOT EXISTS server_sessions ( user_id TEXT PRIMARY KEY, status TEXT NOT NULL "
    "CHECK(status IN ('gathering', 'recommending', 'selecting', 'ordering', 'completed')), "
    "collected_info TEXT, last_recommendation TEXT, messages TEXT, created_at INTEGER NOT NULL, "
    "updated_at INTEGER NOT NULL, expires_at INTEGER NOT NULL );\n"
    "CREATE INDEX IF NOT EXISTS idx_server_sessions_expires ON server_sessions(expires_at);\n"
)


def _normalised(sql: str) -> str:
    return " ".join(sql.split())


def test_migration_003_holds_exactly_the_seeds_two_statements():
    ours = (MIGRATIONS_DIR / SESSIONS_MIGRATION).read_text(encoding="utf-8")
    seed = SEED_SQL

    assert _normalised(ours) == _normalised(seed)
    assert [_normalised(s.sql) for s in split_sql(ours)] == [_normalised(s.sql) for s in split_sql(seed)]
    assert len(split_sql(ours)) == 2


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "-w",
            str(out),
            str(REPO_ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (built,) = out.glob("sessionctl-*.whl")
    return built


@pytest.fixture(scope="module")
def unpacked_wheel(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def test_wheel_ships_migration_003_byte_for_byte(wheel):
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read(f"sessionctl/migrations/{SESSIONS_MIGRATION}")
    assert shipped == (MIGRATIONS_DIR / SESSIONS_MIGRATION).read_bytes()


def test_wheel_declares_the_console_script(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = archive.read(entry_points).decode()
    assert re.search(r"^sessionctl = sessionctl\.cli:main$", text, re.M)


def _run_from_wheel(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONCTL_")}
    env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_installed_package_finds_its_migrations_from_another_folder(unpacked_wheel, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    where = _run_from_wheel(
        unpacked_wheel,
        elsewhere,
        "-c",
        "import sessionctl.migrations as m; print(m.__file__); print(m.bundled_migrations_dir())",
    )
    migrate = _run_from_wheel(unpacked_wheel, elsewhere, "-m", "sessionctl", "--db", "x.db", "migrate")
    verify = _run_from_wheel(unpacked_wheel, elsewhere, "-m", "sessionctl", "--db", "x.db", "verify")

    module_file, migrations_dir = where.stdout.splitlines()
    assert Path(module_file).is_relative_to(unpacked_wheel)
    assert Path(migrations_dir) == unpacked_wheel / "sessionctl" / "migrations"
    assert migrate.returncode == 0, migrate.stderr
    assert migrate.stdout == f"applied {SESSIONS_MIGRATION}\n"
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert (elsewhere / "x.db").is_file()


def test_python_m_sessionctl_version(unpacked_wheel, tmp_path):
    from_source = subprocess.run(
        [sys.executable, "-m", "sessionctl", "--version"], capture_output=True, text=True, timeout=60
    )
    from_wheel = _run_from_wheel(unpacked_wheel, tmp_path, "-m", "sessionctl", "--version")

    assert from_source.returncode == 0, from_source.stderr
    assert from_source.stdout.startswith(f"sessionctl {__version__} (SQLite 3.")
    assert from_wheel.returncode == 0, from_wheel.stderr
    assert from_wheel.stdout == from_source.stdout


def test_console_script_version(run_sessionctl):
    result = run_sessionctl("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"sessionctl {__version__} (SQLite 3.")


LIBRARY_MODULES = (
    "sessionctl.repository",
    "sessionctl.migrations",
    "sessionctl.targets",
    "sessionctl.targets.sqlite_file",
    "sessionctl.targets.wrangler",
    "sessionctl.targets.resolve",
    "sessionctl.targets.d1_http",
    "sessionctl.checks",
    "sessionctl.backup",
    "sessionctl.rollback",
    "sessionctl.smoke",
)


def test_library_imports_neither_typer_nor_rich_nor_click():
    code = (
        "import importlib, sys\n"
        f"for name in {LIBRARY_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'rich', 'click')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


# -- the wheel installed with pip into a fresh virtual environment ---------------------------


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new venv with nothing but the wheel, installed by pip (its dependencies from the index)."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SESSIONCTL_", "PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE"))}
    created = subprocess.run([sys.executable, "-m", "venv", str(venv)], env=env,
                             capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stdout + created.stderr
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         str(wheel)],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def _run_in_venv(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONCTL_", "PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )


def test_wheel_installed_by_pip_in_a_fresh_venv_migrates_and_verifies_from_another_folder(fresh_venv, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    where = _run_in_venv(fresh_venv, elsewhere, "python", "-c", "import sessionctl; print(sessionctl.__file__)")
    migrate = _run_in_venv(fresh_venv, elsewhere, "sessionctl", "--db", "x.db", "migrate")
    verify = _run_in_venv(fresh_venv, elsewhere, "sessionctl", "--db", "x.db", "verify")

    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(fresh_venv)  # the installed copy, not the source tree
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    assert migrate.stdout == f"applied {SESSIONS_MIGRATION}\n"
    conn = sqlite3.connect(elsewhere / "x.db")
    try:
        assert conn.execute("SELECT name FROM d1_migrations").fetchall() == [(SESSIONS_MIGRATION,)]
        assert conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'server_sessions' "
            "AND name = 'idx_server_sessions_expires'"
        ).fetchall() == [("idx_server_sessions_expires",)]
    finally:
        conn.close()
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith("✓ ledger"), verify.stdout
    assert "✗" not in verify.stdout, verify.stdout
