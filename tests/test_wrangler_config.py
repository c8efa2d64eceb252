"""wrangler projects without wrangler: config discovery and parsing, D1 binding selection,
where the local state file is, and every bad input with its exit code and its one line.

The places where they were checked against the real wrangler 4.86.0 are noted. The interop
proofs (real wrangler reading what sessionctl wrote and the reverse) live in
test_wrangler_interop.py; this module is fast and needs no node.

Every command runs in-process through the Typer app with the working directory set by
monkeypatch (the conftest's autouse fixture already chdirs into tmp_path and clears
SESSIONCTL_* variables).
"""

from __future__ import annotations

import json
import sqlite3
import raw_sqlite
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sessionctl.targets.wrangler import CONFIG_NAMES, durable_object_hex
from wrangler_tools import BOT_TOML, D1_SUBDIR, STATE_DIR, ZERO_ID

REPO_ROOT = Path(__file__).resolve().parents[1]
SESSIONS_MIGRATION = "003_server_sessions_d1.sql"
SESSIONS_SQL = (REPO_ROOT / "migrations" / SESSIONS_MIGRATION).read_text(encoding="utf-8")
INIT_SQL = "CREATE TABLE IF NOT EXISTS conversations (chat_id TEXT PRIMARY KEY, updated_at INTEGER NOT NULL);\n"

ZERO_HEX = "9ba2b04bf514d9facfd57ed57d849e77241a7adc99d1c1545d06688b43d84248"  # checked with wrangler 4.86.0
DB_HEX = "e7352547963de7050bd7d94658afc4fe78b61811b7815da12d90be8e863abf4d"  # binding "DB", no ids
OTHER_ID = "11111111-1111-1111-1111-111111111111"
STAGING_ID = "22222222-2222-2222-2222-222222222222"
PREVIEW_ID = "33333333-3333-3333-3333-333333333333"
PERSIST_SUBDIR = D1_SUBDIR

TOML = BOT_TOML

JSONC = f"""\
// wrangler.jsonc: comments and trailing commas are allowed here
{{
  "name": "telegram-bot", /* block comment */
  "main": "src/index.js",
  "compatibility_date": "2024-09-23",
  "d1_databases": [
    {{
      "binding": "DB", // the bot's binding
      "database_name": "telegram-conversations",
      "database_id": "{OTHER_ID}",
    }},
  ],
}}
"""


def toml_config(*entries: dict[str, str], extra: str = "") -> str:
    """A wrangler.toml with these [[d1_databases]] entries (values are strings)."""
    text = 'name = "telegram-bot"\nmain = "src/index.js"\ncompatibility_date = "2024-09-23"\n'
    for entry in entries:
        text += "\n[[d1_databases]]\n" + "".join(f'{k} = "{v}"\n' for k, v in entry.items())
    return text + extra


def json_config(*entries: dict[str, str]) -> str:
    return json.dumps(
        {"name": "telegram-bot", "main": "src/index.js", "compatibility_date": "2024-09-23",
         "d1_databases": list(entries)},
        indent=2,
    )


def make_project(root: Path, config_text: str = TOML, config_name: str = "wrangler.toml",
                 migrations_dir: str = "migrations") -> Path:
    """A wrangler project: the config, src/index.js, and migrations 001 + 003. Returns the config."""
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "src" / "index.js").write_text("export default { fetch() { return new Response('ok'); } };\n")
    folder = root / migrations_dir
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "001_init.sql").write_text(INIT_SQL)
    (folder / SESSIONS_MIGRATION).write_text(SESSIONS_SQL)
    config = root / config_name
    config.write_text(config_text, encoding="utf-8")
    return config


def state_file(root: Path, hex_name: str = ZERO_HEX) -> Path:
    return root / STATE_DIR / f"{hex_name}.sqlite"


def sqlite_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*.sqlite")}


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch):
    """``run(*args, cwd=None, env=None)``: sessionctl in-process; .exit_code, .stdout, .stderr."""
    runner = CliRunner()

    def invoke(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None):
        from sessionctl.cli import app

        if cwd is not None:
            monkeypatch.chdir(cwd)
        return runner.invoke(app, [str(a) for a in args], env=env, prog_name="sessionctl")

    return invoke


