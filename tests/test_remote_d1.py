"""The remote D1 target (`--remote`): every command over Cloudflare's D1 HTTP API, end to end.

The API is played by tests/d1_server.py (FakeD1), a loopback test double that behaves as
D1's HTTP API is documented to behave: a batch is one
transaction, explicit BEGIN/COMMIT/SAVEPOINT and most PRAGMAs are refused, errors carry D1's
codes. Behind it is a real SQLite file, which the tests read directly as an independent check.

Every CLI run is the installed console script as a real process (stdin closed), in a wrangler
project whose D1 binding's database_id is the fake's, with the CLOUDFLARE_* variables wrangler
uses. The token is a distinctive string; after every test an autouse check proves it never
appeared in any run's stdout or stderr, nor in any file the test's runs wrote.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from conftest import MIGRATIONS_DIR, SESSIONCTL, SESSIONS_MIGRATION, WRANGLER_LEDGER_DDL
from d1_server import ALLOWED_PRAGMAS, FakeD1, split_sql
from rows import insert_rows
from sessionctl.repository import now_ms

SECRET = "tok-SECRET-4242"
WRONG_TOKEN = "tok-WRONG-7777"
TARGET_PREFIX = "sessionctl: target: remote D1 telegram-conversations"
MINUTE = 60_000
TRANSACTION_WORDS = {"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "END"}
RETRY_AFTER_MESSAGE = "Please wait and consider throttling your request speed"


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture
def fake(tmp_path: Path):
    with FakeD1(tmp_path / "d1", token=SECRET) as d1:
        yield d1


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours *_proxy variables; the loopback server must be reached directly."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


def write_project(folder: Path, database_id: str, *, extra_toml: str = "",
                  migrations: dict[str, str] | None = None) -> Path:
    """A wrangler project: wrangler.toml with the bot's D1 binding, migrations/ with 003 (+ extras)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wrangler.toml").write_text(
        f'name = "telegram-bot"\nmain = "src/index.js"\ncompatibility_date = "2025-01-01"\n{extra_toml}\n'
        "[[d1_databases]]\n"
        'binding = "DB"\n'
        'database_name = "telegram-conversations"\n'
        f'database_id = "{database_id}"\n',
        encoding="utf-8",
    )
    (folder / "migrations").mkdir(exist_ok=True)
    (folder / "migrations" / SESSIONS_MIGRATION).write_bytes((MIGRATIONS_DIR / SESSIONS_MIGRATION).read_bytes())
    for name, sql in (migrations or {}).items():
        (folder / "migrations" / name).write_text(sql, encoding="utf-8")
    return folder


@pytest.fixture
def project(tmp_path: Path, fake: FakeD1) -> Path:
    return write_project(tmp_path / "bot", fake.database_id)


@pytest.fixture
def runs() -> list[subprocess.CompletedProcess]:
    return []


@pytest.fixture
def remote(project: Path, fake: FakeD1, runs: list):
    """Run `sessionctl --remote ARGS` in the project against the fake.

    ``env`` overrides variables (None removes one); ``remote=False`` leaves out --remote.
    """

    def run(*args: str, env: dict[str, str | None] | None = None, cwd: Path | None = None,
            remote: bool = True) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SESSIONCTL_", "CLOUDFLARE_")) and not k.lower().endswith("_proxy")}
        full_env.update(CLOUDFLARE_API_BASE_URL=fake.base_url, CLOUDFLARE_API_TOKEN=fake.token,
                        CLOUDFLARE_ACCOUNT_ID=fake.account_id)
        for name, value in (env or {}).items():
            if value is None:
                full_env.pop(name, None)
            else:
                full_env[name] = value
        result = subprocess.run(
            [str(SESSIONCTL), *(["--remote"] if remote else []), *map(str, args)],
            cwd=cwd or project, env=full_env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=120,
        )
        runs.append(result)
        return result

    return run


