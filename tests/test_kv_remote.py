"""`sessionctl --remote kv import|export`: sessions between Workers KV and D1, both over their REST APIs.

Both sides are tests/d1_worker under the pinned `wrangler dev`: its D1 binding answers D1's
REST paths and its KV binding Workers KV's (see tests/d1_worker_server.py). One server per
module; each test starts on an empty database, an empty KV namespace and zeroed counters.

The project here is the remote fixtures' project plus the bot's KV binding (SESSION_KV, with
the worker's namespace id). Every CLI run is the installed console script as a real process.
Times are the wall clock's (the commands use now_ms()): expirations are an hour or half an
hour ahead, updatedAt a minute or two back, so the checks never race it.

After every test an autouse check proves the token never appeared in any run's stdout or
stderr, in any file the test's runs wrote, nor in what the worker recorded.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest

from d1_worker_server import D1Worker
from remote_cli import (  # noqa: F401  (fixtures, found by name)
    token_never_leaks,
    MINUTE,
    TARGET_PREFIX,
    assert_no_secret,
    d1,
    d1_worker,
    fresh_d1,
    no_proxies,
    remote,
    runs,
    write_project,
)
from sessionctl.repository import COLUMNS, SESSION_TTL_MS, now_ms

pytestmark = pytest.mark.wrangler

PREFIX = "server_session:"
OTHER_PREFIXES = ("server_order_confirm:", "delete_confirm:", "troubleshoot:")
KV_LINE = "sessionctl: kv: remote KV SESSION_KV namespace "


# -- fixtures ----------------------------------------------------------------------



@pytest.fixture
def project(tmp_path: Path, d1: D1Worker) -> Path:
    """The remote fixtures' project, with the bot's KV namespace bound as SESSION_KV."""
    folder = write_project(tmp_path / "bot", d1.database_id)
    with (folder / "wrangler.toml").open("a", encoding="utf-8") as config:
        config.write(f'\n[[kv_namespaces]]\nbinding = "SESSION_KV"\nid = "{d1.kv_namespace_id}"\n')
    return folder


@pytest.fixture
def migrated(remote, d1: D1Worker) -> D1Worker:
    """server_sessions exists (migrated through sessionctl), and the counters start at zero."""
    kv_ok(remote("migrate"), kv=False)
    d1.reset_stats()
    return d1


# -- helpers -----------------------------------------------------------------------

_INSERT = f"INSERT INTO server_sessions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"


def kv_ok(result: subprocess.CompletedProcess, *, kv: bool = True) -> subprocess.CompletedProcess:
    """Exit 0, no traceback, the D1 target named (and, for a kv command, the remote KV namespace)."""
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith(TARGET_PREFIX) for line in lines), result.stderr
    if kv:
        assert any(line.startswith(KV_LINE) for line in lines), result.stderr
    return result


def run_json(remote, *args: str) -> dict:
    return json.loads(kv_ok(remote("kv", *args, "--prefix", PREFIX, "--format", "json")).stdout)


def insert_rows(d1: D1Worker, rows: list[dict]) -> None:
    """Raw rows written through the worker, behind sessionctl's back (one batch)."""
    d1.batch([(_INSERT, [row.get(c) for c in COLUMNS]) for row in rows])


def all_rows(d1: D1Worker) -> list[tuple]:
    return d1.read(f"SELECT {', '.join(COLUMNS)} FROM server_sessions ORDER BY user_id")


def kv_snapshot(d1: D1Worker, prefix: str = "") -> dict[str, tuple]:
    """{name: (value, expiration, metadata)} of every key under ``prefix``."""
    return {k["name"]: (d1.kv_get(k["name"]), k.get("expiration"), k.get("metadata"))
            for k in d1.kv_list(prefix)}


