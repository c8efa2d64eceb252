"""kv import / kv export / rollback --to-kv against the real wrangler's local KV state.

Sessions are written with the pinned wrangler (`kv bulk put --local`, `kv key put --local
--preview`), carried into D1 by sessionctl, exported back, and read again with `wrangler kv
key get/list --local` and by a Worker under `wrangler dev` (tests/d1_worker, whose KV binding
is persisted where sessionctl writes). The KV state is compared row for row and blob for blob
before and after: an import never changes KV, and keys under other prefixes are never touched.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import pytest

import raw_sqlite
from conftest import MIGRATIONS_DIR, SESSIONCTL
from d1_worker_server import d1_worker  # noqa: F401  (a fixture, found by name)
from wrangler_tools import BOT_TOML, require_wrangler, wrangler_env

from sessionctl.repository import SESSION_TTL_MS, ServerSession, get_server_session, save_server_session
from sessionctl.targets.kv_local import kv_state_files
from sessionctl.targets.sqlite_file import open_sqlite_file

NAMESPACE = "5e55105e55105e55105e55105e551001"
PREVIEW = "5e55105e55105e55105e55105e551002"
PREFIX = "server_session:"
OTHER_KEYS = ("server_order_confirm:tg:1", "delete_confirm:tg:1", "troubleshoot_session:tg:1")


def _toml(kv: str) -> str:
    return BOT_TOML + f'\n[[kv_namespaces]]\nbinding = "SESSION_KV"\n{kv}\n'


def _run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          encoding="utf-8", timeout=180)


class Project:
    def __init__(self, root: Path, logs: Path, persist_to: Path | None = None):
        self.root, self.logs, self.persist_to = root, logs, persist_to
        self.kv_root = (persist_to or root / ".wrangler" / "state") / "v3" / "kv"
        self.persist = ["--persist-to", str(persist_to)] if persist_to else []

    def wrangler(self, *args: str) -> str:
        proc = _run([str(require_wrangler()), *args], self.root, wrangler_env(self.logs))
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc.stdout

    def bulk_put(self, items: list[dict], *extra: str) -> None:
        path = self.root / "bulk.json"
        path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
        self.wrangler("kv", "bulk", "put", str(path), "--binding", "SESSION_KV", "--local", *extra)
        path.unlink()

    def kv_get(self, key: str) -> str:
        return self.wrangler("kv", "key", "get", key, "--binding", "SESSION_KV", "--local", "--text").rstrip("\n")

    def kv_list(self, prefix: str = "") -> list[dict]:
        out = self.wrangler("kv", "key", "list", "--binding", "SESSION_KV", "--local", "--prefix", prefix)
        return json.loads(out)

    def sessionctl(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        proc = _run([str(SESSIONCTL), *self.persist, *args], self.root)
        if ok:
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc

    def transfer(self, *args: str) -> dict:
        return json.loads(self.sessionctl("kv", *args, "--format", "json").stdout)

    def request(self):
        from sessionctl.targets.resolve import TargetRequest

        return TargetRequest(cwd=self.root, persist_to=self.persist_to)

    def db(self):
        from sessionctl.targets.resolve import open_target

        return open_target(self.request())

    def rows(self) -> list[tuple]:
        from sessionctl.targets.resolve import resolve_target

        conn = raw_sqlite.connect(resolve_target(self.request()).path)
        try:
            return conn.execute("SELECT * FROM server_sessions ORDER BY user_id").fetchall()
        finally:
            conn.close()

    def kv_state(self, namespace: str = NAMESPACE) -> list[tuple]:
        """Every entry of the namespace with its value's bytes: what KV holds, exactly."""
        sqlite, blobs = kv_state_files(self.kv_root, namespace)
        if not sqlite.exists():
            return []
        conn = raw_sqlite.connect(sqlite)
        try:
            entries = conn.execute("SELECT key, blob_id, expiration, metadata FROM _mf_entries ORDER BY key").fetchall()
        finally:
            conn.close()
        return [(key, (blobs / blob).read_bytes(), expiration, metadata) for key, blob, expiration, metadata in entries]


