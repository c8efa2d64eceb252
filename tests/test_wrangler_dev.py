"""sessionctl works while `wrangler dev` has the same database open (WAL): writes wait on the lock
instead of failing.

The first test runs the real `wrangler dev` (the pinned wrangler from SESSIONCTL_TEST_WRANGLER,
as the interop tests do; missing, the test FAILS, it never skips) on a project whose worker reads
and writes server_sessions through its D1 binding, and uses sessionctl on the same local D1 file
while the dev server has it open. The lock tests need no wrangler: another process holds the
write lock on a wrangler project's local state file, and sessionctl's writes wait for it.

Networking is loopback only: wrangler dev listens on 127.0.0.1 at free ports, and the tests talk
to nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import raw_sqlite
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import MIGRATIONS_DIR, SESSIONCTL, SESSIONS_MIGRATION
from sessionctl.repository import SESSION_TTL_MS, ServerSession, SessionStatus, now_ms, save_server_session
from sessionctl.targets import open_sqlite_file
from wrangler_tools import BOT_TOML, LOOPBACK, STATE_DIR, require_wrangler, wrangler_dev

pytestmark = pytest.mark.wrangler

RUN_TIMEOUT_S = 60

WRANGLER_TOML = BOT_TOML

# The bot's side: GET reads every session through env.DB, POST saves one (so the worker writes too).
WORKER_JS = """\
export default {
  async fetch(request, env) {
    if (request.method === "POST") {
      const session = await request.json();
      const now = Date.now();
      await env.DB.prepare(
        "INSERT INTO server_sessions (user_id, status, collected_info, last_recommendation, messages, " +
        "created_at, updated_at, expires_at) VALUES (?, ?, ?, NULL, ?, ?, ?, ?)"
      ).bind(session.user_id, session.status, JSON.stringify(session.collected_info ?? {}),
             JSON.stringify(session.messages ?? []), now, now, now + 3600000).run();
      return Response.json({ inserted: session.user_id });
    }
    const { results } = await env.DB.prepare(
      "SELECT user_id, status FROM server_sessions ORDER BY user_id"
    ).all();
    return Response.json(results);
  },
};
"""


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wrangler_bin() -> Path:
    return require_wrangler()


def make_project(root: Path) -> Path:
    """A wrangler project: config, the worker above, and the repository's migration 003."""
    (root / "src").mkdir(parents=True)
    (root / "src" / "index.js").write_text(WORKER_JS, encoding="utf-8")
    (root / "wrangler.toml").write_text(WRANGLER_TOML, encoding="utf-8")
    (root / "migrations").mkdir()
    shutil.copyfile(MIGRATIONS_DIR / SESSIONS_MIGRATION, root / "migrations" / SESSIONS_MIGRATION)
    return root


def state_file(root: Path) -> Path:
    """The one local D1 database file of the project (found on disk, not computed by sessionctl)."""
    files = [p for p in (root / STATE_DIR).glob("*.sqlite") if p.name != "metadata.sqlite"]
    assert len(files) == 1, files
    return files[0]