@pytest.fixture(autouse=True)
def token_never_leaks(request: pytest.FixtureRequest, tmp_path: Path):
    """After every test: no secret in any run's output, in any file, or in what the fake recorded."""
    yield
    runs = request.node.funcargs.get("runs") or []
    fake = request.node.funcargs.get("fake")
    for secret in (SECRET, WRONG_TOKEN):
        for result in runs:
            assert secret not in result.stdout, f"{secret} in stdout of {result.args}"
            assert secret not in result.stderr, f"{secret} in stderr of {result.args}"
        for path in tmp_path.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), f"{secret} written to {path}"
        if fake is not None:
            assert secret not in json.dumps(fake.requests, ensure_ascii=False)


# -- helpers -----------------------------------------------------------------------


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.splitlines()[0].startswith(TARGET_PREFIX), result.stderr
    assert "Traceback" not in result.stderr
    return result


def one_error(result: subprocess.CompletedProcess, code: int) -> str:
    """The run exited ``code`` with exactly one `sessionctl: error:` line and no traceback; return it."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [l for l in result.stderr.splitlines() if not l.startswith("sessionctl: target:")]
    assert len(lines) == 1 and lines[0].startswith("sessionctl: error: "), result.stderr
    return lines[0]


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/client/v4"


def names(fake: FakeD1, kind: str) -> set[str]:
    return {n for (n,) in fake.inspect("SELECT name FROM sqlite_master WHERE type = ?", (kind,))}


def ledger(fake: FakeD1) -> list[str]:
    if "d1_migrations" not in names(fake, "table"):
        return []
    return [n for (n,) in fake.inspect("SELECT name FROM d1_migrations ORDER BY id")]


def user_ids(fake: FakeD1) -> list[str]:
    return [u for (u,) in fake.inspect("SELECT user_id FROM server_sessions ORDER BY user_id")]


def all_rows(fake: FakeD1) -> list[tuple]:
    return fake.inspect("SELECT * FROM server_sessions ORDER BY user_id")


def sample_rows(now: int) -> list[dict]:
    return [
        {"user_id": "tg:1001", "status": "recommending", "collected_info": '{"budget_krw":50000}',
         "last_recommendation": '{"plan":"vps-2c-4g","region":"서울","monthly_krw":42000}',
         "messages": '[{"role":"user","content":"서버 추천"},{"role":"assistant","content":"추천합니다"}]',
         "created_at": now - 10 * MINUTE, "updated_at": now - MINUTE, "expires_at": now + 59 * MINUTE},
        {"user_id": "tg:1002", "status": "selecting", "collected_info": "{}", "last_recommendation": None,
         "messages": "[]", "created_at": now - 5 * MINUTE, "updated_at": now - 2 * MINUTE,
         "expires_at": now + 30 * MINUTE},
        {"user_id": "tg:0999", "status": "completed", "collected_info": "{}", "last_recommendation": None,
         "messages": "[]", "created_at": now - 180 * MINUTE, "updated_at": now - 120 * MINUTE,
         "expires_at": now - 60 * MINUTE},
    ]


def requests_with(fake: FakeD1, text: str) -> list[dict]:
    out = []
    for request in fake.requests:
        body = request["body"] or {}
        items = body.get("batch", [body])
        if any(text in item.get("sql", "") for item in items):
            out.append(request)
    return out


def batch_items(request: dict) -> list[dict]:
    body = request["body"]
    return body["batch"] if "batch" in body else [body]


# -- target selection ----------------------------------------------------------------


def test_remote_target_is_named_and_read_commands_write_nothing(remote, fake):
    result = ok(remote("status", "--json"))
    assert [(s["name"], s["state"]) for s in json.loads(result.stdout)] == [(SESSIONS_MIGRATION, "pending")]
    assert fake.requests, "status sent nothing to the API"
    expected_path = f"/client/v4/accounts/{fake.account_id}/d1/database/{fake.database_id}/query"
    assert {(r["method"], r["path"], r["status"]) for r in fake.requests} == {("POST", expected_path, 200)}
    assert names(fake, "table") == {"_cf_KV"}  # status created nothing (no ledger table either)


def test_account_id_from_the_config(tmp_path, fake, remote):
    folder = write_project(tmp_path / "bot2", fake.database_id, extra_toml=f'account_id = "{fake.account_id}"\n')
    ok(remote("status", cwd=folder, env={"CLOUDFLARE_ACCOUNT_ID": None}))


# -- the whole flow, remotely ------------------------------------------------------------


def test_migrate_status_verify(remote, fake):
    result = ok(remote("migrate"))
    assert result.stdout == f"applied {SESSIONS_MIGRATION}\n"
    assert "server_sessions" in names(fake, "table")
    assert "idx_server_sessions_expires" in names(fake, "index")
    assert ledger(fake) == [SESSIONS_MIGRATION]
    assert fake.inspect("SELECT sql FROM sqlite_master WHERE name = 'd1_migrations'") == [(WRANGLER_LEDGER_DDL.replace(" IF NOT EXISTS", "").rstrip(";"),)]

    assert ok(remote("migrate")).stdout == "nothing to apply: every migration is applied\n"
    assert ledger(fake) == [SESSIONS_MIGRATION]

    states = json.loads(ok(remote("status", "--json")).stdout)
    assert [(s["name"], s["state"]) for s in states] == [(SESSIONS_MIGRATION, "applied")]
    assert states[0]["applied_at"]

    verified = ok(remote("verify"))
    lines = verified.stdout.splitlines()
    assert len(lines) >= 6 and all(line.startswith("✓") for line in lines), verified.stdout
    report = json.loads(ok(remote("verify", "--json")).stdout)
    assert report["ok"] is True, report


def test_repository_round_trip_through_the_http_target(remote, fake):
    from sessionctl.errors import DatabaseUnavailableError, InvalidSessionError
    from sessionctl.repository import (
        SESSION_TTL_MS, ServerSession, SessionStatus, cleanup_expired_sessions,
        delete_server_session, get_server_session, save_server_session,
    )
    from sessionctl.targets.d1_http import D1HttpDatabase

    ok(remote("migrate"))
    db = D1HttpDatabase(base_url=fake.base_url, account_id=fake.account_id,
                        database_id=fake.database_id, token=fake.token)
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
        assert fake.inspect("SELECT messages, collected_info FROM server_sessions") == [
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

        assert delete_server_session(db, odd) is True
        assert delete_server_session(db, odd) is False

        save_server_session(db, "tg:old", ServerSession(), now=now - 2 * SESSION_TTL_MS)
        assert get_server_session(db, "tg:old", now=now) is None
        assert cleanup_expired_sessions(db, now=now, batch_size=1) == 1
        assert user_ids(fake) == ["tg:1001"]
        assert delete_server_session(db, "tg:1001") is True
        assert user_ids(fake) == []
    finally:
        db.close()

    bad = D1HttpDatabase(base_url=fake.base_url, account_id=fake.account_id,
                         database_id=fake.database_id, token=WRONG_TOKEN)
    with pytest.raises(DatabaseUnavailableError) as caught:
        bad.query("SELECT 1 AS one")
    assert WRONG_TOKEN not in str(caught.value) and WRONG_TOKEN not in repr(bad)


def test_sessions_commands(remote, fake, project):
    ok(remote("migrate"))
    now = now_ms()
    insert_rows(fake.db_path, sample_rows(now))

    listed = json.loads(ok(remote("sessions", "list", "--format", "json")).stdout)
    assert [r["user_id"] for r in listed] == ["tg:1002", "tg:1001"]  # live only, soonest to expire first
    assert listed[1]["last_recommendation"]["region"] == "서울"
    every = json.loads(ok(remote("sessions", "list", "--all", "--format", "json")).stdout)
    assert sorted(r["user_id"] for r in every) == ["tg:0999", "tg:1001", "tg:1002"]

    shown = ok(remote("sessions", "show", "tg:1001")).stdout
    assert "recommending" in shown and "서버 추천" in shown and "추천합니다" in shown
    missing = remote("sessions", "show", "tg:nobody")
    assert "tg:nobody" in one_error(missing, 1)

    stats = json.loads(ok(remote("sessions", "stats", "--format", "json")).stdout)
    assert (stats["total"], stats["active"], stats["expired"]) == (3, 2, 1)
    assert stats["by_status"]["completed"] == 1
    assert isinstance(stats["size_bytes"], int) and stats["size_bytes"] > 0

    assert ok(remote("sessions", "cleanup", "--dry-run")).stdout == "would delete 1 expired sessions (dry run, nothing deleted)\n"
    assert user_ids(fake) == ["tg:0999", "tg:1001", "tg:1002"]
    assert ok(remote("sessions", "cleanup")).stdout == "deleted 1 expired sessions\n"
    assert user_ids(fake) == ["tg:1001", "tg:1002"]
    kept = all_rows(fake)

    ok(remote("sessions", "export", "-o", "sessions.jsonl"))
    exported = [json.loads(l) for l in (project / "sessions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [tuple(r.values()) for r in exported] == kept  # raw values, column order, byte for byte

    deleted = ok(remote("sessions", "delete", "--yes", "tg:1002", "tg:nobody")).stdout
    assert deleted.splitlines() == ["deleted tg:1002", "not found tg:nobody", "1 deleted, 1 not found"]
    assert user_ids(fake) == ["tg:1001"]
    refused = remote("sessions", "delete", "tg:1001")
    one_error(refused, 2)
    assert user_ids(fake) == ["tg:1001"]

    imported = ok(remote("sessions", "import", "sessions.jsonl")).stdout
    assert imported.startswith("imported 1 of 2 sessions from sessions.jsonl"), imported
    assert all_rows(fake) == kept


def test_smoke_and_deploy(remote, fake):
    deployed = ok(remote("deploy"))
    assert "deploy ok" in deployed.stdout, deployed.stdout
    assert ledger(fake) == [SESSIONS_MIGRATION]
    smoke = ok(remote("smoke"))
    assert [line[0] for line in smoke.stdout.splitlines()] == ["✓"] * 7, smoke.stdout
    assert user_ids(fake) == []  # smoke removed its rows
    report = json.loads(ok(remote("smoke", "--json")).stdout)
    assert report["ok"] is True, report
    assert user_ids(fake) == []
    assert ok(remote("deploy")).stdout.count("✓") >= 7  # second deploy: nothing to apply, still verified


def test_rollback_backs_up_then_drops(remote, fake, project):
    ok(remote("migrate"))
    now = now_ms()
    insert_rows(fake.db_path, sample_rows(now))
    before = all_rows(fake)

    one_error(remote("rollback"), 2)  # not confirmed, non-interactive
    assert "server_sessions" in names(fake, "table")

    result = ok(remote("rollback", "--yes"))
    backups = sorted((project / "backups").glob("*.jsonl"))
    assert len(backups) == 1, result.stdout
    assert f"backed up 3 rows to backups/{backups[0].name}" in result.stdout
    backed_up = [json.loads(l) for l in backups[0].read_text(encoding="utf-8").splitlines()]
    assert sorted(tuple(r.values()) for r in backed_up) == before
    assert "server_sessions" not in names(fake, "table")
    assert "idx_server_sessions_expires" not in names(fake, "index")
    assert ledger(fake) == []
    states = json.loads(ok(remote("status", "--json")).stdout)
    assert [(s["name"], s["state"]) for s in states] == [(SESSIONS_MIGRATION, "pending")]
    assert remote("verify").returncode == 1

    ok(remote("migrate"))
    restored = ok(remote("sessions", "import", f"backups/{backups[0].name}")).stdout
    assert restored.startswith("imported 3 of 3 sessions"), restored
    assert all_rows(fake) == before


def test_a_missing_table_reads_as_locally(remote):
    line = one_error(remote("sessions", "list"), 1)
    assert line == ("sessionctl: error: table server_sessions does not exist "
                    "(migration 003 is not applied: run `sessionctl migrate`)")


# -- what goes over the wire -------------------------------------------------------------


def test_no_transaction_control_or_forbidden_pragma_is_ever_sent(remote, fake, project):
    ok(remote("deploy"))
    insert_rows(fake.db_path, sample_rows(now_ms()))
    for args in (("status",), ("verify",), ("sessions", "list"), ("sessions", "show", "tg:1001"),
                 ("sessions", "stats"), ("sessions", "cleanup"), ("sessions", "export", "-o", "e.jsonl"),
                 ("sessions", "delete", "--yes", "tg:1002"), ("sessions", "import", "e.jsonl"),
                 ("smoke",), ("rollback", "--yes"), ("migrate",), ("deploy",)):
        ok(remote(*args))
    sent = [statement for sql in fake.sql_sent() for statement in split_sql(sql)]
    assert sent
    for statement in sent:
        words = re.sub(r"--[^\n]*|/\*.*?\*/", " ", statement, flags=re.S).split()
        assert words[0].upper().rstrip(";") not in TRANSACTION_WORDS, statement
        if words[0].upper() == "PRAGMA":
            pragma = re.match(r"PRAGMA\s+(?:\w+\.)?(\w+)", statement, re.I).group(1).lower()
            assert pragma in ALLOWED_PRAGMAS, statement
    assert {r["status"] for r in fake.requests} == {200}, [r for r in fake.requests if r["status"] != 200]


def test_a_migration_file_and_its_ledger_row_are_one_request(tmp_path, fake, remote):
    bad = "CREATE TABLE partial_004 (id INTEGER PRIMARY KEY);\nINSERT INTO no_such_table VALUES (1);\n"
    folder = write_project(tmp_path / "bot-bad", fake.database_id, migrations={"004_partial.sql": bad})

    result = remote("migrate", cwd=folder)
    line = one_error(result, 1)
    assert "004_partial.sql" in line and "no such table: no_such_table" in line, line
    assert result.stdout == f"applied {SESSIONS_MIGRATION}\n"  # the file before it stays applied
    assert "partial_004" not in names(fake, "table")
    assert ledger(fake) == [SESSIONS_MIGRATION]

    for file, first_sql in ((SESSIONS_MIGRATION, "CREATE TABLE IF NOT EXISTS server_sessions"),
                            ("004_partial.sql", "CREATE TABLE partial_004")):
        carrying = requests_with(fake, first_sql)
        assert len(carrying) == 1, carrying
        items = batch_items(carrying[0])
        assert any(re.match(r"INSERT INTO d1_migrations", i["sql"]) and f"'{file}'" in i["sql"]
                   for i in items), items
    states = {s["name"]: s["state"] for s in json.loads(ok(remote("status", "--json", cwd=folder)).stdout)}
    assert states == {SESSIONS_MIGRATION: "applied", "004_partial.sql": "pending"}

    (folder / "migrations" / "004_partial.sql").write_text(
        "CREATE TABLE partial_004 (id INTEGER PRIMARY KEY);\nINSERT INTO partial_004 VALUES (1);\n")
    assert ok(remote("migrate", cwd=folder)).stdout == "applied 004_partial.sql\n"
    assert fake.inspect("SELECT id FROM partial_004") == [(1,)]
    assert ledger(fake) == [SESSIONS_MIGRATION, "004_partial.sql"]


CORRUPTING_TRIGGER = """\
CREATE TRIGGER IF NOT EXISTS server_sessions_lose_messages AFTER INSERT ON server_sessions
BEGIN
  UPDATE server_sessions SET messages = '[]' WHERE user_id = NEW.user_id;
