"""Interop with the real wrangler: both tools resolve the same SQLite file and the
same migration ledger, and each reads what the other wrote.

wrangler is the pinned npm package installed by `make wrangler` (tests/wrangler/package-lock.json)
into .cache/wrangler; `make test` passes its path in SESSIONCTL_TEST_WRANGLER. Without it these
tests FAIL, they never skip: the interop suite is part of CI.

Each wrangler command costs ~1.5 s, so wrangler runs only where it proves something, and the
checks of one project are combined in one test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import raw_sqlite
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sessionctl.repository import ServerSession, SessionStatus, save_server_session
from sessionctl.targets import open_sqlite_file
from sessionctl.targets.wrangler import durable_object_hex
from wrangler_tools import BOT_TOML, D1_SUBDIR, DB_NAME, REPO_ROOT, STATE_DIR, ZERO_ID, require_wrangler, wrangler_env

pytestmark = pytest.mark.wrangler

SESSIONCTL = Path(sys.executable).parent / "sessionctl"
SESSIONS_MIGRATION = "003_server_sessions_d1.sql"
SESSIONS_SQL = (REPO_ROOT / "migrations" / SESSIONS_MIGRATION).read_text(encoding="utf-8")
INIT_SQL = "CREATE TABLE IF NOT EXISTS conversations (chat_id TEXT PRIMARY KEY, updated_at INTEGER NOT NULL);\n"
SECOND_SQL = "CREATE TABLE IF NOT EXISTS user_prefs (user_id TEXT PRIMARY KEY, lang TEXT NOT NULL DEFAULT 'ko');\n"

FAR_FUTURE_MS = 32503680000000  # 3000-01-01

WORKER_JS = "export default { async fetch() { return new Response('ok'); } };\n"
TOML = BOT_TOML


# -- the two tools ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wrangler_bin() -> Path:
    return require_wrangler()


@pytest.fixture(scope="module")
def wrangler_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wrangler-logs")


@dataclass
class Wrangler:
    binary: Path
    logs: Path

    def __call__(self, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(self.binary), *args], cwd=cwd, env=wrangler_env(self.logs), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, encoding="utf-8", timeout=180,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"wrangler {' '.join(args)} (in {cwd}) exited {proc.returncode}\n"
                        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        return proc

    def pending(self, database: str, *extra: str, cwd: Path) -> list[str]:
        """``wrangler d1 migrations list --local``: the names it would apply ([] = nothing)."""
        out = self("d1", "migrations", "list", database, "--local", *extra, cwd=cwd).stdout
        if "No migrations to apply" in out:
            return []
        assert "Migrations to be applied:" in out, out
        return table_names(out)

    def apply(self, database: str, *extra: str, cwd: Path) -> list[str]:
        """``wrangler d1 migrations apply --local``: the names it applied (all must succeed)."""
        out = self("d1", "migrations", "apply", database, "--local", *extra, cwd=cwd).stdout
        if "No migrations to apply" in out:
            return []
        assert "Migrations to be applied:" in out and "❌" not in out, out
        return table_names(out.split("Migrations to be applied:", 1)[1].split("About to apply", 1)[0])

    def execute(self, database: str, sql: str, *extra: str, cwd: Path) -> list[list[dict]]:
        """``wrangler d1 execute --local --json --command SQL``: one list of rows per statement."""
        proc = self("d1", "execute", database, "--local", "--json", "--command", sql, *extra, cwd=cwd)
        results = json.loads(proc.stdout)
        assert all(result["success"] for result in results), results
        return [result["results"] for result in results]


def table_names(text: str) -> list[str]:
    """The ``*.sql`` names in wrangler's box-drawn tables, in order, once each."""
    return list(dict.fromkeys(re.findall(r"│\s*(\S+\.sql)\s*│", text)))


@pytest.fixture
def wrangler(wrangler_bin: Path, wrangler_logs: Path) -> Wrangler:
    return Wrangler(wrangler_bin, wrangler_logs)