def compact(value) -> str:
    """As JSON.stringify writes it: no spaces, non-ASCII as itself."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def put_other_prefixes(d1: D1Worker) -> None:
    """Keys of the bot's other stores: never read or written by a sessions transfer."""
    for i, prefix in enumerate(OTHER_PREFIXES):
        d1.kv_put(f"{prefix}tg:1001", json.dumps({"step": i, "memo": "확인"}), expiration_ttl=3600,
                  metadata={"store": prefix, "n": i})
    d1.kv_put("troubleshoot:tg:2002", "plain text, not JSON")


def kv_keys_sent(d1: D1Worker, endpoint: str) -> list[str]:
    """Every key name the worker's log shows under ``endpoint`` since the last reset."""
    return [key for record in d1.stats()["log"] if record["endpoint"] == endpoint for key in record["keys"]]


def d1_endpoints(stats: dict) -> dict[str, int]:
    return {name: n for name, n in stats["by_endpoint"].items() if not name.startswith("kv/")}


# -- import: KV to D1 --------------------------------------------------------------------


def test_import_writes_exact_rows_lists_skips_and_leaves_kv_as_it_was(remote, migrated):
    d1 = migrated
    now = now_ms()
    camel = {"status": "recommending", "collectedInfo": {"budget_krw": 50000, "지역": "서울"},
             "lastRecommendation": {"plan": "vps-2c-4g", "monthly_krw": 42000},
             "messages": [{"role": "user", "content": "서버 추천"}, {"role": "assistant", "content": "추천합니다"}],
             "createdAt": now - 10 * MINUTE, "updatedAt": now - MINUTE}
    snake = {"status": "gathering", "collected_info": {}, "last_recommendation": None, "messages": [],
             "created_at": now - 5 * MINUTE, "updated_at": now - 2 * MINUTE}
    no_ttl = {"status": "selecting", "collectedInfo": {"os": "ubuntu"}, "messages": [],
              "createdAt": now - 3 * MINUTE, "updatedAt": now - MINUTE}
    explicit_expiration = now // 1000 + 1800
    d1.kv_put(PREFIX + "tg:1001", json.dumps(camel, indent=2), expiration_ttl=3600, metadata={"v": 1, "who": "봇"})
    d1.kv_put(PREFIX + "tg:1002", json.dumps(snake), expiration=explicit_expiration)
    d1.kv_put(PREFIX + "tg:1003", json.dumps(no_ttl))
    d1.kv_put(PREFIX + "tg:bad-json", "{not json", expiration_ttl=3600)
    d1.kv_put(PREFIX + "tg:bad-status", json.dumps({**camel, "status": "paused"}), expiration_ttl=3600)
    d1.kv_put(PREFIX + "tg:list", "[1, 2]", expiration_ttl=3600)
    put_other_prefixes(d1)
    expiration = {k["name"]: k.get("expiration") for k in d1.kv_list(PREFIX)}
    before = kv_snapshot(d1)
    d1.reset_stats()

    report = run_json(remote, "import")

    assert {k: report[k] for k in ("direction", "dry_run", "written", "keys", "kept")} == {
        "direction": "import", "dry_run": False, "written": 3,
        "keys": [PREFIX + "tg:1001", PREFIX + "tg:1002", PREFIX + "tg:1003"], "kept": []}
    assert report["skipped"] == [
        {"key": PREFIX + "tg:bad-json",
         "reason": "not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"},
        {"key": PREFIX + "tg:bad-status", "reason": "unknown status 'paused'"},
        {"key": PREFIX + "tg:list", "reason": "a JSON list, not a session object"},
    ]

    assert all_rows(d1) == [
        ("tg:1001", "recommending", compact(camel["collectedInfo"]), compact(camel["lastRecommendation"]),
         compact(camel["messages"]), now - 10 * MINUTE, now - MINUTE, expiration[PREFIX + "tg:1001"] * 1000),
        ("tg:1002", "gathering", "{}", None, "[]", now - 5 * MINUTE, now - 2 * MINUTE, explicit_expiration * 1000),
        ("tg:1003", "selecting", '{"os":"ubuntu"}', None, "[]", now - 3 * MINUTE, now - MINUTE,
         now - MINUTE + SESSION_TTL_MS),  # no KV expiration: updatedAt + SESSION_TTL_MS
    ]
    assert expiration[PREFIX + "tg:1003"] is None
    # what the import asked KV for: nothing written, the other stores' keys never even listed
    touched = kv_keys_sent(d1, "kv/keys") + kv_keys_sent(d1, "kv/bulk/get")
    assert sorted(set(touched)) == sorted(expiration) and "kv/bulk" not in d1.stats()["by_endpoint"]
    # KV as it was: values, expirations, metadata
    assert kv_snapshot(d1) == before