def _project(tmp_path: Path, kv: str = f'id = "{NAMESPACE}"', persist_to: Path | None = None) -> Project:
    root = tmp_path / "bot"
    (root / "src").mkdir(parents=True)
    (root / "src" / "index.js").write_text("export default { async fetch() { return new Response('ok'); } };\n")
    (root / "wrangler.toml").write_text(_toml(kv))
    (root / "migrations").mkdir()
    for sql in MIGRATIONS_DIR.glob("*.sql"):
        (root / "migrations" / sql.name).write_text(sql.read_text(encoding="utf-8"), encoding="utf-8")
    project = Project(root, tmp_path / "logs", persist_to)
    project.sessionctl("migrate")
    return project


def _camel(status: str, updated_ms: int, **fields) -> str:
    return json.dumps({"status": status, "collectedInfo": fields.get("info", {}),
                       "lastRecommendation": fields.get("rec"), "messages": fields.get("messages", []),
                       "createdAt": fields.get("created", updated_ms - 600_000), "updatedAt": updated_ms},
                      ensure_ascii=False)


def test_import_moves_live_kv_sessions_written_by_wrangler_and_touches_nothing_else(tmp_path):
    project = _project(tmp_path)
    now_s = int(time.time())
    now_ms = now_s * 1000
    snake = {"status": "selecting", "collected_info": {"cpu": 8}, "last_recommendation": {"plan": "B"},
             "messages": [{"role": "user", "content": "서버 추천"}], "created_at": now_ms - 900_000,
             "updated_at": now_ms - 30_000}
    project.bulk_put([
        {"key": f"{PREFIX}tg:1", "value": _camel("recommending", now_ms - 60_000, info={"budget": "50k"},
                                                    messages=[{"role": "user", "content": "hi"}]),
         "expiration_ttl": 3540},
        {"key": f"{PREFIX}tg:2", "value": json.dumps(snake, ensure_ascii=False), "expiration": now_s + 1800,
         "metadata": {"v": 2}},
        {"key": f"{PREFIX}tg:3", "value": '{"status": "gathering"}', "expiration_ttl": 3600},
        {"key": f"{PREFIX}notime", "value": '{"status": "gathering"}'},
        {"key": f"{PREFIX}old", "value": _camel("ordering", now_ms - 2 * SESSION_TTL_MS)},
        {"key": f"{PREFIX}bad", "value": "{not json", "expiration_ttl": 3600},
        {"key": f"{PREFIX}weird", "value": '{"status": "paused"}', "expiration_ttl": 3600},
        {"key": f"{PREFIX}list", "value": "[1, 2]", "expiration_ttl": 3600},
        {"key": f"{PREFIX}", "value": _camel("gathering", now_ms), "expiration_ttl": 3600},
        *({"key": key, "value": '{"status": "gathering", "updatedAt": 1}', "expiration_ttl": 3600,
           "metadata": {"other": key}} for key in OTHER_KEYS),
    ])
    kv_before = project.kv_state()
    listed_before = project.kv_list()

    dry = project.transfer("import", "--prefix", PREFIX, "--dry-run")
    assert project.rows() == []  # a dry run writes nothing
    result = project.transfer("import", "--prefix", PREFIX)

    assert dry["written"] == result["written"] == 3
    assert sorted(result["keys"]) == [f"{PREFIX}tg:1", f"{PREFIX}tg:2", f"{PREFIX}tg:3"]
    assert {s["key"]: s["reason"] for s in result["skipped"]} == {
        f"{PREFIX}notime": "no updatedAt, createdAt or KV expiration to date it by",
        f"{PREFIX}old": "expired (updatedAt + SESSION_TTL_MS has passed)",
        f"{PREFIX}bad": "not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
        f"{PREFIX}weird": "unknown status 'paused'",
        f"{PREFIX}list": "a JSON list, not a session object",
        f"{PREFIX}": "no user id after the prefix",
    }
    expiry = {entry["name"]: entry.get("expiration") for entry in listed_before}
    assert project.rows() == [
        ("tg:1", "recommending", '{"budget":"50k"}', None, '[{"role":"user","content":"hi"}]',
         now_ms - 660_000, now_ms - 60_000, expiry[f"{PREFIX}tg:1"] * 1000),
        ("tg:2", "selecting", '{"cpu":8}', '{"plan":"B"}', '[{"role":"user","content":"서버 추천"}]',
         now_ms - 900_000, now_ms - 30_000, (now_s + 1800) * 1000),
        # no times in the value: dated by its KV expiration, which the KV code set SESSION_TTL after the save
        ("tg:3", "gathering", "{}", None, "[]", expiry[f"{PREFIX}tg:3"] * 1000 - SESSION_TTL_MS,
         expiry[f"{PREFIX}tg:3"] * 1000 - SESSION_TTL_MS, expiry[f"{PREFIX}tg:3"] * 1000),
    ]
    # KV is read, never written: every entry and every value's bytes as they were, and wrangler agrees
    assert project.kv_state() == kv_before
    assert project.kv_list() == listed_before
    assert {e["name"]: e.get("metadata") for e in listed_before if not e["name"].startswith(PREFIX)} == {
        key: {"other": key} for key in OTHER_KEYS}


