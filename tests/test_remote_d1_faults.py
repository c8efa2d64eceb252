"""Remote D1 when the API misbehaves: what workerd under `wrangler dev` cannot be made to do.

403, a 429 with retry-after (the API's rate limiter, before anything runs), the account-wide
block (429, code 10000), D1's 7429 and resets after a write ran, 5xx, dropped connections,
slow answers, a 413 and a server that closes kept-alive connections without saying so. The
API is played by tests/d1_server.py (FakeD1), which injects them, with a real SQLite file
behind it that the tests read directly. Everything else runs against D1 itself
(test_remote_d1.py).

The rule under test: a request is sent again only when the answer means it did not run, or
when it is a read; a write whose outcome is unknown is reported ("may or may not have been
applied", exit 3) and never repeated; a long wait is reported with its length, not slept.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from d1_server import FakeD1
from remote_cli import (  # noqa: F401  (no_proxies: an autouse fixture)
    SECRET,
    assert_no_secret,
    no_proxies,
    ok,
    one_error,
    remote_env,
    run_remote,
    sample_rows,
    write_project,
)
from rows import insert_rows
from sessionctl import __version__
from sessionctl.repository import now_ms

RETRY_AFTER_MESSAGE = "Please wait and consider throttling your request speed"
CPU_RESET = "D1 DB exceeded its CPU time limit and was reset."
DELETE_ONE = "DELETE FROM server_sessions WHERE user_id IN"


@pytest.fixture
def fake(tmp_path: Path):
    with FakeD1(tmp_path / "d1", token=SECRET) as d1:
        yield d1


@pytest.fixture
def project(tmp_path: Path, fake: FakeD1) -> Path:
    return write_project(tmp_path / "bot", fake.database_id)


@pytest.fixture
def runs() -> list[subprocess.CompletedProcess]:
    return []


@pytest.fixture
def remote(project: Path, fake: FakeD1, runs: list):
    def run(*args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
        result = run_remote(project, remote_env(fake.base_url, fake.token, fake.account_id, env), *args)
        runs.append(result)
        return result

    return run


@pytest.fixture
def migrated(remote, fake: FakeD1) -> FakeD1:
    """003 applied, the three sample rows stored, the request log cleared."""
    ok(remote("migrate"))
    insert_rows(fake.db_path, sample_rows(now_ms()))
    fake.requests.clear()
    fake.connections = 0
    return fake


@pytest.fixture(autouse=True)
def token_never_leaks(request: pytest.FixtureRequest, tmp_path: Path):
    yield
    fake = request.node.funcargs.get("fake")
    recorded = json.dumps(fake.requests, ensure_ascii=False) if fake is not None else ""
    assert_no_secret(request.node.funcargs.get("runs") or [], tmp_path, recorded)


def requests_with(fake: FakeD1, text: str) -> list[dict]:
    out = []
    for request in fake.requests:
        body = request["body"] or {}
        items = body.get("batch", [body]) if isinstance(body, dict) else []
        if any(text in item.get("sql", "") for item in items):
            out.append(request)
    return out


def user_ids(fake: FakeD1) -> list[str]:
    return [u for (u,) in fake.inspect("SELECT user_id FROM server_sessions ORDER BY user_id")]


# -- credentials ----------------------------------------------------------------------


def test_a_403_is_a_credentials_problem_and_is_not_retried(migrated, remote):
    migrated.fail_next(403, 9109, "Unauthorized to access requested resource")
    line = one_error(remote("status"), 3)
    assert "the Cloudflare API refused the credentials (HTTP 403, code 9109" in line, line
    assert len(migrated.requests) == 1


# -- rate limits: not executed, so sent again -- unless the wait is long ---------------------


def test_a_429_on_a_read_waits_retry_after_and_succeeds(migrated, remote):
    migrated.fail_next(429, 971, RETRY_AFTER_MESSAGE, headers={"retry-after": "1"}, when="FROM server_sessions")
    listed = json.loads(ok(remote("sessions", "list", "--format", "json")).stdout)
    assert [r["user_id"] for r in listed] == ["tg:1002", "tg:1001"]
    index = next(i for i, r in enumerate(migrated.requests) if r["status"] == 429)
    limited, retried = migrated.requests[index], migrated.requests[index + 1]
    assert retried["body"] == limited["body"] and retried["status"] == 200
    assert retried["at"] - limited["at"] >= 0.95, "retry-after: 1 was not honoured"


def test_a_429_on_a_write_is_sent_again_because_it_did_not_run(migrated, remote):
    migrated.fail_next(429, 971, RETRY_AFTER_MESSAGE, headers={"retry-after": "1"}, when=DELETE_ONE)
    ok(remote("sessions", "delete", "--yes", "tg:1002"))
    assert [r["status"] for r in requests_with(migrated, DELETE_ONE)] == [429, 200]
    assert user_ids(migrated) == ["tg:0999", "tg:1001"]


def test_a_wait_of_more_than_a_second_is_said_before_it_is_slept(migrated, remote):
    migrated.fail_next(429, 971, RETRY_AFTER_MESSAGE, headers={"retry-after": "2"}, when="FROM server_sessions")
    result = ok(remote("sessions", "list"))
    assert ("sessionctl: WARNING: rate limited by the Cloudflare API: waiting 2 s as it asked, then sending "
            "again (nothing was executed)") in result.stderr.splitlines()


def test_a_long_retry_after_is_reported_at_once_not_slept(migrated, remote):
    migrated.fail_next(429, 971, RETRY_AFTER_MESSAGE, headers={"retry-after": "120"}, when="FROM server_sessions")
    started = time.monotonic()
    line = one_error(remote("sessions", "list"), 3)
    assert line.startswith("sessionctl: error: rate limited: retry after 120 s"), line
    assert time.monotonic() - started < 10
    assert len(requests_with(migrated, "FROM server_sessions")) == 1


def test_the_account_wide_block_is_reported_at_once_with_its_wait(migrated, remote):
    """Code 10000 with a 429 is Cloudflare's account-wide limit, not a credentials problem."""
    migrated.fail_next(429, 10000, "Rate limited. Please wait and consider throttling your request speed",
                       headers={"retry-after": "300"}, times=50)
    started = time.monotonic()
    line = one_error(remote("status"), 3)
    assert line == ("sessionctl: error: rate limited: retry after 300 s (the Cloudflare API answered 429, "
                    "code 10000; nothing was executed)")
    assert "credentials" not in line
    assert time.monotonic() - started < 10 and len(migrated.requests) == 1


