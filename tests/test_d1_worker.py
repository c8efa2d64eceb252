"""The D1 worker harness (tests/d1_worker_server.py): D1's REST paths answered by D1's engine.

These pin what the engine does where sessionctl's remote target depends on it -- a batch is
atomic, BEGIN is refused, errors carry code 7500 and the engine's message -- and what the
harness adds (token check, stats, the bookmark stand-in), then run today's sessionctl against
it once, end to end.

All tests share one `wrangler dev`; each starts on an empty database with zeroed stats (fresh_d1).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import MIGRATIONS_DIR, SESSIONCTL, SESSIONS_MIGRATION
from d1_worker_server import D1Worker, D1WorkerError, d1_worker, fresh_d1  # noqa: F401  (fixtures)
from sessionctl.repository import now_ms

pytestmark = pytest.mark.wrangler

# D1's refusal of transaction control begins so (the engine goes on to say why).
TRANSACTION_REFUSAL = ("To execute a transaction, please use the state.storage.transaction() or "
                       "state.storage.transactionSync() APIs instead of the SQL BEGIN TRANSACTION or "
                       "SAVEPOINT statements")


@pytest.fixture
def d1(fresh_d1: D1Worker) -> D1Worker:
    """Every test here starts on an empty database with zeroed stats; a short name for it."""
    return fresh_d1


def tables(worker: D1Worker) -> set[str]:
    return {name for (name,) in worker.read("SELECT name FROM sqlite_master WHERE type = 'table'")}


def error_of(status_and_payload: tuple[int, dict]) -> tuple[int, int, str]:
    """(status, code, message) of an error answer, after checking its envelope is Cloudflare's."""
    status, payload = status_and_payload
    assert payload["success"] is False and payload["result"] is None and payload["messages"] == [], payload
    (error,) = payload["errors"]
    return status, error["code"], error["message"]


def test_a_query_round_trip_in_cloudflares_envelope(d1):
    d1.query("CREATE TABLE rt (id INTEGER PRIMARY KEY, name TEXT, score REAL, note TEXT)")
    status, payload = d1.request("POST", "/query", {
        "sql": "INSERT INTO rt (name, score, note) VALUES (?, ?, ?), (?, ?, ?)",
        "params": ["서버", 1.5, None, "o'brien", 2, "; DROP TABLE rt; --"]})
    assert status == 200
    assert (payload["success"], payload["errors"], payload["messages"]) == (True, [], [])
    (entry,) = payload["result"]
    assert entry["success"] is True and entry["results"] == []
    assert entry["meta"]["changes"] == 2 and entry["meta"]["last_row_id"] == 2
    assert entry["meta"]["size_after"] > 0  # sessionctl's size_bytes comes from here

    rows = d1.query("SELECT id, name, score, note FROM rt WHERE score > ? ORDER BY id", [1])
    assert rows == [{"id": 1, "name": "서버", "score": 1.5, "note": None},
                    {"id": 2, "name": "o'brien", "score": 2, "note": "; DROP TABLE rt; --"}]
    (raw,) = d1.execute("SELECT id, name FROM rt ORDER BY id", raw=True)
    assert raw["results"] == {"columns": ["id", "name"], "rows": [[1, "서버"], [2, "o'brien"]]}
    # the file wrangler dev keeps holds the same, read behind the worker's back
    assert d1.read("SELECT id, name FROM rt ORDER BY id") == [(1, "서버"), (2, "o'brien")]


def test_a_batch_failing_on_its_second_statement_leaves_nothing(d1):
    answer = d1.request("POST", "/query", {"batch": [
        {"sql": "CREATE TABLE atomic_a (x)", "params": []},
        {"sql": "INSERT INTO no_such_table VALUES (?)", "params": [1]},
        {"sql": "CREATE TABLE atomic_b (x)", "params": []}]})
    assert error_of(answer) == (400, 7500, "no such table: no_such_table: SQLITE_ERROR")
    assert not tables(d1) & {"atomic_a", "atomic_b"}

    entries = d1.batch([("CREATE TABLE atomic_a (x)", []), ("INSERT INTO atomic_a VALUES (?), (?)", [1, 2]),
                               ("SELECT x FROM atomic_a ORDER BY x", [])])
    assert [e["results"] for e in entries] == [[], [], [{"x": 1}, {"x": 2}]]  # one entry per item
    assert [e["meta"]["changes"] for e in entries] == [0, 2, 0]