def sessionctl(*args: object, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    """The installed console script as a real process, in the project folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONCTL_")}
    proc = subprocess.run(
        [str(SESSIONCTL), *map(str, args)], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, encoding="utf-8", timeout=60,
    )
    if ok and proc.returncode != 0:
        pytest.fail(f"sessionctl {' '.join(map(str, args))} (in {cwd}) exited {proc.returncode}\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


# -- the project template ---------------------------------------------------------------------


def make_project(tmp_path: Path, *, config: str | None = TOML, config_name: str = "wrangler.toml",
                 migrations_dir: str = "migrations", with_sessions: bool = True,
                 folder: str = "project") -> Path:
    """A wrangler project in ``tmp_path/folder``: config, worker, migrations (001 [+ 003])."""
    root = tmp_path / folder
    (root / "src").mkdir(parents=True)
    (root / "src" / "index.js").write_text(WORKER_JS)
    if config is not None:
        (root / config_name).write_text(config, encoding="utf-8")
    migrations = root / migrations_dir
    migrations.mkdir(parents=True, exist_ok=True)
    (migrations / "001_init.sql").write_text(INIT_SQL)
    if with_sessions:
        shutil.copyfile(REPO_ROOT / "migrations" / SESSIONS_MIGRATION, migrations / SESSIONS_MIGRATION)
    return root


def state_file(root: Path, database_id: str = ZERO_ID) -> Path:
    return root / STATE_DIR / f"{durable_object_hex(database_id)}.sqlite"


def d1_files(tmp_path: Path) -> set[Path]:
    """Every local D1 database file under tmp_path (wrangler's metadata.sqlite left out)."""
    return {p for p in tmp_path.rglob("*.sqlite") if p.name != "metadata.sqlite"}


def ledger(path: Path, table: str = "d1_migrations") -> list[tuple[int, str]]:
    conn = raw_sqlite.connect(path)
    try:
        return conn.execute(f"SELECT id, name FROM {table} ORDER BY id").fetchall()
    finally:
        conn.close()


def status_by_name(root: Path, *args: str, cwd: Path | None = None) -> dict[str, str]:
    proc = sessionctl(*args, "status", "--json", cwd=cwd or root)
    return {row["name"]: row["state"] for row in json.loads(proc.stdout)}


def verify_ok(root: Path, *args: str, cwd: Path | None = None) -> dict[str, dict]:
    proc = sessionctl(*args, "verify", "--json", cwd=cwd or root, ok=False)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"] is True, (proc.stdout, proc.stderr)
    return {check["name"]: check for check in report["checks"]}


# -- 1. sessionctl migrate, then wrangler ----------------------------------------------------------


def test_sessionctl_migrate_then_wrangler_sees_nothing_pending_and_the_schema(tmp_path, wrangler):
    root = make_project(tmp_path)
    proc = sessionctl("migrate", cwd=root)
    assert proc.stdout.splitlines() == ["applied 001_init.sql", f"applied {SESSIONS_MIGRATION}"]
    assert proc.stderr.splitlines() == [
        f"sessionctl: target: wrangler local D1 {DB_NAME} (binding DB) at {STATE_DIR / state_file(root).name}"
    ]
    created = state_file(root)
    assert d1_files(tmp_path) == {created}

    assert wrangler.pending(DB_NAME, cwd=root) == []
    table, index, rows = wrangler.execute(
        DB_NAME,
        # the seed's verification command, then the index, then the ledger as wrangler reads it
        "SELECT name FROM sqlite_master WHERE type='table' AND name='server_sessions'; "
        "SELECT name FROM sqlite_master WHERE type='index' AND name='idx_server_sessions_expires'; "
        "SELECT id, name FROM d1_migrations ORDER BY id",
        cwd=root,
    )
    assert table == [{"name": "server_sessions"}]
    assert index == [{"name": "idx_server_sessions_expires"}]
    assert rows == [{"id": 1, "name": "001_init.sql"}, {"id": 2, "name": SESSIONS_MIGRATION}]
    # wrangler opened sessionctl's file (adding its _cf_METADATA), and made no other database
    assert d1_files(tmp_path) == {created}
    assert (root / STATE_DIR / "metadata.sqlite").is_file()


# -- 2. wrangler apply, then sessionctl --------------------------------------------------------


def test_wrangler_apply_then_sessionctl_verify_and_status(tmp_path, wrangler):
    root = make_project(tmp_path)
    assert wrangler.apply(DB_NAME, cwd=root) == ["001_init.sql", SESSIONS_MIGRATION]
    assert d1_files(tmp_path) == {state_file(root)}

    checks = verify_ok(root)  # on wrangler's file, _cf_METADATA and all
    assert checks["ledger"]["detail"] == (
        f"d1_migrations records {SESSIONS_MIGRATION}; no checksum recorded (applied outside sessionctl)"
    )
    proc = sessionctl("status", "--json", cwd=root)
    rows = json.loads(proc.stdout)
    assert [(r["name"], r["state"]) for r in rows] == [("001_init.sql", "applied"), (SESSIONS_MIGRATION, "applied")]
    assert all(r["applied_at"] for r in rows)
    assert sessionctl("migrate", cwd=root).stdout == "nothing to apply: every migration is applied\n"
    proc = sessionctl("sessions", "stats", "--json", cwd=root)
    assert json.loads(proc.stdout)["total"] == 0


# -- 3. sessions both ways ------------------------------------------------------------------------

COLUMNS = "user_id, status, collected_info, last_recommendation, messages, created_at, updated_at, expires_at"


def test_sessions_saved_by_repository_read_by_wrangler_and_the_reverse(tmp_path, wrangler):
    root = make_project(tmp_path)
    sessionctl("migrate", cwd=root)
    path = state_file(root)

    db = open_sqlite_file(path)
    try:
        save_server_session(db, "user-kr", ServerSession(
            status=SessionStatus.RECOMMENDING,
            collected_info={"purpose": "서버 추천", "budget": {"max": 2_000_000, "currency": "KRW"},
                            "specs": {"cpu": {"cores": 16, "brand": "AMD"}, "disks": [{"type": "NVMe", "tb": 2}]},
                            "note": "quotes \" and \\ backslash\nnew line, emoji 🖥️"},
            last_recommendation={"model": "서버 추천 A", "parts": [["CPU", 1], ["RAM", 4]], "price": 1_850_000.5},
            messages=[{"role": "user", "content": "서버 추천 부탁해요"},
                      {"role": "assistant", "content": "예산이 얼마인가요?", "meta": {"step": 1, "tags": []}}],
        ))
        save_server_session(db, "user-empty", ServerSession())
        saved = db.query(f"SELECT {COLUMNS} FROM server_sessions ORDER BY user_id")
    finally:
        db.close()
    assert [row["user_id"] for row in saved] == ["user-empty", "user-kr"]
    assert "서버 추천" in saved[1]["collected_info"]  # stored as text, not \uXXXX escapes

    wrangler_info = {"purpose": "서버 추천", "nested": {"a": [1, 2, {"b": None}], "한글": "값"}}
    wrangler_messages = [{"role": "user", "content": "안녕하세요, 서버 추천해 주세요"}]
    now = 1_760_000_000_000
    sql_text = lambda value: "'" + json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("'", "''") + "'"
    _, read_back = wrangler.execute(
        DB_NAME,
        f"INSERT INTO server_sessions ({COLUMNS}) VALUES ('wr-user', 'selecting', {sql_text(wrangler_info)}, "
        f"NULL, {sql_text(wrangler_messages)}, {now}, {now}, {FAR_FUTURE_MS}); "
        f"SELECT {COLUMNS} FROM server_sessions WHERE user_id IN ('user-kr', 'user-empty') ORDER BY user_id",
        cwd=root,
    )
    assert read_back == saved  # identical raw values: the same text, the same integers

    listed = json.loads(sessionctl("sessions", "list", "--format", "json", cwd=root).stdout)
    by_user = {row["user_id"]: row for row in listed}
    assert set(by_user) == {"user-empty", "user-kr", "wr-user"}
    assert by_user["wr-user"]["collected_info"] == wrangler_info
    assert by_user["wr-user"]["messages"] == wrangler_messages
    assert by_user["wr-user"]["status"] == "selecting"
    assert by_user["wr-user"]["expires_at"] == FAR_FUTURE_MS
    assert by_user["user-kr"]["last_recommendation"]["model"] == "서버 추천 A"

    shown = json.loads(sessionctl("sessions", "show", "wr-user", "--json", cwd=root).stdout)
    assert shown == {"user_id": "wr-user", "status": "selecting", "collected_info": wrangler_info,
                     "last_recommendation": None, "messages": wrangler_messages,
                     "created_at": now, "updated_at": now, "expires_at": FAR_FUTURE_MS}
    table = sessionctl("sessions", "show", "wr-user", cwd=root).stdout
    assert "selecting" in table and "안녕하세요, 서버 추천해 주세요" in table and "EXPIRED" not in table


# -- 4. rollback, then wrangler ------------------------------------------------------------------


def test_rollback_then_wrangler_sees_003_pending_and_reapplies_it(tmp_path, wrangler):
    root = make_project(tmp_path)
    sessionctl("migrate", cwd=root)
    proc = sessionctl("rollback", "--yes", cwd=root)
    assert f"rolled back {SESSIONS_MIGRATION}" in proc.stdout

    assert wrangler.pending(DB_NAME, cwd=root) == [SESSIONS_MIGRATION]
    assert wrangler.apply(DB_NAME, cwd=root) == [SESSIONS_MIGRATION]
    assert ledger(state_file(root)) == [(1, "001_init.sql"), (3, SESSIONS_MIGRATION)]  # AUTOINCREMENT

    checks = verify_ok(root)
    assert "no checksum recorded" in checks["ledger"]["detail"]  # rollback removed sessionctl's checksum
    assert status_by_name(root) == {"001_init.sql": "applied", SESSIONS_MIGRATION: "applied"}
    assert d1_files(tmp_path) == {state_file(root)}


# -- 5. config variants: both tools on the same file and ledger -----------------------------------


@dataclass
class Variant:
    id: str
    files: dict[str, str]  # path in the project -> text
    state: str  # the database file, relative to the project
    database: str = DB_NAME  # wrangler's <database> argument
    args: tuple[str, ...] = ()  # options both tools take (--env, --persist-to)
    cwd: str = "."
    migrations_dir: str = "migrations"
    table: str = "d1_migrations"
    not_created: tuple[str, ...] = field(default=())  # files neither tool may create


def _hex_path(database_id: str, root: str = str(STATE_DIR)) -> str:
    return f"{root}/{durable_object_hex(database_id)}.sqlite"


JSONC = f"""\
// wrangler.jsonc for the bot
{{
  "name": "telegram-bot",
  "main": "src/index.js", /* the worker */
  "compatibility_date": "2024-09-23",
  "d1_databases": [
    {{
      "binding": "DB", // env.DB in the worker
      "database_name": "{DB_NAME}",
      "database_id": "11111111-1111-1111-1111-111111111111",
    }},
  ],
}}
"""

VARIANTS = [
    Variant(
        "wrangler.json",
        {"wrangler.json": json.dumps({
            "name": "telegram-bot", "main": "src/index.js", "compatibility_date": "2024-09-23",
            "d1_databases": [{"binding": "DB", "database_name": DB_NAME,
                              "database_id": "44444444-4444-4444-4444-444444444444"}]}, indent=2)},
        _hex_path("44444444-4444-4444-4444-444444444444"),
    ),
    Variant("wrangler.jsonc", {"wrangler.jsonc": JSONC}, _hex_path("11111111-1111-1111-1111-111111111111")),
    Variant(
        "env-staging",
        {"wrangler.toml": TOML + """
[env.staging]
name = "telegram-bot-staging"

[[env.staging.d1_databases]]
binding = "DB"
database_name = "telegram-conversations-staging"
database_id = "22222222-2222-2222-2222-222222222222"
"""},
        _hex_path("22222222-2222-2222-2222-222222222222"),
        database="telegram-conversations-staging",
        args=("--env", "staging"),
        not_created=(_hex_path(ZERO_ID),),
    ),
    Variant(
        "migrations_dir-and-table-from-subfolder",
        {"wrangler.toml": TOML + 'migrations_dir = "db/migrations"\nmigrations_table = "schema_migrations"\n'},
        _hex_path(ZERO_ID),
        cwd="src",
        migrations_dir="db/migrations",
        table="schema_migrations",
    ),
    Variant(
        "preview_database_id",
        {"wrangler.toml": TOML + 'preview_database_id = "33333333-3333-3333-3333-333333333333"\n'},
        _hex_path("33333333-3333-3333-3333-333333333333"),
        not_created=(_hex_path(ZERO_ID),),
    ),
    Variant(
        "binding-only",
        {"wrangler.toml": TOML.replace(f'database_id = "{ZERO_ID}"\n', "")},
        _hex_path("DB"),
    ),
    Variant(
        "persist-to-from-subfolder",
        {"wrangler.toml": TOML},
        _hex_path(ZERO_ID, f"persist/{D1_SUBDIR}"),
        args=("--persist-to", "../persist"),
        cwd="src",
        not_created=(_hex_path(ZERO_ID),),
    ),
    Variant(
        "wrangler.json-above-beats-wrangler.toml-here",
        {"wrangler.json": json.dumps({
            "name": "telegram-bot", "compatibility_date": "2024-09-23",
            "d1_databases": [{"binding": "DB", "database_name": DB_NAME,
                              "database_id": "55555555-5555-5555-5555-555555555555"}]}),
         "app/wrangler.toml": TOML},
        _hex_path("55555555-5555-5555-5555-555555555555"),
        cwd="app",
        not_created=(f"app/{_hex_path(ZERO_ID)}",),
    ),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_config_variant_both_tools_share_file_and_ledger(tmp_path, wrangler, variant):
    """sessionctl creates the file and applies 001; wrangler applies exactly 002 there;
    sessionctl applies exactly 003; wrangler then has nothing to apply. Each step fails if
    either tool resolved another file, another ledger table or another migrations folder."""
    root = make_project(tmp_path, config=None, migrations_dir=variant.migrations_dir, with_sessions=False)
    for name, text in variant.files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    cwd = root / variant.cwd
    migrations = root / variant.migrations_dir
    expected = root / variant.state

    proc = sessionctl(*variant.args, "migrate", cwd=cwd)
    assert proc.stdout.splitlines() == ["applied 001_init.sql"]
    shown = expected.relative_to(cwd) if expected.is_relative_to(cwd) else expected
    assert proc.stderr.splitlines() == [
        f"sessionctl: target: wrangler local D1 {variant.database} "
        f"(binding DB{', env staging' if variant.args[:1] == ('--env',) else ''}) at {shown}",
        # 003 joins the folder later in this test; until then sessionctl points to the seed's copy.
        f"sessionctl: note: {SESSIONS_MIGRATION} is not in {migrations}; copy it there from "
        f"{REPO_ROOT / 'migrations' / SESSIONS_MIGRATION}",
    ]
    assert d1_files(tmp_path) == {expected}

    (migrations / "002_user_prefs.sql").write_text(SECOND_SQL)
    assert wrangler.apply(variant.database, *variant.args, cwd=cwd) == ["002_user_prefs.sql"]

    shutil.copyfile(REPO_ROOT / "migrations" / SESSIONS_MIGRATION, migrations / SESSIONS_MIGRATION)
    assert sessionctl(*variant.args, "migrate", cwd=cwd).stdout.splitlines() == [f"applied {SESSIONS_MIGRATION}"]
    assert wrangler.pending(variant.database, *variant.args, cwd=cwd) == []

    assert ledger(expected, variant.table) == [(1, "001_init.sql"), (2, "002_user_prefs.sql"), (3, SESSIONS_MIGRATION)]
    verify_ok(root, *variant.args, cwd=cwd)
    assert d1_files(tmp_path) == {expected}
    for name in variant.not_created:
        assert not (root / name).exists(), name


# -- ordering: 9 before 10 ------------------------------------------------------------------------


def test_numeric_order_9_before_10_as_wrangler_applies(tmp_path, wrangler):
    ours = make_project(tmp_path, folder="sessionctl-project", with_sessions=False)
    theirs = make_project(tmp_path, folder="wrangler-project", with_sessions=False)
    for root in (ours, theirs):
        (root / "migrations" / "001_init.sql").unlink()
        (root / "migrations" / "9_b.sql").write_text("CREATE TABLE b (x INTEGER);\n")
        # fails unless 9_b.sql ran first: a name sort ("10_a" < "9_b") would break it
        (root / "migrations" / "10_a.sql").write_text("INSERT INTO b (x) VALUES (10);\n")

    assert sessionctl("migrate", cwd=ours).stdout.splitlines() == ["applied 9_b.sql", "applied 10_a.sql"]
    assert wrangler.apply(DB_NAME, cwd=theirs) == ["9_b.sql", "10_a.sql"]
    assert ledger(state_file(ours)) == ledger(state_file(theirs)) == [(1, "9_b.sql"), (2, "10_a.sql")]
    assert status_by_name(theirs) == {"9_b.sql": "applied", "10_a.sql": "applied"}
