"""wrangler projects: find and read the config, pick a D1 binding, locate its local state.

No typer/rich here. What wrangler does, checked against the pinned wrangler:
- config files looked up upward from the working directory: wrangler.json
  (all the way up), then wrangler.jsonc, then wrangler.toml -- as wrangler's
  findUpSync per name does, so a parent's wrangler.json beats a nearer .toml;
- ``d1_databases`` is not inherited by ``[env.NAME]``: each environment repeats it;
- migrations_dir is relative to the config file; defaults ``migrations`` and
  ``d1_migrations`` for the ledger table;
- local state: <config dir>/.wrangler/state/v3/d1/miniflare-D1DatabaseObject/<hex>.sqlite
  (or <persist-to>/v3/d1/...), <hex> derived from the database's id like
  Durable Objects' idFromName;
- ``kv_namespaces`` (binding, id, preview_id), not inherited either; local KV state:
  <root>/v3/kv/miniflare-KVNamespaceObject/<hex>.sqlite (its ``_mf_entries``) with each
  value in <root>/v3/kv/<namespace id>/blobs/<blob id>; ``wrangler dev`` binds preview_id
  when there is one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from sessionctl.errors import DatabaseChoiceError, UnknownEnvironmentError, WranglerConfigError

ENV_VARIABLE = "CLOUDFLARE_ENV"

CONFIG_NAMES = ("wrangler.json", "wrangler.jsonc", "wrangler.toml")
D1_OBJECT = "miniflare-D1DatabaseObject"
KV_OBJECT = "miniflare-KVNamespaceObject"


@dataclass(frozen=True)
class D1Database:
    """One ``d1_databases`` entry, with paths made absolute."""

    binding: str
    database_name: str | None
    database_id: str | None
    preview_database_id: str | None
    migrations_dir: Path
    migrations_table: str
    config_path: Path
    env: str | None

    @property
    def label(self) -> str:
        name = self.database_name or self.binding
        return f"{name} (binding {self.binding}{', env ' + self.env if self.env else ''})"

    @property
    def local_id(self) -> str:
        """The name wrangler's local D1 derives the file name from."""
        return self.preview_database_id or self.database_id or self.binding


def find_config(start: Path) -> Path | None:
    """The wrangler config for ``start``, found exactly as wrangler 4 finds it.

    wrangler looks for ``wrangler.json`` all the way up, then ``wrangler.jsonc``
    all the way up, then ``wrangler.toml`` (``findUpSync`` per name), so a
    wrangler.json in a parent folder beats a wrangler.toml in ``start`` itself.
    """
    start = start.resolve()
    for name in CONFIG_NAMES:
        for folder in (start, *start.parents):
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def load_config(path: Path) -> dict[str, Any]:
    """Parse a wrangler.toml / .json / .jsonc; a syntax error names the file and line."""
    try:
        # utf-8-sig: wrangler strips a UTF-8 byte order mark (editors on Windows write one).
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise WranglerConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise WranglerConfigError(f"{path}: not UTF-8 text") from None
    if path.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise WranglerConfigError(f"{path}: invalid TOML: {exc}") from None
    else:
        import json5

        try:
            data = json5.loads(text)
        except ValueError as exc:
            message = str(exc)
            match = re.match(r"<string>:(\d+) (.*)", message)
            where = f"line {match.group(1)}: {match.group(2)}" if match else message
            raise WranglerConfigError(f"{path}: invalid JSON: {where}") from None
    if not isinstance(data, dict):
        raise WranglerConfigError(f"{path}: the top level is not a table/object")
    return data