def test_a_multi_statement_sql_string_runs_whole_and_answers_for_its_last_statement(d1):
    (entry,) = d1.execute("CREATE TABLE a (x); INSERT INTO a VALUES (1)")
    assert d1.read("SELECT x FROM a") == [(1,)]
    # One entry, the last statement's: the binding gives no more (D1's REST API lists each).
    (entry,) = d1.execute("INSERT INTO a VALUES (2); SELECT x FROM a ORDER BY x")
    assert entry["results"] == [{"x": 1}, {"x": 2}]
    # Atomic like a batch: the first INSERT is rolled back with the failing second statement.
    with pytest.raises(D1WorkerError) as failed:
        d1.execute("INSERT INTO a VALUES (3); INSERT INTO no_such_table VALUES (1)")
    assert (failed.value.status, failed.value.code) == (400, 7500)
    assert d1.read("SELECT x FROM a ORDER BY x") == [(1,), (2,)]
    # Only the last statement may take parameters.
    with pytest.raises(D1WorkerError, match="only the last statement can have parameters"):
        d1.execute("INSERT INTO a VALUES (?); SELECT ? AS v", [4, 5])
    # A comment after the last `;` is an empty statement to the engine.
    with pytest.raises(D1WorkerError, match="SQL code did not contain a statement"):
        d1.execute("SELECT 1;\n-- done\n")


def test_an_sql_error_is_400_code_7500_with_the_engines_message(d1):
    assert error_of(d1.request("POST", "/query", {"sql": "SELEC 1"})) == (
        400, 7500, 'near "SELEC": syntax error at offset 0: SQLITE_ERROR')
    assert error_of(d1.request("POST", "/query", {"sql": "SELECT ?, ?", "params": [1]})) == (
        400, 7500, "Wrong number of parameter bindings for SQL query.")
    assert error_of(d1.request("POST", "/query", {"sql": "PRAGMA journal_mode"})) == (
        400, 7500, "not authorized: SQLITE_AUTH")
    # not SQL at all: the request is malformed (7400), nothing reaches the engine
    assert error_of(d1.request("POST", "/query", {"query": "SELECT 1"}))[:2] == (400, 7400)


def test_credentials_and_ids_are_checked(d1):
    for token in ("wrong-token", ""):  # "": no Authorization header at all
        assert error_of(d1.request("POST", "/query", {"sql": "SELECT 1"}, token=token)) == (
            401, 10000, "Authentication error")
    other_db = d1.database_url.replace(d1.database_id, "ffffffff-0000-4000-8000-00000000dead")
    assert error_of(d1.request("POST", other_db + "/query", {"sql": "SELECT 1"}))[:2] == (404, 7404)
    other_account = d1.database_url.replace(d1.account_id, "f" * 32)
    assert error_of(d1.request("POST", other_account + "/query", {"sql": "SELECT 1"}))[:2] == (404, 7404)
    assert error_of(d1.request("POST", "/nothing", {"sql": "SELECT 1"}))[:2] == (404, 7000)
    assert error_of(d1.request("GET", "/query"))[:2] == (405, 7001)


def test_transaction_control_is_refused_by_d1(d1):
    d1.query("CREATE TABLE tx (x)")
    for body in ({"sql": "BEGIN"}, {"sql": "BEGIN TRANSACTION; INSERT INTO tx VALUES (1); COMMIT"},
                 {"batch": [{"sql": "INSERT INTO tx VALUES (1)"}, {"sql": "SAVEPOINT s"}]}):
        status, code, message = error_of(d1.request("POST", "/query", body))
        assert (status, code) == (400, 7500) and message.startswith(TRANSACTION_REFUSAL), message
    assert d1.read("SELECT count(*) FROM tx") == [(0,)]
    # a trigger's BEGIN ... END is no transaction
    d1.query("CREATE TRIGGER tx_t AFTER INSERT ON tx BEGIN UPDATE tx SET x = 2 WHERE x = 1; END")


def test_stats_count_requests_body_sizes_rows_and_connections(d1):
    d1.query("CREATE TABLE counted (x)")
    d1.reset_stats()
    bodies = [json.dumps({"sql": "INSERT INTO counted VALUES (?), (?), (?)", "params": [1, 2, 3]}).encode(),
              json.dumps({"sql": "SELECT x FROM counted"}).encode(),
              json.dumps({"batch": [{"sql": "SELECT 1 AS a"}, {"sql": "SELECT x FROM counted LIMIT 2"}]}).encode()]
    for body in bodies:
        assert d1.request("POST", "/query", raw_body=body)[0] == 200
    assert d1.request("POST", "/query", {"sql": "SELECT 1"}, token="wrong")[0] == 401

    stats = d1.stats()
    path = f"POST /client/v4/accounts/{d1.account_id}/d1/database/{d1.database_id}/query"
    assert stats["requests"] == 4 and stats["by_path"] == {path: 4}
    assert stats["by_status"] == {"200": 3, "401": 1}
    assert [r["request_bytes"] for r in stats["log"]] == [len(b) for b in bodies] + [len(b'{"sql": "SELECT 1"}')]
    assert stats["request_bytes"] == sum(r["request_bytes"] for r in stats["log"])
    assert [r["rows"] for r in stats["log"]] == [0, 3, 3, 0] and stats["rows"] == 6
    assert [r["statements"] for r in stats["log"]] == [1, 1, 2, 0]
    assert all(r["response_bytes"] > 0 for r in stats["log"])
    assert stats["connections"] == 4  # urllib opens a connection per request: none reused
    assert d1.token not in json.dumps(stats)

    d1.reset_stats()
    assert (d1.stats()["requests"], d1.stats()["connections"]) == (0, 0)


