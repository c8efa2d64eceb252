"""migrate / status / verify / rollback and the global options, run in-process."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import (
    MIGRATIONS_DIR,
    SESSIONS_MIGRATION,
    WRANGLER_LEDGER_DDL,
    assert_one_error_line,
    copy_migrations,
    raw_connect,
)
from sessionctl import __version__
from sessionctl.repository import ServerSession, save_server_session
from sessionctl.targets.sqlite_file import open_sqlite_file

CHECK_NAMES = ["ledger", "migrations unchanged", "index idx_server_sessions_expires", "table server_sessions",
               "status check", "cleanup uses index"]
STATUSES = "['gathering', 'recommending', 'selecting', 'ordering', 'completed']"
T0 = 1_769_558_400_000


def _tables(path: Path) -> set[str]:
    conn = raw_connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
    finally:
        conn.close()


def _sql(path: Path, sql: str, params=()):
    conn = raw_connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _dump(path: Path) -> list[str]:
    conn = raw_connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def _migrate(cli, db: Path, *extra: str):
    result = cli("--db", db, *extra, "migrate")
    assert result.exit_code == 0, result.output
    return result


def _checks(result) -> dict[str, dict]:
    payload = json.loads(result.stdout)
    return {check["name"]: check for check in payload["checks"]}


def _save_rows(db: Path, count: int) -> None:
    handle = open_sqlite_file(db)
    for i in range(count):
        save_server_session(handle, f"u{i}", ServerSession(collected_info={"i": i}, messages=["서버 추천"]), now=T0)
    handle.close()


# -- global options --------------------------------------------------------------


def test_version_prints_the_package_version_and_the_sqlite_it_runs(cli):
    import apsw

    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout == (
        f"sessionctl {__version__} (SQLite {apsw.sqlite_lib_version()}, APSW {apsw.apsw_version()})\n"
    )
    sqlite_version = tuple(int(part) for part in apsw.sqlite_lib_version().split("."))
    assert sqlite_version >= (3, 47), "D1 runs SQLite 3.47 or newer; the engine must be at least as new"


def test_help_documents_every_exit_code(cli):
    result = cli("--help")

    assert result.exit_code == 0
    text = re.sub(r"-\s+", "-", " ".join(result.stdout.split()))  # undo wrapping at hyphens
    assert (
        "Exit codes: 0 ok; 1 a check or operation failed; 2 usage error or refused; "
        "3 the database could not be used (missing, not SQLite, corrupt, locked, read-only); "
        "141 the reader of the output went away (e.g. | head), nothing printed about it."
    ) in text
    for command in ("migrate", "status", "verify", "rollback"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.M), command


def test_unknown_command_is_a_usage_error(cli):
    result = cli("no-such-command")
    assert result.exit_code == 2
    assert "No such command 'no-such-command'" in result.stderr


def test_negative_timeout_is_a_usage_error(cli, db_path):
    result = cli("--db", db_path, "--timeout", "-1", "migrate")
    assert result.exit_code == 2
    assert not db_path.exists()


def test_default_database_is_sessions_db_in_the_working_directory(cli, tmp_path):
    result = cli("migrate")

    assert result.exit_code == 0, result.output
    assert (tmp_path / "sessions.db").is_file()
    assert {p.name for p in tmp_path.iterdir()} <= {"sessions.db", "sessions.db-wal", "sessions.db-shm"}
    assert result.stderr.startswith("sessionctl: target: sqlite file sessions.db")


def test_db_option_chooses_the_database(cli, tmp_path):
    result = cli("--db", tmp_path / "elsewhere" / "x.db", "migrate")

    assert result.exit_code == 0, result.output
    assert (tmp_path / "elsewhere" / "x.db").is_file()
    assert not (tmp_path / "sessions.db").exists()


def test_sessionctl_db_environment_variable_chooses_the_database(cli, tmp_path):
    result = cli("migrate", env={"SESSIONCTL_DB": str(tmp_path / "from-env.db")})

    assert result.exit_code == 0, result.output
    assert (tmp_path / "from-env.db").is_file()
    assert not (tmp_path / "sessions.db").exists()


def test_db_option_wins_over_the_environment_variable(cli, tmp_path):
    result = cli("--db", tmp_path / "option.db", "migrate", env={"SESSIONCTL_DB": str(tmp_path / "env.db")})

    assert result.exit_code == 0, result.output
    assert (tmp_path / "option.db").is_file()
    assert not (tmp_path / "env.db").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["status", "--json"],
        ["verify"],
        ["verify", "--json"],
        ["rollback", "--yes"],
        ["rollback", "--dry-run"],
    ],
)
def test_every_command_but_migrate_refuses_a_missing_database_and_creates_nothing(cli, tmp_path, command):
    result = cli("--db", tmp_path / "missing" / "gone.db", *command)

    assert result.exit_code == 3
    assert result.stdout == ""
    assert_one_error_line(
        result.stderr,
        f"database not found: {tmp_path / 'missing' / 'gone.db'} "
        "(`sessionctl migrate` creates it; nothing was created)",
    )
    assert list(tmp_path.iterdir()) == []


def test_missing_default_database_is_named_and_not_created(cli, tmp_path):
    result = cli("status")

    assert result.exit_code == 3
    assert_one_error_line(
        result.stderr, "database not found: sessions.db (`sessionctl migrate` creates it; nothing was created)"
    )
    assert list(tmp_path.iterdir()) == []


# -- migrate -----------------------------------------------------------------------


def test_migrate_creates_the_database_and_applies_003(cli, db_path):
    result = cli("--db", db_path, "migrate")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"applied {SESSIONS_MIGRATION}\n"
    assert {"server_sessions", "idx_server_sessions_expires", "d1_migrations"} <= _tables(db_path)
    assert _sql(db_path, "PRAGMA journal_mode") == [("wal",)]


def test_migrate_again_says_nothing_to_apply(cli, db_path):
    _migrate(cli, db_path)

    result = cli("--db", db_path, "migrate")

    assert result.exit_code == 0
    assert result.stdout == "nothing to apply: every migration is applied\n"


def test_migrate_dry_run_on_a_missing_file_prints_the_sql_and_creates_nothing(cli, tmp_path, db_path):
    result = cli("--db", db_path, "migrate", "--dry-run")

    assert result.exit_code == 0, result.output
    assert not db_path.exists()
    assert list(tmp_path.iterdir()) == []
    out = result.stdout
    assert f"-- {SESSIONS_MIGRATION} (one transaction)" in out
    assert "CREATE TABLE IF NOT EXISTS server_sessions ( user_id TEXT PRIMARY KEY," in out
    assert "CREATE INDEX IF NOT EXISTS idx_server_sessions_expires ON server_sessions(expires_at);" in out
    # wrangler's own ledger INSERT, its name pasted in, as wrangler sends it
    assert f"INSERT INTO d1_migrations (name)\n\t\t\t\t\t\t\t\tvalues ('{SESSIONS_MIGRATION}');" in out
    assert str(db_path) in out.splitlines()[0]


def test_migrate_dry_run_on_an_existing_database_changes_nothing(cli, db_path):
    conn = raw_connect(db_path)
    conn.execute("CREATE TABLE other(x)")
    conn.close()
    before = db_path.read_bytes()

    result = cli("--db", db_path, "migrate", "--dry-run")

    assert result.exit_code == 0, result.output
    assert "CREATE TABLE IF NOT EXISTS server_sessions" in result.stdout
    assert db_path.read_bytes() == before
    assert _tables(db_path) == {"other"}


def test_migrate_dry_run_when_up_to_date_says_nothing_to_apply(cli, db_path):
    _migrate(cli, db_path)

    result = cli("--db", db_path, "migrate", "--dry-run")

    assert result.exit_code == 0
    assert result.stdout == "-- nothing to apply\n"


def test_migrations_dir_option_overrides_the_shipped_folder(cli, tmp_path, db_path):
    folder = copy_migrations(tmp_path, "custom")
    (folder / "004_extra.sql").write_text("CREATE TABLE extra(x);", encoding="utf-8")

    result = cli("--db", db_path, "--migrations-dir", folder, "migrate")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"applied {SESSIONS_MIGRATION}\napplied 004_extra.sql\n"
    assert "extra" in _tables(db_path)


def test_missing_migrations_dir_is_a_usage_error(cli, tmp_path, db_path):
    result = cli("--db", db_path, "--migrations-dir", tmp_path / "nope", "migrate")

    assert result.exit_code == 2
    assert_one_error_line(result.stderr, f"migrations folder not found: {tmp_path / 'nope'}")


def test_migrations_table_option_uses_a_custom_ledger(cli, db_path):
    result = cli("--db", db_path, "--migrations-table", "my_ledger", "migrate")

    assert result.exit_code == 0, result.output
    assert _sql(db_path, "SELECT name FROM my_ledger") == [(SESSIONS_MIGRATION,)]
    assert "d1_migrations" not in _tables(db_path)
    status = cli("--db", db_path, "--migrations-table", "my_ledger", "status", "--json")
    assert [row["state"] for row in json.loads(status.stdout)] == ["applied"]
    verify = cli("--db", db_path, "--migrations-table", "my_ledger", "verify")
    assert verify.exit_code == 0, verify.output


def test_invalid_migrations_table_is_a_usage_error(cli, db_path):
    result = cli("--db", db_path, "--migrations-table", "bad name;", "migrate")

    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "invalid migrations table name: 'bad name;'")


def test_migrate_stops_at_a_failing_file_naming_it_with_exit_1(cli, tmp_path, db_path):
    folder = copy_migrations(tmp_path)
    (folder / "004_bad.sql").write_text("CREATE TABLE half(x);\nSELEC oops;\n", encoding="utf-8")

    result = cli("--db", db_path, "--migrations-dir", folder, "migrate")

    assert result.exit_code == 1
    assert result.stdout == f"applied {SESSIONS_MIGRATION}\n"
    assert_one_error_line(
        result.stderr,
        'migration 004_bad.sql failed at line 2: near "SELEC": syntax error; nothing of it was applied',
    )
    assert "half" not in _tables(db_path)
    assert _sql(db_path, "SELECT name FROM d1_migrations") == [(SESSIONS_MIGRATION,)]


# -- status ------------------------------------------------------------------------


def test_status_shows_pending_before_migrate(cli, db_path):
    raw_connect(db_path).close()  # an empty SQLite file

    result = cli("--db", db_path, "status", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"name": SESSIONS_MIGRATION, "state": "pending", "applied_at": None, "detail": ""}
    ]


def test_status_table_shows_applied_with_its_time(cli, db_path):
    _migrate(cli, db_path)
    (applied_at,) = _sql(db_path, "SELECT applied_at FROM d1_migrations")[0]

    result = cli("--db", db_path, "status")

    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if SESSIONS_MIGRATION in line)
    assert "applied" in line
    assert applied_at in line
    assert "name" in result.stdout.splitlines()[0]


@pytest.mark.parametrize("json_flag", [["--json"], ["--format", "json"], ["-f", "json"]])
def test_status_json_lists_each_migration(cli, db_path, json_flag):
    _migrate(cli, db_path)
    (applied_at,) = _sql(db_path, "SELECT applied_at FROM d1_migrations")[0]

    result = cli("--db", db_path, "status", *json_flag)

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"name": SESSIONS_MIGRATION, "state": "applied", "applied_at": applied_at, "detail": ""}
    ]


def test_status_shows_an_edited_file_as_modified(cli, tmp_path, db_path):
    folder = copy_migrations(tmp_path)
    _migrate(cli, db_path, "--migrations-dir", folder)
    (folder / SESSIONS_MIGRATION).write_text(
        (folder / SESSIONS_MIGRATION).read_text(encoding="utf-8") + "\n-- edited\n", encoding="utf-8"
    )

    result = cli("--db", db_path, "--migrations-dir", folder, "status", "--json")

    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert (row["name"], row["state"], row["detail"]) == (
        SESSIONS_MIGRATION,
        "modified",
        "file changed since it was applied",
    )


def test_status_shows_ledger_rows_without_files_as_applied_without_file(cli, db_path):
    _migrate(cli, db_path)
    conn = raw_connect(db_path)
    conn.execute("INSERT INTO d1_migrations (name) VALUES ('001_init.sql')")
    conn.execute("INSERT INTO d1_migrations (name) VALUES ('002_x.sql')")
    conn.close()

    result = cli("--db", db_path, "status", "--json")

    assert result.exit_code == 0, result.output
    assert [(r["name"], r["state"]) for r in json.loads(result.stdout)] == [
        (SESSIONS_MIGRATION, "applied"),
        ("001_init.sql", "applied-without-file"),
        ("002_x.sql", "applied-without-file"),
    ]
    assert cli("--db", db_path, "verify").exit_code == 0
    again = cli("--db", db_path, "migrate")
    assert again.exit_code == 0
    assert again.stdout == "nothing to apply: every migration is applied\n"


def test_status_table_shows_whole_names_and_states_at_80_columns(cli, tmp_path, db_path):
    # An 80-column terminal, or a CI log: the columns an operator reads must not be cut.
    folder = copy_migrations(tmp_path)
    _migrate(cli, db_path, "--migrations-dir", folder)
    conn = raw_connect(db_path)
    conn.execute("INSERT INTO d1_migrations (name) VALUES ('001_init.sql')")
    conn.close()
    path = folder / SESSIONS_MIGRATION
    path.write_text(path.read_text(encoding="utf-8") + "\n-- edited\n", encoding="utf-8")

    result = cli("--db", db_path, "--migrations-dir", folder, "status", env={"COLUMNS": "80"})

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(SESSIONS_MIGRATION in line and "modified" in line for line in lines), result.stdout
    assert any("001_init.sql" in line and "applied-without-file" in line for line in lines), result.stdout


def _wrangler_migrated(path: Path) -> None:
    conn = raw_connect(path)
    conn.execute(WRANGLER_LEDGER_DDL)
    conn.executescript((MIGRATIONS_DIR / SESSIONS_MIGRATION).read_text(encoding="utf-8"))
    conn.execute(f"INSERT INTO d1_migrations (name) values ('{SESSIONS_MIGRATION}')")
    conn.close()


def test_a_database_migrated_by_wrangler_looks_applied_and_passes_verify(cli, db_path):
    _wrangler_migrated(db_path)

    status = cli("--db", db_path, "status", "--json")
    verify = cli("--db", db_path, "verify", "--json")
    migrate = cli("--db", db_path, "migrate")

    assert status.exit_code == 0
    assert [(r["state"], r["detail"]) for r in json.loads(status.stdout)] == [
        ("applied", "no checksum recorded (applied outside sessionctl)")
    ]
    assert verify.exit_code == 0, verify.output
    assert _checks(verify)["ledger"] == {
        "name": "ledger",
        "ok": True,
        "detail": f"d1_migrations records {SESSIONS_MIGRATION}; no checksum recorded (applied outside sessionctl)",
        "judged": True,
    }
    assert migrate.exit_code == 0
    assert migrate.stdout == "nothing to apply: every migration is applied\n"


# -- verify ------------------------------------------------------------------------


def test_verify_passes_on_a_migrated_database(cli, db_path):
    _migrate(cli, db_path)

    result = cli("--db", db_path, "verify")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(CHECK_NAMES)
    for line, name in zip(lines, CHECK_NAMES):
        assert line.startswith(f"✓ {name}")


def test_verify_json_has_ok_and_one_entry_per_check(cli, db_path):
    _migrate(cli, db_path)

    result = cli("--db", db_path, "verify", "--json")

    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"ok", "checks"}
    assert payload["ok"] is True
    assert [c["name"] for c in payload["checks"]] == CHECK_NAMES
    for check in payload["checks"]:
        assert set(check) == {"name", "ok", "detail", "judged"}
        assert check["ok"] is True and check["judged"] is True
        assert isinstance(check["detail"], str) and check["detail"]
    checks = _checks(result)
    assert checks["index idx_server_sessions_expires"]["detail"] == (
        "as the applied migrations build it, on server_sessions(expires_at)"
    )
    assert checks["table server_sessions"]["detail"] == "as the applied migrations build it (8 columns)"
    assert checks["status check"]["detail"] == (
        "CHECK accepts the 5 statuses, rejects 'bogus', 'GATHERING', '', 'completed '"
    )
    assert "idx_server_sessions_expires" in checks["cleanup uses index"]["detail"]
    assert checks["ledger"]["detail"] == f"d1_migrations records {SESSIONS_MIGRATION}, checksum matches"


def test_verify_fails_when_the_index_is_dropped(cli, db_path):
    _migrate(cli, db_path)
    conn = raw_connect(db_path)
    conn.execute("DROP INDEX idx_server_sessions_expires")
    conn.close()

    result = cli("--db", db_path, "verify", "--json")

    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["ok"] is False
    failed = {c["name"]: c["detail"] for c in payload["checks"] if not c["ok"]}
    assert set(failed) == {"index idx_server_sessions_expires", "cleanup uses index"}
    assert failed["index idx_server_sessions_expires"] == (
        "missing: the applied migrations create it "
        "(CREATE INDEX idx_server_sessions_expires ON server_sessions(expires_at))"
    )


def test_verify_fails_when_the_index_is_on_another_column(cli, db_path):
    _migrate(cli, db_path)
    conn = raw_connect(db_path)
    conn.execute("DROP INDEX idx_server_sessions_expires")
    conn.execute("CREATE INDEX idx_server_sessions_expires ON server_sessions(updated_at)")
    conn.close()

    result = cli("--db", db_path, "verify", "--json")

    assert result.exit_code == 1
    assert _checks(result)["index idx_server_sessions_expires"] == {
        "name": "index idx_server_sessions_expires",
        "ok": False,
        "detail": "defined differently: expected CREATE INDEX idx_server_sessions_expires ON "
        "server_sessions(expires_at), found CREATE INDEX idx_server_sessions_expires ON server_sessions(updated_at)",
        "judged": True,
    }


def _hand_made_sessions_table(path: Path, create_table: str) -> None:
    """A database whose ledger says 003 is applied but whose table is not 003's."""
    conn = raw_connect(path)
    conn.execute(WRANGLER_LEDGER_DDL)
    conn.execute(create_table)
    conn.execute("CREATE INDEX idx_server_sessions_expires ON server_sessions(expires_at)")
    conn.execute(f"INSERT INTO d1_migrations (name) VALUES ('{SESSIONS_MIGRATION}')")
    conn.close()


