"""Carry live sessions between the bot's old Workers KV store and ``server_sessions``.

The KV-era bot kept one JSON value per user under ``<prefix><user_id>`` with a KV
expiration; the D1-era bot keeps a row. At a deploy (KV to D1) and at a code rollback
(D1 to KV) the sessions in the middle of a consultation move across, and the newer
side wins:

- **import** (KV to D1): keys under ``prefix`` only -- any other key is never read. A
  value is the old session JSON (``status``, ``collectedInfo``/``collected_info``,
  ``lastRecommendation``/``last_recommendation``, ``messages``, ``createdAt``/``created_at``,
  ``updatedAt``/``updated_at``); a value that does not parse, has an unknown status, or a
  field of the wrong shape is listed with its key and reason and skipped, never guessed.
  expires_at is the key's KV expiration, else updated_at + ``SESSION_TTL_MS``; keys
  already expired are skipped. A D1 row as new as the KV value or newer is kept. Rows
  go in through the repository's import (staged, all or nothing for the live table; the
  merge itself applies newer-wins again, so a save by the bot meanwhile is never overwritten).
- **export** (D1 to KV): every live row, as the value the KV code reads (``camel`` or
  ``snake`` field names), with its remaining lifetime as the KV expiration (rounded up to
  the second). KV refuses lifetimes under 60 s: those are listed and skipped. A KV value
  as new as the row or newer is kept, and so is one that cannot be read; metadata a key
  carries is written back with it.

Both are idempotent: run again, nothing changes. Nothing here imports typer or rich.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

from sessionctl import encoding
from sessionctl.enums import ConflictPolicy, FieldCase
from sessionctl.errors import UsageError
from sessionctl.repository import SESSION_TTL_MS, STATUSES, import_session_rows, iter_session_rows, now_ms
from sessionctl.targets.base import Database, Statement, limits_of
from sessionctl.targets.kv_base import MAX_KEY_BYTES, MAX_VALUE_BYTES, MIN_TTL_S, KVKey, KVStore, KVWrite

LOOKUP_KEYS = 90  # user_ids in one IN (...): D1 binds at most 100 parameters
CLOCK_SKEW_MS = 5 * 60 * 1000  # a value dated further ahead than this is not believed
EXPORT_MARGIN_S = 10  # KV's 60 s minimum, checked again just before writing, with this to spare


# (snake_case, camelCase) for each field of the old value.
_FIELDS = (
    ("status", "status"),
    ("collected_info", "collectedInfo"),
    ("last_recommendation", "lastRecommendation"),
    ("messages", "messages"),
    ("created_at", "createdAt"),
    ("updated_at", "updatedAt"),
)


@dataclass(frozen=True)
class Skipped:
    key: str
    reason: str


@dataclass
class Transfer:
    """What an import or export did (or, with ``dry_run``, would do)."""

    direction: str  # "import" | "export"
    dry_run: bool
    written: list[str] = field(default_factory=list)  # KV keys
    kept: list[Skipped] = field(default_factory=list)  # the other side is as new or newer
    skipped: list[Skipped] = field(default_factory=list)  # expired, unreadable, too short-lived

    def as_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction, "dry_run": self.dry_run, "written": len(self.written),
            "keys": self.written,
            "kept": [{"key": k.key, "reason": k.reason} for k in self.kept],
            "skipped": [{"key": s.key, "reason": s.reason} for s in self.skipped],
        }


def check_prefix(prefix: str) -> str:
    if not prefix:
        raise UsageError("the KV prefix is empty: name the prefix the sessions' keys start with "
                         "(other keys are never read or written)")
    size = len(encoding.stored_bytes(prefix))
    if size >= MAX_KEY_BYTES:
        raise UsageError(f"the KV prefix is {size} bytes; a KV key holds at most {MAX_KEY_BYTES}")
    return prefix


# -- KV to D1 ------------------------------------------------------------------------------


class _SourcedRow(dict):
    """A row for the staged import, saying which KV key it came from in any error."""

    source = "KV key"

    def __init__(self, key: str, values: dict[str, Any]):
        super().__init__(values)
        self.line = key


def import_from_kv(db: Database, store: KVStore, prefix: str, *, dry_run: bool = False,
                   now: int | None = None) -> Transfer:
    prefix = check_prefix(prefix)
    at = now_ms() if now is None else now
    result = Transfer("import", dry_run)
    live: list[KVKey] = []
    for key in store.keys(prefix):
        if not key.name.startswith(prefix):
            continue  # a store that lists more than asked: never touched
        if key.expiration is not None and key.expiration * 1000 <= at:
            result.skipped.append(Skipped(key.name, "expired in KV"))
        else:
            live.append(key)
    values = store.values(live) if live else {}
    gone = [key.name for key in live if values.get(key.name) is None]
    if gone:  # replaced (or deleted) between the listing and the read: list them once more
        again = {key.name: key for key in store.keys(prefix) if key.name in set(gone)}
        live = [again.get(key.name, key) for key in live]
        values.update(store.values(list(again.values())) if again else {})
    limit = limits_of(db).value_bytes
    rows: list[_SourcedRow] = []
    for key in live:
        value = values.get(key.name)
        if value is None:
            result.skipped.append(Skipped(key.name, "deleted from KV while it was read"))
            continue
        try:
            row = session_row(key, value, prefix, at)
            if limit is not None:
                _check_size(row, limit)
        except ValueError as exc:
            result.skipped.append(Skipped(key.name, str(exc)))
            continue
        rows.append(_SourcedRow(key.name, row))
    stored = _stored_updated_at(db, [row["user_id"] for row in rows])
    chosen = []
    for row in rows:
        theirs = stored.get(row["user_id"])
        if theirs is not None and theirs >= row["updated_at"]:
            result.kept.append(Skipped(row.line, _newer("D1", theirs, row["updated_at"])))
        else:
            chosen.append(row)
    if chosen and not dry_run:
        written, lost = import_session_rows(db, chosen, ConflictPolicy.NEWER)
        if lost:  # the bot saved some of them between the look and the merge: its rows won
            after = _stored_updated_at(db, [row["user_id"] for row in chosen])
            still = []
            for row in chosen:
                if after.get(row["user_id"]) == row["updated_at"]:
                    still.append(row)
                else:
                    result.kept.append(Skipped(row.line, "D1 changed while importing: kept D1's"))
            chosen = still
    result.written = [row.line for row in chosen]
    return result


def session_row(key: KVKey, value: bytes, prefix: str, now: int, *, live_only: bool = True) -> dict[str, Any]:
    """The server_sessions row an old KV value stands for; ValueError says why there is none
    (``live_only=False``: an expired session is still read)."""
    user_id = key.name[len(prefix):]
    if not user_id:
        raise ValueError("no user id after the prefix")
    try:
        data = encoding.loads(value)
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({_short(exc)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not a session object")
    fields = {snake: _field(data, snake, camel) for snake, camel in _FIELDS}
    status = fields["status"]
    if status is _MISSING:
        raise ValueError("no status")
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    info = _or(fields["collected_info"], {})
    if not isinstance(info, dict):
        raise ValueError(f"collectedInfo is a JSON {type(info).__name__}, not an object")
    messages = _or(fields["messages"], [])
    if not isinstance(messages, list):
        raise ValueError(f"messages is a JSON {type(messages).__name__}, not a list")
    recommendation = _or(fields["last_recommendation"], None)
    created = _time(fields["created_at"], "createdAt")
    updated = _time(fields["updated_at"], "updatedAt")
    expiration_ms = key.expiration * 1000 if key.expiration is not None else None
    if updated is None:
        # The KV code saved each session with a lifetime of SESSION_TTL: its last save was then.
        updated = created if created is not None else (
            expiration_ms - SESSION_TTL_MS if expiration_ms is not None else None)
    if updated is None:
        raise ValueError("no updatedAt, createdAt or KV expiration to date it by")
    if updated > now + CLOCK_SKEW_MS:
        # It would win every newer-wins comparison to come, over the D1 code's real saves.
        raise ValueError(f"updatedAt {updated} is in the future")
    expires = expiration_ms if expiration_ms is not None else updated + SESSION_TTL_MS
    if live_only and expires <= now:
        raise ValueError("expired (updatedAt + SESSION_TTL_MS has passed)")
    try:
        return {
            "user_id": user_id, "status": status,
            "collected_info": encoding.dumps_like_json_stringify(info),
            "last_recommendation": None if recommendation is None else encoding.dumps_like_json_stringify(recommendation),
            "messages": encoding.dumps_like_json_stringify(messages),
            "created_at": created if created is not None else updated, "updated_at": updated, "expires_at": expires,
        }
    except ValueError as exc:
        raise ValueError(f"cannot be stored as JSON ({_short(exc)})") from None


def _check_size(row: dict[str, Any], limit: int) -> None:
    """D1 stores at most ``limit`` bytes in one value and in one row: a larger KV value is skipped."""
    total = 0
    for column, value in row.items():
        size = len(encoding.stored_bytes(value)) if isinstance(value, str) else 8
        if size > limit:
            raise ValueError(f"{column} is {size:,} bytes; D1 stores at most {limit:,} in one value")
        total += size
    if total > limit:
        raise ValueError(f"the session is {total:,} bytes; D1 stores at most {limit:,} in one row")


_MISSING = object()


def _field(data: dict, snake: str, camel: str) -> Any:
    if snake in data and camel in data and snake != camel and data[snake] != data[camel]:
        raise ValueError(f"both {camel} and {snake}, with different values")
    if camel in data:
        return data[camel]
    return data.get(snake, _MISSING)


def _or(value: Any, empty: Any) -> Any:
    return empty if value is _MISSING or value is None else value


def _time(value: Any, name: str) -> int | None:
    """Epoch milliseconds (what Date.now() gives), or an ISO 8601 text with its zone."""
    if value is _MISSING or value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} is not a time")
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        if not 0 < value < 2**53:
            raise ValueError(f"{name} {value!r} is not a time in milliseconds")
        return int(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{name} {value!r} is not a time") from None
        if parsed.tzinfo is None:
            raise ValueError(f"{name} {value!r} has no time zone")
        return math.floor(parsed.timestamp() * 1000)
    raise ValueError(f"{name} {value!r} is not a time")


def _stored_updated_at(db: Database, user_ids: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    statements = []
    for start in range(0, len(user_ids), LOOKUP_KEYS):
        part = user_ids[start:start + LOOKUP_KEYS]
        statements.append(Statement(
            f"SELECT user_id, updated_at FROM server_sessions WHERE user_id IN ({', '.join('?' * len(part))})",
            tuple(part)))
    for start in range(0, len(statements), 50):
        for rows in db.query_many(statements[start:start + 50]):
            found.update((row["user_id"], row["updated_at"]) for row in rows)
    return found


def _newer(side: str, theirs: Any, ours: Any) -> str:
    return f"{side} is as new or newer (updated_at {theirs} >= {ours})"


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."


# -- D1 to KV ------------------------------------------------------------------------------


def export_to_kv(db: Database, store: KVStore, prefix: str, *, case: FieldCase | str = FieldCase.CAMEL,
                 dry_run: bool = False, now: int | None = None) -> Transfer:
    prefix = check_prefix(prefix)
    case = FieldCase.parse(case, "case")
    at = now_ms() if now is None else now
    result = Transfer("export", dry_run)
    existing = {key.name: key for key in store.keys(prefix) if key.name.startswith(prefix)}
    planned: list[tuple[str, dict[str, Any], int]] = []
    for row in iter_session_rows(db, "active", now=at):
        key = f"{prefix}{row['user_id']}"
        if len(encoding.stored_bytes(key)) > MAX_KEY_BYTES:
            result.skipped.append(Skipped(key, f"the key is over KV's {MAX_KEY_BYTES} bytes"))
            continue
        expiration = math.ceil(row["expires_at"] / 1000)
        if expiration - at / 1000 < MIN_TTL_S:
            left = max(0, round(row["expires_at"] - at) // 1000)
            result.skipped.append(Skipped(key, f"expires in {left} s; KV keeps nothing for under {MIN_TTL_S} s"))
            continue
        try:
            value = kv_value(row, case)
        except ValueError as exc:
            result.skipped.append(Skipped(key, str(exc)))
            continue
        planned.append((key, value, expiration))
    current = [existing[key] for key, _, _ in planned
               if key in existing and not _expired(existing[key], at)]
    values = store.values(current) if current else {}
    updated_field = "updatedAt" if case is FieldCase.CAMEL else "updated_at"
    writes: list[KVWrite] = []
    for key, value, expiration in planned:
        there = existing.get(key)
        live_there = there is not None and not _expired(there, at)
        if live_there and values.get(key) is not None:
            theirs = kv_session_updated_at(there, values[key], prefix, at)
            if theirs is None:
                result.kept.append(Skipped(key, "KV holds a value that is not a session; not overwritten"))
                continue
            if theirs >= value[updated_field]:
                result.kept.append(Skipped(key, _newer("KV", theirs, value[updated_field])))
                continue
        try:
            text = encoding.dumps_like_json_stringify(value)
        except ValueError as exc:
            result.skipped.append(Skipped(key, f"cannot be written as JSON ({_short(exc)})"))
            continue
        if len(encoding.stored_bytes(text)) > MAX_VALUE_BYTES:
            result.skipped.append(Skipped(key, f"the value is over KV's {MAX_VALUE_BYTES:,} bytes"))
            continue
        writes.append(KVWrite(key, text, expiration, there.metadata if live_there else None, there))
    # The minimum lifetime again, now: reading and planning took time, and KV refuses a whole
    # request for one value that would live less than a minute.
    soon = now_ms() / 1000 + MIN_TTL_S + EXPORT_MARGIN_S
    for write in [w for w in writes if w.expiration < soon]:
        left = max(0, round(write.expiration - now_ms() / 1000))
        result.skipped.append(Skipped(write.key, f"expires in {left} s; KV keeps nothing for under {MIN_TTL_S} s"))
    writes = [w for w in writes if w.expiration >= soon]
    changed = set([] if dry_run else store.write(writes))
    for key in sorted(changed):
        result.kept.append(Skipped(key, "KV changed while exporting: kept KV's"))
    result.written = [w.key for w in writes if w.key not in changed]
    return result


def kv_value(row: dict[str, Any], case: FieldCase) -> dict[str, Any]:
    """The old KV value for a row, fields spelled as ``case`` says; ValueError if a column will not decode."""
    value: dict[str, Any] = {}
    for snake, camel in _FIELDS:
        stored = row.get(snake)
        if snake in ("collected_info", "last_recommendation", "messages") and stored is not None:
            try:
                stored = encoding.loads(stored)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{snake} holds text that is not JSON ({_short(exc)})") from None
        if snake == "collected_info" and stored is None:
            stored = {}
        if snake == "messages" and stored is None:
            stored = []
        if snake == "collected_info" and not isinstance(stored, dict):
            raise ValueError(f"collected_info is a JSON {type(stored).__name__}, not an object")
        if snake == "messages" and not isinstance(stored, list):
            raise ValueError(f"messages is a JSON {type(stored).__name__}, not a list")
        value[camel if case is FieldCase.CAMEL else snake] = stored
    return value


def _expired(key: KVKey, at: int) -> bool:
    return key.expiration is not None and key.expiration * 1000 <= at


def kv_session_updated_at(key: KVKey, value: bytes, prefix: str, now: int) -> int | None:
    """When the KV value under ``key`` was saved, read as import reads it; None if it is not a session."""
    try:
        return session_row(key, value, prefix, now, live_only=False)["updated_at"]
    except ValueError:
        return None


def summary_lines(result: Transfer, source: str, target: str) -> Iterable[str]:
    verb = {("import", False): "imported", ("import", True): "would import",
            ("export", False): "exported", ("export", True): "would export"}[(result.direction, result.dry_run)]
    count = len(result.written)
    yield f"{verb} {count} session{'' if count == 1 else 's'} from {source} into {target}"
    for kept in result.kept:
        yield f"kept {kept.key}: {kept.reason}"
    for skipped in result.skipped:
        yield f"skipped {skipped.key}: {skipped.reason}"
