"""Which database a request means, and opening it: the one place a target is chosen.

The bot's code and the CLI both come here, so both get the same rules: a plain SQLite
file, wrangler's local D1 state, or remote D1 over HTTP -- and for remote D1 the safety
rules (https except to this machine, no user:password in the URL, ids as Cloudflare
writes them, the token read from CLOUDFLARE_API_TOKEN and shown nowhere).

Errors name the request's fields, environment variables and config keys, never a CLI
flag: the CLI words its own hints. No typer/rich here, and the HTTP client is imported
only for a remote target.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from sessionctl.errors import ConflictingTargetOptionsError, RemoteSettingError, WranglerConfigNotFoundError
from sessionctl.names import DEFAULT_DB_FILE
from sessionctl.targets import wrangler
from sessionctl.targets.sqlite_file import DEFAULT_TIMEOUT_S, open_sqlite_file

if TYPE_CHECKING:
    from sessionctl.targets.base import Database

logger = logging.getLogger("sessionctl.targets")

TOKEN_VARIABLE = "CLOUDFLARE_API_TOKEN"
ACCOUNT_VARIABLE = "CLOUDFLARE_ACCOUNT_ID"
BASE_URL_VARIABLE = "CLOUDFLARE_API_BASE_URL"

# The request fields that mean "a wrangler project", in the order errors list them.
WRANGLER_FIELDS = ("config", "database", "env", "local", "remote", "persist_to")


class TargetKind(StrEnum):
    """Which of the three targets: a plain SQLite file, wrangler's local D1 state, remote D1."""

    SQLITE_FILE = "sqlite"
    WRANGLER_LOCAL = "wrangler-local"
    REMOTE_D1 = "remote"