def test_verify_fails_when_columns_are_missing_or_different(cli, db_path):
    _hand_made_sessions_table(
        db_path,
        "CREATE TABLE server_sessions (user_id TEXT PRIMARY KEY, status TEXT NOT NULL "
        "CHECK(status IN ('gathering', 'recommending', 'selecting', 'ordering', 'completed')), "
        "collected_info TEXT, last_recommendation TEXT, created_at TEXT NOT NULL, "
        "updated_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, extra TEXT)",
    )

    result = cli("--db", db_path, "verify", "--json")

    assert result.exit_code == 1
    checks = _checks(result)
    assert checks["table server_sessions"] == {
        "name": "table server_sessions",
        "ok": False,
        "detail": "missing messages; unexpected extra; "
        "created_at is created_at TEXT NOT NULL, expected created_at INTEGER NOT NULL",
        "judged": True,
    }
    assert [name for name, c in checks.items() if not c["ok"]] == ["table server_sessions"]


def test_verify_fails_when_a_column_loses_not_null(cli, db_path):
    _hand_made_sessions_table(
        db_path,
        "CREATE TABLE server_sessions (user_id TEXT PRIMARY KEY, status TEXT NOT NULL "
        "CHECK(status IN ('gathering', 'recommending', 'selecting', 'ordering', 'completed')), "
        "collected_info TEXT, last_recommendation TEXT, messages TEXT, created_at INTEGER NOT NULL, "
        "updated_at INTEGER NOT NULL, expires_at INTEGER)",
    )

    result = cli("--db", db_path, "verify", "--json")

    assert result.exit_code == 1
    assert _checks(result)["table server_sessions"]["detail"] == (
        "expires_at is expires_at INTEGER, expected expires_at INTEGER NOT NULL"
    )