def sessionctl(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """The installed console script as a real process, in the project folder (no --db)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONCTL_")}
    return subprocess.run([str(SESSIONCTL), *map(str, args)], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, encoding="utf-8", timeout=RUN_TIMEOUT_S)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "locked" not in proc.stderr, proc.stderr
    return proc


def http(url: str, body: dict | None = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                     headers={"content-type": "application/json"})
    with LOOPBACK.open(request, timeout=10) as response:
        return response.status, json.loads(response.read().decode("utf-8"))


def raw_session(user_id: str, status: str, expires_at: int, info: dict) -> dict:
    return {"user_id": user_id, "status": status,
            "collected_info": json.dumps(info, ensure_ascii=False, separators=(",", ":")),
            "last_recommendation": None, "messages": '[{"role":"user","content":"서버 추천"}]',
            "created_at": expires_at - SESSION_TTL_MS, "updated_at": expires_at - SESSION_TTL_MS,
            "expires_at": expires_at}


# -- beside a running `wrangler dev` ----------------------------------------------------------


def test_sessionctl_reads_and_writes_the_local_d1_while_wrangler_dev_has_it_open(tmp_path, wrangler_bin):
    project = make_project(tmp_path / "bot")
    logs = tmp_path / "logs"
    logs.mkdir()
    migrated = ok(sessionctl("migrate", cwd=project))
    assert migrated.stdout == f"applied {SESSIONS_MIGRATION}\n"
    db_file = state_file(project)

    with wrangler_dev(wrangler_bin, project, logs) as url:
        assert http(url) == (200, [])

        # sessionctl writes while the dev server has the file open: an import (CLI) ...
        now = now_ms()
        batch = [raw_session("tg:1001", "recommending", now + SESSION_TTL_MS, {"budget_krw": 50000}),
                 raw_session("tg:1002", "selecting", now + SESSION_TTL_MS, {"region": "서울"})]
        batch += [raw_session(f"tg:old-{i}", "completed", now - 60_000 - i, {}) for i in range(3)]
        (project / "in.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in batch),
                                          encoding="utf-8")
        imported = ok(sessionctl("sessions", "import", "in.jsonl", cwd=project))
        assert imported.stdout == "imported 5 of 5 sessions from in.jsonl\n"
        # ... and the repository module, as the bot's agent code would use it
        db = open_sqlite_file(db_file)
        try:
            assert db.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
            save_server_session(db, "tg:repo", ServerSession(status=SessionStatus.ORDERING,
                                                             collected_info={"plan": "vps-2c-4g"}))
        finally:
            db.close()

        # the worker, through its D1 binding, sees every one of them
        assert http(url) == (200, [
            {"user_id": "tg:1001", "status": "recommending"},
            {"user_id": "tg:1002", "status": "selecting"},
            {"user_id": "tg:old-0", "status": "completed"},
            {"user_id": "tg:old-1", "status": "completed"},
            {"user_id": "tg:old-2", "status": "completed"},
            {"user_id": "tg:repo", "status": "ordering"},
        ])

        # the worker writes; sessionctl sees its row
        assert http(url, {"user_id": "tg:worker", "status": "gathering", "collected_info": {"q": "서버 추천"},
                          "messages": [{"role": "user", "content": "hi"}]}) == (200, {"inserted": "tg:worker"})
        listed = json.loads(ok(sessionctl("sessions", "list", "--format", "json", cwd=project)).stdout)
        by_user = {row["user_id"]: row for row in listed}
        assert set(by_user) == {"tg:1001", "tg:1002", "tg:repo", "tg:worker"}  # live ones
        assert by_user["tg:worker"]["status"] == "gathering"
        assert by_user["tg:worker"]["collected_info"] == {"q": "서버 추천"}
        assert by_user["tg:worker"]["messages"] == [{"role": "user", "content": "hi"}]

        # cleanup and verify while the dev server still has the file open
        cleaned = ok(sessionctl("sessions", "cleanup", cwd=project))
        assert cleaned.stdout == "deleted 3 expired sessions\n"
        verified = ok(sessionctl("verify", "--json", cwd=project))
        assert json.loads(verified.stdout)["ok"] is True

        # and the worker goes on reading and writing after all of that
        assert http(url, {"user_id": "tg:worker-2", "status": "completed"}) == (200, {"inserted": "tg:worker-2"})
        assert [row["user_id"] for row in http(url)[1]] == ["tg:1001", "tg:1002", "tg:repo", "tg:worker",
                                                            "tg:worker-2"]


# -- a writer holding the lock: sessionctl's writes wait ------------------------------------------

_HOLDER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute(
    "INSERT INTO server_sessions (user_id, status, created_at, updated_at, expires_at) "
    "VALUES ('holder', 'gathering', 1, 1, 32503680000000)"
)
print("locked", flush=True)
sys.stdin.readline()  # hold the write lock until the test says so
conn.execute("COMMIT")
conn.close()
print("committed", flush=True)
"""

EXTRA_MIGRATION = "004_user_prefs.sql"


def test_delete_and_migrate_wait_for_another_writers_lock_on_the_wal_local_state_and_succeed(tmp_path):
    project = make_project(tmp_path / "bot")
    ok(sessionctl("migrate", cwd=project))
    db_file = state_file(project)
    db = open_sqlite_file(db_file)
    try:
        assert db.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
        save_server_session(db, "X", ServerSession())
        save_server_session(db, "Y", ServerSession())
    finally:
        db.close()
    # a pending migration, so that migrate has to write
    (project / "migrations" / EXTRA_MIGRATION).write_text(
        "CREATE TABLE user_prefs (user_id TEXT PRIMARY KEY, lang TEXT NOT NULL DEFAULT 'ko');\n")

    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db_file)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    waiting: list[subprocess.Popen] = []
    try:
        assert holder.stdout.readline() == "locked\n", holder.stderr.read()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONCTL_")}
        for args in (("sessions", "delete", "--yes", "X"), ("migrate",)):
            waiting.append(subprocess.Popen([str(SESSIONCTL), *args], cwd=project, env=env,
                                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True, encoding="utf-8"))
        for proc in waiting:  # each has opened the file (reads go on beside the writer, in WAL)
            assert proc.stderr.readline().startswith("sessionctl: target: wrangler local D1"), proc.args
        time.sleep(1)  # the writer keeps the lock for about a second more ...
        assert [proc.poll() for proc in waiting] == [None, None]  # ... and both are still waiting
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "committed\n", holder.stderr.read()
        results = [(proc.wait(timeout=RUN_TIMEOUT_S), proc.stdout.read(), proc.stderr.read()) for proc in waiting]
    finally:
        for proc in (holder, *waiting):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    (delete_code, delete_out, delete_err), (migrate_code, migrate_out, migrate_err) = results
    assert (delete_code, delete_err) == (0, ""), delete_out + delete_err
    assert delete_out == "deleted X\n1 deleted, 0 not found\n"
    assert (migrate_code, migrate_err) == (0, ""), migrate_out + migrate_err
    assert migrate_out == f"applied {EXTRA_MIGRATION}\n"

    conn = raw_sqlite.connect(db_file)
    try:
        assert conn.execute("SELECT user_id FROM server_sessions ORDER BY user_id").fetchall() == [
            ("Y",), ("holder",)]  # X deleted; the holder's row committed, nothing lost
        assert conn.execute("SELECT name FROM d1_migrations ORDER BY id").fetchall() == [
            (SESSIONS_MIGRATION,), (EXTRA_MIGRATION,)]
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'user_prefs'").fetchall() == [
            ("user_prefs",)]
    finally:
        conn.close()