def test_import_again_changes_nothing_and_a_newer_d1_save_is_kept(tmp_path):
    project = _project(tmp_path)
    now_ms = int(time.time()) * 1000
    project.bulk_put([{"key": f"{PREFIX}tg:{i}", "value": _camel("gathering", now_ms - 120_000, info={"i": i}),
                       "expiration_ttl": 3600} for i in range(3)])
    assert project.transfer("import", "--prefix", PREFIX)["written"] == 3
    db = project.db()
    session = get_server_session(db, "tg:1")
    session.status = "ordering"
    save_server_session(db, "tg:1", session)  # the new code saves after the deploy
    db.close()
    before = project.rows()

    again = project.transfer("import", "--prefix", PREFIX)

    assert again["written"] == 0
    assert [k["key"] for k in again["kept"]] == [f"{PREFIX}tg:0", f"{PREFIX}tg:1", f"{PREFIX}tg:2"]
    assert all(k["reason"].startswith("D1 is as new or newer") for k in again["kept"])
    assert project.rows() == before
    assert [row[1] for row in before] == ["gathering", "ordering", "gathering"]


def test_a_kv_key_that_expires_before_the_import_runs_is_skipped(tmp_path):
    from sessionctl.kv_sessions import import_from_kv
    from sessionctl.targets.resolve import open_kv, resolve_kv

    project = _project(tmp_path)
    now_ms = int(time.time()) * 1000
    project.bulk_put([{"key": f"{PREFIX}soon", "value": _camel("gathering", now_ms), "expiration_ttl": 60}])
    store = open_kv(resolve_kv(project.request()))
    db = project.db()
    try:
        later = import_from_kv(db, store, PREFIX, now=now_ms + 121_000)  # two minutes on
    finally:
        store.close()
        db.close()
    assert later.written == [] and [(s.key, s.reason) for s in later.skipped] == [(f"{PREFIX}soon", "expired in KV")]
    assert project.rows() == []


def _save(project: Project, user_id: str, *, now: int, **fields) -> None:
    db = project.db()
    save_server_session(db, user_id, ServerSession(**fields), now=now)
    db.close()