def test_verify_fails_when_the_status_check_accepts_another_value(cli, db_path):
    _hand_made_sessions_table(
        db_path,
        "CREATE TABLE server_sessions (user_id TEXT PRIMARY KEY, status TEXT NOT NULL "
        "CHECK(status IN ('gathering', 'recommending', 'selecting', 'ordering', 'completed', 'bogus')), "
        "collected_info TEXT, last_recommendation TEXT, messages TEXT, created_at INTEGER NOT NULL, "
        "updated_at INTEGER NOT NULL, expires_at INTEGER NOT NULL)",
    )

    result = cli("--db", db_path, "verify", "--json")

    assert result.exit_code == 1
    checks = _checks(result)
    assert checks["status check"] == {
        "name": "status check",
        "ok": False,
        "detail": "CHECK accepts ['gathering', 'recommending', 'selecting', 'ordering', 'completed', 'bogus']; "
        f"expected exactly {STATUSES}",
        "judged": True,
    }
    # the table is not what 003 builds either: verify names both
    assert [name for name, c in checks.items() if not c["ok"]] == ["table server_sessions", "status check"]
    assert checks["table server_sessions"]["detail"].startswith("defined differently: expected CREATE TABLE")


def test_verify_fails_when_the_status_check_rejects_a_status(cli, db_path):
    _hand_made_sessions_table(
        db_path,
        "CREATE TABLE server_sessions (user_id TEXT PRIMARY KEY, status TEXT NOT NULL "
        "CHECK(status IN ('gathering', 'recommending', 'selecting', 'ordering')), "
        "collected_info TEXT, last_recommendation TEXT, messages TEXT, created_at INTEGER NOT NULL, "
        "updated_at INTEGER NOT NULL, expires_at INTEGER NOT NULL)",
    )

    result = cli("--db", db_path, "verify", "--json")

    assert result.exit_code == 1
    assert _checks(result)["status check"]["detail"] == (
        "CHECK accepts ['gathering', 'recommending', 'selecting', 'ordering']; "
        f"expected exactly {STATUSES}"
    )


