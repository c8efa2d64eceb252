"""kv import/export under faults: hostile values, a writer beside export, a write that fails
half-way. The local KV state is the format tests/test_kv_cutover.py proves wrangler reads."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import raw_sqlite
from sessionctl.errors import DatabaseUnavailableError
from sessionctl.kv_sessions import export_to_kv, import_from_kv, session_row
from sessionctl.repository import ServerSession, get_server_session, save_server_session
from sessionctl.targets.sqlite_file import open_sqlite_file
from sessionctl.targets.kv_base import KVKey, KVWrite
from sessionctl.targets.kv_local import LocalKVState, kv_state_files

NS = "0123456789abcdef0123456789abcdef"
PREFIX = "server_session:"


@pytest.fixture
def db(migrated_db):
    return migrated_db


@pytest.fixture
def kv(tmp_path: Path):
    store = LocalKVState(tmp_path / "state" / "v3" / "kv", NS)
    yield store
    store.close()


def _state(store: LocalKVState) -> list[tuple]:
    sqlite, blobs = kv_state_files(store.path.parents[1], NS)
    conn = raw_sqlite.connect(sqlite)
    try:
        rows = conn.execute("SELECT key, blob_id, expiration, metadata FROM _mf_entries ORDER BY key").fetchall()
    finally:
        conn.close()
    return [(k, (blobs / b).read_bytes(), e, m) for k, b, e, m in rows]


def _blobs(store: LocalKVState) -> list[str]:
    return sorted(p.name for p in store.blobs.iterdir()) if store.blobs.exists() else []


def test_a_value_nested_too_deeply_is_skipped_with_its_reason_not_a_crash():
    deep = '{"status": "gathering", "collectedInfo": ' + "[" * 5000 + "]" * 5000 + "}"
    with pytest.raises(ValueError, match=r"^not JSON \(.*nested too deeply"):
        session_row(KVKey(f"{PREFIX}u", int(time.time()) + 3600), deep.encode(), PREFIX, int(time.time() * 1000))


@pytest.mark.parametrize("value, reason", [
    (b"\xff\xfe not utf-8", "not JSON"),
    (b'{"status": "gathering", "status": "ordering", "collectedInfo": "text"}', "collectedInfo is a JSON str"),
    (b'{"status": "gathering", "updatedAt": "yesterday"}', "updatedAt 'yesterday' is not a time"),
    (b'{"status": "gathering", "updatedAt": true}', "updatedAt is not a time"),
    (b'{"status": "gathering", "updatedAt": 1e300}', "not a time in milliseconds"),
    (b'{"status": "gathering", "collectedInfo": {}, "collected_info": {"a": 1}}', "both collectedInfo and collected_info"),
    (b'{"status": "gathering", "messages": [NaN]}', "not JSON"),
    (b'{"status": null}', "unknown status None"),
])
def test_hostile_values_are_skipped_naming_why(value, reason):
    with pytest.raises(ValueError) as caught:
        session_row(KVKey(f"{PREFIX}u", int(time.time()) + 3600), value, PREFIX, int(time.time() * 1000))
    assert reason in str(caught.value)


def test_export_never_overwrites_a_key_the_kv_code_saved_after_it_was_read(db, kv, monkeypatch):
    now = int(time.time() * 1000)
    save_server_session(db, "u1", ServerSession(status="ordering"), now=now - 1_000)
    kv.write([KVWrite(f"{PREFIX}u1", json.dumps({"status": "gathering", "updatedAt": now - 50_000}),
                      now // 1000 + 3600)])
    real_values = LocalKVState.values

    def values_then_the_bot_saves(self, keys):
        found = real_values(self, keys)
        bot = LocalKVState(self.path.parents[1], NS)  # the KV-era code, writing as miniflare does
        (current,) = bot.keys(PREFIX)
        bot.write([KVWrite(f"{PREFIX}u1", '{"status":"completed","updatedAt":1}', now // 1000 + 3600,
                           replaces=current)])
        bot.close()
        return found

    monkeypatch.setattr(LocalKVState, "values", values_then_the_bot_saves)
    result = export_to_kv(db, kv, PREFIX, now=now)

    assert result.written == []
    assert [(k.key, k.reason) for k in result.kept] == [(f"{PREFIX}u1", "KV changed while exporting: kept KV's")]
    assert [row[1] for row in _state(kv)] == [b'{"status":"completed","updatedAt":1}']
    assert len(_blobs(kv)) == 1  # the blob export placed for it is gone again


def test_a_write_that_fails_half_way_leaves_kv_as_it_was_and_no_stray_blob(kv, monkeypatch):
    kv.write([KVWrite(f"{PREFIX}a", "old", int(time.time()) + 3600, metadata={"m": 1})])
    before, blobs_before = _state(kv), _blobs(kv)
    (current,) = kv.keys(PREFIX)
    real_place = LocalKVState._place_blob
    placed = []

    def second_fails(self, data):
        if placed:
            raise DatabaseUnavailableError("cannot write a value into the blobs folder: No space left on device")
        placed.append(real_place(self, data))
        return placed[-1]

    monkeypatch.setattr(LocalKVState, "_place_blob", second_fails)
    with pytest.raises(DatabaseUnavailableError, match="No space left on device"):
        kv.write([KVWrite(f"{PREFIX}a", "new", int(time.time()) + 3600, replaces=current),
                  KVWrite(f"{PREFIX}b", "new", int(time.time()) + 3600)])

    assert _state(kv) == before and _blobs(kv) == blobs_before


def test_import_from_a_namespace_wrangler_never_wrote_finds_nothing_and_creates_nothing(db, kv, tmp_path):
    result = import_from_kv(db, kv, PREFIX)
    assert result.written == [] and result.skipped == []
    assert not (tmp_path / "state").exists()


def test_a_locked_kv_state_is_reported_as_locked_and_nothing_is_written(db, kv, tmp_path):
    from sessionctl.errors import DatabaseLockedError

    kv.write([KVWrite(f"{PREFIX}x", "{}", int(time.time()) + 3600)])
    kv.close()
    save_server_session(db, "u1", ServerSession(), now=int(time.time() * 1000))
    holder = raw_sqlite.connect(kv.path)
    holder.execute("BEGIN IMMEDIATE")
    store = LocalKVState(kv.path.parents[1], NS, timeout=0.1)
    blobs_before = _blobs(store)
    try:
        with pytest.raises(DatabaseLockedError, match="is locked by another process"):
            export_to_kv(db, store, PREFIX)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.close()
    assert _blobs(store) == blobs_before


def test_a_kv_state_file_that_is_not_sqlite_is_one_line_exit_3(tmp_path, cli):
    (tmp_path / "wrangler.toml").write_text(
        'name = "bot"\nmain = "i.js"\n[[kv_namespaces]]\nbinding = "SESSION_KV"\nid = "' + NS + '"\n')
    store = LocalKVState(tmp_path / ".wrangler" / "state" / "v3" / "kv", NS)
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(b"this is not a database" * 100)

    assert cli("--db", tmp_path / "s.db", "migrate").exit_code == 0
    result = cli("--db", tmp_path / "s.db", "kv", "import", "--prefix", PREFIX)

    assert result.exit_code == 3, result.output
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("sessionctl: error:")]
    assert line.startswith(f"sessionctl: error: cannot read {store.path} as wrangler's KV state: ")
    assert "Traceback" not in result.stderr


def _kv_project(tmp_path: Path, rows: int) -> Path:
    import subprocess as sp

    from conftest import SESSIONCTL
    from rows import insert_rows

    (tmp_path / "wrangler.toml").write_text(
        'name = "bot"\nmain = "i.js"\n[[kv_namespaces]]\nbinding = "SESSION_KV"\nid = "' + NS + '"\n')
    db = tmp_path / "s.db"
    done = sp.run([str(SESSIONCTL), "--db", str(db), "migrate"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    now = int(time.time() * 1000)
    insert_rows(db, [{"user_id": f"u{i:05d}", "status": "gathering", "collected_info": '{"n": %d}' % i,
                      "messages": "[]", "created_at": now, "updated_at": now, "expires_at": now + 3_000_000}
                     for i in range(rows)])
    return db


def test_export_killed_at_any_moment_leaves_every_kv_entry_whole_and_finishes_when_run_again(tmp_path):
    import os
    import signal
    import subprocess as sp

    from conftest import SESSIONCTL

    rows = 3_000
    db = _kv_project(tmp_path, rows)
    args = [str(SESSIONCTL), "--db", str(db), "kv", "export", "--prefix", PREFIX]
    store = LocalKVState(tmp_path / ".wrangler" / "state" / "v3" / "kv", NS)
    outcomes = []
    for kill_after_blobs in (1, rows // 2, rows):  # placing values; half placed; all placed, committing
        before = set(_blobs(store))  # what earlier, killed runs left: not this run's progress
        proc = sp.Popen(args, cwd=tmp_path, stdout=sp.PIPE, stderr=sp.PIPE)
        deadline = time.monotonic() + 60
        while proc.poll() is None and len(set(_blobs(store)) - before) < kill_after_blobs:
            assert time.monotonic() < deadline, "export never placed its values"
            time.sleep(0.001)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        outcomes.append(proc.returncode)
        # whatever the moment: every entry names a blob that is there and holds a whole session
        if store.path.exists():
            for key, value, expiration, _ in _state(store):
                assert json.loads(value)["status"] == "gathering" and expiration > 0, key
    assert -signal.SIGKILL in outcomes, outcomes  # at least one run was really cut short

    again = sp.run(args + ["--format", "json"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    state = _state(store)
    assert [key for key, *_ in state] == [f"{PREFIX}u{i:05d}" for i in range(rows)]
    assert [json.loads(value)["collectedInfo"] for _, value, _, _ in state] == [{"n": i} for i in range(rows)]
    store.close()


def test_a_value_a_killed_run_left_half_written_is_removed_by_the_next_write(kv, tmp_path):
    import os
    import subprocess as sp

    kv.write([KVWrite(f"{PREFIX}a", "{}", int(time.time()) + 3600)])
    dead = sp.Popen(["true"])
    dead.wait()  # a process id that no longer exists
    stale = kv.blobs / f".{'ab' * 40}.{dead.pid}.tmp"
    stale.write_bytes(b"half a val")
    mine = kv.blobs / f".{'cd' * 40}.{os.getpid()}.tmp"  # a live writer's: kept
    mine.write_bytes(b"in flight")

    kv.write([KVWrite(f"{PREFIX}b", "{}", int(time.time()) + 3600)])

    assert not stale.exists() and mine.exists()
    mine.unlink()
    assert len(_blobs(kv)) == 2


# -- what a session is, the same both ways -------------------------------------------------


def _kv_session(store: LocalKVState, user: str, value: str, ttl_s: int = 3600) -> None:
    store.write([KVWrite(f"{PREFIX}{user}", value, int(time.time()) + ttl_s)])


def test_export_overwrites_an_older_kv_session_that_has_no_times_dating_it_as_import_does(db, kv):
    # {"status": ...} alone is a session to import (dated by its expiration less the TTL):
    # export must not call it "not a session" and keep it over a newer D1 row.
    _kv_session(kv, "u1", '{"status": "gathering"}', ttl_s=1800)  # saved 30 minutes ago
    save_server_session(db, "u1", ServerSession(status="ordering"))

    result = export_to_kv(db, kv, PREFIX)

    assert result.written == [f"{PREFIX}u1"] and result.kept == []
    assert json.loads(_state(kv)[0][1])["status"] == "ordering"


@pytest.mark.parametrize("column, stored, reason", [
    ("collected_info", "[1, 2]", "collected_info is a JSON list, not an object"),
    ("messages", '{"a": 1}', "messages is a JSON dict, not a list"),
    # deep enough that reading it back, or writing it again, goes past Python's recursion limit
    ("collected_info", '{"deep": ' + "[" * 995 + "]" * 995 + "}",
     ("cannot be written as JSON", "collected_info holds text that is not JSON (JSON nested too deeply")),
])
def test_export_skips_a_row_import_could_not_read_back_naming_why(db, kv, column, stored, reason):
    from rows import insert_rows

    now = int(time.time() * 1000)
    save_server_session(db, "ok", ServerSession(), now=now)
    insert_rows(db.path, [{"user_id": "odd", "status": "gathering", "collected_info": "{}", "messages": "[]",
                           "created_at": now, "updated_at": now, "expires_at": now + 3_000_000, column: stored}])

    result = export_to_kv(db, kv, PREFIX)

    assert result.written == [f"{PREFIX}ok"]
    assert [(s.key, s.reason.startswith(reason)) for s in result.skipped] == [(f"{PREFIX}odd", True)]


def test_export_checks_kv_s_minimum_lifetime_again_just_before_writing(db, kv):
    now = int(time.time() * 1000)
    save_server_session(db, "soon", ServerSession(), now=now - 3_600_000 + 65_000)  # 65 s left
    save_server_session(db, "later", ServerSession(), now=now)

    # planned as if 30 s earlier (a slow read of many rows): 95 s left then, 65 s when written
    result = export_to_kv(db, kv, PREFIX, now=now - 30_000)

    assert result.written == [f"{PREFIX}later"]
    assert [s.key for s in result.skipped] == [f"{PREFIX}soon"]
    assert [key for key, *_ in _state(kv)] == [f"{PREFIX}later"]


def test_import_skips_a_value_dated_in_the_future_and_one_too_large_for_d1(db, kv, monkeypatch):
    from sessionctl.targets.base import Limits
    from sessionctl.targets.sqlite_file import SqliteFileDatabase

    now = int(time.time() * 1000)
    _kv_session(kv, "future", json.dumps({"status": "gathering", "updatedAt": now + 3_600_000}))
    _kv_session(kv, "big", json.dumps({"status": "gathering", "updatedAt": now, "messages": ["x" * 3000]}))
    _kv_session(kv, "fine", json.dumps({"status": "gathering", "updatedAt": now}))
    monkeypatch.setattr(SqliteFileDatabase, "limits", Limits(value_bytes=2000))  # as D1's 2 MB, smaller

    result = import_from_kv(db, kv, PREFIX)

    assert result.written == [f"{PREFIX}fine"]
    assert {s.key: s.reason for s in result.skipped} == {
        f"{PREFIX}future": f"updatedAt {now + 3_600_000} is in the future",
        f"{PREFIX}big": "messages is 3,004 bytes; D1 stores at most 2,000 in one value",
    }


def test_import_reads_again_a_key_the_kv_code_replaced_while_it_was_read(db, kv, monkeypatch):
    now = int(time.time() * 1000)
    _kv_session(kv, "u1", json.dumps({"status": "gathering", "updatedAt": now - 60_000}))
    real_values = LocalKVState.values
    calls = []

    def values_after_the_bot_saved(self, keys):
        if not calls:  # the bot saves between sessionctl's listing and its read
            bot = LocalKVState(self.path.parents[1], NS)
            (current,) = bot.keys(PREFIX)
            bot.write([KVWrite(f"{PREFIX}u1", json.dumps({"status": "ordering", "updatedAt": now}),
                               now // 1000 + 3600, replaces=current)])
            bot.close()
        calls.append(keys)
        return real_values(self, keys)

    monkeypatch.setattr(LocalKVState, "values", values_after_the_bot_saved)
    result = import_from_kv(db, kv, PREFIX)

    assert result.written == [f"{PREFIX}u1"] and result.skipped == []
    assert get_server_session(db, "u1").status == "ordering"


def test_a_key_that_is_not_utf8_in_the_kv_state_is_one_line_exit_3(tmp_path, cli):
    (tmp_path / "wrangler.toml").write_text(
        'name = "bot"\nmain = "i.js"\n[[kv_namespaces]]\nbinding = "SESSION_KV"\nid = "' + NS + '"\n')
    store = LocalKVState(tmp_path / ".wrangler" / "state" / "v3" / "kv", NS)
    store.write([KVWrite(f"{PREFIX}ok", "{}", int(time.time()) + 3600)])
    store.close()
    conn = raw_sqlite.connect(store.path)
    conn.execute("INSERT INTO _mf_entries VALUES (CAST(? AS TEXT), 'b', NULL, NULL)", (PREFIX.encode() + b"\xff",))
    conn.close()
    assert cli("--db", tmp_path / "s.db", "migrate").exit_code == 0

    result = cli("--db", tmp_path / "s.db", "kv", "import", "--prefix", PREFIX)

    assert result.exit_code == 3, result.output
    assert [l for l in result.stderr.splitlines() if "error" in l] == [
        l for l in result.stderr.splitlines() if l.startswith(f"sessionctl: error: cannot read {store.path}")]


def test_a_namespace_id_that_is_a_path_is_refused_before_anything_is_touched(tmp_path):
    from sessionctl.errors import WranglerConfigError

    with pytest.raises(WranglerConfigError, match="is not an id Cloudflare uses"):
        LocalKVState(tmp_path, "../../elsewhere")


def test_a_half_way_failure_of_a_kv_write_is_one_line_and_exit_3_from_the_cli(tmp_path, cli, monkeypatch):
    (tmp_path / "wrangler.toml").write_text(
        'name = "bot"\nmain = "i.js"\n[[kv_namespaces]]\nbinding = "SESSION_KV"\nid = "' + NS + '"\n')
    db = tmp_path / "s.db"
    assert cli("--db", db, "migrate").exit_code == 0
    handle = open_sqlite_file(db)
    for i in range(3):
        save_server_session(handle, f"u{i}", ServerSession())
    handle.close()

    def disk_full(self, data):
        raise DatabaseUnavailableError(f"cannot write a value into {self.blobs}: No space left on device")

    monkeypatch.setattr(LocalKVState, "_place_blob", disk_full)
    result = cli("--db", db, "kv", "export", "--prefix", PREFIX)

    assert result.exit_code == 3 and result.stdout == ""
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("sessionctl: error:")]
    assert line.endswith("No space left on device") and "Traceback" not in result.stderr


@pytest.mark.parametrize("config, prefix, expected", [
    ('name = "bot"\nmain = "i.js"\n', PREFIX, "has no kv_namespaces entry bound as SESSION_KV (bindings: none)"),
    ('name = "bot"\nmain = "i.js"\n[[kv_namespaces]]\nbinding = "SESSION_KV"\nid = "' + NS + '"\n', "",
     "the KV prefix is empty"),
])
def test_rollback_to_kv_that_cannot_export_drops_nothing(tmp_path, cli, config, prefix, expected):
    (tmp_path / "wrangler.toml").write_text(config)
    db = tmp_path / "s.db"
    assert cli("--db", db, "migrate").exit_code == 0
    handle = open_sqlite_file(db)
    save_server_session(handle, "u1", ServerSession())
    handle.close()

    result = cli("--db", db, "rollback", "--to-kv", prefix, "--yes", "--backup", tmp_path / "b.jsonl")

    assert result.exit_code != 0 and "Traceback" not in result.stderr
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("sessionctl: error:")]
    assert expected in line
    assert not (tmp_path / "b.jsonl").exists()
    conn = raw_sqlite.connect(db)
    assert conn.execute("SELECT user_id FROM server_sessions").fetchall() == [("u1",)]
    conn.close()
