"""smoke (the seed's testing checklist against a real file) and deploy (migrate → verify → smoke)."""

from __future__ import annotations

import json
import sqlite3
import raw_sqlite
from pathlib import Path

import pytest

from conftest import MIGRATIONS_DIR, SESSIONCTL, SESSIONS_MIGRATION, assert_one_error_line, copy_migrations
from sessionctl.repository import SESSION_TTL_MS, now_ms
from rows import insert_rows as insert, raw_rows

MINUTE = 60_000
CHECK_NAMES = [
    "session creation",
    "session retrieval",
    "status flow",
    "session expiry",
    "concurrent handling",
    "session delete",
    "cleanup of smoke rows",
]
ALL_PASS = [
    "✓ session creation       saved a new session; created_at = updated_at = now, expires_at = now + 1 h",
    "✓ session retrieval      get returns what was saved (Korean text, nested JSON)",
    "✓ status flow            gathering → recommending → selecting → ordering → completed; created_at kept",
    "✓ session expiry         expired session invisible to get and removed by cleanup",
    "✓ concurrent handling    4 threads × 10 saves, same and different users: no errors, consistent",
    "✓ session delete         delete removes the session; deleting again is a no-op",
    "✓ cleanup of smoke rows  removed 8 smoke rows; none left",
]
VERIFY_NAMES = ["ledger", "migrations unchanged", "index idx_server_sessions_expires", "table server_sessions",
                "status check", "cleanup uses index"]

# Migration 004 for a broken rollout: every newly inserted session loses its messages.
CORRUPTING_TRIGGER = """\
CREATE TRIGGER IF NOT EXISTS server_sessions_lose_messages AFTER INSERT ON server_sessions
BEGIN
  UPDATE server_sessions SET messages = '[]' WHERE user_id = NEW.user_id;
END;
"""


def smoke_rows(db_path: Path) -> list[str]:
    conn = raw_sqlite.connect(db_path)
    try:
        return [r[0] for r in conn.execute(
            "SELECT user_id FROM server_sessions WHERE user_id GLOB 'sessionctl-smoke-*'")]
    finally:
        conn.close()


def schema_objects(db_path: Path) -> set[tuple[str, str]]:
    conn = raw_sqlite.connect(db_path)
    try:
        return set(conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))
    finally:
        conn.close()


def ledger(db_path: Path) -> list[str]:
    conn = raw_sqlite.connect(db_path)
    try:
        return [r[0] for r in conn.execute("SELECT name FROM d1_migrations ORDER BY id")]
    finally:
        conn.close()


def check_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line[:2] in ("✓ ", "✗ ")]


def session(user_id: str, expires_at: int, **overrides) -> dict:
    values = {
        "user_id": user_id, "status": "selecting", "collected_info": '{"budget":50000}',
        "last_recommendation": None, "messages": '[{"role":"user","content":"서버 추천"}]',
        "created_at": expires_at - SESSION_TTL_MS - MINUTE, "updated_at": expires_at - SESSION_TTL_MS,
        "expires_at": expires_at,
    }
    values.update(overrides)
    return values


# -- smoke -----------------------------------------------------------------------------


def test_smoke_passes_every_check_on_a_migrated_database(cli, db_path, migrated_db):
    result = cli("--db", db_path, "smoke")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ALL_PASS


def test_smoke_leaves_no_smoke_rows_behind(cli, db_path, migrated_db):
    assert cli("--db", db_path, "smoke").exit_code == 0
    assert smoke_rows(db_path) == []
    assert raw_rows(db_path) == []