def test_export_writes_what_wrangler_and_the_kv_code_read_keeping_newer_kv_values(tmp_path):
    project = _project(tmp_path)
    now_ms = int(time.time()) * 1000
    _save(project, "tg:1", now=now_ms - 60_000, status="selecting", collected_info={"cpu": 8},
          last_recommendation={"plan": "B"}, messages=[{"role": "user", "content": "서버 추천"}])
    _save(project, "tg:2", now=now_ms - 120_000, collected_info={"old": True})
    _save(project, "tg:3", now=now_ms - 180_000)
    project.bulk_put([
        # the KV-era code already saved tg:2 again after that: KV is newer and stays
        {"key": f"{PREFIX}tg:2", "value": _camel("ordering", now_ms - 10_000), "expiration_ttl": 3600},
        # an older KV value with metadata: replaced, its metadata kept
        {"key": f"{PREFIX}tg:3", "value": _camel("gathering", now_ms - 900_000), "expiration_ttl": 3600,
         "metadata": {"chat": 42}},
        *({"key": key, "value": "other feature", "expiration_ttl": 3600} for key in OTHER_KEYS),
    ])
    others_before = [entry for entry in project.kv_state() if not entry[0].startswith(PREFIX)]
    kv_tg2 = project.kv_get(f"{PREFIX}tg:2")
    # saved last, just before the export: 45 s left, under KV's 60 whatever the machine's pace
    _save(project, "tg:short", now=int(time.time() * 1000) - SESSION_TTL_MS + 45_000)

    result = project.transfer("export", "--prefix", PREFIX)

    assert sorted(result["keys"]) == [f"{PREFIX}tg:1", f"{PREFIX}tg:3"]
    assert [(k["key"], k["reason"].split(" (")[0]) for k in result["kept"]] == [(f"{PREFIX}tg:2", "KV is as new or newer")]
    assert [s["key"] for s in result["skipped"]] == [f"{PREFIX}tg:short"]
    assert "KV keeps nothing for under 60 s" in result["skipped"][0]["reason"]
    expires = {row[0]: row[7] for row in project.rows()}
    assert json.loads(project.kv_get(f"{PREFIX}tg:1")) == {
        "status": "selecting", "collectedInfo": {"cpu": 8}, "lastRecommendation": {"plan": "B"},
        "messages": [{"role": "user", "content": "서버 추천"}], "createdAt": now_ms - 60_000,
        "updatedAt": now_ms - 60_000}
    assert project.kv_get(f"{PREFIX}tg:2") == kv_tg2
    listed = {entry["name"]: entry for entry in project.kv_list(PREFIX)}
    assert listed[f"{PREFIX}tg:1"]["expiration"] == math.ceil(expires["tg:1"] / 1000)
    assert listed[f"{PREFIX}tg:3"] == {"name": f"{PREFIX}tg:3", "expiration": math.ceil(expires["tg:3"] / 1000),
                                       "metadata": {"chat": 42}}
    assert f"{PREFIX}tg:short" not in listed
    assert [entry for entry in project.kv_state() if not entry[0].startswith(PREFIX)] == others_before
    # nothing left behind: exactly one blob per entry (the replaced value's blob is gone)
    sqlite, blobs = kv_state_files(project.kv_root, NAMESPACE)
    conn = raw_sqlite.connect(sqlite)
    named = sorted(row[0] for row in conn.execute("SELECT blob_id FROM _mf_entries").fetchall())
    conn.close()
    assert sorted(p.name for p in blobs.iterdir()) == named

    again = project.transfer("export", "--prefix", PREFIX, "--case", "snake")
    assert again["written"] == 0 and len(again["kept"]) == 3  # the second run changes nothing


def test_export_in_snake_case_then_import_into_an_empty_table_round_trips(tmp_path):
    project = _project(tmp_path)
    now_ms = int(time.time()) * 1000
    for i in range(5):
        _save(project, f"tg:{i}", now=now_ms - i * 1000 - 1, status="recommending",
              collected_info={"i": i, "name": "이름"}, messages=[{"n": i}], last_recommendation=[i] if i else None)
    before = project.rows()
    assert project.transfer("export", "--prefix", PREFIX, "--case", "snake")["written"] == 5
    value = json.loads(project.kv_get(f"{PREFIX}tg:1"))
    assert sorted(value) == ["collected_info", "created_at", "last_recommendation", "messages", "status", "updated_at"]

    project.sessionctl("rollback", "--yes", "--no-backup")
    project.sessionctl("migrate")
    assert project.transfer("import", "--prefix", PREFIX)["written"] == 5

    after = project.rows()
    assert [row[:7] for row in after] == [row[:7] for row in before]
    # KV keeps whole seconds: each lifetime comes back rounded up, never shortened
    assert [row[7] for row in after] == [math.ceil(row[7] / 1000) * 1000 for row in before]


def test_local_kv_is_the_namespace_wrangler_dev_binds(tmp_path):
    project = _project(tmp_path, kv=f'id = "{NAMESPACE}"\npreview_id = "{PREVIEW}"')
    now_ms = int(time.time()) * 1000
    # with both ids, wrangler's own kv commands must be told; wrangler dev binds the preview_id
    project.wrangler("kv", "key", "put", f"{PREFIX}tg:p", _camel("gathering", now_ms), "--binding", "SESSION_KV",
                     "--local", "--preview", "--ttl", "3600")

    assert project.transfer("import", "--prefix", PREFIX, "--no-preview")["written"] == 0
    assert project.transfer("import", "--prefix", PREFIX)["keys"] == [f"{PREFIX}tg:p"]
    assert [row[0] for row in project.rows()] == ["tg:p"]


