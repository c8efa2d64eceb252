"""Several processes at once: racing migrates, and writers beside each other and a cleanup."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import apsw

from conftest import SESSIONCTL, SESSIONS_MIGRATION, error_lines, raw_connect
from sessionctl.repository import (
    SESSION_TTL_MS,
    ServerSession,
    SessionStatus,
    cleanup_expired_sessions,
    find_session_row,
    get_server_session,
    save_server_session,
)
from sessionctl.targets import sqlite_file
from sessionctl.targets.sqlite_file import open_sqlite_file

APPLIED = f"applied {SESSIONS_MIGRATION}\n"
ALREADY = {
    "nothing to apply: every migration is applied\n",
    f"{SESSIONS_MIGRATION} was applied by another process meanwhile\n",
}
ROUNDS = 8  # the race is a matter of microseconds: give it several chances


def test_two_migrates_started_at_once_apply_003_exactly_once(tmp_path):
    for round_ in range(ROUNDS):
        path = tmp_path / f"race-{round_}.db"
        procs = [
            subprocess.Popen(
                [str(SESSIONCTL), "--db", str(path), "migrate"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        results = [(p.wait(timeout=60), p.stdout.read(), p.stderr.read()) for p in procs]
        for p in procs:
            p.stdout.close()
            p.stderr.close()

        assert [code for code, _, _ in results] == [0, 0], results
        assert [error_lines(err) for _, _, err in results] == [[], []], results
        outputs = sorted(out for _, out, _ in results)
        assert outputs.count(APPLIED) == 1, results
        assert set(outputs) - {APPLIED} <= ALREADY, results
        conn = raw_connect(path)
        assert conn.execute("SELECT name FROM d1_migrations").fetchall() == [(SESSIONS_MIGRATION,)]
        assert conn.execute("SELECT count(*) FROM server_sessions").fetchone() == (0,)
        conn.close()


def test_creating_a_database_waits_for_a_writer_that_got_to_the_new_file_first(tmp_path, monkeypatch):
    """The losing side of the migrate race, made deterministic.

    Between our "does the file exist?" and our connect, another process creates the
    file and begins writing it. Opening must wait for that writer (up to the
    timeout), as every other statement does, not fail at once saying it waited.
    """
    path = tmp_path / "new.db"
    real_connect = apsw.Connection
    writer_done = threading.Event()

    def connect_after_another_writer_started(*args, **kwargs):
        other = real_connect(str(path))
        other.execute("BEGIN IMMEDIATE")
        other.execute("CREATE TABLE other_writer(x)")

        def finish():
            other.execute("COMMIT")
            other.close()
            writer_done.set()

        threading.Timer(0.3, finish).start()
        monkeypatch.setattr(apsw, "Connection", real_connect)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(sqlite_file.apsw, "Connection", connect_after_another_writer_started)

    try:
        db = open_sqlite_file(path, create=True, timeout=10)
    finally:
        writer_done.wait(timeout=10)
    tables = {row["name"] for row in db.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert tables == {"other_writer"}


_WRITER = r"""
import json, os, sys, time
from sessionctl.repository import ServerSession, SessionStatus, get_server_session, save_server_session
from sessionctl.targets.sqlite_file import open_sqlite_file

path, me, gate = sys.argv[1], int(sys.argv[2]), sys.argv[3]
db = open_sqlite_file(path)
while not os.path.exists(gate):
    time.sleep(0.005)
for i in range(100):
    user = f"p{me}-u{i}" if i % 2 == 0 else f"shared-{i % 5}"
    session = ServerSession(
        status=list(SessionStatus)[i % 5],
        collected_info={"writer": me, "i": i},
        messages=[{"role": "user", "content": "서버 추천"}],
    )
    save_server_session(db, user, session)
    got = get_server_session(db, user)
    assert got is not None, user
db.close()
print("ok")
"""

_CLEANER = r"""
import os, sys, time
from sessionctl.repository import cleanup_expired_sessions
from sessionctl.targets.sqlite_file import open_sqlite_file

path, gate = sys.argv[1], sys.argv[2]
db = open_sqlite_file(path)
while not os.path.exists(gate):
    time.sleep(0.005)
total = 0
for _ in range(20):
    total += cleanup_expired_sessions(db, batch_size=3)
