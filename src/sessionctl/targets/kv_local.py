"""wrangler's local Workers KV state, read and written as miniflare (under ``wrangler dev`` and
``wrangler kv key --local``) does, so each sees what the other wrote.

For one namespace id, below ``<root>`` (``<config dir>/.wrangler/state/v3/kv`` or
``<persist-to>/v3/kv``):

- ``miniflare-KVNamespaceObject/<hex>.sqlite``: one table, ``_mf_entries(key TEXT PRIMARY
  KEY, blob_id TEXT NOT NULL, expiration INTEGER, metadata TEXT)``, ``expiration`` in
  MILLISECONDS (the API's seconds times 1000), ``metadata`` the JSON text; <hex> is
  derived from the namespace id as for a Durable Object (``durable_object_hex``);
- ``<namespace id>/blobs/<blob_id>``: the value's bytes; a blob id is 32 random bytes and
  the time in ms as 8 big-endian bytes, in hex. A replaced value's blob is deleted.

A write puts the new blobs in place first (each written to a temporary name and renamed),
then changes the rows in ONE short ``BEGIN IMMEDIATE`` transaction -- only where a key still
holds what was read -- then deletes the blobs it replaced. A kill leaves at most blobs no
row names, which nothing reads; a later write removes those an hour old.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path
from typing import Iterable

from sessionctl.encoding import dumps_like_json_stringify, loads, stored_bytes
from sessionctl.errors import DatabaseLockedError, DatabaseUnavailableError, WranglerConfigError
from sessionctl.processes import remove_stale_temporaries
from sessionctl.targets.kv_base import KVKey, KVWrite
from sessionctl.targets.wrangler import KV_OBJECT, durable_object_hex

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS _mf_entries (key TEXT PRIMARY KEY, blob_id TEXT NOT NULL, "
    "expiration INTEGER, metadata TEXT)",
    "CREATE INDEX IF NOT EXISTS _mf_entries_expiration_idx ON _mf_entries(expiration)",
)


_NAMESPACE_ID = re.compile(r"[A-Za-z0-9-]+")
_BLOB_ID = re.compile(r"[0-9a-f]{80}")
ORPHAN_AGE_S = 3600


def kv_state_files(root: Path, namespace_id: str) -> tuple[Path, Path]:
    """(the namespace's SQLite file, its blobs folder) below ``root`` (``kv_local_root``)."""
    return root / KV_OBJECT / f"{durable_object_hex(namespace_id, KV_OBJECT)}.sqlite", root / namespace_id / "blobs"


def new_blob_id() -> str:
    return secrets.token_bytes(32).hex() + (time.time_ns() // 1_000_000).to_bytes(8, "big").hex()


class LocalKVState:
    def __init__(self, root: Path, namespace_id: str, *, timeout: float = 5.0, description: str | None = None):
        if not _NAMESPACE_ID.fullmatch(namespace_id):  # it names a folder: never a path of its own
            raise WranglerConfigError(f"the KV namespace id {namespace_id!r} is not an id Cloudflare uses "
                                      "(letters, digits and -)")
        self.path, self.blobs = kv_state_files(root, namespace_id)
        self.namespace_id = namespace_id
        self.timeout = timeout
        self.description = description or f"wrangler local KV namespace {namespace_id}"
        self._connection = None

    def __repr__(self) -> str:
        return f"LocalKVState({str(self.path)!r})"

    # -- reading ------------------------------------------------------------------------

    def keys(self, prefix: str) -> list[KVKey]:
        import apsw

        if not self.path.exists():
            return []  # wrangler has written nothing to this namespace yet
        try:
            rows = self._db().execute(
                "SELECT key, blob_id, expiration, metadata FROM _mf_entries "
                "WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key", (prefix,)).fetchall()
        except apsw.BusyError:
            raise DatabaseLockedError(f"{self.path} is locked by another process (waited {self.timeout:g} s)",
                                      path=self.path, waited_s=self.timeout) from None
        except (apsw.Error, UnicodeDecodeError) as exc:
            raise DatabaseUnavailableError(f"cannot read {self.path} as wrangler's KV state: {exc}") from None
        return [KVKey(key, None if expiration is None else int(expiration) // 1000, _metadata(metadata), blob)
                for key, blob, expiration, metadata in rows]

    def values(self, keys: list[KVKey]) -> dict[str, bytes | None]:
        found: dict[str, bytes | None] = {}
        for key in keys:
            try:
                found[key.name] = (self.blobs / str(key.version)).read_bytes()
            except FileNotFoundError:
                found[key.name] = None  # replaced or deleted since it was listed
            except OSError as exc:
                raise DatabaseUnavailableError(f"cannot read {self.blobs / str(key.version)}: {exc.strerror}") from None
        return found

    # -- writing ------------------------------------------------------------------------

    def write(self, writes: list[KVWrite]) -> list[str]:
        if not writes:
            return []
        try:
            self.blobs.mkdir(parents=True, exist_ok=True)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseUnavailableError(f"cannot create {self.blobs}: {exc.strerror}") from None
        remove_stale_temporaries(self.blobs, _TEMPORARY)
        placed: dict[str, str] = {}
        try:
            for write in writes:
                placed[write.key] = self._place_blob(stored_bytes(write.value))
            changed, replaced = self._commit(writes, placed)
        except BaseException:
            for blob in placed.values():
                (self.blobs / blob).unlink(missing_ok=True)
            raise
        for key in changed:  # not written: its new blob is nobody's
            (self.blobs / placed[key]).unlink(missing_ok=True)
        for blob in replaced:
            (self.blobs / blob).unlink(missing_ok=True)
        self._remove_orphans()
        return changed

    def _remove_orphans(self) -> None:
        """Blobs no entry names, placed over ORPHAN_AGE_S ago: a killed writer's (sessionctl's
        or miniflare's, which both place the blob first). Younger ones may be a live writer's."""
        import apsw

        try:
            named = {row[0] for row in self._db().execute("SELECT blob_id FROM _mf_entries")}
            old = time.time() - ORPHAN_AGE_S
            for entry in os.scandir(self.blobs):
                if entry.name not in named and _BLOB_ID.fullmatch(entry.name) and entry.stat().st_mtime < old:
                    os.unlink(entry.path)
        except (apsw.Error, OSError):
            pass  # tidying only: the next write tries again

    def _place_blob(self, data: bytes) -> str:
        blob = new_blob_id()
        temporary = self.blobs / f".{blob}.{os.getpid()}.tmp"
        try:
            with open(temporary, "xb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.blobs / blob)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise DatabaseUnavailableError(f"cannot write a value into {self.blobs}: {exc.strerror}") from None
        return blob

    def _commit(self, writes: list[KVWrite], placed: dict[str, str]) -> tuple[list[str], list[str]]:
        import apsw

        db = self._db(create=True)
        changed: list[str] = []
        replaced: list[str] = []
        try:
            for sql in _SCHEMA:
                db.execute(sql)
            db.execute("BEGIN IMMEDIATE")
            try:
                for write in writes:
                    row = db.execute("SELECT blob_id FROM _mf_entries WHERE key = ?", (write.key,)).fetchone()
                    now = row[0] if row else None
                    expected = write.replaces.version if write.replaces is not None else None
                    if now != expected:
                        changed.append(write.key)
                        continue
                    metadata = None if write.metadata is None else dumps_like_json_stringify(write.metadata)
                    db.execute("INSERT OR REPLACE INTO _mf_entries (key, blob_id, expiration, metadata) "
                               "VALUES (?, ?, ?, ?)", (write.key, placed[write.key], write.expiration * 1000, metadata))
                    if now is not None:
                        replaced.append(now)
                db.execute("COMMIT")
            except BaseException:
                if not db.getautocommit():
                    db.execute("ROLLBACK")
                raise
        except apsw.BusyError:
            raise DatabaseLockedError(f"{self.path} is locked by another process (waited {self.timeout:g} s)",
                                      path=self.path, waited_s=self.timeout) from None
        except apsw.Error as exc:
            raise DatabaseUnavailableError(f"cannot write {self.path}: {exc}") from None
        return changed, replaced

    def _db(self, create: bool = False):
        import apsw

        if self._connection is None:
            flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
            try:
                self._connection = apsw.Connection(str(self.path), flags=flags)
                self._connection.set_busy_timeout(int(self.timeout * 1000))
            except apsw.Error as exc:
                raise DatabaseUnavailableError(f"cannot open {self.path}: {exc}") from None
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


# ".<blob id>.<pid>.tmp": a value being written (renamed to its blob id once whole).
_TEMPORARY = re.compile(r"\.[0-9a-f]{80}\.(?P<pid>[0-9]+)\.tmp")


def _metadata(text: str | None):
    if text is None:
        return None
    try:
        return loads(text)
    except ValueError:
        return text
