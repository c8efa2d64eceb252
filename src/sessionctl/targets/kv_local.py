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
row names, which nothing reads.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path
from typing import Iterable

from sessionctl.encoding import dumps_like_json_stringify, loads, stored_bytes
from sessionctl.errors import DatabaseLockedError, DatabaseUnavailableError
from sessionctl.processes import process_alive
from sessionctl.targets.kv_base import KVKey, KVWrite
from sessionctl.targets.wrangler import KV_OBJECT, durable_object_hex

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS _mf_entries (key TEXT PRIMARY KEY, blob_id TEXT NOT NULL, "
    "expiration INTEGER, metadata TEXT)",
    "CREATE INDEX IF NOT EXISTS _mf_entries_expiration_idx ON _mf_entries(expiration)",
)


def kv_state_files(root: Path, namespace_id: str) -> tuple[Path, Path]:
    """(the namespace's SQLite file, its blobs folder) below ``root`` (``kv_local_root``)."""
    return root / KV_OBJECT / f"{durable_object_hex(namespace_id, KV_OBJECT)}.sqlite", root / namespace_id / "blobs"


def new_blob_id() -> str:
    return secrets.token_bytes(32).hex() + (time.time_ns() // 1_000_000).to_bytes(8, "big").hex()


class LocalKVState:
    def __init__(self, root: Path, namespace_id: str, *, timeout: float = 5.0, description: str | None = None):
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
        except apsw.Error as exc:
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
        _remove_stale_temporaries(self.blobs)
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
        return changed

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


_TEMPORARY = re.compile(r"\.[0-9a-f]{80}\.(?P<pid>[0-9]+)\.tmp")


def _remove_stale_temporaries(folder: Path) -> None:
    """Values a killed run left half-written (named with its process id): a process that no
    longer exists will never finish or remove them. (A placed blob no entry names is left:
    a writer beside this one may be about to commit it.)"""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = _TEMPORARY.fullmatch(name)
        if match is not None and not process_alive(int(match.group("pid"))):
            try:
                os.unlink(folder / name)
            except OSError:
                pass


def _metadata(text: str | None):
    if text is None:
        return None
    try:
        return loads(text)
    except ValueError:
        return text