def test_a_second_import_writes_nothing_and_a_newer_d1_row_is_kept(remote, migrated):
    d1 = migrated
    now = now_ms()
    values = {user: {"status": "recommending", "collectedInfo": {"n": i}, "lastRecommendation": None,
                     "messages": [], "createdAt": now - 10 * MINUTE, "updatedAt": now - MINUTE}
              for i, user in enumerate(["tg:1001", "tg:1002"])}
    for user, value in values.items():
        d1.kv_put(PREFIX + user, json.dumps(value), expiration_ttl=3600)

    assert run_json(remote, "import")["written"] == 2
    first = all_rows(d1)
    # the bot saves tg:1001 after the import: a newer updated_at than KV's
    bot_saved = ("tg:1001", "ordering", '{"n":0,"plan":"vps"}', None, '[{"role":"user","content":"주문"}]',
                 now - 10 * MINUTE, now, now + SESSION_TTL_MS)
    d1.query("DELETE FROM server_sessions WHERE user_id = 'tg:1001'")
    insert_rows(d1, [dict(zip(COLUMNS, bot_saved))])

    second = run_json(remote, "import")

    assert second == {
        "direction": "import", "dry_run": False, "written": 0, "keys": [],
        "kept": [{"key": PREFIX + "tg:1001",
                  "reason": f"D1 is as new or newer (updated_at {now} >= {now - MINUTE})"},
                 {"key": PREFIX + "tg:1002",
                  "reason": f"D1 is as new or newer (updated_at {now - MINUTE} >= {now - MINUTE})"}],
        "skipped": []}
    assert all_rows(d1) == [bot_saved, first[1]]


def test_import_dry_run_writes_nothing_in_d1(remote, migrated):
    d1 = migrated
    now = now_ms()
    older = ("tg:1001", "gathering", "{}", None, "[]", now - 20 * MINUTE, now - 15 * MINUTE, now + 45 * MINUTE)
    insert_rows(d1, [dict(zip(COLUMNS, older))])
    for user in ("tg:1001", "tg:1002"):
        d1.kv_put(PREFIX + user, json.dumps({"status": "selecting", "collectedInfo": {}, "messages": [],
                                             "createdAt": now - 20 * MINUTE, "updatedAt": now - MINUTE}),
                  expiration_ttl=3600)
    before = all_rows(d1)
    d1.reset_stats()

    report = run_json(remote, "import", "--dry-run")
    text = kv_ok(remote("kv", "import", "--prefix", PREFIX, "--dry-run")).stdout

    assert report == {"direction": "import", "dry_run": True, "written": 2,
                      "keys": [PREFIX + "tg:1001", PREFIX + "tg:1002"], "kept": [], "skipped": []}
    assert text == "would import 2 sessions from KV SESSION_KV into server_sessions\n"
    assert all_rows(d1) == before == [older]
    sent = [sql for record in d1.stats()["log"] for sql in record["sql"]]
    assert sent and all(sql.lstrip().upper().startswith("SELECT") for sql in sent), sent
    assert "kv/bulk" not in d1.stats()["by_endpoint"]

    # the same import for real: KV's newer value replaces the older D1 row
    assert run_json(remote, "import")["written"] == 2
    assert [row[:2] + row[5:7] for row in all_rows(d1)] == [
        ("tg:1001", "selecting", now - 20 * MINUTE, now - MINUTE),
        ("tg:1002", "selecting", now - 20 * MINUTE, now - MINUTE)]