@dataclass(frozen=True)
class TargetRequest:
    """Where the caller wants the sessions to be; every field may be left out.

    Nothing given: a wrangler project's D1 binding if a wrangler config is found upward
    from ``cwd`` (its local state), else ``cwd/sessions.db``. ``db_path`` is a plain SQLite
    file; ``db_from_env`` says it came from the environment, so that explicit wrangler
    fields override it instead of clashing with it. ``env`` None reads CLOUDFLARE_ENV;
    "" is the config's top level. Paths may be str; relative ones are relative to ``cwd``
    (default: the working directory). ``timeout`` is how long to wait for a locked
    file (default 5 s), or for remote D1 to answer a request (default 35 s: D1 gives a
    request up to 30 s). ``environ`` replaces ``os.environ``.
    """

    db_path: Path | None = None
    db_from_env: bool = False
    config: Path | None = None
    database: str | None = None
    env: str | None = None
    local: bool = False
    remote: bool = False
    persist_to: Path | None = None
    timeout: float | None = None  # None: the target's own default
    cwd: Path | None = None
    # It holds the token: never in a repr.
    environ: Mapping[str, str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("db_path", "config", "persist_to"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if self.cwd is not None:  # pinned now: a later chdir does not move the request
            object.__setattr__(self, "cwd", Path(self.cwd).absolute())

    @property
    def variables(self) -> Mapping[str, str]:
        return os.environ if self.environ is None else self.environ


@dataclass(frozen=True)
class RemoteD1:
    """Where a remote D1 database is (the token is read when it is opened, and kept by the client only)."""

    base_url: str
    account_id: str
    database_id: str
    database_name: str | None = None  # how wrangler commands name it (database_name, else the binding)
    env: str | None = None  # the wrangler environment it was chosen from


@dataclass(frozen=True)
class ResolvedTarget:
    """What a request resolved to. ``description`` is one line naming it, for people."""

    kind: TargetKind
    description: str
    path: Path | None = None  # the SQLite file; None for remote D1
    remote: RemoteD1 | None = None
    migrations_dir: Path | None = None  # the wrangler binding's, when there is one
    migrations_table: str | None = None
    warnings: tuple[str, ...] = ()  # things wrangler would only warn about, e.g. an env the config lacks
    request: TargetRequest = field(default_factory=TargetRequest, repr=False)


def resolve_target(request: TargetRequest | None = None) -> ResolvedTarget:
    """Decide where the data is; nothing is opened or created, and nothing is sent."""
    request = request or TargetRequest()
    asked = tuple(name for name in WRANGLER_FIELDS if getattr(request, name))
    _refuse_conflicts(request, asked)
    if request.db_path is not None and not (request.db_from_env and asked):
        path = _under(request, request.db_path)
        return ResolvedTarget(TargetKind.SQLITE_FILE, f"sqlite file {path}", path=path, request=request)
    config = _under(request, request.config) if request.config else wrangler.find_config(_cwd(request))
    if config is None:
        if asked:
            raise WranglerConfigNotFoundError(searched_from=_cwd(request), looked_for=wrangler.CONFIG_NAMES,
                                              needed_by=asked[0])
        return _default_file(request, "default")
    return _in_wrangler_project(request, config, asked)


def _refuse_conflicts(request: TargetRequest, asked: tuple[str, ...]) -> None:
    if request.local and request.remote:
        raise ConflictingTargetOptionsError(("local", "remote"), "local and remote cannot both be chosen")
    if request.remote and request.persist_to:
        raise ConflictingTargetOptionsError(
            ("persist_to", "remote"), "persist_to is for wrangler's local state; it cannot be used with remote"
        )
    # A db_path from the environment gives way to explicit wrangler fields; one passed in clashes.
    if request.db_path is not None and asked and not request.db_from_env:
        raise ConflictingTargetOptionsError(
            ("db_path", *asked), f"db_path (a plain SQLite file) cannot be combined with {', '.join(asked)}"
        )


def _default_file(request: TargetRequest, why: str, warnings: tuple[str, ...] = ()) -> ResolvedTarget:
    path = _under(request, Path(DEFAULT_DB_FILE))
    return ResolvedTarget(TargetKind.SQLITE_FILE, f"sqlite file {path} ({why})", path=path, warnings=warnings,
                          request=request)


def _in_wrangler_project(request: TargetRequest, config: Path, asked: tuple[str, ...]) -> ResolvedTarget:
    if not config.is_file():
        raise WranglerConfigNotFoundError(path=config)
    data = wrangler.load_config(config)
    # CLOUDFLARE_ENV counts only inside a wrangler project, as it does for wrangler.
    env = wrangler.chosen_env(request.env, request.variables)
    warnings: tuple[str, ...] = ()
    if env and not data.get("env"):
        warnings = (f"no environment {env!r} in {config}, which defines none: using its top level (as wrangler does)",)
    databases = wrangler.d1_databases(config, data, env)
    if not databases and not asked:
        # A wrangler project without D1: not ours to guess at; the embedded default applies.
        return _default_file(request, f"default; {config.name} has no d1_databases", warnings)
    chosen = wrangler.select_database(databases, request.database, config, env)
    if request.remote:
        description, remote = _remote_d1(chosen, data, env, request.variables)
        return ResolvedTarget(TargetKind.REMOTE_D1, description, remote=remote,
                              migrations_dir=chosen.migrations_dir, migrations_table=chosen.migrations_table,
                              warnings=warnings, request=request)
    path = wrangler.local_state_file(chosen, _under(request, request.persist_to) if request.persist_to else None)
    description = f"wrangler local D1 {chosen.label} at {_shown(path, _cwd(request))}"
    return ResolvedTarget(TargetKind.WRANGLER_LOCAL, description, path=path,
                          migrations_dir=chosen.migrations_dir, migrations_table=chosen.migrations_table,
                          warnings=warnings, request=request)


def open_target(target: TargetRequest | ResolvedTarget | None = None, *, create: bool = False) -> "Database":
    """Open what ``target`` means (resolving a request first); only ``create=True`` may create a file.

    Remote D1 reads its token from CLOUDFLARE_API_TOKEN here and is never created. A
    resolved target's warnings are the caller's to show; a request's are logged.
    """
    if not isinstance(target, ResolvedTarget):
        target = resolve_target(target)
        for warning in target.warnings:
            logger.warning("%s", warning)
    request = target.request
    if target.remote is not None:
        from sessionctl.targets.d1_http import REQUEST_TIMEOUT_S, D1HttpDatabase

        return D1HttpDatabase(
            base_url=target.remote.base_url,
            account_id=target.remote.account_id,
            database_id=target.remote.database_id,
            token=_token(request.variables),
            description=target.description,
            timeout=REQUEST_TIMEOUT_S if request.timeout is None else request.timeout,
            database_name=target.remote.database_name,
            env=target.remote.env,
        )
    assert target.path is not None
    timeout = DEFAULT_TIMEOUT_S if request.timeout is None else request.timeout
    return open_sqlite_file(target.path, create=create, timeout=timeout, description=target.description)


# -- remote D1 ------------------------------------------------------------------------


def _remote_d1(chosen: wrangler.D1Database, data: dict, env: str | None,
               variables: Mapping[str, str]) -> tuple[str, RemoteD1]:
    """The description and coordinates of the binding's remote database, every rule checked."""
    from sessionctl.targets.d1_http import DEFAULT_BASE_URL, check_base_url, check_id

    if not chosen.database_id:
        raise RemoteSettingError(
            "database_id", "missing",
            f"{chosen.config_path}: {chosen.label} has no database_id, which a remote target needs",
            config_path=chosen.config_path, database=chosen.label,
        )
    account = _account(data, env, variables)
    check_id(chosen.database_id, "database_id", setting="database_id")
    base_url = variables.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL
    host = check_base_url(base_url, BASE_URL_VARIABLE)
    description = f"remote D1 {chosen.label} database_id {chosen.database_id} via {host}"
    return description, RemoteD1(base_url, account, chosen.database_id,
                                 database_name=chosen.database_name or chosen.binding, env=chosen.env)


def _token(variables: Mapping[str, str]) -> str:
    # A token read from a file often keeps its newline: trimmed, it is still the token.
    token = (variables.get(TOKEN_VARIABLE) or "").strip()
    if not token:
        raise RemoteSettingError(
            TOKEN_VARIABLE, "missing", f"a remote target needs an API token: set {TOKEN_VARIABLE}"
        )
    if not all(33 <= ord(ch) < 127 for ch in token):
        # Said without the token: it could not go in an HTTP header anyway.
        raise RemoteSettingError(
            TOKEN_VARIABLE, "malformed",
            f"{TOKEN_VARIABLE} holds characters no token has (spaces, control or non-ASCII characters)",
        )
    return token


# -- paths ------------------------------------------------------------------------------


def _cwd(request: TargetRequest) -> Path:
    return request.cwd or Path.cwd()


def _under(request: TargetRequest, path: Path) -> Path:
    # Without a cwd a relative path stays relative, so messages show it as the caller wrote it.
    return path if request.cwd is None else request.cwd / path


def _shown(path: Path, cwd: Path) -> str:
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)


# -- the bot's Workers KV namespace ---------------------------------------------------


@dataclass(frozen=True)
class ResolvedKV:
    """Where the bot's KV namespace is: wrangler's local KV state (``root``), or the KV API."""

    description: str
    namespace_id: str
    root: Path | None = None  # local: <...>/v3/kv
    remote: RemoteD1 | None = None  # remote: base_url, account, and the namespace id in database_id's place
    request: TargetRequest = field(default_factory=TargetRequest, repr=False)


def resolve_kv(request: TargetRequest | None = None, *, binding: str = "SESSION_KV",
               preview: bool | None = None) -> ResolvedKV:
    """The ``kv_namespaces`` entry bound as ``binding`` in the wrangler project ``request`` is in,
    by the same rules as D1: its local state unless ``remote``; the same env, config and
    persist_to. Locally the namespace is the one ``wrangler dev`` binds (preview_id when there
    is one, else id); remotely the one ``wrangler deploy`` binds (id). ``preview`` True/False
    chooses preview_id/id instead. Nothing is opened."""
    request = request or TargetRequest()
    _refuse_conflicts(TargetRequest(local=request.local, remote=request.remote, persist_to=request.persist_to), ())
    config = _under(request, request.config) if request.config else wrangler.find_config(_cwd(request))
    if config is None:
        raise WranglerConfigNotFoundError(searched_from=_cwd(request), looked_for=wrangler.CONFIG_NAMES,
                                          needed_by="a KV namespace (kv_namespaces)")
    if not config.is_file():
        raise WranglerConfigNotFoundError(path=config)
    data = wrangler.load_config(config)
    env = wrangler.chosen_env(request.env, request.variables)
    namespaces = wrangler.kv_namespaces(config, data, env)
    chosen = wrangler.select_kv_namespace(namespaces, binding, config, env)
    if request.remote:
        from sessionctl.targets.d1_http import DEFAULT_BASE_URL, check_base_url, check_id

        namespace_id = chosen.remote_id(preview)
        account = _account(data, env, request.variables)
        base_url = request.variables.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL
        host = check_base_url(base_url, BASE_URL_VARIABLE)
        check_id(namespace_id, "namespace id", setting="kv_namespaces id")
        return ResolvedKV(f"remote KV {chosen.binding} namespace {namespace_id} via {host}", namespace_id,
                          remote=RemoteD1(base_url, account, namespace_id, env=env), request=request)
    namespace_id = chosen.local_id(preview)
    root = wrangler.kv_local_root(chosen, _under(request, request.persist_to) if request.persist_to else None)
    return ResolvedKV(f"wrangler local KV {chosen.binding} namespace {namespace_id} at {_shown(root, _cwd(request))}",
                      namespace_id, root=root, request=request)


def open_kv(target: ResolvedKV):
    """The KV store ``target`` names (a remote one reads CLOUDFLARE_API_TOKEN here)."""
    request = target.request
    if target.remote is not None:
        from sessionctl.targets.d1_http import REQUEST_TIMEOUT_S
        from sessionctl.targets.kv_http import KVHttpNamespace

        return KVHttpNamespace(base_url=target.remote.base_url, account_id=target.remote.account_id,
                               namespace_id=target.namespace_id, token=_token(request.variables),
                               description=target.description,
                               timeout=REQUEST_TIMEOUT_S if request.timeout is None else request.timeout)
    from sessionctl.targets.kv_local import LocalKVState

    assert target.root is not None
    return LocalKVState(target.root, target.namespace_id, description=target.description,
                        timeout=DEFAULT_TIMEOUT_S if request.timeout is None else request.timeout)


def _account(data: dict, env: str | None, variables: Mapping[str, str]) -> str:
    from sessionctl.targets.d1_http import check_id

    section = (data.get("env") or {}).get(env, {}) if env else data
    from_variable = variables.get(ACCOUNT_VARIABLE)
    account = from_variable or section.get("account_id") or data.get("account_id")
    if not isinstance(account, str) or not account:
        raise RemoteSettingError(
            ACCOUNT_VARIABLE, "missing",
            f"a remote target needs the account: set {ACCOUNT_VARIABLE} (or account_id in the config)",
        )
    check_id(account, "account id", setting=ACCOUNT_VARIABLE if from_variable else "account_id")
    return account