def test_rate_limited_for_good(migrated, remote):
    migrated.fail_next(429, 971, RETRY_AFTER_MESSAGE, times=100, headers={"retry-after": "0"})
    line = one_error(remote("sessions", "list"), 3)
    assert line.startswith("sessionctl: error: rate limited: retry after 0 s"), line
    assert len(migrated.requests) == 4  # a bounded number of tries


# -- may have run: reads go again, writes are reported and never repeated ---------------------


@pytest.mark.parametrize("status, code, message", [
    (429, 7429, CPU_RESET),
    (500, 7500, "Network connection lost."),
    (503, 7500, "D1 DB storage caused object to be reset."),
    (500, 7500, "Internal error"),
], ids=["7429-cpu-reset", "network-lost", "storage-reset", "500"])
@pytest.mark.parametrize("executed", [False, True], ids=["did-not-run", "ran"])
def test_a_write_answered_with_a_failure_that_may_have_run_is_reported_not_resent(
        migrated, remote, status, code, message, executed):
    migrated.fail_next(status, code, message, when=DELETE_ONE, execute=executed)
    line = one_error(remote("sessions", "delete", "--yes", "tg:1001"), 3)
    assert "during a write" in line and "it may or may not have been applied" in line, line
    assert message in line
    assert len(requests_with(migrated, DELETE_ONE)) == 1, "a write was sent again"
    assert ("tg:1001" in user_ids(migrated)) is not executed


def test_a_cleanup_batch_that_may_have_run_is_not_sent_again(migrated, remote):
    migrated.fail_next(500, 7500, "Internal error", when="DELETE FROM server_sessions")
    line = one_error(remote("sessions", "cleanup"), 3)
    assert "may or may not have been applied" in line, line
    assert len(requests_with(migrated, "DELETE FROM server_sessions")) == 1


@pytest.mark.parametrize("status, code, message", [
    (429, 7429, CPU_RESET), (500, 7500, "Internal error"), (400, 7500, "Network connection lost."),
])
def test_a_read_answered_with_a_failure_that_may_have_run_is_read_again(migrated, remote, status, code, message):
    migrated.fail_next(status, code, message, when="FROM server_sessions")
    stats = json.loads(ok(remote("sessions", "stats", "--format", "json")).stdout)
    assert stats["total"] == 3
    index = next(i for i, r in enumerate(migrated.requests) if r["status"] == status)
    assert migrated.requests[index + 1]["body"] == migrated.requests[index]["body"]
    assert migrated.requests[index + 1]["status"] == 200


def test_a_read_that_keeps_failing_gives_up_after_a_few_tries(migrated, remote):
    migrated.fail_next(500, 7500, "Internal error", times=100)
    line = one_error(remote("sessions", "stats"), 3)
    assert line == "sessionctl: error: D1 failed (HTTP 500, code 7500: Internal error)"
    assert len(migrated.requests) == 4


# -- connections: dropped, slow, closed between requests ----------------------------------------


def test_a_dropped_connection_on_a_read_is_retried(migrated, remote):
    migrated.fail_next(0, 0, "", when="FROM server_sessions")  # the connection closes, no response
    listed = json.loads(ok(remote("sessions", "list", "--all", "--format", "json")).stdout)
    assert len(listed) == 3
    assert [r["status"] for r in requests_with(migrated, "FROM server_sessions")][:2] == [0, 200]