db.close()
print(total)
"""


def test_concurrent_writers_and_a_cleanup_lose_no_rows_and_never_see_locked(tmp_path, migrated_db, db_path):
    for i in range(30):  # expired long ago: the cleanup's work
        save_server_session(migrated_db, f"expired-{i}", ServerSession(), now=1_000_000 + i)
    migrated_db.close()
    gate = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(db_path), str(n), str(gate)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    procs.append(
        subprocess.Popen(
            [sys.executable, "-c", _CLEANER, str(db_path), str(gate)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    gate.touch()
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]

    for out, err, code in results:
        assert "locked" not in err
        assert code == 0, err
        assert err == ""
    assert [out for out, _, _ in results[:4]] == ["ok\n"] * 4
    assert results[4][0] == "30\n"

    conn = raw_connect(db_path)
    rows = {
        user: json.loads(info)
        for user, info in conn.execute("SELECT user_id, collected_info FROM server_sessions")
    }
    conn.close()
    own = {f"p{n}-u{i}" for n in range(4) for i in range(0, 100, 2)}
    shared = {f"shared-{k}" for k in range(5)}
    assert set(rows) == own | shared
    for n in range(4):
        for i in range(0, 100, 2):
            assert rows[f"p{n}-u{i}"] == {"writer": n, "i": i}
    for k in range(5):
        assert rows[f"shared-{k}"]["i"] % 5 == k
    assert not any(user.startswith("expired-") for user in rows)


# -- a session the bot refreshes while cleanup runs survives it ---------------------------------
#
# The rows to refresh are EXPIRED when cleanup starts (a live row would survive any cleanup and
# prove nothing) and still undeleted when the refresh lands: cleanup deletes in expires_at order,
# so the latest-expired rows are the last ones it reaches. A cleanup that decides which ids to
# delete up front (a snapshot) and deletes them without re-checking expires_at loses them.

CUTOFF = 10 * SESSION_TTL_MS
DEAD = 50
REFRESH_AFTER_BATCH = {1: "dead-49", 3: "dead-45"}  # batch number -> the expired row refreshed then


def _cleanup_beside_refreshes(db_path, writer, cleanup) -> tuple[int, dict[str, int], set[str]]:
    """Run ``cleanup`` on its own connection while ``writer`` refreshes expired rows between batches.

    Returns (what cleanup said it deleted, {refreshed id: expires_at before its refresh},
    the user ids left in the table).
    """
    for i in range(DEAD):
        save_server_session(writer, f"live-{i}", ServerSession(), now=CUTOFF)
        # distinct expires_at, all <= CUTOFF: dead-0 expires first, dead-49 last
        save_server_session(writer, f"dead-{i}", ServerSession(), now=CUTOFF - 2 * SESSION_TTL_MS + i)
    expired_at_start = {
        row["user_id"]: row["expires_at"]
        for row in writer.query("SELECT user_id, expires_at FROM server_sessions WHERE expires_at <= ?", (CUTOFF,))
    }
    assert set(expired_at_start) == {f"dead-{i}" for i in range(DEAD)}
    refreshed: dict[str, int] = {}
    batches = 0

    def refresh_between_batches(_deleted: int) -> None:
        nonlocal batches
        batches += 1
        user_id = REFRESH_AFTER_BATCH.get(batches)
        if user_id is None:
            return
        # Still there and still expired: the bot refreshes a session cleanup has not reached yet.
        assert find_session_row(writer, user_id)["expires_at"] <= CUTOFF, user_id
        save_server_session(writer, user_id, ServerSession(status=SessionStatus.SELECTING), now=CUTOFF + 1)
        refreshed[user_id] = expired_at_start[user_id]

    cleaner = open_sqlite_file(db_path)
    try:
        deleted = cleanup(cleaner, now=CUTOFF, batch_size=7, on_batch=refresh_between_batches)
    finally:
        cleaner.close()
    assert batches >= max(REFRESH_AFTER_BATCH), "cleanup ran fewer batches than the test refreshes in"
    left = {row["user_id"] for row in writer.query("SELECT user_id FROM server_sessions")}
    return deleted, refreshed, left


def _problems(deleted: int, refreshed: dict[str, int], left: set[str]) -> list[str]:
    """What is wrong with a cleanup run beside refreshes (empty when it behaved)."""
    problems = []
    expected_left = {f"live-{i}" for i in range(DEAD)} | set(refreshed)
    if lost := sorted(set(refreshed) - left):
        problems.append(f"refreshed while cleanup ran, yet deleted: {lost}")
    if lost_live := sorted({f"live-{i}" for i in range(DEAD)} - left):
        problems.append(f"live sessions deleted: {lost_live}")
    if stale := sorted(left - expected_left):
        problems.append(f"expired and not refreshed, yet left behind: {stale}")
    if deleted != DEAD - len(refreshed):
        problems.append(f"cleanup reported {deleted} deleted, expected {DEAD - len(refreshed)}")
    return problems


def test_live_sessions_survive_a_cleanup_running_beside_their_refresh(migrated_db, db_path):
    deleted, refreshed, left = _cleanup_beside_refreshes(db_path, migrated_db, cleanup_expired_sessions)

    assert set(refreshed) == set(REFRESH_AFTER_BATCH.values())
    assert all(expires_at <= CUTOFF for expires_at in refreshed.values())  # expired when cleanup began
    assert _problems(deleted, refreshed, left) == []
    for user_id in refreshed:  # the refresh itself is intact: the bot's save, not a stale row
        session = get_server_session(migrated_db, user_id, now=CUTOFF)
        assert session is not None and session.status == SessionStatus.SELECTING
        assert session.expires_at == CUTOFF + 1 + SESSION_TTL_MS


def _snapshot_cleanup(db, *, now, batch_size, on_batch):
    """A mutant cleanup: lists the expired ids first, then deletes those ids in batches."""
    ids = [row["user_id"] for row in db.query(
        "SELECT user_id FROM server_sessions WHERE expires_at <= ? ORDER BY expires_at", (now,))]
    total = 0
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        deleted = db.execute(
            f"DELETE FROM server_sessions WHERE user_id IN ({', '.join('?' for _ in chunk)})", chunk
        ).changes
        total += deleted
        on_batch(deleted)
    return total


def test_the_refresh_check_catches_a_cleanup_that_snapshots_ids_before_deleting(migrated_db, db_path):
    deleted, refreshed, left = _cleanup_beside_refreshes(db_path, migrated_db, _snapshot_cleanup)

    assert _problems(deleted, refreshed, left) == [
        "refreshed while cleanup ran, yet deleted: ['dead-45', 'dead-49']",
        "cleanup reported 50 deleted, expected 48",
    ]
