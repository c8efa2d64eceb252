"""The remote D1 target (`--remote`): every command over D1's HTTP API, end to end, against D1 itself.

The API is served by tests/d1_worker: a Worker under the pinned `wrangler dev` whose D1 binding
runs the SQL on D1's own engine (see tests/d1_worker_server.py). One server per module; each
test starts on an empty database with zeroed counters. What workerd cannot produce (403, 429
with retry-after, 7429 after execution, 5xx, dropped connections, slow answers) is tested
against the Python double in test_remote_d1_faults.py; what goes over the wire and how much
of it, in test_remote_budget.py.

Every CLI run is the installed console script as a real process (stdin closed), in a wrangler
project whose D1 binding's database_id is the worker's, with the CLOUDFLARE_* variables wrangler
uses. The token is a distinctive string; after every test an autouse check proves it never
appeared in any run's stdout or stderr, in any file the test's runs wrote, nor in what the
worker recorded.
"""

from __future__ import annotations

import calendar
import json
import logging
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import SESSIONCTL, SESSIONS_MIGRATION, WRANGLER_LEDGER_DDL
from d1_server import ALLOWED_PRAGMAS, split_sql
from d1_worker_server import D1Worker
from remote_cli import (  # noqa: F401  (fixtures, found by name; write_project: used elsewhere)
    token_never_leaks,
    MINUTE,
    SECRET,
    WRONG_TOKEN,
    assert_no_secret,
    d1,
    d1_worker,
    fresh_d1,
    closed_port_url,
    no_proxies,
    ok,
    one_error,
    project,
    remote,
    remote_env,
    run_remote,
    runs,
    sample_rows,
    write_project,
)
from sessionctl.repository import COLUMNS, now_ms

pytestmark = pytest.mark.wrangler