# -- export: D1 to KV --------------------------------------------------------------------


def test_export_writes_camel_values_with_the_rows_expiration_and_keeps_newer_kv(remote, migrated):
    d1 = migrated
    now = now_ms()
    rows = [
        {"user_id": "tg:2001", "status": "recommending", "collected_info": '{"budget_krw":50000,"지역":"서울"}',
         "last_recommendation": '{"plan":"vps-2c-4g","monthly_krw":42000}',
         "messages": '[{"role":"user","content":"서버 추천"}]',
         "created_at": now - 10 * MINUTE, "updated_at": now - MINUTE, "expires_at": now + 59 * MINUTE + 123},
        {"user_id": "tg:2002", "status": "gathering", "collected_info": "{}", "last_recommendation": None,
         "messages": "[]", "created_at": now - 59 * MINUTE, "updated_at": now - 59 * MINUTE,
         "expires_at": now + 30_000},  # 30 s left: KV keeps nothing under 60 s
        {"user_id": "tg:2003", "status": "selecting", "collected_info": "{}", "last_recommendation": None,
         "messages": "[]", "created_at": now - 5 * MINUTE, "updated_at": now - 2 * MINUTE,
         "expires_at": now + 58 * MINUTE},
        {"user_id": "tg:2004", "status": "ordering", "collected_info": '{"os":"debian"}',
         "last_recommendation": '{"plan":"vps-1c-1g"}', "messages": '[{"role":"user","content":"주문"}]',
         "created_at": now - 30 * MINUTE, "updated_at": now - MINUTE, "expires_at": now + 40 * MINUTE + 1},
        {"user_id": "tg:0999", "status": "completed", "collected_info": "{}", "last_recommendation": None,
         "messages": "[]", "created_at": now - 180 * MINUTE, "updated_at": now - 120 * MINUTE,
         "expires_at": now - 60 * MINUTE},  # expired: not exported at all
    ]
    insert_rows(d1, rows)
    # tg:2003: KV saved after D1 did (kept); tg:2004: KV's older value, with metadata (overwritten)
    newer_kv = json.dumps({"status": "ordering", "collectedInfo": {}, "messages": [],
                           "createdAt": now - 5 * MINUTE, "updatedAt": now})
    d1.kv_put(PREFIX + "tg:2003", newer_kv, expiration_ttl=3600, metadata={"src": "kv-era"})
    d1.kv_put(PREFIX + "tg:2004", json.dumps({"status": "gathering", "updatedAt": now - 50 * MINUTE}),
              expiration_ttl=600, metadata={"src": "kv-era", "n": 4})
    put_other_prefixes(d1)
    others_before = {p: kv_snapshot(d1, p) for p in OTHER_PREFIXES}
    kept_before = kv_snapshot(d1, PREFIX + "tg:2003")
    d1.reset_stats()

    report = run_json(remote, "export")
    stats = d1.stats()  # before the checks below add their own reads

    assert (report["direction"], report["dry_run"], report["written"]) == ("export", False, 2)
    assert sorted(report["keys"]) == [PREFIX + "tg:2001", PREFIX + "tg:2004"]
    assert report["kept"] == [{"key": PREFIX + "tg:2003",
                               "reason": f"KV is as new or newer (updated_at {now} >= {now - 2 * MINUTE})"}]
    (skipped,) = report["skipped"]
    assert skipped["key"] == PREFIX + "tg:2002"
    assert re.fullmatch(r"expires in (\d+) s; KV keeps nothing for under 60 s", skipped["reason"]), skipped
    assert 0 <= int(re.search(r"\d+", skipped["reason"]).group()) <= 30

    for row in (rows[0], rows[3]):
        expected = {"status": row["status"], "collectedInfo": json.loads(row["collected_info"]),
                    "lastRecommendation": json.loads(row["last_recommendation"]),
                    "messages": json.loads(row["messages"]),
                    "createdAt": row["created_at"], "updatedAt": row["updated_at"]}
        text = d1.kv_get(PREFIX + row["user_id"])
        assert json.loads(text) == expected
        assert text == compact(expected)  # as JSON.stringify writes it, fields in the KV code's order
    listed = {k["name"]: k for k in d1.kv_list(PREFIX)}
    assert sorted(listed) == [PREFIX + "tg:2001", PREFIX + "tg:2003", PREFIX + "tg:2004"]
    assert listed[PREFIX + "tg:2001"] == {"name": PREFIX + "tg:2001",
                                          "expiration": math.ceil(rows[0]["expires_at"] / 1000)}
    assert listed[PREFIX + "tg:2004"] == {"name": PREFIX + "tg:2004",
                                          "expiration": math.ceil(rows[3]["expires_at"] / 1000),
                                          "metadata": {"src": "kv-era", "n": 4}}  # kept on overwrite
    assert kv_snapshot(d1, PREFIX + "tg:2003") == kept_before
    assert {p: kv_snapshot(d1, p) for p in OTHER_PREFIXES} == others_before
    kv_counts = {n: c for n, c in stats["by_endpoint"].items() if n.startswith("kv/")}
    assert kv_counts == {"kv/keys": 1, "kv/bulk/get": 1, "kv/bulk": 1}
    written = [k for r in stats["log"] if r["endpoint"] == "kv/bulk" for k in r["keys"]]
    assert sorted(written) == [PREFIX + "tg:2001", PREFIX + "tg:2004"]
    assert all_rows(d1) == [tuple(r[c] for c in COLUMNS) for r in sorted(rows, key=lambda r: r["user_id"])]


