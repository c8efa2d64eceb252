"""How much each --remote command costs D1, counted by D1 itself (tests/d1_worker).

Every request to Cloudflare's API is a round trip and counts against the account's
1,200 requests per 5 minutes, and one request is bounded (D1: 30 s, 100,000 bytes of SQL,
2 MB per value; sessionctl: a body of at most 1 MB and an answer of at most 10,000 rows).
The worker counts requests, body sizes and rows per answer, and a proxy in front of it
counts TCP connections; these tests hold every command to its budget, on a table of
30,000 rows too.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from d1_worker_server import D1Worker
from remote_cli import (  # noqa: F401  (fixtures, found by name)
    token_never_leaks,
    MINUTE,
    SECRET,
    assert_no_secret,
    d1,
    d1_worker,
    fresh_d1,
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

MAX_BODY = 1_000_000  # bytes in one request's body
MAX_ROWS = 10_000  # rows in one answer
STAGING = "sessionctl_import_"



class Cost:
    """What one command cost, as the worker and the connection-counting proxy saw it."""

    def __init__(self, stats: dict, result: subprocess.CompletedProcess):
        self.result = result
        self.log = stats["log"]
        self.requests = stats["requests"]
        self.connections = stats["connections"]
        self.max_body = max((r["request_bytes"] for r in self.log), default=0)
        self.max_rows = max((r["rows"] for r in self.log), default=0)

    def within_bounds(self) -> "Cost":
        assert self.connections == 1, f"{self.connections} connections for {self.requests} requests"
        assert self.max_body <= MAX_BODY, self.max_body
        assert self.max_rows <= MAX_ROWS, self.max_rows
        assert {r["status"] for r in self.log} == {200}, [r for r in self.log if r["status"] != 200]
        return self


def cost(d1: D1Worker, run, *args: str, code: int = 0) -> Cost:
    d1.reset_stats()
    result = run(*args)
    if code == 0:
        ok(result)
    else:
        assert result.returncode == code, (result.stdout, result.stderr)
    return Cost(d1.stats(), result)


_INSERT = f"INSERT INTO server_sessions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"


def insert_rows(d1: D1Worker, rows: list[dict]) -> None:
    for start in range(0, len(rows), 500):
        d1.batch([(_INSERT, [row.get(c) for c in COLUMNS]) for row in rows[start:start + 500]])


def session_rows(count: int, now: int, expired_every: int = 3) -> list[dict]:
    """``count`` rows of the bot's shape; every ``expired_every``-th one expired a minute ago."""
    return [{
        "user_id": f"tg:{i:06d}", "status": "gathering",
        "collected_info": json.dumps({"budget_krw": i, "지역": "서울"}, ensure_ascii=False, separators=(",", ":")),
        "last_recommendation": None,
        "messages": json.dumps([{"role": "user", "content": "서버 추천 부탁드립니다"}], ensure_ascii=False,
                               separators=(",", ":")),
        "created_at": now - MINUTE, "updated_at": now - MINUTE,
        "expires_at": now - MINUTE if i % expired_every == 0 else now + 59 * MINUTE,
    } for i in range(count)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def staging_tables(d1: D1Worker) -> list[str]:
    return [n for (n,) in d1.read("SELECT name FROM sqlite_master WHERE type = 'table'") if n.startswith(STAGING)]


# -- requests per command -------------------------------------------------------------------


def test_each_command_keeps_to_its_request_budget_over_one_connection(remote, d1):
    migrate = cost(d1, remote, "migrate").within_bounds()
    assert migrate.requests == 3  # where the ledger stands, the ledger created, the file as one text

    for args, budget in ((("status",), 2), (("verify",), 2), (("sessions", "show", "tg:1001"), 1),
                         (("sessions", "list"), 1), (("sessions", "stats"), 1)):
        if args[0] == "sessions" and not d1.read("SELECT count(*) FROM server_sessions")[0][0]:
            insert_rows(d1, sample_rows(now_ms()))
        spent = cost(d1, remote, *args).within_bounds()
        assert spent.requests <= budget, (args, spent.requests, [r["sql"] for r in spent.log])

    # sessions list: one request per page, however the pages are asked for.
    insert_rows(d1, session_rows(120, now_ms()))
    first = cost(d1, remote, "sessions", "list", "--limit", "25").within_bounds()
    assert first.requests == 1 and first.max_rows == 25
    cursor = first.result.stderr.split("--cursor ")[1].strip()
    second = cost(d1, remote, "sessions", "list", "--limit", "25", "--cursor", cursor).within_bounds()
    assert second.requests == 1 and second.max_rows == 25

    # cleanup: about one request per batch (plus the count that starts it).
    expired = d1.read("SELECT count(*) FROM server_sessions WHERE expires_at <= ?", (now_ms(),))[0][0]
    cleanup = cost(d1, remote, "sessions", "cleanup", "--batch-size", "10").within_bounds()
    batches = -(-expired // 10)
    assert batches + 1 <= cleanup.requests <= batches + 2, (expired, cleanup.requests)


def test_thirty_thousand_rows_go_through_in_bounded_requests(remote, d1, project):
    ok(remote("migrate"))
    now = now_ms()
    rows = session_rows(30_000, now)
    source = write_jsonl(project / "big.jsonl", rows)

    imported = cost(d1, remote, "sessions", "import", "big.jsonl").within_bounds()
    assert imported.result.stdout == "imported 30000 of 30000 sessions from big.jsonl\n"
    assert imported.requests <= 4 + source.stat().st_size // (MAX_BODY // 2), imported.requests
    staged = [r for r in imported.log if any(STAGING in s and "INSERT OR REPLACE" in s for s in r["sql"])]
    assert len(staged) >= source.stat().st_size // MAX_BODY  # in chunks, each under the bound
    assert d1.read("SELECT count(*) FROM server_sessions") == [(30_000,)] and staging_tables(d1) == []

    exported = cost(d1, remote, "sessions", "export", "-o", "out.jsonl").within_bounds()
    assert exported.requests == 31 and exported.max_rows == 1_000  # pages of 1,000 by user_id
    assert (project / "out.jsonl").read_text(encoding="utf-8") == source.read_text(encoding="utf-8")

    listed = cost(d1, remote, "sessions", "list", "--all", "--limit", "0", "--format", "ndjson").within_bounds()
    assert len(listed.result.stdout.splitlines()) == 30_000 and listed.requests == 31

    active = cost(d1, remote, "sessions", "export", "--active", "-o", "active.jsonl").within_bounds()
    assert len((project / "active.jsonl").read_text().splitlines()) == 20_000 and active.requests == 21

    cleanup = cost(d1, remote, "sessions", "cleanup", "--batch-size", "1000").within_bounds()
    assert cleanup.result.stdout == "deleted 10000 expired sessions\n" and cleanup.requests <= 12

    rollback = cost(d1, remote, "rollback", "--yes").within_bounds()
    assert "backed up 20000 rows" in rollback.result.stdout
    assert 20 <= rollback.requests <= 35, rollback.requests


def test_a_row_too_large_for_one_request_is_staged_in_pieces(remote, d1, project):
    ok(remote("migrate"))
    now = now_ms()
    huge = json.dumps([{"role": "user", "content": "서버 추천 \"따옴표\"\n" * 60_000}], ensure_ascii=False)
    assert MAX_BODY < len(huge.encode()) < 2_000_000
    rows = [{**sample_rows(now)[0], "messages": huge}, sample_rows(now)[1]]
    write_jsonl(project / "huge.jsonl", rows)

    spent = cost(d1, remote, "sessions", "import", "huge.jsonl").within_bounds()
    assert spent.result.stdout == "imported 2 of 2 sessions from huge.jsonl\n"
    appends = [r for r in spent.log if any(s.startswith(f"UPDATE {STAGING}") for s in r["sql"])]
    assert len(appends) >= 2  # the big value went in pieces, each in a request of its own
    assert d1.read("SELECT messages FROM server_sessions WHERE user_id = 'tg:1001'") == [(huge,)]
    exported = cost(d1, remote, "sessions", "export").within_bounds()
    assert json.loads(exported.result.stdout.splitlines()[0])["messages"] == huge


def test_values_and_patterns_over_d1s_limits_are_refused_before_they_are_sent(remote, d1, project):
    ok(remote("migrate"))
    now = now_ms()
    rows = [sample_rows(now)[1], {**sample_rows(now)[0], "collected_info": json.dumps({"k": "x" * 2_000_000})}]
    write_jsonl(project / "over.jsonl", rows)
    spent = cost(d1, remote, "sessions", "import", "over.jsonl", code=1)
    assert one_error(spent.result, 1) == (
        "sessionctl: error: over.jsonl:2: collected_info is 2,000,009 bytes; D1 stores at most 2,000,000 bytes "
        "in one value; nothing was imported")
    assert not any("x" * 1000 in s for r in spent.log for s in r["sql"])
    assert max(r["request_bytes"] for r in spent.log) < 10_000  # the row was never sent
    assert d1.read("SELECT count(*) FROM server_sessions") == [(0,)] and staging_tables(d1) == []

    pattern = "tg:" + "?" * 48
    spent = cost(d1, remote, "sessions", "list", "--user", pattern, code=2)
    assert one_error(spent.result, 2) == (
        f"sessionctl: error: --user {pattern!r} is a 51-byte pattern; D1 refuses LIKE/GLOB patterns over 50 "
        "bytes (nothing was sent)")
    assert spent.requests == 0


# -- the staged import: all or nothing for the live table ------------------------------------------


def test_a_bad_line_after_chunks_were_staged_leaves_the_live_table_and_no_staging(remote, d1, project):
    ok(remote("migrate"))
    now = now_ms()
    insert_rows(d1, sample_rows(now))
    before = d1.read("SELECT * FROM server_sessions ORDER BY user_id")
    rows = session_rows(6_000, now) + [{**sample_rows(now)[0], "user_id": "tg:bad", "status": "bogus"}]
    write_jsonl(project / "late.jsonl", rows)

    spent = cost(d1, remote, "sessions", "import", "late.jsonl", code=1)
    assert one_error(spent.result, 1) == (
        "sessionctl: error: late.jsonl:6001: status 'bogus' is not one of gathering, recommending, selecting, "
        "ordering, completed; nothing was imported")
    assert [r for r in spent.log if any(STAGING in s and "INSERT OR REPLACE" in s for s in r["sql"])]
    assert d1.read("SELECT * FROM server_sessions ORDER BY user_id") == before
    assert staging_tables(d1) == []


def test_a_merge_the_table_refuses_leaves_the_live_table_and_no_staging(remote, d1, project):
    ok(remote("migrate"))
    d1.query("CREATE TRIGGER refuse_banned BEFORE INSERT ON server_sessions WHEN NEW.user_id = 'tg:banned' "
             "BEGIN SELECT RAISE(ABORT, 'banned user'); END")
    now = now_ms()
    rows = session_rows(50, now) + [{**sample_rows(now)[0], "user_id": "tg:banned"}]
    write_jsonl(project / "banned.jsonl", rows)
    spent = cost(d1, remote, "sessions", "import", "banned.jsonl", code=1)
    line = one_error(spent.result, 1)
    assert "the final merge failed: banned user" in line and line.endswith("nothing was imported"), line
    assert d1.read("SELECT count(*) FROM server_sessions") == [(0,)] and staging_tables(d1) == []


def test_a_staging_table_left_by_a_killed_import_is_dropped_by_the_next(remote, d1, project):
    ok(remote("migrate"))
    d1.batch([f"CREATE TABLE {STAGING}deadbeef (user_id TEXT PRIMARY KEY, status TEXT)",
              f"INSERT INTO {STAGING}deadbeef VALUES ('tg:ghost', 'gathering')"])
    report = json.loads(ok(remote("verify", "--json")).stdout)
    assert report["ok"] is True, report  # bookkeeping, not the bot's schema
    write_jsonl(project / "one.jsonl", sample_rows(now_ms())[:1])
    ok(remote("sessions", "import", "one.jsonl"))
    assert staging_tables(d1) == []
    assert [u for (u,) in d1.read("SELECT user_id FROM server_sessions")] == ["tg:1001"]