def test_rollback_to_kv_exports_the_live_sessions_before_it_drops_the_table(tmp_path):
    project = _project(tmp_path)
    now_ms = int(time.time()) * 1000
    _save(project, "tg:1", now=now_ms - 1_000, status="ordering", collected_info={"plan": "B"})
    _save(project, "tg:2", now=now_ms - 2_000)

    dry = project.sessionctl("rollback", "--to-kv", PREFIX, "--dry-run")
    assert "would export 2 sessions from server_sessions into KV SESSION_KV" in dry.stdout
    assert project.kv_state() == []
    done = project.sessionctl("rollback", "--to-kv", PREFIX, "--yes", "--backup", "b.jsonl")

    lines = done.stdout.splitlines()
    assert lines[0] == "exported 2 sessions from server_sessions into KV SESSION_KV"
    assert lines[1] == "backed up 2 rows to b.jsonl"
    assert json.loads(project.kv_get(f"{PREFIX}tg:1"))["status"] == "ordering"
    assert [entry["name"] for entry in project.kv_list(PREFIX)] == [f"{PREFIX}tg:1", f"{PREFIX}tg:2"]
    assert "table server_sessions does not exist" in project.sessionctl("sessions", "list", ok=False).stderr


def test_a_missing_prefix_or_binding_is_one_line_and_nothing_is_read(tmp_path):
    project = _project(tmp_path)
    empty = project.sessionctl("kv", "import", "--prefix", "", ok=False)
    assert empty.returncode == 2 and empty.stderr.strip().splitlines()[-1].startswith("sessionctl: error: the KV prefix is empty")
    unknown = project.sessionctl("kv", "export", "--prefix", PREFIX, "--binding", "NOPE", ok=False)
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    assert "has no kv_namespaces entry bound as NOPE (bindings: SESSION_KV)" in unknown.stderr
    missing = project.sessionctl("kv", "import", ok=False)
    assert missing.returncode == 2 and "--prefix" in missing.stderr


def test_a_worker_under_wrangler_dev_reads_what_export_wrote_and_import_reads_what_it_wrote(tmp_path, d1_worker):
    # A bot project bound to the worker's KV namespace, its state where the worker persists it.
    project = _project(tmp_path, kv=f'id = "{d1_worker.kv_namespace_id}"', persist_to=d1_worker.persist_to)
    d1_worker.kv_wipe()
    now_ms = int(time.time()) * 1000
    _save(project, "tg:w", now=now_ms - 5_000, status="selecting", collected_info={"from": "d1"})
    d1_worker.kv_put(f"{PREFIX}tg:k", _camel("ordering", now_ms - 1_000, info={"from": "kv"}), expiration_ttl=3600)

    exported = project.transfer("export", "--prefix", PREFIX)
    imported = project.transfer("import", "--prefix", PREFIX)

    assert exported["keys"] == [f"{PREFIX}tg:w"]
    assert json.loads(d1_worker.kv_get(f"{PREFIX}tg:w"))["collectedInfo"] == {"from": "d1"}  # through the binding
    assert imported["keys"] == [f"{PREFIX}tg:k"]
    assert {row[0]: row[2] for row in project.rows()} == {"tg:k": '{"from":"kv"}', "tg:w": '{"from":"d1"}'}


def test_wrangler_dev_binds_the_preview_namespace_and_import_reads_the_one_it_binds(tmp_path):
    import tomllib

    from d1_worker_server import WORKER_DIR, running_d1_worker

    production = tomllib.loads((WORKER_DIR / "wrangler.toml").read_text(encoding="utf-8"))["kv_namespaces"][0]["id"]
    preview = "5e55105e55105e55105e55105e551003"
    with running_d1_worker(require_wrangler(), tmp_path / "dev", kv_preview_id=preview) as worker:
        worker.kv_put(f"{PREFIX}tg:dev", _camel("selecting", int(time.time()) * 1000), expiration_ttl=3600)
        # the Worker's binding wrote into the preview namespace's state, not the id's
        kv_root = worker.persist_to / "v3" / "kv"
        assert kv_state_files(kv_root, preview)[0].exists()
        assert not kv_state_files(kv_root, production)[0].exists()
        project = _project(tmp_path, kv=f'id = "{production}"\npreview_id = "{preview}"',
                           persist_to=worker.persist_to)

        assert project.transfer("import", "--prefix", PREFIX, "--no-preview")["written"] == 0
        assert project.transfer("import", "--prefix", PREFIX)["keys"] == [f"{PREFIX}tg:dev"]