def test_export_case_snake_writes_snake_case_fields(remote, migrated):
    d1 = migrated
    now = now_ms()
    row = {"user_id": "tg:3001", "status": "selecting", "collected_info": '{"budget_krw":30000}',
           "last_recommendation": None, "messages": '[{"role":"user","content":"안녕"}]',
           "created_at": now - 4 * MINUTE, "updated_at": now - MINUTE, "expires_at": now + 50 * MINUTE}
    insert_rows(d1, [row])

    report = run_json(remote, "export", "--case", "snake")

    assert report == {"direction": "export", "dry_run": False, "written": 1, "keys": [PREFIX + "tg:3001"],
                      "kept": [], "skipped": []}
    expected = {"status": "selecting", "collected_info": {"budget_krw": 30000}, "last_recommendation": None,
                "messages": [{"role": "user", "content": "안녕"}],
                "created_at": now - 4 * MINUTE, "updated_at": now - MINUTE}
    assert d1.kv_get(PREFIX + "tg:3001") == compact(expected)
    assert d1.kv_list(PREFIX) == [{"name": PREFIX + "tg:3001", "expiration": math.ceil(row["expires_at"] / 1000)}]


# -- both ways ---------------------------------------------------------------------------


def test_export_then_import_gives_the_same_rows_expiry_rounded_up_to_the_second(remote, migrated):
    d1 = migrated
    now = now_ms()
    rows = [
        ("tg:4001", "recommending", '{"budget_krw":50000,"지역":"서울"}', '{"plan":"vps-2c-4g","region":"서울"}',
         '[{"role":"user","content":"서버 추천"},{"role":"assistant","content":"추천합니다"}]',
         now - 10 * MINUTE, now - MINUTE, now + 59 * MINUTE + 1),
        ("tg:4002", "gathering", "{}", None, "[]", now - 3 * MINUTE, now - 2 * MINUTE, now + 58 * MINUTE + 999),
        ("tg:4003", "completed", '{"a":[1,2,{"b":null}]}', '{"x":1.5}', "[]",
         now - 7 * MINUTE, now - 7 * MINUTE, now + 53 * MINUTE),
    ]
    insert_rows(d1, [dict(zip(COLUMNS, row)) for row in rows])

    assert run_json(remote, "export")["written"] == 3
    d1.query("DELETE FROM server_sessions")
    assert all_rows(d1) == []
    report = run_json(remote, "import")

    assert report["written"] == 3 and report["kept"] == [] and report["skipped"] == []
    assert all_rows(d1) == [(*row[:7], math.ceil(row[7] / 1000) * 1000) for row in rows]