def test_verify_fails_when_003_is_not_in_the_ledger(cli, db_path):
    _migrate(cli, db_path)
    conn = raw_connect(db_path)
    conn.execute("DELETE FROM d1_migrations")
    conn.close()

    result = cli("--db", db_path, "verify", "--json")

    assert result.exit_code == 1
    checks = _checks(result)
    assert checks["ledger"] == {
        "name": "ledger",
        "ok": False,
        "detail": f"d1_migrations does not record {SESSIONS_MIGRATION}",
        "judged": True,
    }
    # nothing is recorded, so no migration explains the table and the index
    assert [name for name, c in checks.items() if not c["ok"]] == [
        "ledger", "index idx_server_sessions_expires", "table server_sessions"]
    assert checks["table server_sessions"]["detail"].startswith("extra: no applied migration creates it")


def test_verify_fails_when_the_applied_file_was_edited(cli, tmp_path, db_path):
    folder = copy_migrations(tmp_path)
    _migrate(cli, db_path, "--migrations-dir", folder)
    path = folder / SESSIONS_MIGRATION
    path.write_text(path.read_text(encoding="utf-8") + "\n-- edited\n", encoding="utf-8")

    result = cli("--db", db_path, "--migrations-dir", folder, "verify")

    assert result.exit_code == 1
    ledger_line, unchanged_line = result.stdout.splitlines()[:2]
    assert ledger_line.startswith("✗ ledger")
    assert ledger_line.endswith(
        f"{SESSIONS_MIGRATION} changed since it was applied (checksum differs from d1_migrations)"
    )
    assert unchanged_line.split() == ["✗", "migrations", "unchanged", "changed", "since", "applied:", SESSIONS_MIGRATION]