def test_time_travel_bookmarks_are_derived_from_the_timestamp(d1):
    def bookmark(timestamp: str) -> str:
        status, payload = d1.request("GET", f"/time_travel/bookmark?timestamp={timestamp}")
        assert status == 200 and payload["success"] is True, payload
        return payload["result"]["bookmark"]

    first = bookmark("2025-01-01T00:00:00Z")
    assert first == bookmark("2025-01-01T09:00:00%2B09:00")  # the same instant, the same bookmark
    later = [bookmark(t) for t in ("2025-01-01T00:00:00.001Z", "2025-01-02T00:00:00Z", "2026-06-30T12:00:00Z")]
    assert [first, *later] == sorted([first, *later]) and len({first, *later}) == 4
    assert error_of(d1.request("GET", "/time_travel/bookmark?timestamp=yesterday"))[:2] == (400, 7400)

    status, payload = d1.request("POST", f"/time_travel/restore?bookmark={first}")
    assert status == 200 and payload["result"]["bookmark"] == first
    assert d1.stats()["restores"][-1] == first


# -- today's sessionctl against the engine ------------------------------------------------------


def test_sessionctl_migrates_verifies_and_lists_against_d1s_engine(d1, tmp_path):
    project = tmp_path / "bot"
    (project / "migrations").mkdir(parents=True)
    (project / "migrations" / SESSIONS_MIGRATION).write_bytes((MIGRATIONS_DIR / SESSIONS_MIGRATION).read_bytes())
    (project / "wrangler.toml").write_text(
        'name = "telegram-bot"\nmain = "src/index.js"\ncompatibility_date = "2025-01-01"\n\n'
        '[[d1_databases]]\nbinding = "DB"\ndatabase_name = "telegram-conversations"\n'
        f'database_id = "{d1.database_id}"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SESSIONCTL_", "CLOUDFLARE_")) and not k.lower().endswith("_proxy")}
    env.update(CLOUDFLARE_API_BASE_URL=d1.base_url, CLOUDFLARE_API_TOKEN=d1.token,
               CLOUDFLARE_ACCOUNT_ID=d1.account_id)

    def remote(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([str(SESSIONCTL), "--remote", *args], cwd=project, env=env,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert d1.token not in result.stdout + result.stderr
        assert result.returncode == 0 and "Traceback" not in result.stderr, (args, result.stdout, result.stderr)
        return result

    assert remote("migrate").stdout == f"applied {SESSIONS_MIGRATION}\n"
    assert d1.read("SELECT name FROM d1_migrations") == [(SESSIONS_MIGRATION,)]
    assert {"server_sessions", "d1_migrations"} <= tables(d1)
    migrate_requests = d1.stats()["requests"]
    assert d1.stats()["by_status"] == {"200": migrate_requests}  # nothing refused on the way

    verified = json.loads(remote("verify", "--json").stdout)
    assert verified["ok"] is True, verified

    now = now_ms()
    insert = ("INSERT INTO server_sessions (user_id, status, collected_info, messages, created_at, updated_at, "
              "expires_at) VALUES (?, ?, '{}', '[]', ?, ?, ?)")
    d1.batch([(insert, ["tg:live", "selecting", now, now, now + 3_600_000]),
              (insert, ["tg:gone", "completed", now, now, now - 60_000])])
    d1.reset_stats()
    listed = json.loads(remote("sessions", "list", "--format", "json").stdout)
    assert [row["user_id"] for row in listed] == ["tg:live"]  # live sessions only

    stats = d1.stats()
    assert set(stats["by_status"]) == {"200"}, [r for r in stats["log"] if r["status"] != 200]
    assert stats["requests"] == 1 and stats["connections"] == 1  # one page, one request, one connection


def test_wipe_leaves_an_empty_database(d1):
    d1.batch(["CREATE TABLE parent (id INTEGER PRIMARY KEY AUTOINCREMENT)",
              "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent(id))",
              "CREATE INDEX child_parent ON child(parent_id)",
              "CREATE VIEW children AS SELECT * FROM child",
              "CREATE TRIGGER parent_t AFTER DELETE ON parent BEGIN DELETE FROM child WHERE parent_id = OLD.id; END",
              "INSERT INTO parent DEFAULT VALUES", "INSERT INTO child (parent_id) VALUES (1)"])
    d1.wipe()  # parent goes before child here: foreign keys are on in D1, so this needs deferring
    assert d1.read("SELECT type, name FROM sqlite_master WHERE name NOT LIKE '^_cf^_%' ESCAPE '^'") == [
        ("table", "sqlite_sequence")]  # SQLite's own, and empty
    assert d1.read("SELECT count(*) FROM sqlite_sequence") == [(0,)]
