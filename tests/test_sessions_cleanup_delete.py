"""sessions cleanup (batches, dry run, quiet, beside a concurrent writer) and sessions delete."""

from __future__ import annotations

import sqlite3
import raw_sqlite
import threading
from pathlib import Path

import pytest

from conftest import assert_one_error_line
from sessionctl.repository import (
    COLUMNS,
    SESSION_TTL_MS,
    ServerSession,
    cleanup_expired_sessions,
    now_ms,
    save_server_session,
)
from rows import insert_rows as insert

MINUTE = 60_000


def row(user_id: str, expires_at: int, **overrides) -> dict:
    values = {
        "user_id": user_id,
        "status": "gathering",
        "collected_info": '{"budget":50000}',
        "last_recommendation": None,
        "messages": '[{"role":"user","content":"서버 추천"}]',
        "created_at": expires_at - SESSION_TTL_MS - MINUTE,
        "updated_at": expires_at - SESSION_TTL_MS,
        "expires_at": expires_at,
    }
    values.update(overrides)
    return values


def raw_rows(db_path: Path) -> dict[str, tuple]:
    conn = raw_sqlite.connect(db_path)
    try:
        return {
            r[0]: r
            for r in conn.execute(f"SELECT {', '.join(COLUMNS)} FROM server_sessions ORDER BY user_id")
        }
    finally:
        conn.close()


@pytest.fixture
def live_and_expired(migrated_db, db_path):
    now = now_ms()
    live = [row(f"live-{i}", now + (i + 1) * MINUTE) for i in range(4)]
    expired = [row(f"gone-{i}", now - (i + 1) * MINUTE) for i in range(3)]
    live.append(row("live-malformed", now + 30 * MINUTE, messages="[oops"))
    insert(db_path, live + expired)
    return {r["user_id"] for r in live}, {r["user_id"] for r in expired}


# -- cleanup ---------------------------------------------------------------------------


def test_cleanup_deletes_only_expired_sessions_and_says_how_many(cli, db_path, live_and_expired):
    live, expired = live_and_expired
    before = raw_rows(db_path)
    result = cli("--db", db_path, "sessions", "cleanup")
    assert result.exit_code == 0, result.output
    assert result.stdout == "deleted 3 expired sessions\n"
    after = raw_rows(db_path)
    assert set(after) == live
    assert after == {user: before[user] for user in live}  # live rows untouched, byte for byte


def test_cleanup_with_nothing_expired_deletes_nothing(cli, db_path, migrated_db):
    now = now_ms()
    insert(db_path, [row("live", now + MINUTE)])
    result = cli("--db", db_path, "sessions", "cleanup")
    assert result.exit_code == 0, result.output
    assert result.stdout == "deleted 0 expired sessions\n"
    assert set(raw_rows(db_path)) == {"live"}


def test_cleanup_batch_size_deletes_everything_in_several_batches(cli, db_path, migrated_db):
    now = now_ms()
    insert(db_path, [row(f"gone-{i:02d}", now - (i + 1) * 1000) for i in range(25)] + [row("live", now + MINUTE)])
    result = cli("--db", db_path, "sessions", "cleanup", "--batch-size", "10")
    assert result.exit_code == 0, result.output
    assert result.stdout == "deleted 25 expired sessions\n"
    assert set(raw_rows(db_path)) == {"live"}


@pytest.mark.parametrize("total, batch, batches", [(25, 10, [10, 10, 5]), (20, 10, [10, 10]), (3, 500, [3])])
def test_cleanup_works_in_batches_of_batch_size_oldest_expiry_first(migrated_db, db_path, total, batch, batches):
    now = now_ms()
    insert(db_path, [row(f"gone-{i:02d}", now - (total - i) * 1000) for i in range(total)])
    seen: list[int] = []
    remaining: list[set[str]] = []

    def on_batch(deleted: int) -> None:
        seen.append(deleted)
        remaining.append(set(raw_rows(db_path)))

    assert cleanup_expired_sessions(migrated_db, now=now, batch_size=batch, on_batch=on_batch) == total
    assert seen == batches
    # each batch is committed on its own, and takes the soonest-expired rows first
    assert remaining[0] == {f"gone-{i:02d}" for i in range(batches[0], total)}
    assert remaining[-1] == set()