def test_verify_fails_when_another_applied_file_was_edited(cli, tmp_path, db_path):
    folder = copy_migrations(tmp_path)
    (folder / "004_extra.sql").write_text("CREATE TABLE extra(x);\n", encoding="utf-8")
    _migrate(cli, db_path, "--migrations-dir", folder)
    (folder / "004_extra.sql").write_text("CREATE TABLE extra(x, y);\n", encoding="utf-8")

    result = cli("--db", db_path, "--migrations-dir", folder, "verify")

    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    # the replay builds what the edited file says now, so the table is judged against it too
    assert [line.split()[0] for line in lines if line.startswith("✗")] == ["✗", "✗"]
    assert lines[1].split() == ["✗", "migrations", "unchanged", "changed", "since", "applied:", "004_extra.sql"]
    assert any(line.startswith("✗ table extra") for line in lines)


def test_verify_on_an_empty_database_fails_every_check(cli, db_path):
    raw_connect(db_path).execute("CREATE TABLE other(x)")

    result = cli("--db", db_path, "verify")

    assert result.exit_code == 1
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    # Nothing applied: 003 is not recorded, no migration explains the stray table, and 003's
    # own checks have no table to look at; nothing applied means nothing was edited since.
    assert lines == [
        f"✗ ledger d1_migrations does not record {SESSIONS_MIGRATION}",
        "✓ migrations unchanged no applied migration file was edited since it was applied",
        "✗ table other extra: no applied migration creates it (CREATE TABLE other(x))",
        "✗ status check no table server_sessions to check",
        "✗ cleanup uses index no table server_sessions to plan against",
    ]