def target_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("sessionctl: target: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def assert_ok(result) -> None:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stderr


def assert_error(result, code: int) -> str:
    """Exit ``code``, nothing on stdout, one ``sessionctl: error: ...`` line on stderr (besides the target line)."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("sessionctl: target: ")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sessionctl: error: "), result.stderr
    return lines[0].removeprefix("sessionctl: error: ")


def ledger_names(path: Path, table: str = "d1_migrations") -> list[str]:
    conn = raw_sqlite.connect(path)
    try:
        return [name for (name,) in conn.execute(f"SELECT name FROM {table} ORDER BY id")]
    finally:
        conn.close()


def table_names(path: Path) -> set[str]:
    conn = raw_sqlite.connect(path)
    try:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


# -- the local state file's name --------------------------------------------------------------


def test_durable_object_hex_matches_wrangler_file_names():
    assert durable_object_hex(ZERO_ID) == ZERO_HEX
    assert durable_object_hex("DB") == DB_HEX
    assert durable_object_hex(OTHER_ID) == "c917712ba74c5102d69ecf1555a42fe4d03ba423fee62c633ac82b645ae953eb"
    assert len({durable_object_hex(x) for x in (ZERO_ID, OTHER_ID, "DB", "db")}) == 4


@pytest.mark.parametrize(
    ("entry", "expected_hex"),
    [
        pytest.param({"binding": "DB", "database_name": "telegram-conversations", "database_id": ZERO_ID,
                      "preview_database_id": PREVIEW_ID}, durable_object_hex(PREVIEW_ID), id="preview_database_id"),
        pytest.param({"binding": "DB", "database_name": "telegram-conversations", "database_id": ZERO_ID},
                     ZERO_HEX, id="database_id"),
        pytest.param({"binding": "DB", "database_name": "telegram-conversations"}, DB_HEX, id="binding"),
    ],
)
def test_state_file_named_from_preview_id_then_database_id_then_binding(run, tmp_path, entry, expected_hex):
    make_project(tmp_path, toml_config(entry))
    result = run("--local", "migrate")
    assert_ok(result)
    assert sqlite_files(tmp_path) == {state_file(tmp_path, expected_hex)}


# -- the default target and the target line ---------------------------------------------------


def test_migrate_local_on_fresh_project_creates_the_file_where_wrangler_looks(run, tmp_path):
    make_project(tmp_path)
    assert not (tmp_path / ".wrangler").exists()
    result = run("--local", "migrate")
    assert_ok(result)
    assert result.stdout.splitlines() == ["applied 001_init.sql", f"applied {SESSIONS_MIGRATION}"]
    expected = state_file(tmp_path)
    assert result.stderr.splitlines() == [
        f"sessionctl: target: wrangler local D1 telegram-conversations (binding DB) at {STATE_DIR / (ZERO_HEX + '.sqlite')}"
    ]
    assert expected.is_file()
    assert sqlite_files(tmp_path) == {expected}  # nothing beside it: no metadata.sqlite, no _cf_ tables
    assert not {name for name in table_names(expected) if name.startswith("_cf_")}
    conn = raw_sqlite.connect(expected)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert ledger_names(expected) == ["001_init.sql", SESSIONS_MIGRATION]


def test_wrangler_local_state_is_the_default_target_without_local(run, tmp_path):
    make_project(tmp_path)
    assert_ok(run("migrate"))
    result = run("status", "--json")
    assert_ok(result)
    assert target_line(result) == (
        f"sessionctl: target: wrangler local D1 telegram-conversations (binding DB) at {STATE_DIR / (ZERO_HEX + '.sqlite')}"
    )
    assert [row["state"] for row in json.loads(result.stdout)] == ["applied", "applied"]
    assert not (tmp_path / "sessions.db").exists()


def test_project_without_d1_and_no_wrangler_option_keeps_the_plain_default(run, tmp_path):
    make_project(tmp_path, 'name = "telegram-bot"\nmain = "src/index.js"\n')
    result = run("migrate")
    assert_ok(result)
    assert target_line(result) == "sessionctl: target: sqlite file sessions.db (default; wrangler.toml has no d1_databases)"
    assert (tmp_path / "sessions.db").is_file()
    assert not (tmp_path / ".wrangler").exists()


# -- finding the config -----------------------------------------------------------------------


def test_config_found_upward_from_a_subfolder_state_and_migrations_beside_it(run, tmp_path):
    make_project(tmp_path)
    deep = tmp_path / "src" / "handlers"
    deep.mkdir(parents=True)
    (deep / "migrations").mkdir()  # a decoy: migrations_dir is relative to the config, not the cwd
    (deep / "migrations" / "999_decoy.sql").write_text("CREATE TABLE decoy (x);\n")
    result = run("migrate", cwd=deep)
    assert_ok(result)
    expected = state_file(tmp_path)
    assert target_line(result) == (
        f"sessionctl: target: wrangler local D1 telegram-conversations (binding DB) at {expected}"
    )
    assert sqlite_files(tmp_path) == {expected}
    assert ledger_names(expected) == ["001_init.sql", SESSIONS_MIGRATION]


@pytest.mark.parametrize(
    ("present", "winner"),
    [
        (("wrangler.json", "wrangler.jsonc", "wrangler.toml"), "wrangler.json"),
        (("wrangler.jsonc", "wrangler.toml"), "wrangler.jsonc"),
        (("wrangler.json", "wrangler.toml"), "wrangler.json"),
        (("wrangler.toml",), "wrangler.toml"),
    ],
)
def test_json_beats_jsonc_beats_toml_in_one_folder(run, tmp_path, present, winner):
    make_project(tmp_path, "")
    ids = {"wrangler.json": OTHER_ID, "wrangler.jsonc": STAGING_ID, "wrangler.toml": ZERO_ID}
    for name in present:
        entry = {"binding": "DB", "database_name": "telegram-conversations", "database_id": ids[name]}
        (tmp_path / name).write_text(toml_config(entry) if name.endswith(".toml") else json_config(entry))
    assert_ok(run("migrate"))
    assert sqlite_files(tmp_path) == {state_file(tmp_path, durable_object_hex(ids[winner]))}


def test_nearest_folder_wins_for_the_same_file_name(run, tmp_path):
    make_project(tmp_path, toml_config({"binding": "DB", "database_id": OTHER_ID}))
    child = tmp_path / "bot"
    make_project(child)  # wrangler.toml with ZERO_ID
    result = run("migrate", cwd=child)
    assert_ok(result)
    assert sqlite_files(tmp_path) == {state_file(child)}


def test_wrangler_json_above_beats_wrangler_toml_here(run, tmp_path):
    """wrangler 4 runs findUp per name: json all the way up, then jsonc, then toml.

    Checked against wrangler 4.86.0 (and proved in test_wrangler_interop.py): from a
    folder holding wrangler.toml under a parent holding wrangler.json, wrangler uses
    the parent's wrangler.json and its .wrangler state.
    """
    make_project(tmp_path, json_config({"binding": "DB", "database_name": "telegram-conversations",
                                        "database_id": OTHER_ID}), "wrangler.json")
    child = tmp_path / "bot"
    make_project(child)  # wrangler.toml with ZERO_ID
    result = run("migrate", cwd=child)
    assert_ok(result)
    assert sqlite_files(tmp_path) == {state_file(tmp_path, durable_object_hex(OTHER_ID))}


def test_config_option_names_the_config_and_its_folder(run, tmp_path):
    make_project(tmp_path, toml_config({"binding": "DB", "database_id": OTHER_ID}))  # ignored
    elsewhere = tmp_path / "deploy" / "bot"
    config = make_project(elsewhere)
    for args in (("--config", config), ("-c", Path("deploy/bot/wrangler.toml"))):
        result = run(*args, "migrate", cwd=tmp_path)
        assert_ok(result)
        assert target_line(result).endswith(f" at {Path('deploy/bot') / STATE_DIR / (ZERO_HEX + '.sqlite')}")
    assert sqlite_files(tmp_path) == {state_file(elsewhere)}
    assert ledger_names(state_file(elsewhere)) == ["001_init.sql", SESSIONS_MIGRATION]


def test_config_option_missing_file(run, tmp_path):
    message = assert_error(run("--config", "nowhere/wrangler.toml", "status"), 2)
    assert message == "wrangler config not found: nowhere/wrangler.toml"


# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "database_id"),
    [
        ("wrangler.toml", TOML, ZERO_ID),
        ("wrangler.json", json_config({"binding": "DB", "database_name": "telegram-conversations",
                                       "database_id": STAGING_ID}), STAGING_ID),
        ("wrangler.jsonc", JSONC, OTHER_ID),
    ],
)
def test_toml_json_and_jsonc_with_comments_and_trailing_commas(run, tmp_path, name, text, database_id):
    make_project(tmp_path, text, name)
    result = run("migrate")
    assert_ok(result)
    assert "wrangler local D1 telegram-conversations (binding DB)" in target_line(result)
    assert sqlite_files(tmp_path) == {state_file(tmp_path, durable_object_hex(database_id))}


@pytest.mark.parametrize(("name", "text"), [("wrangler.toml", TOML), ("wrangler.jsonc", JSONC)])
def test_utf8_byte_order_mark_is_accepted_as_by_wrangler(run, tmp_path, name, text):
    """wrangler 4.86.0 strips a UTF-8 BOM (removeBOMAndValidate); checked by hand against it."""
    config = make_project(tmp_path, "", name)
    config.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    result = run("migrate")
    assert_ok(result)
    assert "wrangler local D1 telegram-conversations (binding DB)" in target_line(result)


def test_jsonc_non_ascii_and_migrations_keys(run, tmp_path):
    text = """{
  // 봇 설정 (the bot's config)
  "name": "telegram-bot",
  "d1_databases": [
    { "binding": "DB", "database_name": "telegram-conversations", "database_id": "%s",
      "migrations_dir": "db/migrations", /* relative to this file */
      "migrations_table": "schema_migrations", },
  ],
}
""" % ZERO_ID
    make_project(tmp_path, text, "wrangler.jsonc", migrations_dir="db/migrations")
    assert_ok(run("migrate"))
    assert ledger_names(state_file(tmp_path), "schema_migrations") == ["001_init.sql", SESSIONS_MIGRATION]


# -- choosing the D1 entry --------------------------------------------------------------------

TWO_DATABASES = toml_config(
    {"binding": "ANALYTICS", "database_name": "analytics", "database_id": OTHER_ID},
    {"binding": "DB", "database_name": "telegram-conversations", "database_id": ZERO_ID},
)


@pytest.mark.parametrize(
    ("args", "expected_hex", "label"),
    [
        ((), ZERO_HEX, "telegram-conversations (binding DB)"),  # several entries: the one bound as DB
        (("--database", "DB"), ZERO_HEX, "telegram-conversations (binding DB)"),
        (("--database", "telegram-conversations"), ZERO_HEX, "telegram-conversations (binding DB)"),
        (("--database", "ANALYTICS"), durable_object_hex(OTHER_ID), "analytics (binding ANALYTICS)"),
        (("--database", "analytics"), durable_object_hex(OTHER_ID), "analytics (binding ANALYTICS)"),
    ],
)
def test_database_by_binding_or_name_default_db(run, tmp_path, args, expected_hex, label):
    make_project(tmp_path, TWO_DATABASES)
    result = run(*args, "migrate")
    assert_ok(result)
    assert target_line(result).startswith(f"sessionctl: target: wrangler local D1 {label} at ")
    assert sqlite_files(tmp_path) == {state_file(tmp_path, expected_hex)}


def test_the_only_entry_is_the_default_whatever_its_binding(run, tmp_path):
    make_project(tmp_path, toml_config({"binding": "SESSIONS", "database_name": "sessions-db",
                                        "database_id": OTHER_ID}))
    result = run("migrate")
    assert_ok(result)
    assert "wrangler local D1 sessions-db (binding SESSIONS)" in target_line(result)
    assert sqlite_files(tmp_path) == {state_file(tmp_path, durable_object_hex(OTHER_ID))}


def test_several_entries_none_bound_as_db_must_be_chosen(run, tmp_path):
    config = make_project(tmp_path, toml_config(
        {"binding": "A", "database_name": "alpha", "database_id": OTHER_ID},
        {"binding": "B", "database_name": "beta", "database_id": ZERO_ID},
    ))
    message = assert_error(run("migrate"), 2)
    assert message == f"{config} has several D1 databases; choose one with --database: A (alpha), B (beta)"
    assert not (tmp_path / ".wrangler").exists()


def test_unknown_database_lists_the_choices(run, tmp_path):
    config = make_project(tmp_path, TWO_DATABASES)
    message = assert_error(run("--database", "nope", "status"), 2)
    assert message == (
        f"--database 'nope' is not a binding or database_name in {config}; "
        "choose one of: ANALYTICS (analytics), DB (telegram-conversations)"
    )
    assert not (tmp_path / ".wrangler").exists()


def test_ambiguous_database_lists_the_choices(run, tmp_path):
    config = make_project(tmp_path, toml_config(
        {"binding": "DB", "database_name": "main", "database_id": ZERO_ID},
        {"binding": "main", "database_name": "archive", "database_id": OTHER_ID},
    ))
    message = assert_error(run("--database", "main", "migrate"), 2)
    assert message == (
        f"--database 'main' is ambiguous in {config}; choose one of: DB (main), main (archive)"
    )
    assert not (tmp_path / ".wrangler").exists()


# -- environments -----------------------------------------------------------------------------

WITH_ENVS = TOML + f"""
[env.staging]
name = "telegram-bot-staging"

[[env.staging.d1_databases]]
binding = "DB"
database_name = "telegram-conversations-staging"
database_id = "{STAGING_ID}"
migrations_dir = "migrations-staging"

[env.production]
name = "telegram-bot-production"
vars = {{ LOG_LEVEL = "warn" }}
"""


def test_env_reads_its_own_d1_databases(run, tmp_path):
    make_project(tmp_path, WITH_ENVS)
    staging_migrations = tmp_path / "migrations-staging"
    staging_migrations.mkdir()
    (staging_migrations / SESSIONS_MIGRATION).write_text(SESSIONS_SQL)
    for args in (("--env", "staging"), ("-e", "staging"), ("--env", "staging", "--database", "telegram-conversations-staging")):
        result = run(*args, "migrate")
        assert_ok(result)
        assert target_line(result).startswith(
            "sessionctl: target: wrangler local D1 telegram-conversations-staging (binding DB, env staging) at "
        )
    expected = state_file(tmp_path, durable_object_hex(STAGING_ID))
    assert sqlite_files(tmp_path) == {expected}  # not the top-level database's file
    assert ledger_names(expected) == [SESSIONS_MIGRATION]  # migrations_dir of the env entry


def test_cloudflare_env_chooses_the_environment_as_wrangler_does(run, tmp_path):
    make_project(tmp_path, WITH_ENVS)
    (tmp_path / "migrations-staging").mkdir()
    (tmp_path / "migrations-staging" / SESSIONS_MIGRATION).write_text(SESSIONS_SQL)
    result = run("migrate", env={"CLOUDFLARE_ENV": "staging"})
    assert_ok(result)
    assert "(binding DB, env staging)" in target_line(result)
    assert sqlite_files(tmp_path) == {state_file(tmp_path, durable_object_hex(STAGING_ID))}


def test_env_option_beats_cloudflare_env_and_an_empty_env_is_the_top_level(run, tmp_path):
    make_project(tmp_path, WITH_ENVS)
    result = run("--env", "", "migrate", env={"CLOUDFLARE_ENV": "staging"})
    assert_ok(result)
    assert target_line(result).startswith("sessionctl: target: wrangler local D1 telegram-conversations (binding DB) at ")
    assert sqlite_files(tmp_path) == {state_file(tmp_path)}
    assert_ok(run("--env", "", "status"))  # the top level, with no variable at all


def test_cloudflare_env_is_ignored_for_a_plain_sqlite_file(run, tmp_path):
    make_project(tmp_path, WITH_ENVS)
    result = run("--db", tmp_path / "plain.db", "migrate", env={"CLOUDFLARE_ENV": "staging"})
    assert_ok(result)
    assert (tmp_path / "plain.db").exists() and sqlite_files(tmp_path) == set()  # no local D1 state made


def test_env_without_d1_databases_does_not_inherit_the_top_level(run, tmp_path):
    config = make_project(tmp_path, WITH_ENVS)
    for args in (("--env", "production", "status"), ("--env", "production", "--local", "migrate")):
        message = assert_error(run(*args), 2)
        assert message == f"{config} [env.production] has no d1_databases"
    assert not (tmp_path / ".wrangler").exists()


def test_env_database_must_be_the_env_entry(run, tmp_path):
    """As in wrangler, the top level's entry is not visible from --env staging."""
    config = make_project(tmp_path, TOML + f"""
[[env.staging.d1_databases]]
binding = "STAGING_DB"
database_name = "staging-conversations"
database_id = "{STAGING_ID}"
""")
    message = assert_error(run("--env", "staging", "--database", "telegram-conversations", "status"), 2)
    assert message == (
        f"--database 'telegram-conversations' is not a binding or database_name in {config} [env.staging]; "
        "choose one of: STAGING_DB (staging-conversations)"
    )


def test_unknown_env_lists_the_environments(run, tmp_path):
    config = make_project(tmp_path, WITH_ENVS)
    message = assert_error(run("--env", "qa", "status"), 2)
    assert message == f"no environment 'qa' in {config} (environments: production, staging)"
    assert not (tmp_path / ".wrangler").exists()


def test_an_env_in_a_config_that_defines_none_uses_the_top_level_with_a_warning_as_wrangler_does(run, tmp_path):
    config = make_project(tmp_path, TOML)
    result = run("--env", "qa", "migrate")
    assert result.exit_code == 0, result.stderr
    assert (f"sessionctl: warning: no environment 'qa' in {config}, which defines none: using its top level "
            "(as wrangler does)") in result.stderr.splitlines()
    assert state_file(tmp_path).exists()


# -- migrations_dir and migrations_table ----------------------------------------------------------


def test_migrations_dir_relative_to_config_and_migrations_table_is_the_ledger(run, tmp_path):
    make_project(tmp_path, toml_config({
        "binding": "DB", "database_name": "telegram-conversations", "database_id": ZERO_ID,
        "migrations_dir": "db/migrations", "migrations_table": "schema_migrations",
    }), migrations_dir="db/migrations")
    (tmp_path / "migrations").mkdir()  # a decoy beside the config: not the configured folder
    (tmp_path / "migrations" / "999_decoy.sql").write_text("CREATE TABLE decoy (x);\n")
    sub = tmp_path / "src"
    result = run("migrate", cwd=sub)
    assert_ok(result)
    assert result.stdout.splitlines() == ["applied 001_init.sql", f"applied {SESSIONS_MIGRATION}"]
    db = state_file(tmp_path)
    assert ledger_names(db, "schema_migrations") == ["001_init.sql", SESSIONS_MIGRATION]
    assert "d1_migrations" not in table_names(db)
    assert "decoy" not in table_names(db)

    status = run("status", "--json", cwd=sub)
    assert_ok(status)
    assert [(r["name"], r["state"]) for r in json.loads(status.stdout)] == [
        ("001_init.sql", "applied"), (SESSIONS_MIGRATION, "applied"),
    ]
    verify = run("verify", "--json", cwd=sub)
    assert_ok(verify)
    checks = {c["name"]: c for c in json.loads(verify.stdout)["checks"]}
    assert checks["ledger"]["ok"] and "schema_migrations records" in checks["ledger"]["detail"]


# -- --persist-to ----------------------------------------------------------------------------


def test_persist_to_is_relative_to_the_working_directory(run, tmp_path):
    make_project(tmp_path)
    sub = tmp_path / "src"
    result = run("--persist-to", "../wrangler-state", "migrate", cwd=sub)
    assert_ok(result)
    expected = tmp_path / "wrangler-state" / PERSIST_SUBDIR / f"{ZERO_HEX}.sqlite"
    assert target_line(result) == (
        f"sessionctl: target: wrangler local D1 telegram-conversations (binding DB) at {expected}"
    )
    assert sqlite_files(tmp_path) == {expected}
    assert not (tmp_path / ".wrangler").exists()

    result = run("--persist-to", "state", "--local", "migrate", cwd=tmp_path)
    assert_ok(result)
    assert target_line(result).endswith(f" at {Path('state') / PERSIST_SUBDIR / (ZERO_HEX + '.sqlite')}")
    assert (tmp_path / "state" / PERSIST_SUBDIR / f"{ZERO_HEX}.sqlite").is_file()


# -- bad input: exact exit code, one line ---------------------------------------------------------


def test_local_without_any_config(run, tmp_path):
    message = assert_error(run("--local", "status"), 2)
    assert message == (
        f"no wrangler config ({', '.join(CONFIG_NAMES)}) in {tmp_path} or above for --local; "
        "pass --config PATH, or --db PATH for a plain SQLite file"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", [("--database", "DB"), ("--env", "staging"), ("--persist-to", "state")])
def test_other_wrangler_options_without_any_config(run, tmp_path, option):
    message = assert_error(run(*option, "migrate"), 2)
    assert message.startswith(f"no wrangler config ({', '.join(CONFIG_NAMES)}) in {tmp_path} or above for {option[0]};")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("wrangler.toml", 'name = "telegram-bot"\ncompatibility_date = "2024-09-23"\n'),
        ("wrangler.jsonc", '{\n  // no D1 here\n  "name": "telegram-bot",\n  "kv_namespaces": [],\n}\n'),
    ],
)
def test_config_without_d1_databases_with_local(run, tmp_path, name, text):
    config = make_project(tmp_path, text, name)
    message = assert_error(run("--local", "migrate"), 2)
    assert message == f"{config} has no d1_databases"
    assert not (tmp_path / ".wrangler").exists()
    assert not (tmp_path / "sessions.db").exists()


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("wrangler.toml", TOML.replace("[[d1_databases]]", "[[d1_databases]"), 5),
        ("wrangler.toml", TOML + 'migrations_dir = "unterminated\n', 9),
        ("wrangler.jsonc", JSONC.replace('"database_name"', '"database_name" "x"'), 9),
        ("wrangler.jsonc", JSONC.rstrip().removesuffix("}"), 13),
        ("wrangler.json", '{\n  "name": "telegram-bot"\n  "main": "src/index.js"\n}\n', 3),
    ],
    ids=["toml-table-header", "toml-string", "jsonc-missing-colon", "jsonc-truncated", "json-missing-comma"],
)
def test_malformed_config_names_the_file_and_the_line(run, tmp_path, name, text, line):
    config = make_project(tmp_path, text, name)
    for args in (("status",), ("--local", "sessions", "list")):
        message = assert_error(run(*args), 2)
        assert message.startswith(f"{config}: invalid {'TOML' if name.endswith('.toml') else 'JSON'}: "), message
        assert f"line {line}" in message, message
    assert not (tmp_path / ".wrangler").exists()