@pytest.mark.parametrize("bad", ["0", "-5", "many"])
def test_cleanup_refuses_a_bad_batch_size_with_exit_2(cli, db_path, live_and_expired, bad):
    before = raw_rows(db_path)
    result = cli("--db", db_path, "sessions", "cleanup", "--batch-size", bad)
    assert result.exit_code == 2
    assert "Invalid value for '--batch-size'" in result.stderr
    assert raw_rows(db_path) == before


def test_cleanup_dry_run_counts_and_deletes_nothing(cli, db_path, live_and_expired):
    before = raw_rows(db_path)
    result = cli("--db", db_path, "sessions", "cleanup", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout == "would delete 3 expired sessions (dry run, nothing deleted)\n"
    assert raw_rows(db_path) == before


def test_cleanup_quiet_prints_nothing_at_all_and_exits_0(cli, db_path, live_and_expired):
    live, _ = live_and_expired
    result = cli("--db", db_path, "sessions", "cleanup", "--quiet")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == ""
    assert set(raw_rows(db_path)) == live


def test_cleanup_quiet_from_cron_is_silent_as_a_real_process(run_sessionctl, db_path, live_and_expired):
    live, _ = live_and_expired
    proc = run_sessionctl("--db", db_path, "sessions", "cleanup", "-q", "--batch-size", "2")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert set(raw_rows(db_path)) == live


def test_cleanup_quiet_dry_run_is_silent_and_deletes_nothing(cli, db_path, live_and_expired):
    before = raw_rows(db_path)
    result = cli("--db", db_path, "sessions", "cleanup", "--quiet", "--dry-run")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    assert raw_rows(db_path) == before


def test_cleanup_on_a_missing_database_exits_3_and_creates_nothing(cli, tmp_path):
    result = cli("--db", tmp_path / "missing.db", "sessions", "cleanup", "--quiet")
    assert result.exit_code == 3
    assert not (tmp_path / "missing.db").exists()


def test_a_session_refreshed_by_a_concurrent_writer_during_cleanup_survives(migrated_db, db_path):
    """The bot re-saves sessions that were expired when cleanup started; cleanup must not delete them."""
    now = now_ms()
    cutoff = now - 1  # cleanup's fixed "now"; every save below happens after it
    expired = [row(f"exp-{i:04d}", cutoff - (3000 - i) * 1000) for i in range(3000)]
    live = [row(f"live-{i:03d}", now + (i + 1) * 1000) for i in range(200)]
    insert(db_path, expired + live)
    live_before = {u: r for u, r in raw_rows(db_path).items() if u.startswith("live-")}
    # the ones cleanup reaches last (largest expires_at), so the writer gets to them first
    refreshed = [r["user_id"] for r in expired[-60:]]

    cleanup_running = threading.Event()
    first_pass_done = threading.Event()
    stop = threading.Event()
    # One permit per committed batch: the bot writes between and during batches, as a live
    # bot does, but never so fast that it starves cleanup of the write lock.
    permits = threading.Semaphore(0)
    saves: list[str] = []
    errors: list[BaseException] = []

    def refresh(db, user: str) -> None:
        save_server_session(db, user, ServerSession(status="recommending", messages=["again"]))
        saves.append(user)

    def bot() -> None:
        db = migrated_db.reopen()
        try:
            cleanup_running.wait(timeout=30)
            for user in refreshed:
                refresh(db, user)
            first_pass_done.set()
            n = 0
            while not stop.is_set():
                if permits.acquire(timeout=0.05):
                    refresh(db, refreshed[n % len(refreshed)])
                    n += 1
        except BaseException as exc:  # reported by the assertions below
            errors.append(exc)
            first_pass_done.set()
        finally:
            db.close()

    batches: list[int] = []

    def on_batch(deleted: int) -> None:
        batches.append(deleted)
        if len(batches) == 1:
            cleanup_running.set()
            first_pass_done.wait(timeout=30)  # every refresh lands while cleanup is under way
        else:
            permits.release()

    writer = threading.Thread(target=bot)
    writer.start()
    try:
        deleted = cleanup_expired_sessions(migrated_db, now=cutoff, batch_size=10, on_batch=on_batch)
    finally:
        stop.set()
        writer.join(timeout=60)
    assert not errors, errors
    assert set(saves) == set(refreshed)
    assert len(saves) > len(refreshed)  # it kept saving while the batches ran
    assert deleted == 3000 - len(refreshed)
    assert len(batches) > 100 and max(batches) == 10

    after = raw_rows(db_path)
    assert set(after) == set(refreshed) | set(live_before)
    for user in refreshed:
        status, messages, expires_at = after[user][1], after[user][4], after[user][7]
        assert (status, messages) == ("recommending", '["again"]')
        assert expires_at > cutoff
    assert {u: after[u] for u in live_before} == live_before  # no live row deleted or changed


# -- delete ----------------------------------------------------------------------------


def test_delete_refuses_without_yes_when_not_interactive(cli, db_path, live_and_expired):
    before = raw_rows(db_path)
    result = cli("--db", db_path, "sessions", "delete", "live-0", "gone-0")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert_one_error_line(
        result.stderr,
        "delete refused, nothing was deleted: not confirmed (pass --yes in a non-interactive run)",
    )
    assert raw_rows(db_path) == before


def test_delete_refuses_without_yes_as_a_real_process_with_no_terminal(run_sessionctl, db_path, live_and_expired):
    before = raw_rows(db_path)
    proc = run_sessionctl("--db", db_path, "sessions", "delete", "live-0")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_error_line(
        proc.stderr,
        "delete refused, nothing was deleted: not confirmed (pass --yes in a non-interactive run)",
    )
    assert raw_rows(db_path) == before


def test_delete_with_yes_deletes_live_and_expired_and_names_what_was_not_found(cli, db_path, live_and_expired):
    live, expired = live_and_expired
    result = cli("--db", db_path, "sessions", "delete", "live-0", "nobody", "gone-1", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout == "deleted live-0\ndeleted gone-1\nnot found nobody\n2 deleted, 1 not found\n"
    assert set(raw_rows(db_path)) == (live | expired) - {"live-0", "gone-1"}


def test_delete_short_yes_flag(cli, db_path, live_and_expired):
    result = cli("--db", db_path, "sessions", "delete", "-y", "live-1")
    assert result.exit_code == 0, result.output
    assert result.stdout == "deleted live-1\n1 deleted, 0 not found\n"


def test_delete_names_a_repeated_id_once(cli, db_path, live_and_expired):
    result = cli("--db", db_path, "sessions", "delete", "live-2", "live-2", "ghost", "ghost", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout == "deleted live-2\nnot found ghost\n1 deleted, 1 not found\n"


def test_delete_of_only_unknown_ids_deletes_nothing_and_exits_0(cli, db_path, live_and_expired):
    before = raw_rows(db_path)
    result = cli("--db", db_path, "sessions", "delete", "ghost", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout == "not found ghost\n0 deleted, 1 not found\n"
    assert raw_rows(db_path) == before


def test_delete_many_ids_at_once_beyond_one_statements_parameter_limit(cli, db_path, migrated_db):
    now = now_ms()
    insert(db_path, [row(f"u{i:03d}", now + MINUTE) for i in range(250)])
    ids = [f"u{i:03d}" for i in range(0, 250, 1) if i % 5]  # 200 ids across three statements
    result = cli("--db", db_path, "sessions", "delete", "--yes", *ids)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "200 deleted, 0 not found"
    assert set(raw_rows(db_path)) == {f"u{i:03d}" for i in range(0, 250, 5)}


def test_delete_without_ids_is_a_usage_error(cli, db_path, live_and_expired):
    result = cli("--db", db_path, "sessions", "delete", "--yes")
    assert result.exit_code == 2
    assert "Missing argument" in result.stderr


def test_a_cleanup_failing_midway_says_how_many_rows_earlier_batches_deleted(cli, db_path, migrated_db, monkeypatch):
    from sessionctl.errors import DatabaseLockedError
    from sessionctl.targets.sqlite_file import SqliteFileDatabase

    now = now_ms()
    insert(db_path, [row(f"dead-{i:02d}", now - MINUTE) for i in range(25)])
    real_execute = SqliteFileDatabase.execute
    calls = []

    def third_batch_fails(self, sql, params=()):
        calls.append(sql)
        if sql.startswith("DELETE") and len(calls) == 3:
            raise DatabaseLockedError("sessions.db is locked by another process")
        return real_execute(self, sql, params)

    monkeypatch.setattr(SqliteFileDatabase, "execute", third_batch_fails)
    result = cli("--db", db_path, "sessions", "cleanup", "--batch-size", "10")
    assert result.exit_code == 3
    assert_one_error_line(
        result.stderr,
        "sessions.db is locked by another process (after deleting 20 expired sessions in earlier batches)",
    )