def test_verify_does_not_write_to_the_database(cli, db_path):
    _migrate(cli, db_path)
    _save_rows(db_path, 2)
    before = _dump(db_path)

    assert cli("--db", db_path, "verify").exit_code == 0

    assert _dump(db_path) == before


# -- rollback ----------------------------------------------------------------------


def test_rollback_without_yes_refuses_non_interactively_and_drops_nothing(cli, tmp_path, db_path):
    _migrate(cli, db_path)
    _save_rows(db_path, 2)

    result = cli("--db", db_path, "rollback")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert_one_error_line(
        result.stderr,
        "rollback refused, nothing was dropped: not confirmed (pass --yes in a non-interactive run)",
    )
    assert "server_sessions" in _tables(db_path)
    assert _sql(db_path, "SELECT count(*) FROM server_sessions") == [(2,)]
    assert not (tmp_path / "backups").exists()


def test_rollback_dry_run_needs_no_yes_and_drops_nothing(cli, tmp_path, db_path):
    _migrate(cli, db_path)
    _save_rows(db_path, 3)

    result = cli("--db", db_path, "rollback", "--dry-run")

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert re.search(r"^would back up 3 rows to backups/server_sessions-\d{8}T\d{6}Z\.jsonl$", out, re.M)
    assert "DROP TABLE IF EXISTS server_sessions;" in out
    assert "DROP INDEX IF EXISTS idx_server_sessions_expires;" in out
    assert "DELETE FROM d1_migrations WHERE name = ?;" in out
    assert "server_sessions" in _tables(db_path)
    assert _sql(db_path, "SELECT count(*) FROM server_sessions") == [(3,)]
    assert _sql(db_path, "SELECT name FROM d1_migrations") == [(SESSIONS_MIGRATION,)]
    assert not (tmp_path / "backups").exists()