END;
"""


def test_deploy_rollback_on_failure_remotely(tmp_path, fake, remote):
    """A trigger's BEGIN ... END is not transaction control; smoke then fails and the run is undone."""
    folder = write_project(tmp_path / "bot-trigger", fake.database_id,
                           migrations={"004_lose_messages.sql": CORRUPTING_TRIGGER})
    result = remote("deploy", "--rollback-on-failure", cwd=folder)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[:3] == ["== migrate", f"applied {SESSIONS_MIGRATION}", "applied 004_lose_messages.sql"]
    assert "deploy stopped: smoke failed" in lines
    assert any(line.startswith(f"rolled back {SESSIONS_MIGRATION}: dropped server_sessions") for line in lines)
    assert any(line.startswith("unrecorded 004_lose_messages.sql") for line in lines)
    (backup,) = (folder / "backups").glob("server_sessions-*.jsonl")
    assert backup.read_bytes() == b""
    assert not (names(fake, "table") | names(fake, "index") | names(fake, "trigger")) & {
        "server_sessions", "idx_server_sessions_expires", "server_sessions_lose_messages"}
    assert ledger(fake) == []


def test_two_migrates_at_once_apply_003_once(remote, fake, project):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONCTL_", "CLOUDFLARE_"))}
    env.update(CLOUDFLARE_API_BASE_URL=fake.base_url, CLOUDFLARE_API_TOKEN=fake.token,
               CLOUDFLARE_ACCOUNT_ID=fake.account_id)
    processes = [subprocess.Popen([str(SESSIONCTL), "--remote", "migrate"], cwd=project, env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    applied = [out.splitlines().count(f"applied {SESSIONS_MIGRATION}") for out, _ in outputs]
    assert sorted(applied) == [0, 1], outputs  # the other says nothing to apply, or applied meanwhile
    assert ledger(fake) == [SESSIONS_MIGRATION]


# -- errors: one line, the documented exit code, no traceback --------------------------------


def test_wrong_token(remote, fake):
    line = one_error(remote("status", env={"CLOUDFLARE_API_TOKEN": WRONG_TOKEN}), 3)
    assert "authentication" in line.lower(), line
    assert all(r["status"] == 401 for r in fake.requests)
    assert len(fake.requests) == 1  # a refused credential is not retried


def test_unknown_database_id(tmp_path, fake, remote):
    folder = write_project(tmp_path / "other", "ffffffff-0000-4000-8000-00000000dead")
    line = one_error(remote("status", cwd=folder), 3)
    assert "not found" in line and "ffffffff-0000-4000-8000-00000000dead" in line, line


def test_unreachable_api(remote):
    started = time.monotonic()
    line = one_error(remote("status", env={"CLOUDFLARE_API_BASE_URL": closed_port_url()}), 3)
    assert "127.0.0.1" in line, line
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("value", [None, ""])
def test_token_unset(remote, fake, value):
    line = one_error(remote("status", env={"CLOUDFLARE_API_TOKEN": value}), 2)
    assert "CLOUDFLARE_API_TOKEN" in line
    assert fake.requests == []


def test_account_unset(remote, fake):
    line = one_error(remote("status", env={"CLOUDFLARE_ACCOUNT_ID": None}), 2)
    assert "CLOUDFLARE_ACCOUNT_ID" in line
    assert fake.requests == []


def test_local_and_remote_together(remote, fake):
    one_error(remote("--local", "status"), 2)
    assert fake.requests == []


def test_persist_to_with_remote_is_a_usage_error(remote, fake):
    line = one_error(remote("--persist-to", "state", "status"), 2)
    assert line == "sessionctl: error: --persist-to is for the local state; it cannot be used with --remote"
    assert fake.requests == []


def test_remote_needs_a_database_id_in_the_config(tmp_path, remote, fake):
    project = tmp_path / "no-id"
    project.mkdir()
    (project / "wrangler.toml").write_text(
        'name = "telegram-bot"\n\n[[d1_databases]]\nbinding = "DB"\ndatabase_name = "telegram-conversations"\n',
        encoding="utf-8",
    )
    line = one_error(remote("status", cwd=project), 2)
    assert line == (f"sessionctl: error: {project / 'wrangler.toml'}: telegram-conversations (binding DB) "
                    "has no database_id, which --remote needs")
    assert fake.requests == []


@pytest.mark.parametrize("token", [SECRET + "\n", " " + SECRET + "\r\n", SECRET + "한"],
                         ids=["newline", "crlf", "not-latin-1"])
def test_a_malformed_token_neither_crashes_nor_shows(remote, fake, token):
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
def test_a_malformed_base_url_is_one_line(remote, fake, url, codes):
    result = remote("status", env={"CLOUDFLARE_API_BASE_URL": url})
    assert result.returncode in codes, (result.returncode, result.stderr)
    line = one_error(result, result.returncode)
    if result.returncode == 2:
        assert "CLOUDFLARE_API_BASE_URL" in line, line


@pytest.mark.parametrize("where", ["env", "config"])
def test_an_id_that_cannot_go_in_a_url_is_one_line(tmp_path, remote, fake, where):
    """An account or database id with a space (a paste error) must not crash the HTTP client."""
    if where == "env":
        result = remote("status", env={"CLOUDFLARE_ACCOUNT_ID": "0123 4567"})
    else:
        result = remote("status", cwd=write_project(tmp_path / "spaced", "d1d1 d1d1"))
    assert result.returncode in (2, 3), (result.returncode, result.stderr)
    one_error(result, result.returncode)


def test_a_429_on_a_read_waits_retry_after_and_succeeds(remote, fake):
    ok(remote("migrate"))
    insert_rows(fake.db_path, sample_rows(now_ms()))
    fake.fail_next(429, 971, RETRY_AFTER_MESSAGE, headers={"retry-after": "1"}, when="FROM server_sessions")
    listed = json.loads(ok(remote("sessions", "list", "--format", "json")).stdout)
    assert [r["user_id"] for r in listed] == ["tg:1002", "tg:1001"]
    index = next(i for i, r in enumerate(fake.requests) if r["status"] == 429)
    limited, retried = fake.requests[index], fake.requests[index + 1]
    assert retried["body"] == limited["body"] and retried["status"] == 200
    assert retried["at"] - limited["at"] >= 0.95, "retry-after: 1 was not honoured"


def test_a_429_on_a_write_is_retried_because_it_was_not_executed(remote, fake):
    ok(remote("migrate"))
    insert_rows(fake.db_path, sample_rows(now_ms()))
    fake.fail_next(429, 971, RETRY_AFTER_MESSAGE, headers={"retry-after": "1"}, when="DELETE FROM server_sessions")
    ok(remote("sessions", "delete", "--yes", "tg:1002"))
    assert [r["status"] for r in requests_with(fake, "DELETE FROM server_sessions")] == [429, 200]
    assert user_ids(fake) == ["tg:0999", "tg:1001"]


def test_rate_limited_for_good(remote, fake):
    ok(remote("migrate"))
    fake.fail_next(429, 971, RETRY_AFTER_MESSAGE, times=100, headers={"retry-after": "0"})
    line = one_error(remote("sessions", "list"), 3)
    assert "rate limit" in line.lower(), line


def test_a_500_on_a_read_is_retried_and_succeeds(remote, fake):
    ok(remote("migrate"))
    insert_rows(fake.db_path, sample_rows(now_ms()))
    fake.fail_next(500, 7500, "Internal error", when="FROM server_sessions")
    stats = json.loads(ok(remote("sessions", "stats", "--format", "json")).stdout)
    assert stats["total"] == 3
    index = next(i for i, r in enumerate(fake.requests) if r["status"] == 500)
    assert fake.requests[index + 1]["body"] == fake.requests[index]["body"]
    assert fake.requests[index + 1]["status"] == 200


@pytest.mark.parametrize("executed", [False, True], ids=["lost-request", "lost-response"])
@pytest.mark.parametrize("args, marker", [
    (("sessions", "delete", "--yes", "tg:1001"), "DELETE FROM server_sessions WHERE user_id IN"),
    (("sessions", "cleanup",), "DELETE FROM server_sessions"),
])
def test_a_500_on_a_write_is_not_retried(remote, fake, args, marker, executed):
    ok(remote("migrate"))
    now = now_ms()
    insert_rows(fake.db_path, sample_rows(now))
    fake.fail_next(500, 7500, "Internal error", when=marker, execute=executed)
    line = one_error(remote(*args), 3)
    assert "may or may not have been applied" in line, line
    assert len(requests_with(fake, marker)) == 1, "a write was sent again after a 500"


def test_a_dropped_connection_on_a_read_is_retried(remote, fake):
    ok(remote("migrate"))
    insert_rows(fake.db_path, sample_rows(now_ms()))
    fake.fail_next(0, 0, "", when="FROM server_sessions")  # the connection closes, no response
    listed = json.loads(ok(remote("sessions", "list", "--all", "--format", "json")).stdout)
    assert len(listed) == 3
    assert [r["status"] for r in requests_with(fake, "FROM server_sessions")][:2] == [0, 200]


@pytest.mark.parametrize("executed", [False, True], ids=["lost-request", "lost-response"])
def test_a_dropped_connection_on_a_write_is_not_retried(remote, fake, executed):
    ok(remote("migrate"))
    insert_rows(fake.db_path, sample_rows(now_ms()))
    marker = "DELETE FROM server_sessions WHERE user_id IN"
    fake.fail_next(0, 0, "", when=marker, execute=executed)
    line = one_error(remote("sessions", "delete", "--yes", "tg:1001"), 3)
    assert "may or may not have been applied" in line, line
    assert len(requests_with(fake, marker)) == 1
    assert ("tg:1001" in user_ids(fake)) is not executed


def test_verify_finds_a_missing_index_remotely(remote, fake):
    ok(remote("migrate"))
    conn = sqlite3.connect(fake.db_path)  # break the schema behind the API's back
    conn.execute("DROP INDEX idx_server_sessions_expires")
    conn.commit()
    conn.close()
    result = remote("verify")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "✗ index idx_server_sessions_expires  missing: the applied migrations create it" in result.stdout, \
        result.stdout


# -- secrets --------------------------------------------------------------------------------


def test_the_token_never_appears_even_with_debug(tmp_path, remote, fake, project, runs, caplog):
    ok(remote("migrate"))
    insert_rows(fake.db_path, sample_rows(now_ms()))
    unknown = write_project(tmp_path / "unknown", "ffffffff-0000-4000-8000-00000000dead")
    failures = [
        (dict(env={"CLOUDFLARE_API_TOKEN": WRONG_TOKEN}), ("status",), 3),
        (dict(cwd=unknown), ("status",), 3),
        (dict(env={"CLOUDFLARE_API_BASE_URL": closed_port_url()}), ("status",), 3),
        (dict(env={"CLOUDFLARE_ACCOUNT_ID": None}), ("status",), 2),
        (dict(env={"CLOUDFLARE_API_TOKEN": None}), ("status",), 2),
        (dict(), ("sessions", "show", "tg:nobody"), 1),
    ]
    for debug in ([], ["--debug"]):
        for kwargs, args, code in failures:
            result = remote(*debug, *args, **kwargs)
            assert result.returncode == code, (debug, args, result.stderr)
        fake.fail_next(500, 7500, "Internal error", when="DELETE FROM server_sessions")
        assert remote(*debug, "sessions", "delete", "--yes", "tg:1002").returncode == 3
        fake.fail_next(400, 7500, "near \"x\": syntax error: SQLITE_ERROR [code: 7500]", when="FROM server_sessions")
        assert remote(*debug, "sessions", "list").returncode == 1
        for args in (("status",), ("verify",), ("sessions", "list"), ("sessions", "stats"),
                     ("sessions", "export", "-o", f"export{len(debug)}.jsonl"), ("smoke",)):
            ok(remote(*debug, *args))
    ok(remote("--debug", "rollback", "--yes"))
    ok(remote("--debug", "deploy"))
    assert any("Traceback" in r.stderr for r in runs), "--debug showed no traceback at all"
    assert list((project / "backups").glob("*.jsonl")) and (project / "export1.jsonl").exists()

    # In process, with debug logging on: nothing logged carries the token either.
    from sessionctl.targets.d1_http import D1HttpDatabase

    caplog.set_level(logging.DEBUG)
    db = D1HttpDatabase(base_url=fake.base_url, account_id=fake.account_id,
                        database_id=fake.database_id, token=fake.token)
    db.query("SELECT 1 AS one")
    assert SECRET not in caplog.text and SECRET not in repr(db)
    # (the autouse check then scans every run's output, every file under tmp_path and fake.requests)