@pytest.mark.parametrize("executed", [False, True], ids=["lost-request", "lost-response"])
def test_a_dropped_connection_on_a_write_is_not_retried(migrated, remote, executed):
    migrated.fail_next(0, 0, "", when=DELETE_ONE, execute=executed)
    line = one_error(remote("sessions", "delete", "--yes", "tg:1001"), 3)
    assert "lost the connection to D1" in line and "may or may not have been applied" in line, line
    assert len(requests_with(migrated, DELETE_ONE)) == 1
    assert ("tg:1001" in user_ids(migrated)) is not executed


def test_a_slow_answer_to_a_read_is_read_again(migrated, remote):
    migrated.fail_next(200, 0, "", when="FROM server_sessions", delay=2.5)
    listed = json.loads(ok(remote("--timeout", "1", "sessions", "list", "--format", "json")).stdout)
    assert len(listed) == 2
    assert len(requests_with(migrated, "FROM server_sessions")) == 2


def test_a_slow_answer_to_a_write_may_have_been_applied_and_is_not_sent_again(migrated, remote):
    migrated.fail_next(200, 0, "", when=DELETE_ONE, delay=2.5)
    line = one_error(remote("--timeout", "1", "sessions", "delete", "--yes", "tg:1001"), 3)
    assert "lost the connection to D1" in line and "timed out" in line and "may or may not" in line, line
    deadline = time.monotonic() + 5  # the server goes on and runs it: that is why it was not sent again
    while "tg:1001" in user_ids(migrated) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "tg:1001" not in user_ids(migrated)
    assert len(requests_with(migrated, DELETE_ONE)) == 1


def test_a_413_is_reported_and_not_sent_again(migrated, remote):
    migrated.fail_next(413, 0, "Request entity too large", when=DELETE_ONE)
    line = one_error(remote("sessions", "delete", "--yes", "tg:1001"), 3)
    assert "refused the request as too large (HTTP 413" in line and "nothing ran" in line, line
    assert len(requests_with(migrated, DELETE_ONE)) == 1


def test_one_connection_carries_every_request_of_a_command(migrated, remote):
    ok(remote("verify"))
    assert len(migrated.requests) == 2 and migrated.connections == 1
    assert {r["user_agent"] for r in migrated.requests} == {f"sessionctl/{__version__}"}


def test_a_connection_the_server_closed_is_replaced_before_anything_is_written(migrated):
    from sessionctl.targets.d1_http import D1HttpDatabase

    migrated.close_after_answer = True  # as a server whose keep-alive timed out, without a word
    db = D1HttpDatabase(base_url=migrated.base_url, account_id=migrated.account_id,
                        database_id=migrated.database_id, token=migrated.token)
    try:
        db.query("SELECT 1 AS one")
        time.sleep(0.3)  # the server's close has reached this side
        assert db.execute("DELETE FROM server_sessions WHERE user_id = ?", ("tg:1001",)).changes == 1
    finally:
        db.close()
    assert [r["status"] for r in migrated.requests] == [200, 200]  # nothing written into the dead one
    assert migrated.connections == 2


def test_a_write_after_an_idle_spell_opens_a_fresh_connection(migrated, monkeypatch):
    from sessionctl.targets import http_connection
    from sessionctl.targets.d1_http import D1HttpDatabase

    db = D1HttpDatabase(base_url=migrated.base_url, account_id=migrated.account_id,
                        database_id=migrated.database_id, token=migrated.token)
    try:
        db.query("SELECT 1 AS one")
        db.query("SELECT 1 AS one")
        assert db.connections == 1  # reads reuse the connection
        monkeypatch.setattr(http_connection, "IDLE_REUSE_S", 0.0)
        db.execute("DELETE FROM server_sessions WHERE user_id = ?", ("tg:0999",))
        assert db.connections == 2  # a write does not race an idle connection's close
    finally:
        db.close()


# -- Time Travel: no bookmark, no drop ---------------------------------------------------------


def test_rollback_refuses_to_drop_without_a_bookmark(migrated, remote, project):
    """The double has no Time Travel: the bookmark cannot be taken, so nothing is dropped."""
    line = one_error(remote("rollback", "--yes"), 2)
    assert line.startswith("sessionctl: error: no Time Travel bookmark could be taken (")
    assert line.endswith("so nothing was dropped: without one the rollback could not be undone on D1 "
                         "(--without-bookmark drops without one)"), line
    assert user_ids(migrated) == ["tg:0999", "tg:1001", "tg:1002"]
    assert not list((project / "backups").glob("*.restore.txt"))

    result = ok(remote("rollback", "--yes", "--without-bookmark"))
    assert "time travel" not in result.stdout
    assert not migrated.inspect("SELECT name FROM sqlite_master WHERE name = 'server_sessions'")