TRANSACTION_WORDS = {"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "END"}


# -- helpers -----------------------------------------------------------------------

_INSERT = f"INSERT INTO server_sessions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"


def insert_rows(d1: D1Worker, rows: list[dict]) -> None:
    """Write raw rows through the worker, behind sessionctl's back (one batch, one transaction)."""
    d1.batch([(_INSERT, [row.get(c) for c in COLUMNS]) for row in rows])


def names(d1: D1Worker, kind: str) -> set[str]:
    return {n for (n,) in d1.read("SELECT name FROM sqlite_master WHERE type = ?", (kind,))}


def ledger(d1: D1Worker) -> list[str]:
    if "d1_migrations" not in names(d1, "table"):
        return []
    return [n for (n,) in d1.read("SELECT name FROM d1_migrations ORDER BY id")]


def user_ids(d1: D1Worker) -> list[str]:
    return [u for (u,) in d1.read("SELECT user_id FROM server_sessions ORDER BY user_id")]


def all_rows(d1: D1Worker) -> list[tuple]:
    return d1.read(f"SELECT {', '.join(COLUMNS)} FROM server_sessions ORDER BY user_id")


def sql_sent(d1: D1Worker) -> list[str]:
    """Every `sql` text the worker received since the last reset, in order (batch items flattened)."""
    return [sql for record in d1.stats()["log"] for sql in record["sql"]]


# -- target selection ----------------------------------------------------------------


def test_remote_target_is_named_and_read_commands_write_nothing(remote, d1):
    result = ok(remote("status", "--json"))
    assert [(s["name"], s["state"]) for s in json.loads(result.stdout)] == [(SESSIONS_MIGRATION, "pending")]
    stats = d1.stats()
    expected_path = f"POST /client/v4/accounts/{d1.account_id}/d1/database/{d1.database_id}/query"
    assert stats["requests"] >= 1 and stats["by_path"] == {expected_path: stats["requests"]}
    assert stats["by_status"] == {"200": stats["requests"]}
    assert names(d1, "table") == {"_cf_METADATA"}  # status created nothing (no ledger table either)


def test_every_request_says_it_comes_from_sessionctl(remote, d1):
    from sessionctl import __version__

    ok(remote("status"))
    assert {record["user_agent"] for record in d1.stats()["log"]} == {f"sessionctl/{__version__}"}


def test_account_id_from_the_config(tmp_path, d1, remote):
    folder = write_project(tmp_path / "bot2", d1.database_id, extra_toml=f'account_id = "{d1.account_id}"\n')
    ok(remote("status", cwd=folder, env={"CLOUDFLARE_ACCOUNT_ID": None}))


# -- the whole flow, remotely ------------------------------------------------------------


def test_migrate_status_verify(remote, d1):
    result = ok(remote("migrate"))
    assert result.stdout == f"applied {SESSIONS_MIGRATION}\n"
    assert "server_sessions" in names(d1, "table")
    assert "idx_server_sessions_expires" in names(d1, "index")
    assert ledger(d1) == [SESSIONS_MIGRATION]
    assert d1.read("SELECT sql FROM sqlite_master WHERE name = 'd1_migrations'") == [
        (WRANGLER_LEDGER_DDL.replace(" IF NOT EXISTS", "").rstrip(";"),)]

    assert ok(remote("migrate")).stdout == "nothing to apply: every migration is applied\n"
    assert ledger(d1) == [SESSIONS_MIGRATION]

    states = json.loads(ok(remote("status", "--json")).stdout)
    assert [(s["name"], s["state"]) for s in states] == [(SESSIONS_MIGRATION, "applied")]
    assert states[0]["applied_at"]

    verified = ok(remote("verify"))
    lines = verified.stdout.splitlines()
    assert len(lines) >= 6 and all(line.startswith("✓") for line in lines), verified.stdout
    report = json.loads(ok(remote("verify", "--json")).stdout)
    assert report["ok"] is True, report


def test_repository_round_trip_through_the_http_target(remote, d1):
    from sessionctl.errors import CredentialsRefusedError, InvalidSessionError
    from sessionctl.repository import (
        SESSION_TTL_MS, ServerSession, SessionStatus, cleanup_expired_sessions,
        delete_server_session, get_server_session, save_server_session,
    )
    from sessionctl.targets.d1_http import D1HttpDatabase

    ok(remote("migrate"))
    db = D1HttpDatabase(base_url=d1.base_url, account_id=d1.account_id,
                        database_id=d1.database_id, token=d1.token)
    assert SECRET not in repr(db) and SECRET not in str(getattr(db, "description", ""))
    try:
        now = now_ms()
        session = ServerSession()
        session.messages.append({"role": "user", "content": "서버 추천"})
        session.collected_info["budget_krw"] = 50000
        session.collected_info["지역"] = "서울"
        saved = save_server_session(db, "tg:1001", session, now=now)
        assert (saved.created_at, saved.updated_at, saved.expires_at) == (now, now, now + SESSION_TTL_MS)

        got = get_server_session(db, "tg:1001", now=now + 1)
        assert got is not None
        assert got.messages == [{"role": "user", "content": "서버 추천"}]
        assert got.collected_info == {"budget_krw": 50000, "지역": "서울"}
        # Stored as JSON.stringify would: compact, Korean as text.
        assert d1.read("SELECT messages, collected_info FROM server_sessions") == [
            ('[{"role":"user","content":"서버 추천"}]', '{"budget_krw":50000,"지역":"서울"}')]

        got.status = SessionStatus.RECOMMENDING
        got.last_recommendation = {"plan": "vps-2c-4g", "region": "서울"}
        again = save_server_session(db, "tg:1001", got, now=now + 1000)
        assert again.created_at == now
        assert get_server_session(db, "tg:1001", now=now + 2000).last_recommendation == {"plan": "vps-2c-4g", "region": "서울"}

        odd = "o'brien %_ ; DROP TABLE server_sessions; --"
        save_server_session(db, odd, ServerSession(), now=now)
        assert get_server_session(db, odd, now=now) is not None

        with pytest.raises(InvalidSessionError, match="bogus"):
            save_server_session(db, "tg:bad", ServerSession(status="bogus"), now=now)
        # D1 keeps at most 2,000,000 bytes in a row: refused by name, before anything is sent.
        sent = db.requests
        with pytest.raises(InvalidSessionError, match=r"'tg:huge' rejected: .* \(of which messages .*2,000,000"):
            save_server_session(db, "tg:huge", ServerSession(messages=["x" * 2_000_000]), now=now)
        assert db.requests == sent

        assert delete_server_session(db, odd) is True
        assert delete_server_session(db, odd) is False

        save_server_session(db, "tg:old", ServerSession(), now=now - 2 * SESSION_TTL_MS)
        assert get_server_session(db, "tg:old", now=now) is None
        assert cleanup_expired_sessions(db, now=now, batch_size=1) == 1
        assert user_ids(d1) == ["tg:1001"]
        assert delete_server_session(db, "tg:1001") is True
        assert user_ids(d1) == []
        assert db.connections == 1  # every request of the whole session over one connection
    finally:
        db.close()

    bad = D1HttpDatabase(base_url=d1.base_url, account_id=d1.account_id,
                         database_id=d1.database_id, token=WRONG_TOKEN)
    with pytest.raises(CredentialsRefusedError) as caught:
        bad.query("SELECT 1 AS one")
    assert caught.value.status == 401 and caught.value.code == 10000
    assert WRONG_TOKEN not in str(caught.value) and WRONG_TOKEN not in repr(bad)


def test_sessions_commands(remote, d1, project):
    ok(remote("migrate"))
    now = now_ms()
    insert_rows(d1, sample_rows(now))

    listed = json.loads(ok(remote("sessions", "list", "--format", "json")).stdout)
    assert [r["user_id"] for r in listed] == ["tg:1002", "tg:1001"]  # live only, soonest to expire first
    assert listed[1]["last_recommendation"]["region"] == "서울"
    every = json.loads(ok(remote("sessions", "list", "--all", "--format", "json")).stdout)
    assert sorted(r["user_id"] for r in every) == ["tg:0999", "tg:1001", "tg:1002"]
    globbed = json.loads(ok(remote("sessions", "list", "--all", "--user", "tg:100?", "--format", "json")).stdout)
    assert sorted(r["user_id"] for r in globbed) == ["tg:1001", "tg:1002"]

    shown = ok(remote("sessions", "show", "tg:1001")).stdout
    assert "recommending" in shown and "서버 추천" in shown and "추천합니다" in shown
    missing = remote("sessions", "show", "tg:nobody")
    assert "tg:nobody" in one_error(missing, 1)

    stats = json.loads(ok(remote("sessions", "stats", "--format", "json")).stdout)
    assert (stats["total"], stats["active"], stats["expired"]) == (3, 2, 1)
    assert stats["by_status"]["completed"] == 1
    assert isinstance(stats["size_bytes"], int) and stats["size_bytes"] > 0

    assert ok(remote("sessions", "cleanup", "--dry-run")).stdout == "would delete 1 expired sessions (dry run, nothing deleted)\n"
    assert user_ids(d1) == ["tg:0999", "tg:1001", "tg:1002"]
    assert ok(remote("sessions", "cleanup")).stdout == "deleted 1 expired sessions\n"
    assert user_ids(d1) == ["tg:1001", "tg:1002"]
    kept = all_rows(d1)

    ok(remote("sessions", "export", "-o", "sessions.jsonl"))
    exported = [json.loads(l) for l in (project / "sessions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [tuple(r.values()) for r in exported] == kept  # raw values, column order, byte for byte

    deleted = ok(remote("sessions", "delete", "--yes", "tg:1002", "tg:nobody")).stdout
    assert deleted.splitlines() == ["deleted tg:1002", "not found tg:nobody", "1 deleted, 1 not found"]
    assert user_ids(d1) == ["tg:1001"]
    refused = remote("sessions", "delete", "tg:1001")
    one_error(refused, 2)
    assert user_ids(d1) == ["tg:1001"]

    imported = ok(remote("sessions", "import", "sessions.jsonl")).stdout
    assert imported.startswith("imported 1 of 2 sessions from sessions.jsonl"), imported
    assert all_rows(d1) == kept
    assert not {n for n in names(d1, "table") if n.startswith("sessionctl_import_")}  # no staging left


@pytest.mark.parametrize("policy, written, expected", [
    ("skip", 1, {"tg:1001": "recommending", "tg:1002": "selecting", "tg:new": "gathering"}),
    ("replace", 3, {"tg:1001": "completed", "tg:1002": "completed", "tg:new": "gathering"}),
    ("newer", 2, {"tg:1001": "completed", "tg:1002": "selecting", "tg:new": "gathering"}),
])
def test_import_conflict_policies_merge_as_locally(remote, d1, project, policy, written, expected):
    ok(remote("migrate"))
    now = now_ms()
    insert_rows(d1, sample_rows(now)[:2])
    incoming = [
        {**sample_rows(now)[0], "status": "completed", "updated_at": now},  # newer than stored
        {**sample_rows(now)[1], "status": "completed", "updated_at": now - 3 * MINUTE},  # older
        {**sample_rows(now)[1], "user_id": "tg:new", "status": "gathering"},
    ]
    (project / "in.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in incoming),
                                      encoding="utf-8")
    result = ok(remote("sessions", "import", "in.jsonl", "--on-conflict", policy))
    assert result.stdout.startswith(f"imported {written} of 3 sessions"), result.stdout
    assert dict(d1.read("SELECT user_id, status FROM server_sessions ORDER BY user_id")) == expected


def test_smoke_and_deploy(remote, d1):
    deployed = ok(remote("deploy"))
    assert "deploy ok" in deployed.stdout, deployed.stdout
    assert deployed.stdout.count("✓") >= 13, deployed.stdout  # verify's checks and smoke's
    assert ledger(d1) == [SESSIONS_MIGRATION]
    assert user_ids(d1) == []  # smoke removed its rows
    report = json.loads(ok(remote("smoke", "--json")).stdout)
    assert report["ok"] is True and len(report["checks"]) == 7, report
    assert user_ids(d1) == []


def test_rollback_backs_up_takes_a_time_travel_bookmark_then_drops(remote, d1, project):
    ok(remote("migrate"))
    now = now_ms()
    insert_rows(d1, sample_rows(now))
    before = all_rows(d1)

    one_error(remote("rollback"), 2)  # not confirmed, non-interactive
    assert "server_sessions" in names(d1, "table")

    d1.reset_stats()
    started = time.time()
    result = ok(remote("rollback", "--yes"))
    (backup,) = sorted((project / "backups").glob("*.jsonl"))
    restore_file = backup.with_name(backup.name + ".restore.txt")
    lines = result.stdout.splitlines()
    # The bookmark is asked for a moment after the backup and before the drop, and its command shown
    # before anything is dropped: the worker derives bookmarks from the time asked for, as D1 does.
    log = d1.stats()["log"]
    asked = next(i for i, r in enumerate(log) if r["endpoint"] == "time_travel/bookmark")
    dropped = next(i for i, r in enumerate(log) if any("DROP TABLE IF EXISTS server_sessions" in s for s in r["sql"]))
    assert asked < dropped and all(r["endpoint"] == "query" for r in log[asked + 1:])
    bookmark = re.fullmatch(r"time travel: bookmark (\S+) taken; to undo this rollback run: "
                            r"wrangler d1 time-travel restore telegram-conversations --bookmark=(\S+)", lines[0])
    assert bookmark and bookmark.group(1) == bookmark.group(2), lines
    assert d1.stats()["restores"] == []  # nothing restored by itself
    assert lines[1:] == [
        f"backed up 3 rows to backups/{backup.name}",
        f"restore command written to backups/{restore_file.name}",
        f"rolled back {SESSIONS_MIGRATION}: dropped server_sessions and idx_server_sessions_expires, "
        "removed its ledger row",
    ]
    note = restore_file.read_text(encoding="utf-8").splitlines()
    assert note[-1] == f"wrangler d1 time-travel restore telegram-conversations --bookmark={bookmark.group(1)}"
    # the bookmark's moment holds the rollback's copy of the table too: the note names it
    copy = re.search(r"also holds (sessionctl_rollback_[0-9a-f]{12}), the copy", "\n".join(note)).group(1)
    assert any(f"CREATE TABLE {copy} " in sql for r in log for sql in r["sql"])
    assert copy not in names(d1, "table")  # dropped with server_sessions
    taken_at = re.search(r"taken at (\S+),", "\n".join(note)).group(1)
    assert abs(calendar.timegm(time.strptime(taken_at, "%Y-%m-%dT%H:%M:%SZ")) - started) < 60
    # The worker's bookmark for that moment is the one printed: it is what restore would be given.
    status, payload = d1.request("GET", f"/time_travel/bookmark?timestamp={taken_at}")
    assert payload["result"]["bookmark"] == bookmark.group(1)

    backed_up = [json.loads(l) for l in backup.read_text(encoding="utf-8").splitlines()]
    assert sorted(tuple(r.values()) for r in backed_up) == before
    assert "server_sessions" not in names(d1, "table")
    assert "idx_server_sessions_expires" not in names(d1, "index")
    assert ledger(d1) == []
    states = json.loads(ok(remote("status", "--json")).stdout)
    assert [(s["name"], s["state"]) for s in states] == [(SESSIONS_MIGRATION, "pending")]
    assert remote("verify").returncode == 1

    ok(remote("migrate"))
    restored = ok(remote("sessions", "import", f"backups/{backup.name}")).stdout
    assert restored.startswith("imported 3 of 3 sessions"), restored
    assert all_rows(d1) == before


def test_rollback_dry_run_says_a_bookmark_comes_first(remote, d1):
    ok(remote("migrate"))
    result = ok(remote("rollback", "--dry-run"))
    assert "would take a Time Travel bookmark first, to undo the drop with" in result.stdout
    assert "time_travel/bookmark" not in {r["endpoint"] for r in d1.stats()["log"]}


def test_a_missing_table_reads_as_locally(remote):
    line = one_error(remote("sessions", "list"), 1)
    assert line == ("sessionctl: error: table server_sessions does not exist "
                    "(migration 003 is not applied: run `sessionctl migrate`)")


# -- what goes over the wire -------------------------------------------------------------


def test_no_transaction_control_or_forbidden_pragma_is_ever_sent(remote, d1, project):
    ok(remote("deploy"))
    insert_rows(d1, sample_rows(now_ms()))
    for args in (("status",), ("verify",), ("sessions", "list"), ("sessions", "show", "tg:1001"),
                 ("sessions", "stats"), ("sessions", "cleanup"), ("sessions", "export", "-o", "e.jsonl"),
                 ("sessions", "delete", "--yes", "tg:1002"), ("sessions", "import", "e.jsonl"),
                 ("rollback", "--yes"), ("migrate",)):  # deploy ran smoke
        ok(remote(*args))
    sent = [statement for sql in sql_sent(d1) for statement in split_sql(sql)]
    assert sent
    for statement in sent:
        words = re.sub(r"--[^\n]*|/\*.*?\*/", " ", statement, flags=re.S).split()
        assert words[0].upper().rstrip(";") not in TRANSACTION_WORDS, statement
        if words[0].upper() == "PRAGMA":
            pragma = re.match(r"PRAGMA\s+(?:\w+\.)?(\w+)", statement, re.I).group(1).lower()
            assert pragma in ALLOWED_PRAGMAS, statement
    statuses = d1.stats()["by_status"]
    assert set(statuses) == {"200"}, [r for r in d1.stats()["log"] if r["status"] != 200]


def test_a_migration_file_goes_as_one_sql_text_and_a_failing_one_leaves_nothing(tmp_path, d1, remote):
    bad = "CREATE TABLE partial_004 (id INTEGER PRIMARY KEY);\nINSERT INTO no_such_table VALUES (1);\n"
    folder = write_project(tmp_path / "bot-bad", d1.database_id, migrations={"004_partial.sql": bad})

    result = remote("migrate", cwd=folder)
    line = one_error(result, 1)
    assert "004_partial.sql" in line and "no such table: no_such_table" in line, line
    assert result.stdout == f"applied {SESSIONS_MIGRATION}\n"  # the file before it stays applied
    assert "partial_004" not in names(d1, "table")  # its first statement went with the second
    assert ledger(d1) == [SESSIONS_MIGRATION]
    assert d1.read("SELECT name FROM sessionctl_migration_checksums") == [(SESSIONS_MIGRATION,)]

    for file, first_sql in ((SESSIONS_MIGRATION, "CREATE TABLE IF NOT EXISTS server_sessions"),
                            ("004_partial.sql", "CREATE TABLE partial_004")):
        carrying = [r for r in d1.stats()["log"] if any(first_sql in sql for sql in r["sql"])]
        assert len(carrying) == 1 and carrying[0]["statements"] == 1, carrying  # ONE {"sql"} text
        (text,) = carrying[0]["sql"]
        assert f"INSERT INTO d1_migrations (name)\n\t\t\t\t\t\t\t\tvalues ('{file}')" in text
        assert re.search(rf"INSERT OR REPLACE INTO sessionctl_migration_checksums .* VALUES \('d1_migrations', "
                         rf"'{re.escape(file)}', '[0-9a-f]{{64}}'\)$", text), text
    states = {s["name"]: s["state"] for s in json.loads(ok(remote("status", "--json", cwd=folder)).stdout)}
    assert states == {SESSIONS_MIGRATION: "applied", "004_partial.sql": "pending"}

    (folder / "migrations" / "004_partial.sql").write_text(
        "CREATE TABLE partial_004 (id INTEGER PRIMARY KEY);\nINSERT INTO partial_004 VALUES (1);\n")
    assert ok(remote("migrate", cwd=folder)).stdout == "applied 004_partial.sql\n"
    assert d1.read("SELECT id FROM partial_004") == [(1,)]
    assert ledger(d1) == [SESSIONS_MIGRATION, "004_partial.sql"]


def test_a_migration_over_one_requests_sql_limit_is_refused_before_it_is_sent(tmp_path, d1, remote):
    # D1 prepares a multi-statement text whole: over 100,000 bytes it answers "statement too long".
    big = "".join(f"INSERT INTO wide VALUES ({i}, '{'x' * 40}');\n" for i in range(3000))
    folder = write_project(tmp_path / "bot-big", d1.database_id,
                           migrations={"004_wide.sql": "CREATE TABLE wide (id INTEGER, v TEXT);\n" + big})
    line = one_error(remote("migrate", cwd=folder), 1)
    assert line.startswith("sessionctl: error: migration 004_wide.sql failed: it is ") and \
        "bytes of SQL with its ledger row, and D1 takes at most 100,000 in the one request that applies a " \
        "file whole; split it into smaller migrations; nothing of it was applied" in line, line
    assert not any("wide" in sql for sql in sql_sent(d1))
    assert "wide" not in names(d1, "table") and ledger(d1) == [SESSIONS_MIGRATION]


CORRUPTING_TRIGGER = """\
CREATE TRIGGER IF NOT EXISTS server_sessions_lose_messages AFTER INSERT ON server_sessions
BEGIN
  UPDATE server_sessions SET messages = '[]' WHERE user_id = NEW.user_id;
END;
"""


def test_deploy_rollback_on_failure_remotely(tmp_path, d1, remote):
    """A trigger's BEGIN ... END is not transaction control; smoke then fails and the run is undone."""
    folder = write_project(tmp_path / "bot-trigger", d1.database_id,
                           migrations={"004_lose_messages.sql": CORRUPTING_TRIGGER})
    result = remote("deploy", "--rollback-on-failure", cwd=folder)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[:3] == ["== migrate", f"applied {SESSIONS_MIGRATION}", "applied 004_lose_messages.sql"]
    assert "deploy stopped: smoke failed" in lines
    assert any(line.startswith("time travel: bookmark ") for line in lines), lines
    assert any(line.startswith(f"rolled back {SESSIONS_MIGRATION}: dropped server_sessions") for line in lines)
    assert any(line.startswith("unrecorded 004_lose_messages.sql") for line in lines)
    (backup,) = (folder / "backups").glob("server_sessions-*.jsonl")
    assert backup.read_bytes() == b""
    assert (folder / "backups" / (backup.name + ".restore.txt")).is_file()
    assert not (names(d1, "table") | names(d1, "index") | names(d1, "trigger")) & {
        "server_sessions", "idx_server_sessions_expires", "server_sessions_lose_messages"}
    assert ledger(d1) == []


def test_two_migrates_at_once_apply_003_once(d1, project):
    env = remote_env(d1.base_url, d1.token, d1.account_id)
    processes = [subprocess.Popen([str(SESSIONCTL), "--remote", "migrate"], cwd=project, env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    applied = [out.splitlines().count(f"applied {SESSIONS_MIGRATION}") for out, _ in outputs]
    assert sorted(applied) == [0, 1], outputs  # the other says nothing to apply, or applied meanwhile
    assert ledger(d1) == [SESSIONS_MIGRATION]
    assert d1.read("SELECT count(*) FROM sessionctl_migration_checksums") == [(1,)]


# -- errors: one line, the documented exit code, no traceback --------------------------------


def test_wrong_token(remote, d1):
    line = one_error(remote("status", env={"CLOUDFLARE_API_TOKEN": WRONG_TOKEN}), 3)
    assert "refused the credentials (HTTP 401, code 10000: Authentication error)" in line, line
    assert d1.stats()["by_status"] == {"401": 1}  # a refused credential is not retried


def test_unknown_database_id(tmp_path, d1, remote):
    folder = write_project(tmp_path / "other", "ffffffff-0000-4000-8000-00000000dead")
    line = one_error(remote("status", cwd=folder), 3)
    assert "not found" in line and "ffffffff-0000-4000-8000-00000000dead" in line, line
    assert d1.stats()["by_status"] == {"404": 1}


def test_unreachable_api(remote):
    started = time.monotonic()
    line = one_error(remote("status", env={"CLOUDFLARE_API_BASE_URL": closed_port_url()}), 3)
    assert "127.0.0.1" in line and "nothing was sent" in line, line
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("value", [None, ""])
def test_token_unset(remote, d1, value):
    line = one_error(remote("status", env={"CLOUDFLARE_API_TOKEN": value}), 2)
    assert "CLOUDFLARE_API_TOKEN" in line
    assert d1.stats()["requests"] == 0


def test_account_unset(remote, d1):
    line = one_error(remote("status", env={"CLOUDFLARE_ACCOUNT_ID": None}), 2)
    assert "CLOUDFLARE_ACCOUNT_ID" in line
    assert d1.stats()["requests"] == 0


def test_local_and_remote_together(remote, d1):
    one_error(remote("--local", "status"), 2)
    assert d1.stats()["requests"] == 0


def test_persist_to_with_remote_is_a_usage_error(remote, d1):
    line = one_error(remote("--persist-to", "state", "status"), 2)
    assert line == "sessionctl: error: --persist-to is for the local state; it cannot be used with --remote"
    assert d1.stats()["requests"] == 0


def test_remote_needs_a_database_id_in_the_config(tmp_path, remote, d1):
    project = tmp_path / "no-id"
    project.mkdir()
    (project / "wrangler.toml").write_text(
        'name = "telegram-bot"\n\n[[d1_databases]]\nbinding = "DB"\ndatabase_name = "telegram-conversations"\n',
        encoding="utf-8",
    )
    line = one_error(remote("status", cwd=project), 2)
    assert line == (f"sessionctl: error: {project / 'wrangler.toml'}: telegram-conversations (binding DB) "
                    "has no database_id, which --remote needs")
    assert d1.stats()["requests"] == 0


@pytest.mark.parametrize("token", [SECRET + "\n", " " + SECRET + "\r\n", SECRET + "한"],
                         ids=["newline", "crlf", "not-latin-1"])
def test_a_malformed_token_neither_crashes_nor_shows(remote, d1, token):
    """A token read from a file often keeps its newline: use it trimmed (exit 0), or refuse it
    naming CLOUDFLARE_API_TOKEN (exit 2) -- never a traceback, never the token on stderr.
    A token that is not latin-1 cannot go in an HTTP header at all: exit 2."""
    result = remote("status", env={"CLOUDFLARE_API_TOKEN": token})
    assert SECRET not in result.stderr, result.stderr
    if result.returncode != 0:
        assert "CLOUDFLARE_API_TOKEN" in one_error(result, 2)
    debug = remote("--debug", "status", env={"CLOUDFLARE_API_TOKEN": token})
    assert SECRET not in debug.stderr, debug.stderr


@pytest.mark.parametrize("url, codes", [
    ("api.cloudflare.com/client/v4", (2,)),  # no scheme: a config error
    ("ftp://127.0.0.1/client/v4", (2, 3)),
    ("http://", (2, 3)),
])
def test_a_malformed_base_url_is_one_line(remote, url, codes):
    result = remote("status", env={"CLOUDFLARE_API_BASE_URL": url})
    assert result.returncode in codes, (result.returncode, result.stderr)
    line = one_error(result, result.returncode)
    if result.returncode == 2:
        assert "CLOUDFLARE_API_BASE_URL" in line, line


@pytest.mark.parametrize("where", ["env", "config"])
def test_an_id_that_cannot_go_in_a_url_is_one_line(tmp_path, remote, where):
    """An account or database id with a space (a paste error) must not crash the HTTP client."""
    if where == "env":
        result = remote("status", env={"CLOUDFLARE_ACCOUNT_ID": "0123 4567"})
    else:
        result = remote("status", cwd=write_project(tmp_path / "spaced", "d1d1 d1d1"))
    assert result.returncode in (2, 3), (result.returncode, result.stderr)
    one_error(result, result.returncode)


def test_verify_finds_a_missing_index_remotely(remote, d1):
    ok(remote("migrate"))
    d1.query("DROP INDEX idx_server_sessions_expires")  # break the schema behind sessionctl's back
    result = remote("verify")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "✗ index idx_server_sessions_expires  missing: the applied migrations create it" in result.stdout, \
        result.stdout


# -- secrets --------------------------------------------------------------------------------


def test_the_token_never_appears_even_with_debug(tmp_path, remote, d1, project, runs, caplog):
    ok(remote("migrate"))
    insert_rows(d1, sample_rows(now_ms()))
    unknown = write_project(tmp_path / "unknown", "ffffffff-0000-4000-8000-00000000dead")
    failures = [
        (dict(env={"CLOUDFLARE_API_TOKEN": WRONG_TOKEN}), ("status",), 3),
        (dict(cwd=unknown), ("status",), 3),
        (dict(env={"CLOUDFLARE_API_BASE_URL": closed_port_url()}), ("status",), 3),
        (dict(env={"CLOUDFLARE_ACCOUNT_ID": None}), ("status",), 2),
        (dict(env={"CLOUDFLARE_API_TOKEN": None}), ("status",), 2),
        (dict(), ("sessions", "show", "tg:nobody"), 1),
        (dict(), ("sessions", "list", "--user", "tg:" + "?" * 60), 2),
    ]
    for debug in ([], ["--debug"]):
        for kwargs, args, code in failures:
            result = remote(*debug, *args, **kwargs)
            assert result.returncode == code, (debug, args, result.stderr)
        for args in (("status",), ("verify",), ("sessions", "list"), ("sessions", "stats"),
                     ("sessions", "export", "-o", f"export{len(debug)}.jsonl")):
            ok(remote(*debug, *args))
    ok(remote("--debug", "rollback", "--yes"))
    ok(remote("--debug", "deploy"))
    assert any("Traceback" in r.stderr for r in runs), "--debug showed no traceback at all"
    assert any("DEBUG" in r.stderr for r in runs), "--debug logged nothing"
    assert list((project / "backups").glob("*.jsonl")) and (project / "export1.jsonl").exists()

    # In process, with debug logging on: nothing logged carries the token either.
    from sessionctl.targets.d1_http import D1HttpDatabase

    caplog.set_level(logging.DEBUG)
    db = D1HttpDatabase(base_url=d1.base_url, account_id=d1.account_id,
                        database_id=d1.database_id, token=d1.token)
    db.query("SELECT 1 AS one")
    assert SECRET not in caplog.text and SECRET not in repr(db)
    # (the autouse check then scans every run's output, every file under tmp_path and the worker's log)