def test_smoke_json_reports_ok_and_each_check(cli, db_path, migrated_db):
    result = cli("--db", db_path, "smoke", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert list(report) == ["ok", "checks"]
    assert report["ok"] is True
    assert [list(c) for c in report["checks"]] == [["name", "ok", "detail", "judged"]] * len(CHECK_NAMES)
    assert [c["name"] for c in report["checks"]] == CHECK_NAMES
    assert all(c["ok"] is True for c in report["checks"])
    assert report["checks"][-1]["detail"] == "removed 8 smoke rows; none left"


def test_smoke_format_json_is_the_json_flag(cli, db_path, migrated_db):
    as_flag = json.loads(cli("--db", db_path, "smoke", "--json").stdout)
    as_format = cli("--db", db_path, "smoke", "--format", "json")
    assert as_format.exit_code == 0, as_format.output
    assert json.loads(as_format.stdout) == as_flag


def test_smoke_never_touches_other_rows_live_or_expired(cli, db_path, migrated_db):
    now = now_ms()
    insert(db_path, [
        session("12345", now + 30 * MINUTE),
        session("expired-an-hour-ago", now - 60 * MINUTE, status="completed"),
        session("expired-a-day-ago", now - 24 * 60 * MINUTE, messages="[oops"),
        session("sessionctl-smoke", now - 5 * MINUTE),
        session("sessionctl-smokey", now + 5 * MINUTE),
        session("sessionctl-smoke.", now - 90 * MINUTE),
    ])
    before = raw_rows(db_path)
    result = cli("--db", db_path, "smoke")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ALL_PASS
    assert raw_rows(db_path) == before  # byte for byte, expired ones included


def test_smoke_expiry_cleanup_leaves_a_foreign_row_from_1970_alone(cli, db_path, migrated_db):
    insert(db_path, [session("written-with-zero-times", 0, created_at=0, updated_at=0)])
    before = raw_rows(db_path)
    result = cli("--db", db_path, "smoke")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ALL_PASS
    assert raw_rows(db_path) == before
    assert smoke_rows(db_path) == []


def test_two_smokes_at_once_never_sweep_each_others_rows(run_sessionctl, db_path, migrated_db):
    import subprocess

    procs = [
        subprocess.Popen([str(SESSIONCTL), "--db", str(db_path), "smoke", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        for _ in range(3)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (stdout, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stdout + stderr
        assert json.loads(stdout)["ok"] is True
    assert smoke_rows(db_path) == []


def test_smoke_fails_with_exit_1_when_writes_are_corrupted(cli, db_path, migrated_db):
    conn = raw_sqlite.connect(db_path)
    conn.executescript(CORRUPTING_TRIGGER)
    conn.close()
    result = cli("--db", db_path, "smoke")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        ALL_PASS[0],
        "✗ session retrieval      messages differ",
        "✗ status flow            messages lost along the flow",
        *ALL_PASS[3:],
    ]
    assert smoke_rows(db_path) == []  # its rows are removed also when checks fail


def test_smoke_json_reports_a_failure_with_ok_false(cli, db_path, migrated_db):
    conn = raw_sqlite.connect(db_path)
    conn.executescript(CORRUPTING_TRIGGER)
    conn.close()
    result = cli("--db", db_path, "smoke", "--format", "json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [c["name"] for c in report["checks"] if not c["ok"]] == ["session retrieval", "status flow"]


def test_smoke_without_the_sessions_table_exits_1(cli, db_path):
    raw_sqlite.connect(db_path).execute("CREATE TABLE other (x)").connection.close()
    result = cli("--db", db_path, "smoke")
    assert result.exit_code == 1
    assert_one_error_line(
        result.stderr,
        "table server_sessions does not exist (migration 003 is not applied: run `sessionctl migrate`)",
    )
    assert schema_objects(db_path) == {("table", "other")}


def test_smoke_on_a_missing_database_exits_3_and_creates_nothing(cli, db_path):
    result = cli("--db", db_path, "smoke")
    assert result.exit_code == 3
    assert not db_path.exists()


def test_smoke_as_a_real_process_prints_plain_check_marks(run_sessionctl, db_path, migrated_db):
    proc = run_sessionctl("--db", db_path, "smoke")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ALL_PASS  # no colour codes when not on a terminal


# -- deploy ----------------------------------------------------------------------------


def sections(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("== ")]


def check_names(lines: list[str]) -> list[str]:
    return [line[2:].split("  ")[0].strip() for line in lines]


def test_deploy_on_a_fresh_database_migrates_verifies_and_smoke_tests(cli, db_path):
    result = cli("--db", db_path, "deploy")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:2] == ["== migrate", f"applied {SESSIONS_MIGRATION}"]
    assert sections(result.stdout) == ["== migrate", "== verify", "== smoke"]
    checks = check_lines(result.stdout)
    assert check_names(checks) == VERIFY_NAMES + CHECK_NAMES
    assert all(line.startswith("✓ ") for line in checks), checks
    assert lines[-1] == "deploy ok: migrated, verified, smoke-tested"
    assert ledger(db_path) == [SESSIONS_MIGRATION]
    assert raw_rows(db_path) == []


def test_deploy_again_applies_nothing_and_passes(cli, db_path, migrated_db):
    now = now_ms()
    insert(db_path, [session("12345", now + 30 * MINUTE), session("old", now - 30 * MINUTE)])
    before = raw_rows(db_path)
    result = cli("--db", db_path, "deploy", "--rollback-on-failure")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:2] == ["== migrate", "nothing to apply: every migration is applied"]
    assert result.stdout.splitlines()[-1] == "deploy ok: migrated, verified, smoke-tested"
    assert raw_rows(db_path) == before


@pytest.fixture
def narrower_check(tmp_path) -> Path:
    """A migrations folder whose 003 forgets the 'completed' status: verify must catch it."""
    folder = copy_migrations(tmp_path, "narrow")
    path = folder / SESSIONS_MIGRATION
    sql = path.read_text(encoding="utf-8")
    assert ", 'completed'" in sql
    path.write_text(sql.replace(", 'completed'", ""), encoding="utf-8")
    return folder


def test_deploy_stops_at_a_failing_verify_with_exit_1(cli, db_path, narrower_check, tmp_path):
    result = cli("--db", db_path, "--migrations-dir", narrower_check, "deploy")
    assert result.exit_code == 1
    assert sections(result.stdout) == ["== migrate", "== verify"]  # smoke never ran
    failed = [line for line in check_lines(result.stdout) if line.startswith("✗ ")]
    assert check_names(failed) == ["status check"]
    assert result.stdout.splitlines()[-1] == "deploy stopped: verify failed"
    assert ledger(db_path) == [SESSIONS_MIGRATION]  # without --rollback-on-failure, nothing is undone
    assert ("table", "server_sessions") in schema_objects(db_path)
    assert not (tmp_path / "backups").exists()


def test_deploy_rollback_on_failure_undoes_the_migration_it_applied_after_verify_fails(
    cli, db_path, narrower_check, tmp_path
):
    result = cli("--db", db_path, "--migrations-dir", narrower_check, "deploy", "--rollback-on-failure")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert sections(result.stdout) == ["== migrate", "== verify", "== rollback (--rollback-on-failure)"]
    (backup,) = (tmp_path / "backups").glob("server_sessions-*.jsonl")
    assert lines[-4:] == [
        "deploy stopped: verify failed",
        "== rollback (--rollback-on-failure)",
        f"backed up 0 rows to backups/{backup.name}",
        f"rolled back {SESSIONS_MIGRATION}: dropped server_sessions and idx_server_sessions_expires, "
        "removed its ledger row",
    ]
    assert backup.read_bytes() == b""
    assert ledger(db_path) == []
    assert not {name for _, name in schema_objects(db_path)} & {"server_sessions", "idx_server_sessions_expires"}


@pytest.fixture
def with_corrupting_004(tmp_path) -> Path:
    folder = copy_migrations(tmp_path, "with004")
    (folder / "004_lose_messages.sql").write_text(CORRUPTING_TRIGGER, encoding="utf-8")
    return folder


def test_deploy_stops_at_a_failing_smoke_with_exit_1(cli, db_path, with_corrupting_004, tmp_path):
    result = cli("--db", db_path, "--migrations-dir", with_corrupting_004, "deploy")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[:3] == ["== migrate", f"applied {SESSIONS_MIGRATION}", "applied 004_lose_messages.sql"]
    assert sections(result.stdout) == ["== migrate", "== verify", "== smoke"]
    failed = [line for line in check_lines(result.stdout) if line.startswith("✗ ")]
    assert check_names(failed) == ["session retrieval", "status flow"]
    assert lines[-1] == "deploy stopped: smoke failed"
    assert ledger(db_path) == [SESSIONS_MIGRATION, "004_lose_messages.sql"]
    assert smoke_rows(db_path) == []
    assert not (tmp_path / "backups").exists()


def test_deploy_rollback_on_failure_after_smoke_fails_leaves_the_database_as_before_the_run(
    cli, db_path, with_corrupting_004, tmp_path
):
    result = cli("--db", db_path, "--migrations-dir", with_corrupting_004, "deploy", "--rollback-on-failure")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    (backup,) = (tmp_path / "backups").glob("server_sessions-*.jsonl")
    assert "deploy stopped: smoke failed" in lines
    assert f"backed up 0 rows to backups/{backup.name}" in lines
    assert any(line.startswith(f"rolled back {SESSIONS_MIGRATION}: dropped server_sessions") for line in lines)
    assert "unrecorded 004_lose_messages.sql: they changed server_sessions, which is gone " \
        "(`migrate` applies them again)" in lines
    assert backup.read_bytes() == b""
    objects = {name for _, name in schema_objects(db_path)}
    assert not objects & {"server_sessions", "idx_server_sessions_expires", "server_sessions_lose_messages"}
    # Both migrations this run applied are undone (004's trigger went with the table),
    # so the ledger must not claim either is applied.
    assert ledger(db_path) == []


def test_deploy_rollback_on_failure_keeps_a_migration_applied_by_an_earlier_run(
    cli, db_path, migrated_db, with_corrupting_004, tmp_path
):
    now = now_ms()
    insert(db_path, [session("12345", now + 30 * MINUTE), session("old", now - 30 * MINUTE)])
    before = raw_rows(db_path)
    result = cli("--db", db_path, "--migrations-dir", with_corrupting_004, "deploy", "--rollback-on-failure")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[:2] == ["== migrate", "applied 004_lose_messages.sql"]
    assert lines[-2:] == [
        "deploy stopped: smoke failed",
        f"not rolling back: this run did not apply {SESSIONS_MIGRATION}",
    ]
    assert raw_rows(db_path) == before
    assert ledger(db_path)[0] == SESSIONS_MIGRATION
    assert not (tmp_path / "backups").exists()


def test_deploy_rollback_on_failure_keeps_a_table_that_existed_before_the_run(cli, db_path, tmp_path):
    """The seed deployed 003 with `wrangler d1 execute --file`, which writes no ledger row.

    deploy then records 003 without creating anything; when a check fails, rolling back
    must not drop the live table this run did not create. (The hand-made trigger is what
    verify now catches: no migration creates it.)
    """
    conn = raw_sqlite.connect(db_path)
    conn.executescript((MIGRATIONS_DIR / SESSIONS_MIGRATION).read_text(encoding="utf-8"))
    conn.close()
    now = now_ms()
    insert(db_path, [
        session("12345", now + 30 * MINUTE),
        session("67890", now + 50 * MINUTE),
    ])
    conn = raw_sqlite.connect(db_path)
    conn.executescript(CORRUPTING_TRIGGER)  # part of the live schema: smoke's writes lose messages
    conn.close()
    before = raw_rows(db_path)
    result = cli("--db", db_path, "deploy", "--rollback-on-failure")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert "deploy stopped: verify failed" in lines
    assert any(line.startswith("✗ trigger server_sessions_lose_messages") and "extra" in line for line in lines)
    assert lines[-1] == (f"not rolling back: server_sessions existed before this run; its rows are kept "
                         f"and {SESSIONS_MIGRATION} stays recorded")
    assert ("table", "server_sessions") in schema_objects(db_path)
    assert raw_rows(db_path) == before
    assert ledger(db_path) == [SESSIONS_MIGRATION]  # its objects remain, so it stays recorded


def test_deploy_with_a_missing_migrations_folder_exits_2_and_creates_nothing(cli, db_path, tmp_path):
    result = cli("--db", db_path, "--migrations-dir", tmp_path / "nowhere", "deploy")
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, f"migrations folder not found: {tmp_path / 'nowhere'}")
    assert not db_path.exists()
