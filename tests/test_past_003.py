"""Past 003: verify, rollback and deploy stay true as the bot's schema grows.

Three kinds of 004 -- one that adds a column (and an index on status), one that adds an
unrelated table, one that re-creates the expires_at index with a second column -- each go
through migrate, verify, smoke, deploy, rollback (refused, then forced where it must be),
migrate again and import of the backup, with the ledger and the schema agreeing after every
step and no value lost. The engine, the replay, the rollback plan and the checks are also
tested directly, not only through the CLI's output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import MIGRATIONS_DIR, SESSIONS_MIGRATION, raw_connect
from sessionctl.checks import NOT_JUDGED, run_checks
from sessionctl.errors import LaterMigrationsError, RollbackError
from sessionctl.migrations import MigrationEngine, Outcome, State, discover_migrations
from sessionctl.rollback import plan_rollback, roll_back
from sessionctl.targets.sqlite_file import open_sqlite_file

ADD_COLUMN = (
    "ALTER TABLE server_sessions ADD COLUMN locale TEXT;\n"
    "CREATE INDEX idx_server_sessions_status ON server_sessions(status);\n"
)
UNRELATED_TABLE = "CREATE TABLE feedback (id INTEGER PRIMARY KEY, user_id TEXT, stars INTEGER);\n"
REDEFINED_INDEX = (
    "DROP INDEX idx_server_sessions_expires;\n"
    "CREATE INDEX idx_server_sessions_expires ON server_sessions(expires_at, user_id);\n"
)
VARIANTS = {"add-column": ADD_COLUMN, "unrelated-table": UNRELATED_TABLE, "redefined-index": REDEFINED_INDEX}
TOUCHES_SESSIONS = {"add-column": True, "unrelated-table": False, "redefined-index": True}
FAR_FUTURE = 4_102_444_800_000  # 2100-01-01: these rows never expire during a test


def _folder(tmp_path: Path, fourth: str | None) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / SESSIONS_MIGRATION).write_bytes((MIGRATIONS_DIR / SESSIONS_MIGRATION).read_bytes())
    if fourth is not None:
        (folder / "004_next.sql").write_text(fourth, encoding="utf-8")
    return folder


def _engine(db_path: Path, folder: Path) -> MigrationEngine:
    return MigrationEngine(open_sqlite_file(db_path, create=True), discover_migrations(folder))


def _schema_agrees_with_ledger(db_path: Path, folder: Path) -> list[str]:
    """What verify's schema checks find wrong: every recorded migration's objects there, nothing else."""
    engine = _engine(db_path, folder)
    try:
        return [f"{c.name}: {c.detail}" for c in run_checks(engine)
                if not c.ok and c.name not in ("ledger", "status check", "cleanup uses index")]
    finally:
        engine.db.close()


def _insert_live_rows(db_path: Path, with_locale: bool) -> list[tuple]:
    conn = raw_connect(db_path)
    rows = [(f"tg:{i}", "gathering", '{"budget":1}', None, '["서버"]', 1, 2, FAR_FUTURE) for i in range(3)]
    try:
        with conn:
            for row in rows:
                if with_locale:
                    conn.execute("INSERT INTO server_sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, "ko"))
                else:
                    conn.execute("INSERT INTO server_sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
        return conn.execute("SELECT * FROM server_sessions ORDER BY user_id").fetchall()
    finally:
        conn.close()


def _all_rows(db_path: Path) -> list[tuple]:
    conn = raw_connect(db_path)
    try:
        return conn.execute("SELECT * FROM server_sessions ORDER BY user_id").fetchall()
    finally:
        conn.close()


def _ledger(db_path: Path) -> list[str]:
    conn = raw_connect(db_path)
    try:
        return [name for (name,) in conn.execute("SELECT name FROM d1_migrations ORDER BY id")]
    finally:
        conn.close()


# -- the whole way, through the CLI ---------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_later_migration_goes_through_every_step_with_ledger_and_schema_agreeing(
        variant, run_sessionctl, tmp_path):
    folder = _folder(tmp_path, VARIANTS[variant])
    db_path = tmp_path / "s.db"

    def run(*args: str):
        return run_sessionctl("--db", db_path, "--migrations-dir", folder, *args)

    assert run("migrate").stdout == f"applied {SESSIONS_MIGRATION}\napplied 004_next.sql\n"
    assert _schema_agrees_with_ledger(db_path, folder) == []
    verify = run("verify")
    assert verify.returncode == 0, verify.stdout
    assert run("smoke").returncode == 0
    deploy = run("deploy")
    assert deploy.returncode == 0 and deploy.stdout.endswith("deploy ok: migrated, verified, smoke-tested\n")
    rows = _insert_live_rows(db_path, with_locale=variant == "add-column")

    backup = tmp_path / "backup.jsonl"
    refused = run("rollback", "--yes", "--backup", backup)
    if TOUCHES_SESSIONS[variant]:
        assert refused.returncode == 2, refused.stderr
        assert "004_next.sql" in refused.stderr and "--through-later" in refused.stderr
        assert _all_rows(db_path) == rows and _ledger(db_path) == [SESSIONS_MIGRATION, "004_next.sql"]
        assert not backup.exists()
        rolled = run("rollback", "--yes", "--through-later", "--backup", backup)
        assert rolled.returncode == 0, rolled.stderr
        assert "unrecorded 004_next.sql" in rolled.stdout
        assert _ledger(db_path) == []
    else:
        assert refused.returncode == 0, refused.stderr
        assert "still recorded: 004_next.sql" in refused.stdout
        assert _ledger(db_path) == ["004_next.sql"]  # its table remains, so it stays recorded
    assert _schema_agrees_with_ledger(db_path, folder) == []

    backup_lines = [json.loads(line) for line in backup.read_text().splitlines()]
    assert len(backup_lines) == len(rows)
    if variant == "add-column":
        assert {line["locale"] for line in backup_lines} == {"ko"}  # every column, later ones included

    assert run("migrate").returncode == 0
    assert _schema_agrees_with_ledger(db_path, folder) == []
    assert sorted(_ledger(db_path)) == sorted([SESSIONS_MIGRATION, "004_next.sql"])
    imported = run("sessions", "import", backup)
    assert imported.returncode == 0, imported.stderr
    assert _all_rows(db_path) == rows  # no value lost
    assert run("verify").returncode == 0


# -- verify ------------------------------------------------------------------------------------


def test_verify_passes_a_column_added_after_003(tmp_path):
    folder = _folder(tmp_path, ADD_COLUMN)
    engine = _engine(tmp_path / "s.db", folder)
    assert [o.outcome for o in engine.apply()] == [Outcome.APPLIED, Outcome.APPLIED]
    checks = {c.name: c for c in run_checks(engine)}
    assert all(c.ok for c in checks.values()), [c for c in checks.values() if not c.ok]
    assert checks["table server_sessions"].detail == "as the applied migrations build it (9 columns)"


def test_verify_accepts_an_expires_at_index_re_created_with_more_columns(tmp_path):
    engine = _engine(tmp_path / "s.db", _folder(tmp_path, REDEFINED_INDEX))
    list(engine.apply())
    checks = {c.name: c for c in run_checks(engine)}
    assert checks["cleanup uses index"].ok, checks["cleanup uses index"].detail
    assert checks["index idx_server_sessions_expires"].ok
    assert checks["index idx_server_sessions_expires"].detail.endswith("on server_sessions(expires_at, user_id)")


def test_verify_names_an_object_defined_differently_from_what_the_migrations_build(tmp_path):
    db_path = tmp_path / "s.db"
    engine = _engine(db_path, _folder(tmp_path, None))
    list(engine.apply())
    conn = raw_connect(db_path)
    conn.execute("DROP INDEX idx_server_sessions_expires")
    conn.execute("CREATE INDEX idx_server_sessions_expires ON server_sessions(updated_at)")
    conn.close()
    failed = {c.name: c.detail for c in run_checks(engine) if not c.ok}
    assert failed["index idx_server_sessions_expires"].startswith(
        "defined differently: expected CREATE INDEX idx_server_sessions_expires ON server_sessions(expires_at), "
        "found CREATE INDEX idx_server_sessions_expires ON server_sessions(updated_at)")
    assert "cleanup uses index" in failed


def test_verify_fails_an_object_no_applied_migration_creates_and_one_that_is_missing(tmp_path):
    db_path = tmp_path / "s.db"
    engine = _engine(db_path, _folder(tmp_path, ADD_COLUMN))
    list(engine.apply())
    conn = raw_connect(db_path)
    conn.execute("CREATE TABLE stray (x)")
    conn.execute("DROP INDEX idx_server_sessions_status")
    conn.close()
    failed = {c.name: c.detail for c in run_checks(engine) if not c.ok}
    assert failed["table stray"] == "extra: no applied migration creates it (CREATE TABLE stray (x))"
    assert failed["index idx_server_sessions_status"].startswith("missing: the applied migrations create it")


def test_ledger_rows_without_a_file_are_shown_as_not_judged_not_as_failures(tmp_path):
    db_path = tmp_path / "s.db"
    engine = _engine(db_path, _folder(tmp_path, None))
    conn = raw_connect(db_path)
    # A bot's 001 applied by wrangler from another checkout: its table and its ledger row.
    conn.execute("CREATE TABLE conversations (id INTEGER PRIMARY KEY)")
    conn.close()
    engine.db.batch(engine.plan(engine.file(SESSIONS_MIGRATION)))  # 003 through the engine ...
    conn = raw_connect(db_path)
    conn.execute("INSERT INTO d1_migrations (name) VALUES ('001_init.sql')")  # ... and 001 recorded elsewhere
    conn.close()
    checks = {c.name: c for c in run_checks(engine)}
    assert all(c.ok for c in checks.values()), [c for c in checks.values() if not c.ok]
    assert not checks["table conversations"].judged
    assert checks["table conversations"].detail.startswith(NOT_JUDGED)
    assert not checks["applied elsewhere"].judged and "001_init.sql" in checks["applied elsewhere"].detail


def test_verify_marks_what_it_cannot_judge_apart_from_passes_and_failures(run_sessionctl, tmp_path):
    db_path = tmp_path / "s.db"
    folder = _folder(tmp_path, None)
    assert run_sessionctl("--db", db_path, "--migrations-dir", folder, "migrate").returncode == 0
    conn = raw_connect(db_path)
    conn.execute("CREATE TABLE conversations (id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO d1_migrations (name) VALUES ('001_init.sql')")
    conn.close()
    result = run_sessionctl("--db", db_path, "--migrations-dir", folder, "verify")
    assert result.returncode == 0, result.stdout
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert "· applied elsewhere cannot be judged here: 001_init.sql in d1_migrations, no file in the folder" in lines
    assert ("· table conversations cannot be judged here: the ledger holds migrations that are not in this folder"
            in lines)


# -- the engine ----------------------------------------------------------------------------------


def test_the_engine_reports_typed_states(tmp_path):
    engine = _engine(tmp_path / "s.db", _folder(tmp_path, UNRELATED_TABLE))
    assert [s.state for s in engine.status()] == [State.PENDING, State.PENDING]
    list(engine.apply())
    assert [s.state for s in engine.status()] == [State.APPLIED, State.APPLIED]
    assert engine.status()[0].state == "applied"  # the values are what status prints
    (engine.file("004_next.sql").path).write_text(UNRELATED_TABLE + "-- edited\n")
    engine = MigrationEngine(engine.db, discover_migrations(engine.file("004_next.sql").path.parent))
    assert [s.state for s in engine.status()] == [State.APPLIED, State.MODIFIED]


def test_replay_builds_in_memory_what_migrate_builds_on_disk(tmp_path):
    engine = _engine(tmp_path / "s.db", _folder(tmp_path, ADD_COLUMN))
    list(engine.apply())
    replay = engine.replay(engine.applied_names())
    try:
        assert replay.complete and replay.replayed == [SESSIONS_MIGRATION, "004_next.sql"]
        memory = {r["name"]: r["sql"] for r in replay.db.query("SELECT name, sql FROM sqlite_master")}
        disk = {r["name"]: r["sql"] for r in engine.db.query("SELECT name, sql FROM sqlite_master")}
        assert memory == disk
    finally:
        replay.close()


def test_replay_stops_at_a_name_without_a_file_and_says_so(tmp_path):
    engine = _engine(tmp_path / "s.db", _folder(tmp_path, None))
    replay = engine.replay(["001_elsewhere.sql", SESSIONS_MIGRATION])
    assert (replay.complete, replay.stopped_at, replay.reason) == (
        False, "001_elsewhere.sql", "no file in the migrations folder")
    replay.close()


# -- the one rollback -------------------------------------------------------------------------------


def test_rollback_refuses_later_migrations_that_changed_the_table_naming_them(tmp_path):
    engine = _engine(tmp_path / "s.db", _folder(tmp_path, ADD_COLUMN))
    list(engine.apply())
    with pytest.raises(LaterMigrationsError) as caught:
        plan_rollback(engine)
    assert caught.value.names == ["004_next.sql"]
    assert "--" not in str(caught.value)  # the library names no CLI flag


def test_rollback_keeps_later_migrations_of_other_tables_recorded_with_their_objects(tmp_path):
    db_path = tmp_path / "s.db"
    engine = _engine(db_path, _folder(tmp_path, UNRELATED_TABLE))
    list(engine.apply())
    plan = plan_rollback(engine)
    assert (plan.later, plan.kept) == ([], ["004_next.sql"])
    roll_back(engine.db, plan, None)
    assert _ledger(db_path) == ["004_next.sql"]
    assert [s.state for s in engine.status()] == [State.PENDING, State.APPLIED]


def test_rollback_through_later_migrations_unrecords_them_and_backs_up_every_column(tmp_path):
    db_path = tmp_path / "s.db"
    engine = _engine(db_path, _folder(tmp_path, ADD_COLUMN))
    list(engine.apply())
    rows = _insert_live_rows(db_path, with_locale=True)
    plan = plan_rollback(engine, through_later=True)
    outcome = roll_back(engine.db, plan, tmp_path / "b.jsonl")
    assert outcome.rows_backed_up == len(rows) and _ledger(db_path) == []
    first = json.loads((tmp_path / "b.jsonl").read_text().splitlines()[0])
    assert list(first) == ["user_id", "status", "collected_info", "last_recommendation", "messages",
                           "created_at", "updated_at", "expires_at", "locale"]


def test_a_later_migration_that_changes_the_table_and_another_one_is_never_half_rolled_back(tmp_path):
    db_path = tmp_path / "s.db"
    engine = _engine(db_path, _folder(tmp_path, ADD_COLUMN + UNRELATED_TABLE))
    list(engine.apply())
    with pytest.raises(RollbackError, match="004_next.sql changes server_sessions and also feedback"):
        plan_rollback(engine, through_later=True)
    assert _ledger(db_path) == [SESSIONS_MIGRATION, "004_next.sql"]


def test_deploy_rollback_on_failure_uses_the_same_rollback_through_what_it_applied(run_sessionctl, tmp_path):
    # A 004 whose index makes verify's cleanup-plan check fail: deploy must roll back 003 and 004.
    folder = _folder(tmp_path, "DROP INDEX idx_server_sessions_expires;\n")
    db_path = tmp_path / "s.db"
    result = run_sessionctl("--db", db_path, "--migrations-dir", folder, "deploy", "--rollback-on-failure")
    assert result.returncode == 1
    assert "unrecorded 004_next.sql" in result.stdout
    assert _ledger(db_path) == []
    assert _schema_agrees_with_ledger(db_path, folder) == []
