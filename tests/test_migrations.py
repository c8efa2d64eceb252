"""The migration engine: discovery, splitting, the wrangler ledger, checksums, atomic files."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path

import pytest

from conftest import (
    MIGRATIONS_DIR,
    REFERENCE_LEDGER_DDL,
    SESSIONS_MIGRATION,
    WRANGLER_LEDGER_DDL,
    copy_migrations,
    raw_connect,
)
from sessionctl.errors import MigrationFailedError, MigrationsDirError, ModifiedMigrationError
from sessionctl.migrations import (
    apply_migrations,
    discover_migrations,
    migration_status,
    pending_migrations,
)
from sessionctl.targets.sqlite_file import open_sqlite_file
from sessionctl.wrangler_sql import split_sql

SEED_SQL = (MIGRATIONS_DIR / SESSIONS_MIGRATION).read_text(encoding="utf-8")


def _table_names(path: Path) -> set[str]:
    conn = raw_connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def _ledger_names(path: Path, table: str = "d1_migrations") -> list[str]:
    conn = raw_connect(path)
    try:
        return [row[0] for row in conn.execute(f"SELECT name FROM {table} ORDER BY id")]
    finally:
        conn.close()


def _write(folder: Path, name: str, sql: str) -> Path:
    path = folder / name
    path.write_text(sql, encoding="utf-8")
    return path


# -- discovery order ---------------------------------------------------------------


def test_discovery_orders_by_leading_number_then_name_as_wrangler_does(tmp_path):
    names = [
        "2_b.sql",
        "10_a.sql",
        "002_a.sql",
        "1_z.sql",
        "01_a.sql",
        "0003.sql",
        "003_B.sql",
        "003_a.sql",
        "20240101_init.sql",
        "init.sql",
        "Alpha.sql",
    ]
    folder = tmp_path / "m"
    folder.mkdir()
    for name in names:
        _write(folder, name, "SELECT 1;")
    _write(folder, "notes.txt", "not a migration")

    discovered = [m.name for m in discover_migrations(folder)]

    assert discovered == [
        "01_a.sql",
        "1_z.sql",
        "002_a.sql",
        "2_b.sql",
        "0003.sql",
        "003_B.sql",
        "003_a.sql",
        "10_a.sql",
        "20240101_init.sql",
        "Alpha.sql",
        "init.sql",
    ]  # the order the pinned wrangler applies them in (test_wrangler_sql checks the rule itself)


def test_discovery_of_a_missing_folder_names_it(tmp_path):
    with pytest.raises(MigrationsDirError) as caught:
        discover_migrations(tmp_path / "nowhere")
    assert str(caught.value) == f"migrations folder not found: {tmp_path / 'nowhere'}"


def test_discovery_records_the_sha256_of_the_file_bytes():
    (migration,) = discover_migrations(MIGRATIONS_DIR)
    assert migration.name == SESSIONS_MIGRATION
    assert migration.sha256 == hashlib.sha256((MIGRATIONS_DIR / SESSIONS_MIGRATION).read_bytes()).hexdigest()


# -- splitting (wrangler's reading; compared with wrangler's own code in test_wrangler_sql) --


def split_statements(sql: str) -> list[str]:
    return [statement.sql for statement in split_sql(sql)]


def test_split_keeps_semicolons_inside_string_literals():
    assert split_statements("INSERT INTO t VALUES ('a;b'); INSERT INTO t VALUES (\"c;d\");") == [
        "INSERT INTO t VALUES ('a;b')",
        'INSERT INTO t VALUES ("c;d")',
    ]


def test_split_strips_comments_as_wrangler_does():
    sql = "-- first; comment\nCREATE TABLE t(x -- why x;\n);\n/* block; comment */ SELECT 1;\n-- the end;\n"
    assert split_statements(sql) == ["CREATE TABLE t(x \n)", "SELECT 1"]


def test_split_keeps_a_trigger_body_in_one_statement():
    sql = (
        "CREATE TABLE t(x);\n"
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n"
        "  INSERT INTO log VALUES (new.x);\n"
        "  UPDATE log SET x = x + 1;\n"
        "END;\n"
        "SELECT 1;"
    )
    assert split_statements(sql) == [
        "CREATE TABLE t(x)",
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n"
        "  INSERT INTO log VALUES (new.x);\n"
        "  UPDATE log SET x = x + 1;\n"
        "END",
        "SELECT 1",
    ]


def test_split_keeps_a_last_statement_without_semicolon():
    assert split_statements("SELECT 1; SELECT 2") == ["SELECT 1", "SELECT 2"]


def test_each_statement_knows_the_line_it_starts_on():
    assert [s.line for s in split_sql("SELECT 1;\n\n-- c\nSELECT 2;\r\nSELECT\n3;")] == [1, 4, 5]


def test_the_seed_migration_splits_into_its_two_statements():
    statements = split_statements(SEED_SQL)
    assert len(statements) == 2
    assert statements[0].startswith("CREATE TABLE IF NOT EXISTS server_sessions (")
    assert statements[1] == (
        "CREATE INDEX IF NOT EXISTS idx_server_sessions_expires ON server_sessions(expires_at)"
    )


def test_a_migration_with_strings_comments_and_a_trigger_applies_as_written(tmp_path, db_path):
    folder = tmp_path / "m"
    folder.mkdir()
    _write(
        folder,
        "001_tricky.sql",
        "-- a comment; with a semicolon\n"
        "CREATE TABLE t(x TEXT);\n"
        "CREATE TABLE log(n INTEGER);\n"
        "INSERT INTO log VALUES (0);\n"
        "CREATE TRIGGER count_t AFTER INSERT ON t BEGIN\n"
        "  UPDATE log SET n = n + 1;\n"
        "  UPDATE log SET n = n + 1;\n"
        "END;\n"
        "INSERT INTO t VALUES ('a;b'); /* block; comment */\n",
    )
    db = open_sqlite_file(db_path, create=True)
    list(apply_migrations(db, discover_migrations(folder)))
    db.close()

    conn = raw_connect(db_path)
    assert conn.execute("SELECT x FROM t").fetchall() == [("a;b",)]
    assert conn.execute("SELECT n FROM log").fetchall() == [(2,)]
    conn.close()


# -- the ledger --------------------------------------------------------------------


def test_ledger_schema_is_exactly_wranglers(migrated_db, db_path):
    reference = sqlite3.connect(":memory:")
    reference.execute(WRANGLER_LEDGER_DDL)
    want_sql = reference.execute("SELECT sql FROM sqlite_master WHERE name = 'd1_migrations'").fetchone()[0]
    want_columns = reference.execute("PRAGMA table_info(d1_migrations)").fetchall()
    want_indexes = reference.execute("PRAGMA index_list(d1_migrations)").fetchall()
    reference.close()

    conn = raw_connect(db_path)
    got_sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'd1_migrations'").fetchone()[0]
    got_columns = conn.execute("PRAGMA table_info(d1_migrations)").fetchall()
    got_indexes = conn.execute("PRAGMA index_list(d1_migrations)").fetchall()
    conn.close()

    assert got_sql == want_sql
    assert got_columns == want_columns
    assert got_indexes == want_indexes


def test_ledger_schema_matches_the_reference_statement_but_for_whitespace(migrated_db, db_path):
    conn = raw_connect(db_path)
    (got_sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'd1_migrations'").fetchone()
    conn.close()

    def words(sql: str) -> list[str]:
        # sqlite_master drops "IF NOT EXISTS" and the final semicolon.
        sql = re.sub(r"\bIF NOT EXISTS\b", "", sql).rstrip().rstrip(";")
        return re.findall(r"\w+|[^\w\s]", sql)

    assert words(got_sql) == words(REFERENCE_LEDGER_DDL)


def test_ledger_name_values_are_the_file_names(migrated_db, db_path):
    assert _ledger_names(db_path) == [SESSIONS_MIGRATION]


def test_ledger_applied_at_is_wranglers_current_timestamp_text(migrated_db, db_path):
    conn = raw_connect(db_path)
    (applied_at,) = conn.execute("SELECT applied_at FROM d1_migrations").fetchone()
    conn.close()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", applied_at)


def test_wrangler_finds_nothing_pending_after_sessionctl_migrated(migrated_db, db_path):
    # wrangler's rule: a file is pending when its name is not in the ledger.
    on_disk = {path.name for path in MIGRATIONS_DIR.glob("*.sql")}
    assert on_disk - set(_ledger_names(db_path)) == set()


def test_checksum_of_each_applied_file_is_recorded_beside_the_ledger(migrated_db, db_path):
    conn = raw_connect(db_path)
    rows = conn.execute("SELECT ledger, name, sha256 FROM sessionctl_migration_checksums").fetchall()
    conn.close()
    sha = hashlib.sha256((MIGRATIONS_DIR / SESSIONS_MIGRATION).read_bytes()).hexdigest()
    assert rows == [("d1_migrations", SESSIONS_MIGRATION, sha)]


def test_migrate_twice_applies_nothing_the_second_time(migrated_db):
    files = discover_migrations(MIGRATIONS_DIR)
    assert list(apply_migrations(migrated_db, files)) == []
    assert pending_migrations(migrated_db, files) == []


def test_files_are_applied_in_order_each_with_its_ledger_row(tmp_path, db_path):
    folder = copy_migrations(tmp_path)
    _write(folder, "001_first.sql", "CREATE TABLE first(x);")
    _write(folder, "010_later.sql", "CREATE TABLE later(y REFERENCES first(x));")
    db = open_sqlite_file(db_path, create=True)

    outcomes = [(o.name, o.outcome) for o in apply_migrations(db, discover_migrations(folder))]
    db.close()

    assert outcomes == [
        ("001_first.sql", "applied"),
        (SESSIONS_MIGRATION, "applied"),
        ("010_later.sql", "applied"),
    ]
    assert _ledger_names(db_path) == ["001_first.sql", SESSIONS_MIGRATION, "010_later.sql"]


# -- a failing file ----------------------------------------------------------------


def test_failing_file_leaves_nothing_of_itself_and_earlier_files_stay_applied(tmp_path, db_path):
    folder = tmp_path / "m"
    folder.mkdir()
    _write(folder, "001_ok.sql", "CREATE TABLE ok_table(x);")
    _write(folder, "002_bad.sql", "CREATE TABLE half_table(x);\nINSERT INTO no_such_table VALUES (1);\n")
    _write(folder, "003_after.sql", "CREATE TABLE after_table(x);")
    db = open_sqlite_file(db_path, create=True)
    applied = []

    with pytest.raises(MigrationFailedError) as caught:
        for outcome in apply_migrations(db, discover_migrations(folder)):
            applied.append(outcome.name)
    db.close()

    assert str(caught.value) == (
        "migration 002_bad.sql failed at line 2: no such table: no_such_table; nothing of it was applied"
    )
    assert caught.value.name == "002_bad.sql"
    assert applied == ["001_ok.sql"]
    tables = _table_names(db_path)
    assert "ok_table" in tables
    assert "half_table" not in tables
    assert "after_table" not in tables
    assert _ledger_names(db_path) == ["001_ok.sql"]
    conn = raw_connect(db_path)
    assert [r[0] for r in conn.execute("SELECT name FROM sessionctl_migration_checksums")] == ["001_ok.sql"]
    conn.close()


def test_failing_first_file_leaves_no_ledger_table_rows(tmp_path, db_path):
    folder = tmp_path / "m"
    folder.mkdir()
    _write(folder, "001_bad.sql", "CREATE TABLE a(x);\nCREATE TABLE a(x);\n")
    db = open_sqlite_file(db_path, create=True)

    with pytest.raises(MigrationFailedError, match=r"^migration 001_bad.sql failed at line 2: table a already exists;"):
        list(apply_migrations(db, discover_migrations(folder)))
    db.close()

    assert "a" not in _table_names(db_path)
    assert "d1_migrations" not in _table_names(db_path) or _ledger_names(db_path) == []


def test_constraint_failure_inside_a_file_is_reported_as_that_file_failing(tmp_path, db_path):
    folder = tmp_path / "m"
    folder.mkdir()
    _write(folder, "001_bad.sql", "CREATE TABLE u(x UNIQUE);\nINSERT INTO u VALUES (1);\nINSERT INTO u VALUES (1);\n")
    db = open_sqlite_file(db_path, create=True)

    with pytest.raises(MigrationFailedError) as caught:
        list(apply_migrations(db, discover_migrations(folder)))
    db.close()

    assert str(caught.value) == (
        "migration 001_bad.sql failed at line 3: UNIQUE constraint failed: u.x; nothing of it was applied"
    )
    assert "u" not in _table_names(db_path)


# -- modified files and foreign ledger rows --------------------------------------


def test_editing_an_applied_file_shows_it_as_modified_and_blocks_apply(tmp_path, db_path):
    folder = copy_migrations(tmp_path)
    db = open_sqlite_file(db_path, create=True)
    list(apply_migrations(db, discover_migrations(folder)))
    with open(folder / SESSIONS_MIGRATION, "a", encoding="utf-8") as f:
        f.write("\n-- edited after it was applied\n")
    _write(folder, "004_next.sql", "CREATE TABLE next_table(x);")
    files = discover_migrations(folder)

    states = {s.name: s.state for s in migration_status(db, files)}
    with pytest.raises(ModifiedMigrationError) as caught:
        list(apply_migrations(db, files))
    db.close()

    assert states == {SESSIONS_MIGRATION: "modified", "004_next.sql": "pending"}
    assert str(caught.value) == (
        f"applied migration file changed since it was applied: {SESSIONS_MIGRATION} "
        "(restore the file as applied, or add a new migration instead of editing it)"
    )
    assert "next_table" not in _table_names(db_path)


def test_ledger_rows_without_files_are_shown_and_are_not_an_error(migrated_db):
    migrated_db.execute("INSERT INTO d1_migrations (name) VALUES ('001_init.sql')")
    migrated_db.execute("INSERT INTO d1_migrations (name) VALUES ('002_x.sql')")
    files = discover_migrations(MIGRATIONS_DIR)

    states = [(s.name, s.state, s.detail) for s in migration_status(migrated_db, files)]

    assert states == [
        (SESSIONS_MIGRATION, "applied", ""),
        ("001_init.sql", "applied-without-file", "in the ledger, no file in the migrations folder"),
        ("002_x.sql", "applied-without-file", "in the ledger, no file in the migrations folder"),
    ]
    assert list(apply_migrations(migrated_db, files)) == []


def _migrate_like_wrangler(path: Path, names: list[str] = (SESSIONS_MIGRATION,)) -> None:
    """What `wrangler d1 migrations apply` leaves: its ledger, the SQL, a row; no checksums."""
    conn = raw_connect(path)
    conn.execute(WRANGLER_LEDGER_DDL)
    for name in names:
        conn.executescript(
            (MIGRATIONS_DIR / name).read_text(encoding="utf-8")
            + f"\nINSERT INTO d1_migrations (name) values ('{name}');"
        )
    conn.close()


def test_a_database_migrated_by_wrangler_looks_applied(db_path):
    _migrate_like_wrangler(db_path)
    db = open_sqlite_file(db_path)
    files = discover_migrations(MIGRATIONS_DIR)

    (state,) = migration_status(db, files)
    outcomes = list(apply_migrations(db, files))
    db.close()

    assert (state.name, state.state, state.checksum) == (SESSIONS_MIGRATION, "applied", "unrecorded")
    assert state.detail == "no checksum recorded (applied outside sessionctl)"
    assert outcomes == []
    assert "sessionctl_migration_checksums" not in _table_names(db_path)


def test_custom_ledger_table_name_is_used_instead_of_d1_migrations(db_path):
    db = open_sqlite_file(db_path, create=True)
    list(apply_migrations(db, discover_migrations(MIGRATIONS_DIR), "my_ledger"))

    assert [s.state for s in migration_status(db, discover_migrations(MIGRATIONS_DIR), "my_ledger")] == ["applied"]
    assert [s.state for s in migration_status(db, discover_migrations(MIGRATIONS_DIR))] == ["pending"]
    db.close()
    assert _ledger_names(db_path, "my_ledger") == [SESSIONS_MIGRATION]
    assert "d1_migrations" not in _table_names(db_path)


@pytest.mark.parametrize("table", ["x; DROP TABLE server_sessions", "sqlite_master", "_cf_KV", "1abc", ""])
def test_invalid_ledger_table_names_are_refused(migrated_db, table):
    with pytest.raises(MigrationsDirError) as caught:
        list(apply_migrations(migrated_db, discover_migrations(MIGRATIONS_DIR), table))
    assert str(caught.value) == f"invalid migrations table name: {table!r}"
