"""Bad input: each gets one clear line on stderr and the documented exit code (real processes)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SESSIONS_MIGRATION, assert_one_error_line, copy_migrations, error_lines, raw_connect
from sessionctl.repository import ServerSession, save_server_session
from sessionctl.targets.sqlite_file import open_sqlite_file

NOT_FOUND = "database not found: sessions.db (`sessionctl migrate` creates it; nothing was created)"


def _migrated_with_rows(run_sessionctl, path: Path, rows: int) -> None:
    result = run_sessionctl("--db", path.name, "migrate", cwd=path.parent)
    assert result.returncode == 0, result.stderr
    db = open_sqlite_file(path)
    for i in range(rows):
        save_server_session(
            db, f"user-{i:04d}", ServerSession(collected_info={"note": "x" * 200, "i": i}), now=1_769_558_400_000
        )
    db.close()
    assert not Path(f"{path}-wal").exists()  # everything is in the main file now


@contextlib.contextmanager
def _immutable(path: Path):
    """A file even root cannot write: chattr +i as root, mode 0444 otherwise."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)


@contextlib.contextmanager
def _held_exclusively(path: Path):
    """Another process holding BEGIN EXCLUSIVE on ``path`` until the block ends."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "conn.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


# -- the database cannot be used: exit 3 ------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["verify"], ["rollback", "--yes"], ["rollback", "--dry-run"]])
def test_missing_database_exits_3_and_creates_nothing(run_sessionctl, tmp_path, command):
    result = run_sessionctl("--db", "sessions.db", *command)

    assert result.returncode == 3
    assert_one_error_line(result.stderr, NOT_FOUND)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["status"], ["migrate"], ["verify"]])
def test_directory_as_database_exits_3(run_sessionctl, tmp_path, command):
    (tmp_path / "sessions.db").mkdir()

    result = run_sessionctl("--db", "sessions.db", *command)

    assert result.returncode == 3
    assert_one_error_line(result.stderr, "sessions.db is a directory, not a SQLite database file")
    assert list((tmp_path / "sessions.db").iterdir()) == []


@pytest.mark.parametrize("command", [["status"], ["migrate"], ["verify"], ["rollback", "--yes"]])
def test_text_file_named_like_a_database_exits_3_and_is_left_alone(run_sessionctl, tmp_path, command):
    text = "these are my notes, not a database\n" * 20
    (tmp_path / "sessions.db").write_text(text)

    result = run_sessionctl("--db", "sessions.db", *command)

    assert result.returncode == 3
    assert_one_error_line(result.stderr, "sessions.db is not a usable SQLite database (file is not a database)")
    assert (tmp_path / "sessions.db").read_text() == text
    assert not (tmp_path / "backups").exists()


@pytest.mark.parametrize("command", [["status"], ["verify"], ["migrate"], ["rollback", "--yes"]])
def test_truncated_database_exits_3(run_sessionctl, tmp_path, command):
    path = tmp_path / "sessions.db"
    _migrated_with_rows(run_sessionctl, path, 300)
    os.truncate(path, path.stat().st_size // 2)

    result = run_sessionctl("--db", "sessions.db", *command)

    assert result.returncode == 3, result.stdout
    assert_one_error_line(
        result.stderr, "sessions.db is not a usable SQLite database (database disk image is malformed)"
    )


def test_database_with_a_corrupt_header_exits_3(run_sessionctl, tmp_path):
    path = tmp_path / "sessions.db"
    _migrated_with_rows(run_sessionctl, path, 5)
    with open(path, "r+b") as f:
        f.write(b"garbage garbage!")  # over "SQLite format 3\0"

    result = run_sessionctl("--db", "sessions.db", "status")

    assert result.returncode == 3
    assert_one_error_line(result.stderr, "sessions.db is not a usable SQLite database (file is not a database)")


def test_read_only_database_given_to_migrate_exits_3(run_sessionctl, tmp_path):
    path = tmp_path / "sessions.db"
    conn = raw_connect(path)
    conn.execute("CREATE TABLE other(x)")
    conn.close()

    with _immutable(path):
        result = run_sessionctl("--db", "sessions.db", "migrate")

    assert result.returncode == 3
    assert_one_error_line(result.stderr, "sessions.db is read-only (attempt to write a readonly database)")
    conn = raw_connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert tables == {"other"}


def test_read_only_database_can_still_be_inspected(run_sessionctl, tmp_path):
    path = tmp_path / "sessions.db"
    assert run_sessionctl("--db", "sessions.db", "migrate").returncode == 0

    with _immutable(path):
        status = run_sessionctl("--db", "sessions.db", "status")
        verify = run_sessionctl("--db", "sessions.db", "verify")

    assert status.returncode == 0, status.stderr
    assert verify.returncode == 0, verify.stderr


def test_database_locked_by_another_process_exits_3_saying_locked(run_sessionctl, tmp_path):
    path = tmp_path / "sessions.db"
    conn = raw_connect(path)  # rollback-journal mode: EXCLUSIVE keeps readers out too
    conn.execute("CREATE TABLE other(x)")
    conn.close()

    with _held_exclusively(path):
        result = run_sessionctl("--db", "sessions.db", "--timeout", "0.2", "status")

    assert result.returncode == 3
    assert_one_error_line(
        result.stderr, "sessions.db is locked by another process (waited 0.2 s; try again, or raise --timeout)"
    )


def test_migrate_on_a_database_locked_by_a_writer_exits_3_and_applies_nothing(run_sessionctl, tmp_path):
    path = tmp_path / "sessions.db"
    folder = copy_migrations(tmp_path)
    assert run_sessionctl("--db", "sessions.db", "--migrations-dir", folder, "migrate").returncode == 0
    (folder / "004_next.sql").write_text("CREATE TABLE next_table(x);", encoding="utf-8")

    with _held_exclusively(path):
        result = run_sessionctl("--db", "sessions.db", "--migrations-dir", folder, "--timeout", "0.2", "migrate")

    assert result.returncode == 3
    assert_one_error_line(
        result.stderr, "sessions.db is locked by another process (waited 0.2 s; try again, or raise --timeout)"
    )
    status = run_sessionctl("--db", "sessions.db", "--migrations-dir", folder, "status", "--json")
    assert '"004_next.sql", "state": "pending"' in status.stdout


# -- the migration cannot be applied: exit 1 -----------------------------------------


def test_migration_file_with_an_sql_error_exits_1_naming_the_file(run_sessionctl, tmp_path):
    folder = copy_migrations(tmp_path)
    (folder / "004_broken.sql").write_text(
        "CREATE TABLE partial(x);\nALTER TABLE no_such_table ADD COLUMN y TEXT;\n", encoding="utf-8"
    )

    result = run_sessionctl("--db", "sessions.db", "--migrations-dir", folder, "migrate")

    assert result.returncode == 1
    assert result.stdout == f"applied {SESSIONS_MIGRATION}\n"
    assert_one_error_line(
        result.stderr,
        "migration 004_broken.sql failed at line 2: no such table: no_such_table; nothing of it was applied",
    )


def test_applied_migration_edited_afterwards_exits_1_naming_the_file(run_sessionctl, tmp_path):
    folder = copy_migrations(tmp_path)
    assert run_sessionctl("--db", "sessions.db", "--migrations-dir", folder, "migrate").returncode == 0
    path = folder / SESSIONS_MIGRATION
    path.write_text(path.read_text(encoding="utf-8").replace("IF NOT EXISTS", "if not exists"), encoding="utf-8")

    result = run_sessionctl("--db", "sessions.db", "--migrations-dir", folder, "migrate")

    assert result.returncode == 1
    assert result.stdout == ""
    assert_one_error_line(
        result.stderr,
        f"applied migration file changed since it was applied: {SESSIONS_MIGRATION} "
        "(restore the file as applied, or add a new migration instead of editing it)",
    )


# -- --debug -----------------------------------------------------------------------


def test_debug_shows_the_traceback_and_keeps_the_exit_code(run_sessionctl):
    result = run_sessionctl("--debug", "--db", "sessions.db", "status")

    assert result.returncode == 3
    assert "Traceback (most recent call last):" in result.stderr
    assert "DatabaseNotFoundError" in result.stderr
    assert error_lines(result.stderr)[-1] == f"sessionctl: error: {NOT_FOUND}"


def test_without_debug_no_traceback_reaches_the_user(run_sessionctl, tmp_path):
    folder = copy_migrations(tmp_path)
    (folder / "004_broken.sql").write_text("SELEC 1;", encoding="utf-8")

    result = run_sessionctl("--db", "sessions.db", "--migrations-dir", folder, "migrate")

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(error_lines(result.stderr)) == 1


def test_rollback_refuses_cleanly_when_a_row_holds_a_blob_a_backup_cannot_keep(run_sessionctl, tmp_path):
    # The columns are TEXT, but SQLite (and D1) store a BLOB as it is given.
    path = tmp_path / "sessions.db"
    assert run_sessionctl("--db", "sessions.db", "migrate").returncode == 0
    conn = raw_connect(path)
    conn.execute(
        "INSERT INTO server_sessions VALUES ('u1', 'gathering', x'00ff10', NULL, NULL, 1, 2, 3)"
    )
    conn.close()

    result = run_sessionctl("--db", "sessions.db", "rollback", "--yes")

    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert line.startswith("sessionctl: error: ")
    assert "'u1'" in line and "collected_info" in line
    conn = raw_connect(path)
    assert conn.execute("SELECT count(*) FROM server_sessions").fetchone() == (1,)
    conn.close()


def test_a_global_option_after_the_command_says_where_it_goes(run_sessionctl, tmp_path):
    result = run_sessionctl("status", "--db", "x.db")
    assert result.returncode == 2
    assert "No such option: --db (--db is a global option: put it before the command)" in result.stderr


def test_an_argument_that_is_not_utf8_is_one_line_exit_2(tmp_path):
    import subprocess

    from conftest import SESSIONCTL

    result = subprocess.run([str(SESSIONCTL), "--db", "x.db", "sessions", "show", b"\xff"],
                            cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["sessionctl: error: USER_ID is not valid UTF-8 text"]


def test_an_unexpected_failure_is_one_line_naming_it_a_bug(cli, db_path, migrated_db, monkeypatch):
    # Broken at the class every local target is, not at a name some module imported.
    from sessionctl.targets.sqlite_file import SqliteFileDatabase

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(SqliteFileDatabase, "iter_query", broken)
    monkeypatch.setattr(SqliteFileDatabase, "query", broken)
    result = cli("--db", db_path, "sessions", "stats")
    assert result.exit_code == 1
    assert_one_error_line(
        result.stderr,
        "internal error: RuntimeError: boom (this is a bug in sessionctl; rerun with --debug for the traceback)",
    )
    assert isinstance(cli("--db", db_path, "--debug", "sessions", "stats").exception, RuntimeError)


def test_a_migrations_folder_without_003_says_where_the_seeds_copy_is(run_sessionctl, tmp_path):
    folder = tmp_path / "migs"
    folder.mkdir()
    (folder / "001_a.sql").write_text("CREATE TABLE a(x);\n", encoding="utf-8")
    result = run_sessionctl("--db", "x.db", "--migrations-dir", folder, "migrate")
    assert result.returncode == 0
    assert (f"sessionctl: note: 003_server_sessions_d1.sql is not in {folder}; copy it there from "
            in result.stderr)
