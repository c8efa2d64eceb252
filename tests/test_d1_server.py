"""The test double itself (tests/d1_server.py): it must behave like D1 where the remote tests rely on it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from d1_server import FakeD1


@pytest.fixture
def fake(tmp_path):
    with FakeD1(tmp_path / "d1", token="tok-double") as d1:
        yield d1


def post(fake: FakeD1, body: dict, *, token: str | None = "same", database_id: str | None = None):
    url = f"{fake.base_url}/accounts/{fake.account_id}/d1/database/{database_id or fake.database_id}/query"
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {fake.token if token == 'same' else token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.load(error), error.headers


def test_query_batch_and_values(fake):
    status, payload, _ = post(fake, {"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v); INSERT INTO t (v) VALUES (?)",
                                     "params": ["서버"]})
    assert status == 200 and payload["success"] and len(payload["result"]) == 2
    assert payload["result"][1]["meta"]["changes"] == 1 and payload["result"][1]["meta"]["last_row_id"] == 1
    assert payload["result"][1]["meta"]["size_after"] > 0
    status, payload, _ = post(fake, {"batch": [
        {"sql": "INSERT INTO t (v) VALUES (?)", "params": [None]},
        {"sql": "SELECT v, x'00ff' AS b, 1.5 AS f FROM t ORDER BY id", "params": []},
    ]})
    assert status == 200
    assert payload["result"][1]["results"] == [{"v": "서버", "b": [0, 255], "f": 1.5}, {"v": None, "b": [0, 255], "f": 1.5}]


def test_batch_is_all_or_nothing(fake):
    post(fake, {"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE)"})
    status, payload, _ = post(fake, {"batch": [
        {"sql": "CREATE TABLE partial (x)", "params": []},
        {"sql": "INSERT INTO t (name) VALUES (?)", "params": ["a"]},
        {"sql": "INSERT INTO t (name) VALUES (?)", "params": ["a"]},
    ]})
    assert status == 400 and payload["success"] is False and payload["result"] is None
    assert payload["errors"] == [{"code": 7500, "message": "UNIQUE constraint failed: t.name: SQLITE_CONSTRAINT [code: 7500]"}]
    assert fake.inspect("SELECT count(*) FROM t") == [(0,)]
    assert fake.inspect("SELECT name FROM sqlite_master WHERE name = 'partial'") == []
    status, payload, _ = post(fake, {"sql": "INSERT INTO t (name) VALUES ('b'); SELECT * FROM nope"})
    assert status == 400 and "no such table: nope: SQLITE_ERROR" in payload["errors"][0]["message"]
    assert fake.inspect("SELECT count(*) FROM t") == [(0,)]


@pytest.mark.parametrize("sql", ["BEGIN", "BEGIN IMMEDIATE TRANSACTION", "COMMIT", "ROLLBACK", "END",
                                 "SAVEPOINT s1", "RELEASE s1", "SELECT 1; BEGIN; SELECT 2"])
def test_transaction_control_rejected(fake, sql):
    status, payload, _ = post(fake, {"sql": sql})
    assert status == 400 and payload["errors"][0]["code"] == 7500
    assert "SQLITE_AUTH" in payload["errors"][0]["message"] and "BEGIN TRANSACTION" in payload["errors"][0]["message"]


@pytest.mark.parametrize("pragma, allowed", [
    ("PRAGMA table_info(sqlite_master)", True), ("PRAGMA index_list(sqlite_master)", True),
    ("PRAGMA quick_check", True), ("PRAGMA journal_mode=WAL", False), ("PRAGMA user_version", False),
    ("PRAGMA writable_schema=1", False), ("SELECT * FROM _cf_KV", False),
])
def test_pragmas_and_cf_tables(fake, pragma, allowed):
    status, payload, _ = post(fake, {"sql": pragma})
    if allowed:
        assert status == 200, payload
    else:
        assert status == 400 and "SQLITE_AUTH [code: 7500]" in payload["errors"][0]["message"]


def test_limits_and_bad_values(fake):
    status, payload, _ = post(fake, {"sql": "SELECT ?", "params": list(range(101))})
    assert (status, payload["errors"][0]["message"]) == (400, "too many SQL variables: SQLITE_ERROR [code: 7500]")
    status, payload, _ = post(fake, {"sql": "SELECT '" + "x" * 100_000 + "'"})
    assert (status, payload["errors"][0]["message"]) == (400, "statement too long: SQLITE_TOOBIG [code: 7500]")
    status, payload, _ = post(fake, {"sql": "SELECT ?", "params": [{"a": 1}]})
    assert status == 400 and "D1_TYPE_ERROR" in payload["errors"][0]["message"]


def test_auth_and_not_found(fake):
    for token in (None, "wrong", ""):
        status, payload, _ = post(fake, {"sql": "SELECT 1"}, token=token)
        assert (status, payload["errors"]) == (401, [{"code": 10000, "message": "Authentication error"}])
    status, payload, _ = post(fake, {"sql": "SELECT 1"}, database_id="nope")
    assert (status, payload["errors"][0]["code"]) == (404, 7404)
    assert all("tok-double" not in json.dumps(r) for r in fake.requests)


def test_fault_injection(fake):
    post(fake, {"sql": "CREATE TABLE t (x)"})
    fake.fail_next(429, 971, "Please wait", headers={"retry-after": "1"})
    fake.fail_next(500, 7500, "Internal error", when="INSERT", execute=True)
    status, payload, headers = post(fake, {"sql": "SELECT 1 AS one"})
    assert (status, headers["retry-after"], payload["errors"][0]["code"]) == (429, "1", 971)
    assert post(fake, {"sql": "SELECT 1 AS one"})[0] == 200  # the 500 waits for an INSERT
    assert post(fake, {"sql": "INSERT INTO t VALUES (1)"})[0] == 500
    assert fake.inspect("SELECT x FROM t") == [(1,)]  # executed, response lost
    assert [r["status"] for r in fake.requests] == [200, 429, 200, 500]


def test_a_dropped_connection(fake):
    fake.fail_next(0, 0, "")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        post(fake, {"sql": "SELECT 1"})
    assert post(fake, {"sql": "SELECT 1"})[0] == 200
    assert [r["status"] for r in fake.requests] == [0, 200]


def test_a_slow_answer_a_silent_close_and_the_connections_counted(fake):
    import http.client
    import time

    fake.fail_next(200, 0, "", delay=0.3)
    started = time.monotonic()
    assert post(fake, {"sql": "SELECT 1 AS one"})[0] == 200  # slow, but an ordinary answer
    assert time.monotonic() - started >= 0.3
    assert fake.connections == 1  # urllib: one connection per request

    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    path = f"/client/v4/accounts/{fake.account_id}/d1/database/{fake.database_id}/query"
    headers = {"Authorization": f"Bearer {fake.token}", "User-Agent": "probe/1"}
    for _ in range(2):  # kept alive: two requests, one connection
        conn.request("POST", path, body=json.dumps({"sql": "SELECT 1"}), headers=headers)
        assert conn.getresponse().read()
    assert fake.connections == 2 and fake.requests[-1]["user_agent"] == "probe/1"

    fake.close_after_answer = True
    conn.request("POST", path, body=json.dumps({"sql": "SELECT 1"}), headers=headers)
    response = conn.getresponse()
    assert response.getheader("Connection") is None and response.read()  # closed, without a word
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        conn.request("POST", path, body=json.dumps({"sql": "SELECT 1"}), headers=headers)
        conn.getresponse()
    conn.close()