def test_rollback_yes_writes_a_timestamped_backup_under_backups_and_drops(cli, tmp_path, db_path):
    _migrate(cli, db_path)
    _save_rows(db_path, 3)

    result = cli("--db", db_path, "rollback", "--yes")

    assert result.exit_code == 0, result.output
    (backup,) = (tmp_path / "backups").iterdir()
    assert re.fullmatch(r"server_sessions-\d{8}T\d{6}Z\.jsonl", backup.name)
    assert result.stdout.splitlines() == [
        f"backed up 3 rows to backups/{backup.name}",
        f"rolled back {SESSIONS_MIGRATION}: dropped server_sessions and idx_server_sessions_expires, "
        "removed its ledger row",
    ]
    assert len(backup.read_text(encoding="utf-8").splitlines()) == 3
    assert not {"server_sessions", "idx_server_sessions_expires"} & _tables(db_path)
    assert _sql(db_path, "SELECT count(*) FROM d1_migrations") == [(0,)]
    assert _sql(db_path, "SELECT count(*) FROM sessionctl_migration_checksums") == [(0,)]


def test_rollback_backup_holds_every_row_with_raw_values_byte_for_byte(cli, tmp_path, db_path):
    _migrate(cli, db_path)
    _save_rows(db_path, 2)
    malformed = '{"budget": 5000, "purpose": "웹' + "\\u00"  # truncated JSON, an unfinished escape
    conn = raw_connect(db_path)
    conn.execute("UPDATE server_sessions SET collected_info = ? WHERE user_id = 'u1'", (malformed,))
    conn.row_factory = dict
    stored = conn.execute("SELECT * FROM server_sessions ORDER BY user_id").fetchall()
    conn.close()
    backup = tmp_path / "my" / "backup.jsonl"

    result = cli("--db", db_path, "rollback", "--yes", "--backup", backup)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"backed up 2 rows to {backup}"
    lines = backup.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == stored
    assert json.loads(lines[1])["collected_info"] == malformed
    assert json.loads(lines[0])["messages"] == '["서버 추천"]'
    assert "서버 추천" in lines[0]


def test_after_rollback_verify_fails_and_migrate_reapplies(cli, db_path):
    _migrate(cli, db_path)
    assert cli("--db", db_path, "rollback", "--yes").exit_code == 0

    assert cli("--db", db_path, "verify").exit_code == 1
    status = cli("--db", db_path, "status", "--json")
    assert [r["state"] for r in json.loads(status.stdout)] == ["pending"]
    again = cli("--db", db_path, "migrate")
    assert again.exit_code == 0
    assert again.stdout == f"applied {SESSIONS_MIGRATION}\n"
    assert cli("--db", db_path, "verify").exit_code == 0


def test_rollback_no_backup_drops_without_writing_a_file(cli, tmp_path, db_path):
    _migrate(cli, db_path)
    _save_rows(db_path, 1)

    result = cli("--db", db_path, "rollback", "--yes", "--no-backup")

    assert result.exit_code == 0, result.output
    assert "backed up" not in result.stdout
    assert result.stdout.startswith(f"rolled back {SESSIONS_MIGRATION}")
    assert not (tmp_path / "backups").exists()
    assert "server_sessions" not in _tables(db_path)


def test_rollback_with_backup_and_no_backup_is_a_usage_error(cli, tmp_path, db_path):
    _migrate(cli, db_path)

    result = cli("--db", db_path, "rollback", "--yes", "--backup", tmp_path / "b.jsonl", "--no-backup")

    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "--backup and --no-backup cannot be used together")
    assert "server_sessions" in _tables(db_path)
    assert not (tmp_path / "b.jsonl").exists()


def test_rollback_when_nothing_is_applied_says_so(cli, db_path):
    raw_connect(db_path).execute("CREATE TABLE other(x)")

    result = cli("--db", db_path, "rollback", "--yes")

    assert result.exit_code == 0
    assert result.stdout == (
        f"nothing to roll back: no server_sessions table and {SESSIONS_MIGRATION} is not in the ledger\n"
    )


def test_rollback_removes_the_row_from_a_custom_ledger(cli, db_path):
    _migrate(cli, db_path, "--migrations-table", "my_ledger")

    result = cli("--db", db_path, "--migrations-table", "my_ledger", "rollback", "--yes", "--no-backup")

    assert result.exit_code == 0, result.output
    assert _sql(db_path, "SELECT count(*) FROM my_ledger") == [(0,)]