def chosen_env(option: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The environment wrangler would use: the one asked for, else ``CLOUDFLARE_ENV``; "" is the top level."""
    environ = os.environ if environ is None else environ
    env = option if option is not None else environ.get(ENV_VARIABLE)
    return env or None


def _section(config_path: Path, data: dict[str, Any], env: str | None) -> tuple[dict[str, Any], str, str | None]:
    """The top level, or ``env.NAME`` (bindings are not inherited, as in wrangler): (section, key prefix, env).

    As wrangler does: an environment the config does not define is an error when the
    config defines others, and only a warning (the top level is used) when it defines none.
    """
    env = env or None
    if env is None:
        return data, "", None
    envs = data.get("env") or {}
    if not isinstance(envs, dict):
        raise WranglerConfigError(f"{config_path}: env must be a table of environments")
    if env not in envs and not envs:
        return data, "", None
    if env not in envs:
        raise UnknownEnvironmentError(env, tuple(sorted(envs)), config_path)
    section = envs[env]
    if not isinstance(section, dict):
        raise WranglerConfigError(f"{config_path}: env.{env} must be a table")
    return section, f"env.{env}.", env


def _entries(config_path: Path, section: dict[str, Any], prefix: str, key: str,
             strings: tuple[str, ...]) -> list[dict[str, Any]]:
    entries = section.get(key) or []
    if not isinstance(entries, list):
        raise WranglerConfigError(f"{config_path}: {prefix}{key} must be a list")
    for index, entry in enumerate(entries):
        where = f"{config_path}: {prefix}{key}[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("binding"), str):
            raise WranglerConfigError(f"{where} has no binding")
        for name in strings:
            if name in entry and not isinstance(entry[name], str):
                raise WranglerConfigError(f"{where}.{name} must be a string, got {entry[name]!r}")
    return entries


def d1_databases(config_path: Path, data: dict[str, Any], env: str | None) -> list[D1Database]:
    """The D1 entries of the top level, or of ``env.NAME`` (see ``_section``)."""
    section, prefix, env = _section(config_path, data, env)
    entries = _entries(config_path, section, prefix, "d1_databases",
                       ("database_name", "database_id", "preview_database_id", "migrations_dir", "migrations_table"))
    folder = config_path.parent
    return [
        D1Database(
            binding=entry["binding"],
            database_name=entry.get("database_name"),
            database_id=entry.get("database_id"),
            preview_database_id=entry.get("preview_database_id"),
            migrations_dir=(folder / entry.get("migrations_dir", "migrations")).resolve(),
            migrations_table=entry.get("migrations_table", "d1_migrations"),
            config_path=config_path,
            env=env,
        )
        for entry in entries
    ]


@dataclass(frozen=True)
class KVNamespace:
    """One ``kv_namespaces`` entry."""

    binding: str
    id: str | None
    preview_id: str | None
    config_path: Path
    env: str | None

    @property
    def label(self) -> str:
        return f"KV binding {self.binding}{' (env ' + self.env + ')' if self.env else ''}"

    def local_id(self, preview: bool | None) -> str:
        """The namespace id wrangler's local state uses: ``wrangler dev`` binds preview_id when
        there is one, else id (``preview`` None); True/False choose preview_id/id as
        ``wrangler kv key --preview``/``--preview false`` do."""
        return self._chosen(preview if preview is not None else bool(self.preview_id))

    def remote_id(self, preview: bool | None) -> str:
        """The namespace id ``wrangler deploy`` binds (id), or preview_id with ``preview``."""
        return self._chosen(bool(preview))

    def _chosen(self, preview: bool) -> str:
        chosen = self.preview_id if preview else self.id
        if not chosen:
            field = "preview_id" if preview else "id"
            raise WranglerConfigError(f"{self.config_path}: {self.label} has no {field}")
        return chosen


def kv_namespaces(config_path: Path, data: dict[str, Any], env: str | None) -> list[KVNamespace]:
    """The KV entries of the top level, or of ``env.NAME`` (see ``_section``)."""
    section, prefix, env = _section(config_path, data, env)
    entries = _entries(config_path, section, prefix, "kv_namespaces", ("id", "preview_id"))
    return [KVNamespace(entry["binding"], entry.get("id") or None, entry.get("preview_id") or None,
                        config_path, env) for entry in entries]


def select_kv_namespace(namespaces: list[KVNamespace], binding: str, config_path: Path,
                        env: str | None) -> KVNamespace:
    where = f"{config_path}" + (f" [env.{env}]" if env else "")
    found = [n for n in namespaces if n.binding == binding]
    if not found:
        have = ", ".join(n.binding for n in namespaces) or "none"
        raise WranglerConfigError(f"{where} has no kv_namespaces entry bound as {binding} (bindings: {have})")
    return found[0]


def kv_local_root(namespace: KVNamespace, persist_to: Path | None = None) -> Path:
    """The folder wrangler's local KV state is in (``kv_state_files`` names the files below it)."""
    root = persist_to.resolve() if persist_to else namespace.config_path.parent / ".wrangler" / "state"
    return root / "v3" / "kv"


def select_database(databases: list[D1Database], name: str | None, config_path: Path, env: str | None) -> D1Database:
    """By binding or database_name; default: the only entry, else the one bound as DB."""
    if not databases:
        where = f"{config_path}" + (f" [env.{env}]" if env else "")
        raise WranglerConfigError(f"{where} has no d1_databases")
    choices = tuple(f"{d.binding} ({d.database_name})" if d.database_name else d.binding for d in databases)
    if name is not None:
        found = [d for d in databases if name in (d.binding, d.database_name)]
        if len(found) == 1:
            return found[0]
        raise DatabaseChoiceError("ambiguous" if found else "unknown", name, choices, config_path, env)
    if len(databases) == 1:
        return databases[0]
    bound_db = [d for d in databases if d.binding == "DB"]
    if bound_db:
        return bound_db[0]
    raise DatabaseChoiceError("unchosen", None, choices, config_path, env)


def durable_object_hex(name: str, unique_key: str = D1_OBJECT) -> str:
    """Miniflare's idFromName: the hex file name of a Durable Object's SQLite file."""
    key = hashlib.sha256(unique_key.encode()).digest()
    first = hmac.new(key, name.encode(), hashlib.sha256).digest()[:16]
    second = hmac.new(key, first, hashlib.sha256).digest()[:16]
    return (first + second).hex()


def local_state_file(database: D1Database, persist_to: Path | None = None) -> Path:
    """The exact SQLite file ``wrangler d1 ... --local`` (and ``wrangler dev``) use."""
    root = persist_to.resolve() if persist_to else database.config_path.parent / ".wrangler" / "state"
    return root / "v3" / "d1" / D1_OBJECT / f"{durable_object_hex(database.local_id)}.sqlite"