@pytest.mark.parametrize(
    "command",
    [("status",), ("sessions", "list"), ("sessions", "show", "u1"), ("sessions", "stats"), ("verify",)],
    ids=lambda c: " ".join(c),
)
@pytest.mark.parametrize("local", [True, False], ids=["--local", "default"])
def test_read_command_on_missing_local_state_exits_3_and_creates_nothing(run, tmp_path, command, local):
    make_project(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    message = assert_error(run(*(("--local",) if local else ()), *command), 3)
    assert message == (
        f"database not found: {state_file(tmp_path)} "
        "(`sessionctl migrate` creates it; nothing was created)"
    )
    assert not (tmp_path / ".wrangler").exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    ("args", "env", "combined"),
    [
        (("--db", "x.db", "--local"), None, "--local"),
        (("--db", "x.db", "--config", "wrangler.toml", "--database", "DB"), None, "--config, --database"),
        (("--db", "x.db", "--env", "staging", "--persist-to", "s"), None, "--env, --persist-to"),
    ],
)
def test_db_cannot_be_combined_with_wrangler_options(run, tmp_path, args, env, combined):
    make_project(tmp_path)
    message = assert_error(run(*args, "migrate", env=env), 2)
    assert message == f"--db (or SESSIONCTL_DB) cannot be combined with {combined}"
    assert not (tmp_path / "x.db").exists()
    assert not (tmp_path / ".wrangler").exists()