def test_rollback_drops_nothing_when_a_row_arrives_while_the_backup_is_written(cli, db_path, monkeypatch):
    # The bot saves right after the backup's rows are written. Patched where it is defined
    # (sessionctl.backup), so the test holds whoever imports the backup writer, and how.
    import sessionctl.backup as backup

    _migrate(cli, db_path)
    _save_rows(db_path, 3)
    real_write = backup.write_rows

    def write_then_bot_saves(rows, out):
        written = real_write(rows, out)
        bot = open_sqlite_file(db_path)
        save_server_session(bot, "arrived-meanwhile", ServerSession(), now=T0 + 5)
        bot.close()
        return written

    monkeypatch.setattr(backup, "write_rows", write_then_bot_saves)

    result = cli("--db", db_path, "rollback", "--yes", "--backup", "b.jsonl")

    assert result.exit_code == 1
    assert_one_error_line(
        result.stderr,
        "server_sessions changed while the backup was written; nothing was dropped (run rollback again)",
    )
    assert _sql(db_path, "SELECT count(*) FROM server_sessions") == [(4,)]
    assert _sql(db_path, "SELECT name FROM d1_migrations") == [(SESSIONS_MIGRATION,)]


def test_rollback_drops_nothing_when_a_row_changes_but_keeps_its_updated_at(cli, db_path, monkeypatch):
    # A hand edit (or a bot bug) that rewrites a session and leaves updated_at as it was:
    # the count, the newest and any sum of updated_at stay the same, the row does not.
    import sessionctl.backup as backup

    _migrate(cli, db_path)
    _save_rows(db_path, 3)
    real_write = backup.write_rows

    def write_then_row_changes(rows, out):
        written = real_write(rows, out)
        conn = raw_connect(db_path)
        conn.execute("UPDATE server_sessions SET last_recommendation = 'plan B' WHERE user_id = 'u1'")
        conn.close()
        return written

    monkeypatch.setattr(backup, "write_rows", write_then_row_changes)

    result = cli("--db", db_path, "rollback", "--yes", "--backup", "b.jsonl")

    assert result.exit_code == 1
    assert_one_error_line(
        result.stderr,
        "server_sessions changed while the backup was written; nothing was dropped (run rollback again)",
    )
    assert _sql(db_path, "SELECT last_recommendation FROM server_sessions WHERE user_id = 'u1'") == [("plan B",)]
    assert _sql(db_path, "SELECT name FROM d1_migrations") == [(SESSIONS_MIGRATION,)]
    # the copy the guard compared with is gone, and verify sees the schema as it was
    assert _sql(db_path, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'sessionctl_rollback%'") == [(0,)]
    assert cli("--db", db_path, "verify").exit_code == 0


def test_rollback_replaces_a_copy_a_killed_rollback_left(cli, db_path):
    _migrate(cli, db_path)
    _save_rows(db_path, 3)
    conn = raw_connect(db_path)
    conn.execute("CREATE TABLE sessionctl_rollback_0123456789ab (stale TEXT)")  # left by a kill -9
    conn.close()
    assert cli("--db", db_path, "verify").exit_code == 0  # sessionctl's own table, not the bot's schema

    result = cli("--db", db_path, "rollback", "--yes", "--backup", "b.jsonl")

    assert result.exit_code == 0, result.output
    assert len(Path("b.jsonl").read_text().splitlines()) == 3
    assert _sql(db_path, "SELECT name FROM sqlite_master WHERE name LIKE 'server_sessions%' "
                         "OR name LIKE 'sessionctl_rollback%'") == []


def test_migrate_adopts_a_table_created_by_wrangler_d1_execute_keeping_its_rows(cli, db_path):
    # The seed's deployment ran `wrangler d1 execute --file=...003...sql`: a table, no ledger row.
    conn = raw_connect(db_path)
    conn.executescript((MIGRATIONS_DIR / SESSIONS_MIGRATION).read_text(encoding="utf-8"))
    conn.close()
    _save_rows(db_path, 3)
    assert cli("--db", db_path, "verify").exit_code == 1

    result = cli("--db", db_path, "migrate")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"applied {SESSIONS_MIGRATION}\n"
    assert _sql(db_path, "SELECT count(*) FROM server_sessions") == [(3,)]
    assert cli("--db", db_path, "verify").exit_code == 0


def test_help_states_the_exit_codes_once(cli):
    result = cli("--help")
    assert result.exit_code == 0
    assert result.stdout.count("Exit codes:") == 1


def test_migrate_dry_run_on_a_missing_database_names_the_target(cli, db_path):
    result = cli("--db", db_path, "migrate", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [f"sessionctl: target: sqlite file {db_path}"]
    assert not db_path.exists()


@pytest.mark.parametrize("command", [("verify",), ("smoke",), ("sessions", "stats"), ("sessions", "show", "x")])
def test_object_commands_offer_only_table_and_json(cli, db_path, command):
    result = cli("--db", db_path, *command, "--format", "csv")
    assert result.exit_code == 2
    assert "'csv' is not one of 'table', 'json'" in result.stderr
