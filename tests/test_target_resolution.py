"""The library decides where the data is: sessionctl.targets.resolve, called directly as the bot calls it.

Every way a target is chosen and which choice wins, the remote safety rules, the typed
fields the errors carry (and that they name no CLI flag), and that the timeout reaches
every target -- the remote client included.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import assert_one_error_line, raw_connect
from d1_server import FakeD1
from remote_cli import no_proxies, write_project  # noqa: F401 (no_proxies: an autouse fixture)
from wrangler_tools import BOT_TOML, D1_SUBDIR, DB_NAME, STATE_DIR, ZERO_ID
from sessionctl.errors import (
    ConflictingTargetOptionsError,
    DatabaseChoiceError,
    DatabaseLockedError,
    DatabaseNotFoundError,
    DatabaseUnavailableError,
    RemoteSettingError,
    SessionctlError,
    UnknownEnvironmentError,
    WranglerConfigError,
    WranglerConfigNotFoundError,
)
from sessionctl.targets import TargetKind, TargetRequest, open_target, resolve_target
from sessionctl.targets.d1_http import D1HttpDatabase
from sessionctl.targets.sqlite_file import SqliteFileDatabase
from sessionctl.targets.wrangler import CONFIG_NAMES, durable_object_hex

OTHER_ID = "11111111-1111-4111-8111-111111111111"
STAGING_ID = "22222222-2222-4222-8222-222222222222"
TOKEN = "tok-RESOLVE-SECRET-5151"
ACCOUNT = "0123456789abcdef0123456789abcdef"

TWO_DATABASES = BOT_TOML + f"""
[[d1_databases]]
binding = "ANALYTICS"
database_name = "analytics"
database_id = "{OTHER_ID}"
"""
WITH_STAGING = BOT_TOML + f"""
[[env.staging.d1_databases]]
binding = "DB"
database_name = "staging-conversations"
database_id = "{STAGING_ID}"
"""


def project(folder: Path, toml: str = BOT_TOML) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wrangler.toml").write_text(toml, encoding="utf-8")
    return folder


def state_file(folder: Path, database_id: str = ZERO_ID) -> Path:
    return folder / STATE_DIR / f"{durable_object_hex(database_id)}.sqlite"


def remote_environ(base_url: str = "https://api.cloudflare.com/client/v4", **extra: str) -> dict[str, str]:
    return {"CLOUDFLARE_API_TOKEN": TOKEN, "CLOUDFLARE_ACCOUNT_ID": ACCOUNT,
            "CLOUDFLARE_API_BASE_URL": base_url, **extra}


def raised(request: TargetRequest, expected: type[SessionctlError] = SessionctlError, *,
           opening: bool = False) -> SessionctlError:
    """The error resolving (or opening) ``request`` raises, checked to read as a library error."""
    with pytest.raises(expected) as caught:
        open_target(request) if opening else resolve_target(request)
    assert_no_cli_words(caught.value)
    return caught.value


def assert_no_cli_words(error: BaseException) -> None:
    message = str(error)
    assert not re.search(r"(?<![\w-])--[a-z]", message), message
    assert "sessionctl " not in message and TOKEN not in message, message


# -- how a target is chosen -----------------------------------------------------------------


def test_nothing_given_and_no_config_is_sessions_db_in_cwd(tmp_path):
    target = resolve_target(TargetRequest(cwd=tmp_path))
    assert target.kind is TargetKind.SQLITE_FILE
    assert target.path == tmp_path / "sessions.db"
    assert target.description == f"sqlite file {tmp_path / 'sessions.db'} (default)"
    assert (target.remote, target.migrations_dir, target.migrations_table) == (None, None, None)


def test_without_cwd_paths_stay_as_the_caller_wrote_them(tmp_path):
    assert resolve_target().path == Path("sessions.db")  # the autouse fixture's cwd is tmp_path
    assert resolve_target(TargetRequest(db_path="data/bot.db")).description == "sqlite file data/bot.db"


def test_db_path_is_a_plain_file_relative_to_cwd_even_in_a_wrangler_project(tmp_path):
    project(tmp_path)
    target = resolve_target(TargetRequest(db_path="bot.db", cwd=tmp_path))
    assert (target.kind, target.path) == (TargetKind.SQLITE_FILE, tmp_path / "bot.db")
    assert target.description == f"sqlite file {tmp_path / 'bot.db'}"


def test_a_config_found_upward_means_its_local_d1_state(tmp_path):
    project(tmp_path)
    below = tmp_path / "src" / "agent"
    below.mkdir(parents=True)
    target = resolve_target(TargetRequest(cwd=below))
    assert target.kind is TargetKind.WRANGLER_LOCAL
    assert target.path == state_file(tmp_path)
    assert target.description == f"wrangler local D1 {DB_NAME} (binding DB) at {target.path}"
    assert (target.migrations_dir, target.migrations_table) == (tmp_path / "migrations", "d1_migrations")
    assert resolve_target(TargetRequest(cwd=tmp_path)).description.endswith(f" at {STATE_DIR / target.path.name}")


def test_config_names_the_project_wherever_cwd_is(tmp_path):
    project(tmp_path / "bot")
    target = resolve_target(TargetRequest(config="bot/wrangler.toml", cwd=tmp_path))
    assert target.path == state_file(tmp_path / "bot")


def test_local_is_the_default_made_explicit(tmp_path):
    project(tmp_path)
    explicit, default = (resolve_target(TargetRequest(local=local, cwd=tmp_path)) for local in (True, False))
    assert (explicit.kind, explicit.path, explicit.description) == (default.kind, default.path, default.description)


def test_persist_to_moves_the_state_and_is_relative_to_cwd(tmp_path):
    project(tmp_path)
    target = resolve_target(TargetRequest(persist_to="state", cwd=tmp_path))
    assert target.path == tmp_path / "state" / D1_SUBDIR / f"{durable_object_hex(ZERO_ID)}.sqlite"


@pytest.mark.parametrize("name", ["ANALYTICS", "analytics"])
def test_database_by_binding_or_by_database_name(tmp_path, name):
    project(tmp_path, TWO_DATABASES)
    assert resolve_target(TargetRequest(database=name, cwd=tmp_path)).path == state_file(tmp_path, OTHER_ID)


def test_of_several_databases_the_one_bound_as_db_is_the_default(tmp_path):
    project(tmp_path, TWO_DATABASES)
    assert resolve_target(TargetRequest(cwd=tmp_path)).path == state_file(tmp_path)


def test_env_reads_that_environments_databases(tmp_path):
    project(tmp_path, WITH_STAGING)
    target = resolve_target(TargetRequest(env="staging", cwd=tmp_path))
    assert target.path == state_file(tmp_path, STAGING_ID)
    assert "env staging" in target.description


def test_cloudflare_env_chooses_the_environment_unless_env_is_given(tmp_path):
    project(tmp_path, WITH_STAGING)
    environ = {"CLOUDFLARE_ENV": "staging"}
    assert resolve_target(TargetRequest(cwd=tmp_path, environ=environ)).path == state_file(tmp_path, STAGING_ID)
    assert resolve_target(TargetRequest(env="", cwd=tmp_path, environ=environ)).path == state_file(tmp_path)
    plain = resolve_target(TargetRequest(db_path="x.db", cwd=tmp_path, environ=environ))
    assert plain.kind is TargetKind.SQLITE_FILE  # CLOUDFLARE_ENV counts only in a wrangler project


def test_an_env_in_a_config_that_defines_none_is_a_warning_not_an_error(tmp_path):
    config = project(tmp_path) / "wrangler.toml"
    target = resolve_target(TargetRequest(env="qa", cwd=tmp_path))
    assert target.path == state_file(tmp_path)
    assert target.warnings == (
        f"no environment 'qa' in {config}, which defines none: using its top level (as wrangler does)",)


def test_a_db_path_from_the_environment_gives_way_to_explicit_wrangler_fields(tmp_path):
    project(tmp_path)
    from_env = TargetRequest(db_path="x.db", db_from_env=True, cwd=tmp_path)
    assert resolve_target(from_env).path == tmp_path / "x.db"
    overridden = TargetRequest(db_path="x.db", db_from_env=True, local=True, cwd=tmp_path)
    assert resolve_target(overridden).path == state_file(tmp_path)


def test_a_config_without_d1_leaves_the_default_file(tmp_path):
    project(tmp_path, 'name = "telegram-bot"\n')
    target = resolve_target(TargetRequest(cwd=tmp_path))
    assert target.path == tmp_path / "sessions.db"
    assert target.description.endswith("(default; wrangler.toml has no d1_databases)")


def test_remote_means_the_bindings_database_id_over_https(tmp_path):
    project(tmp_path)
    target = resolve_target(TargetRequest(remote=True, cwd=tmp_path, environ=remote_environ()))
    assert target.kind is TargetKind.REMOTE_D1 and target.path is None
    assert (target.remote.base_url, target.remote.account_id, target.remote.database_id) == (
        "https://api.cloudflare.com/client/v4", ACCOUNT, ZERO_ID)
    assert target.description == f"remote D1 {DB_NAME} (binding DB) database_id {ZERO_ID} via api.cloudflare.com"
    assert target.migrations_dir == tmp_path / "migrations"


def test_the_account_comes_from_the_variable_before_the_config(tmp_path):
    project(tmp_path, 'account_id = "cafe0123"\n' + BOT_TOML)
    environ = remote_environ()
    assert resolve_target(TargetRequest(remote=True, cwd=tmp_path, environ=environ)).remote.account_id == ACCOUNT
    del environ["CLOUDFLARE_ACCOUNT_ID"]
    assert resolve_target(TargetRequest(remote=True, cwd=tmp_path, environ=environ)).remote.account_id == "cafe0123"


# -- errors: typed fields, no CLI flags ------------------------------------------------------


@pytest.mark.parametrize(("fields", "options"), [
    (dict(local=True, remote=True), ("local", "remote")),
    (dict(remote=True, persist_to="state"), ("persist_to", "remote")),
    (dict(db_path="x.db", config="wrangler.toml", database="DB"), ("db_path", "config", "database")),
    (dict(db_path="x.db", env="staging", persist_to="s"), ("db_path", "env", "persist_to")),
])
def test_conflicting_fields_are_named(tmp_path, fields, options):
    project(tmp_path)
    error = raised(TargetRequest(cwd=tmp_path, **fields), ConflictingTargetOptionsError)
    assert error.options == options
    assert all(option in str(error) for option in options), str(error)


@pytest.mark.parametrize("fields, needed_by", [
    (dict(local=True), "local"), (dict(database="DB"), "database"), (dict(env="staging", remote=True), "env"),
])
def test_wrangler_fields_without_a_config(tmp_path, fields, needed_by):
    error = raised(TargetRequest(cwd=tmp_path, **fields), WranglerConfigNotFoundError)
    assert (error.path, error.searched_from, error.looked_for, error.needed_by) == (
        None, tmp_path, CONFIG_NAMES, needed_by)
    assert list(tmp_path.iterdir()) == []


def test_a_named_config_that_is_missing(tmp_path):
    error = raised(TargetRequest(config="nowhere/wrangler.toml", cwd=tmp_path), WranglerConfigNotFoundError)
    assert error.path == tmp_path / "nowhere" / "wrangler.toml"
    assert str(error) == f"wrangler config not found: {error.path}"
    assert isinstance(error, WranglerConfigError)


@pytest.mark.parametrize(("toml", "name", "problem"), [
    (TWO_DATABASES, "nope", "unknown"),
    (BOT_TOML + '[[d1_databases]]\nbinding = "telegram-conversations"\ndatabase_id = "x"\n', DB_NAME, "ambiguous"),
    (TWO_DATABASES.replace('binding = "DB"', 'binding = "MAIN"'), None, "unchosen"),
])
def test_a_database_that_cannot_be_told(tmp_path, toml, name, problem):
    config = project(tmp_path, toml) / "wrangler.toml"
    error = raised(TargetRequest(database=name, cwd=tmp_path), DatabaseChoiceError)
    assert (error.problem, error.name, error.config_path, error.env) == (problem, name, config, None)
    assert len(error.choices) == 2 and all(choice in str(error) for choice in error.choices)


def test_an_unknown_environment(tmp_path):
    config = project(tmp_path, WITH_STAGING + '[env.production]\nname = "x"\n') / "wrangler.toml"
    error = raised(TargetRequest(env="qa", cwd=tmp_path), UnknownEnvironmentError)
    assert (error.env, error.choices, error.config_path) == ("qa", ("production", "staging"), config)


def test_a_missing_file_reads_as_a_library_error(tmp_path):
    error = raised(TargetRequest(db_path="gone.db", cwd=tmp_path), DatabaseNotFoundError, opening=True)
    assert error.path == tmp_path / "gone.db" and not error.path.exists()
    assert error.REMEDY in str(error)  # the CLI swaps in its command: `sessionctl migrate` creates it


def test_a_lock_held_past_the_timeout_reads_as_a_library_error(tmp_path):
    holder = raw_connect(tmp_path / "x.db")  # rollback-journal mode: EXCLUSIVE keeps readers out too
    holder.execute("CREATE TABLE other(x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DatabaseLockedError) as caught:
            open_target(TargetRequest(db_path="x.db", cwd=tmp_path, timeout=0.2))  # opening reads the schema
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (caught.value.path, caught.value.waited_s) == (tmp_path / "x.db", 0.2)
    assert caught.value.REMEDY in str(caught.value)  # the CLI swaps in its option: raise --timeout
    assert_no_cli_words(caught.value)


# -- the remote safety rules, enforced for whoever opens a target ----------------------------


@pytest.mark.parametrize(("base_url", "problem"), [
    ("http://api.example.com/client/v4", "unsafe"),          # the token would travel in clear
    ("http://user:hunter2@127.0.0.1:9/client/v4", "unsafe"),  # a credential that would get shown
    ("https://user@api.example.com/client/v4", "unsafe"),
    ("ftp://127.0.0.1/client/v4", "malformed"),
    ("api.cloudflare.com/client/v4", "malformed"),
    ("http://127.0.0.1:port/client/v4", "malformed"),
])
def test_a_base_url_the_token_must_not_go_to_is_refused(tmp_path, base_url, problem):
    project(tmp_path)
    request = TargetRequest(remote=True, cwd=tmp_path, environ=remote_environ(base_url))
    error = raised(request, RemoteSettingError, opening=True)
    assert (error.setting, error.problem) == ("CLOUDFLARE_API_BASE_URL", problem)
    assert "hunter2" not in str(error)


@pytest.mark.parametrize("base_url", [
    "http://127.0.0.1:8787/client/v4", "http://127.0.0.2/x", "http://localhost:8787/x", "http://[::1]:8787/x",
    "https://api.cloudflare.com/client/v4",
])
def test_plain_http_only_to_this_machine(tmp_path, base_url):
    project(tmp_path)
    request = TargetRequest(remote=True, cwd=tmp_path, environ=remote_environ(base_url))
    assert isinstance(open_target(request), D1HttpDatabase)  # nothing is sent until the first query


def test_the_http_client_applies_the_same_rules_when_built_directly():
    with pytest.raises(RemoteSettingError) as caught:
        D1HttpDatabase(base_url="http://api.example.com/client/v4", account_id=ACCOUNT, database_id=ZERO_ID,
                       token=TOKEN)
    assert (caught.value.setting, caught.value.problem) == ("base_url", "unsafe")
    with pytest.raises(RemoteSettingError) as caught:
        D1HttpDatabase(base_url="https://api.cloudflare.com/client/v4", account_id="acc/../x",
                       database_id=ZERO_ID, token=TOKEN)
    assert (caught.value.setting, caught.value.problem) == ("account_id", "malformed")


@pytest.mark.parametrize(("where", "setting"), [("variable", "CLOUDFLARE_ACCOUNT_ID"), ("config", "account_id"),
                                                ("database", "database_id")])
def test_ids_that_cannot_go_in_a_url_are_refused(tmp_path, where, setting):
    environ = remote_environ()
    toml = BOT_TOML
    if where == "variable":
        environ["CLOUDFLARE_ACCOUNT_ID"] = "0123 4567"
    elif where == "config":
        del environ["CLOUDFLARE_ACCOUNT_ID"]
        toml = 'account_id = "../other"\n' + BOT_TOML
    else:
        toml = BOT_TOML.replace(ZERO_ID, "d1d1 d1d1")
    project(tmp_path, toml)
    error = raised(TargetRequest(remote=True, cwd=tmp_path, environ=environ), RemoteSettingError)
    assert (error.setting, error.problem) == (setting, "malformed")


def test_missing_remote_settings_are_named(tmp_path):
    config = project(tmp_path, BOT_TOML.replace(f'database_id = "{ZERO_ID}"\n', "")) / "wrangler.toml"
    error = raised(TargetRequest(remote=True, cwd=tmp_path, environ=remote_environ()), RemoteSettingError)
    assert (error.setting, error.problem, error.config_path, error.database) == (
        "database_id", "missing", config, f"{DB_NAME} (binding DB)")

    project(tmp_path)
    environ = remote_environ()
    del environ["CLOUDFLARE_ACCOUNT_ID"]
    error = raised(TargetRequest(remote=True, cwd=tmp_path, environ=environ), RemoteSettingError)
    assert (error.setting, error.problem) == ("CLOUDFLARE_ACCOUNT_ID", "missing")


@pytest.mark.parametrize(("token", "problem"), [(None, "missing"), ("  \n", "missing"),
                                                (TOKEN + " x", "malformed"), (TOKEN + "한", "malformed")])
def test_the_token_is_checked_when_opening_and_never_shown(tmp_path, token, problem):
    project(tmp_path)
    environ = remote_environ()
    environ.pop("CLOUDFLARE_API_TOKEN")
    if token is not None:
        environ["CLOUDFLARE_API_TOKEN"] = token
    request = TargetRequest(remote=True, cwd=tmp_path, environ=environ)
    target = resolve_target(request)  # resolving needs no token
    error = raised(request, RemoteSettingError, opening=True)
    assert (error.setting, error.problem) == ("CLOUDFLARE_API_TOKEN", problem)
    assert TOKEN not in repr(request) + repr(target)


def test_a_token_with_its_newline_is_used_trimmed_and_shown_nowhere(tmp_path):
    project(tmp_path)
    request = TargetRequest(remote=True, cwd=tmp_path, environ=remote_environ(CLOUDFLARE_API_TOKEN=TOKEN + "\n"))
    db = open_target(request)
    assert TOKEN not in repr(db) + repr(request) + repr(resolve_target(request)) + db.description


# -- the timeout reaches every target ---------------------------------------------------------


def test_the_timeout_reaches_a_sqlite_file(tmp_path):
    db = open_target(TargetRequest(db_path="x.db", cwd=tmp_path, timeout=0.25), create=True)
    try:
        assert isinstance(db, SqliteFileDatabase) and db.timeout == 0.25
    finally:
        db.close()


def test_the_timeout_reaches_the_remote_client_which_then_works(tmp_path):
    with FakeD1(tmp_path / "d1", token=TOKEN, account_id=ACCOUNT) as fake:
        write_project(tmp_path / "bot", fake.database_id)
        request = TargetRequest(remote=True, cwd=tmp_path / "bot", timeout=7.5, environ=remote_environ(fake.base_url))
        db = open_target(request)
        assert isinstance(db, D1HttpDatabase) and db.timeout == 7.5
        assert db.query("SELECT 1 AS one") == [{"one": 1}]
        assert db.reopen().timeout == 7.5


@contextmanager
def silent_api():
    """A port that takes connections (into the kernel's backlog) and never answers one."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/client/v4"


def test_a_stalled_api_fails_after_the_timeout_not_after_the_clients_default(tmp_path):
    project(tmp_path)
    with silent_api() as base_url:
        db = open_target(TargetRequest(remote=True, cwd=tmp_path, timeout=0.3, environ=remote_environ(base_url)))
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError) as caught:
            db.query("SELECT 1 AS one")
    assert "lost the connection to D1" in str(caught.value)
    # Four attempts of 0.3 s and short pauses; the client's own default (35 s) would take minutes.
    assert time.monotonic() - started < 60