def test_explicit_local_overrides_sessionctl_db_from_the_environment(run, tmp_path):
    make_project(tmp_path)
    result = run("--local", "migrate", env={"SESSIONCTL_DB": "x.db"})
    assert_ok(result)
    assert target_line(result).startswith("sessionctl: target: wrangler local D1 telegram-conversations")
    assert state_file(tmp_path).exists()
    assert not (tmp_path / "x.db").exists()


def test_db_alone_in_a_wrangler_project_uses_the_plain_file(run, tmp_path):
    make_project(tmp_path)
    result = run("--db", "plain.db", "migrate")
    assert_ok(result)
    assert target_line(result) == "sessionctl: target: sqlite file plain.db"
    assert not (tmp_path / ".wrangler").exists()


# -- D1's own tables -------------------------------------------------------------------------


def test_cf_metadata_is_ignored_by_verify_status_and_stats(run, tmp_path):
    make_project(tmp_path)
    assert_ok(run("--local", "migrate"))
    conn = raw_sqlite.connect(state_file(tmp_path), isolation_level=None)
    try:  # as workerd's D1 creates it
        conn.execute("CREATE TABLE _cf_METADATA (\n        key INTEGER PRIMARY KEY,\n        value BLOB\n      )")
        conn.execute("INSERT INTO _cf_METADATA VALUES (2, 4)")
        conn.execute("CREATE TABLE _cf_KV (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID")
    finally:
        conn.close()

    verify = run("--local", "verify", "--json")
    assert_ok(verify)
    report = json.loads(verify.stdout)
    assert report["ok"] is True, report
    assert not any("_cf_" in check["detail"] for check in report["checks"])

    stats = run("--local", "sessions", "stats", "--json")
    assert_ok(stats)
    assert json.loads(stats.stdout)["total"] == 0

    status = run("--local", "status", "--json")
    assert_ok(status)
    assert [row["name"] for row in json.loads(status.stdout)] == ["001_init.sql", SESSIONS_MIGRATION]

    assert_ok(run("--local", "migrate"))  # nothing to apply; D1's tables untouched
    conn = raw_sqlite.connect(state_file(tmp_path))
    try:
        assert conn.execute("SELECT key, value FROM _cf_METADATA").fetchall() == [(2, 4)]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('migrations_dir = 5', "d1_databases[0].migrations_dir must be a string, got 5"),
        ('migrations_table = ["x"]', "d1_databases[0].migrations_table must be a string, got ['x']"),
    ],
)
def test_a_config_value_of_the_wrong_type_is_one_line_exit_2(run, tmp_path, entry, message):
    config = make_project(tmp_path, TOML + entry + "\n")
    assert assert_error(run("status"), 2) == f"{config}: {message}"


def test_a_database_id_that_is_not_a_string_is_one_line_exit_2(run, tmp_path):
    config = make_project(tmp_path, TOML.replace(f'database_id = "{ZERO_ID}"', "database_id = 123"))
    assert assert_error(run("status"), 2) == f"{config}: d1_databases[0].database_id must be a string, got 123"


def test_an_env_that_is_not_a_table_is_one_line_exit_2(run, tmp_path):
    config = make_project(tmp_path, 'env = "staging-x"\n' + TOML)
    assert assert_error(run("--env", "staging", "status"), 2) == f"{config}: env must be a table of environments"