# -- what it costs ----------------------------------------------------------------------


def test_importing_250_keys_takes_one_listing_three_bulk_reads_and_a_few_d1_requests(remote, migrated):
    d1 = migrated
    now = now_ms()
    items = [{"key": f"{PREFIX}tg:{i:04d}", "expiration_ttl": 3600,
              "value": json.dumps({"status": "gathering", "collectedInfo": {"i": i}, "messages": [],
                                   "createdAt": now - 2 * MINUTE, "updatedAt": now - MINUTE})}
             for i in range(250)]
    items += [{"key": f"troubleshoot:tg:{i:04d}", "value": "{}"} for i in range(30)]
    status, payload = d1.kv_request("PUT", "/bulk", items)
    assert status == 200 and payload["result"]["successful_key_count"] == 280
    d1.reset_stats()

    report = run_json(remote, "import")

    assert report["written"] == 250 and report["kept"] == [] and report["skipped"] == []
    assert d1.read("SELECT COUNT(*), MIN(user_id), MAX(user_id) FROM server_sessions") == [
        (250, "tg:0000", "tg:0249")]
    stats = d1.stats()
    kv_counts = {n: c for n, c in stats["by_endpoint"].items() if n.startswith("kv/")}
    assert kv_counts == {"kv/keys": 1, "kv/bulk/get": math.ceil(250 / 100)}  # one page per 1000 keys
    assert len(kv_keys_sent(d1, "kv/keys")) == 250  # listed by prefix: the other store's keys never listed
    assert sorted(kv_keys_sent(d1, "kv/bulk/get")) == [item["key"] for item in items[:250]]
    # D1: one request looks up the 250 rows' updated_at, then the staged import (schema, staging
    # table, one chunk of rows, the merge): a handful, however many keys there are
    d1_requests = sum(d1_endpoints(stats).values())
    assert 1 <= d1_requests <= 5, d1_endpoints(stats)
    lookups = [r for r in stats["log"] if any(sql.startswith("SELECT user_id, updated_at") for sql in r["sql"])]
    assert len(lookups) == 1 and lookups[0]["statements"] == math.ceil(250 / 90)
    assert stats["by_status"] == {"200": stats["requests"]}
    assert stats["connections"] == 2  # one kept-alive connection for D1, one for KV


# -- rollback --to-kv: the sessions go back to KV before the table is dropped ---------------


def test_remote_rollback_to_kv_exports_then_backs_up_then_drops(remote, migrated, project):
    d1 = migrated
    now = now_ms()
    insert_rows(d1, [
        {"user_id": f"tg:{i}", "status": "selecting", "collected_info": f'{{"i":{i}}}', "last_recommendation": None,
         "messages": "[]", "created_at": now - 5 * MINUTE, "updated_at": now - MINUTE,
         "expires_at": now + 50 * MINUTE} for i in range(3)])
    put_other_prefixes(d1)
    others_before = {p: kv_snapshot(d1, p) for p in OTHER_PREFIXES}

    done = kv_ok(remote("rollback", "--to-kv", PREFIX, "--yes", "--backup", "b.jsonl"))

    lines = done.stdout.splitlines()
    assert lines[0] == "exported 3 sessions from server_sessions into KV SESSION_KV"
    assert "backed up 3 rows to b.jsonl" in lines
    assert [json.loads(d1.kv_get(f"{PREFIX}tg:{i}"))["collectedInfo"] for i in range(3)] == [{"i": i} for i in range(3)]
    assert {p: kv_snapshot(d1, p) for p in OTHER_PREFIXES} == others_before
    assert d1.read("SELECT name FROM sqlite_master WHERE name = 'server_sessions'") == []
    assert len((project / "b.jsonl").read_text().splitlines()) == 3