def test_the_cli_passes_its_timeout_to_the_remote_client(cli, tmp_path):
    write_project(tmp_path, ZERO_ID)  # the working directory
    with silent_api() as base_url:
        result = cli("--remote", "--timeout", "0.3", "status", env=remote_environ(base_url))
    assert result.exit_code == 3, result.stderr
    assert "lost the connection to D1" in result.stderr


# -- the CLI words the same errors with its flags, as before --------------------------------


@pytest.mark.parametrize(("args", "unset", "line"), [
    (("--local", "--remote"), None, "--local and --remote cannot be used together"),
    (("--remote",), "CLOUDFLARE_ACCOUNT_ID",
     "--remote needs the account: set CLOUDFLARE_ACCOUNT_ID (or account_id in the config)"),
    (("--remote",), "CLOUDFLARE_API_TOKEN", "--remote needs an API token: set CLOUDFLARE_API_TOKEN"),
])
def test_the_cli_adds_its_flags_to_library_errors(cli, tmp_path, args, unset, line):
    write_project(tmp_path, ZERO_ID)
    environ = {**remote_environ(), **({unset: None} if unset else {})}  # None: unset for the run
    result = cli(*args, "status", env=environ)
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, line)


# -- the CLI stays cheap to start ---------------------------------------------------------------


def test_version_imports_no_target_module():
    code = ("import sys\nfrom sessionctl.cli import main\nsys.argv = ['sessionctl', '--version']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('sessionctl.targets')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
