"""The sessions repository: the API the bot's agent code and every sessionctl command share.

Python twin of ``src/server-agent.ts`` after migration 003::

    from sessionctl.repository import (
        SESSION_TTL_MS, ServerSession, SessionStatus,
        get_server_session, save_server_session, delete_server_session,
        cleanup_expired_sessions,
    )

``db`` is any target from :mod:`sessionctl.targets` (a SQLite file, wrangler's
local D1 state, remote D1). Times are epoch milliseconds, as the table's
INTEGER columns hold them. Every function takes ``now`` (epoch ms) so tests and
``sessionctl smoke`` control the clock; by default it is the wall clock.
No typer, no rich: this module is imported by the bot's code.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Callable

from sessionctl.errors import ConstraintError, InvalidSessionError
from sessionctl.targets.base import Database, Row

logger = logging.getLogger("sessionctl.repository")

SESSION_TTL_MS = 3600 * 1000
"""A session lives one hour after its last save (the seed's SESSION_TTL_MS)."""

TABLE = "server_sessions"
COLUMNS = (
    "user_id",
    "status",
    "collected_info",
    "last_recommendation",
    "messages",
    "created_at",
    "updated_at",
    "expires_at",
)
JSON_COLUMNS = ("collected_info", "last_recommendation", "messages")
TIME_COLUMNS = ("created_at", "updated_at", "expires_at")
DEFAULT_CLEANUP_BATCH = 500


class SessionStatus(str, Enum):
    """The five statuses the table's CHECK constraint accepts, in flow order."""

    GATHERING = "gathering"
    RECOMMENDING = "recommending"
    SELECTING = "selecting"
    ORDERING = "ordering"
    COMPLETED = "completed"

    def __str__(self) -> str:
        return self.value


STATUSES = tuple(status.value for status in SessionStatus)


@dataclass
class ServerSession:
    """One user's consultation. Times are filled in by :func:`save_server_session`."""

    status: SessionStatus | str = SessionStatus.GATHERING
    collected_info: dict[str, Any] = field(default_factory=dict)
    last_recommendation: Any = None
    messages: list[Any] = field(default_factory=list)
    created_at: int | None = None
    updated_at: int | None = None
    expires_at: int | None = None

    def is_expired(self, now: int | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= _now(now)


def now_ms() -> int:
    """The wall clock in epoch milliseconds (the unit of the table's time columns)."""
    return time.time_ns() // 1_000_000


def _now(now: int | None) -> int:
    return now_ms() if now is None else int(now)


# -- JSON: one encoder where data is written, explicit decoding where it is read --


def encode_json(value: Any) -> str | None:
    """Encode like JSON.stringify: compact, and text kept as text ("서버 추천", not \\uc11c...)."""
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_EMPTY: dict[str, Callable[[], Any]] = {
    "collected_info": dict,
    "last_recommendation": lambda: None,
    "messages": list,
}


def decode_json(user_id: str, column: str, text: str | None) -> Any:
    """Decode a stored JSON column; a malformed value yields the empty value and a warning."""
    if text is None:
        return _EMPTY[column]()
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        logger.warning(
            "server_sessions row %r: column %s holds malformed JSON; read as empty", user_id, column
        )
        return _EMPTY[column]()


def session_from_row(row: Row) -> ServerSession:
    """Build a ServerSession from a raw ``server_sessions`` row (JSON columns as stored text)."""
    user_id = row["user_id"]
    status = row["status"]
    return ServerSession(
        status=SessionStatus(status) if status in STATUSES else status,
        collected_info=decode_json(user_id, "collected_info", row["collected_info"]),
        last_recommendation=decode_json(user_id, "last_recommendation", row["last_recommendation"]),
        messages=decode_json(user_id, "messages", row["messages"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
    )


# -- the agent's API ----------------------------------------------------------------

_SELECT_COLUMNS = ", ".join(COLUMNS)

_GET_SQL = f"SELECT {_SELECT_COLUMNS} FROM {TABLE} WHERE user_id = ? AND expires_at > ?"

# One upsert. created_at survives a save while the stored session is still live;
# a save over an expired row starts a new session, so it gets a new created_at.
_SAVE_SQL = f"""
INSERT INTO {TABLE} ({_SELECT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(user_id) DO UPDATE SET
    status = excluded.status,
    collected_info = excluded.collected_info,
    last_recommendation = excluded.last_recommendation,
    messages = excluded.messages,
    created_at = CASE WHEN {TABLE}.expires_at > excluded.updated_at
                      THEN {TABLE}.created_at ELSE excluded.created_at END,
    updated_at = excluded.updated_at,
    expires_at = excluded.expires_at
RETURNING created_at
""".strip()

_DELETE_SQL = f"DELETE FROM {TABLE} WHERE user_id = ?"

# Each batch is one short statement that walks the expires_at index, so a bot
# writing beside the cleanup waits at most one batch for the lock.
_CLEANUP_BATCH_SQL = f"""
DELETE FROM {TABLE} WHERE user_id IN (
    SELECT user_id FROM {TABLE} WHERE expires_at <= ? ORDER BY expires_at LIMIT ?
)
""".strip()

CLEANUP_SELECT_SQL = f"SELECT user_id FROM {TABLE} WHERE expires_at <= ? ORDER BY expires_at LIMIT ?"
"""The query cleanup's batches select with; ``verify`` checks that its plan uses the index."""


def get_server_session(db: Database, user_id: str, *, now: int | None = None) -> ServerSession | None:
    """Return the live session of ``user_id``, or None when there is none or it has expired.

    One query (``WHERE user_id = ? AND expires_at > now``). A malformed JSON column
    does not raise: the field comes back empty and a warning is logged.
    """
    rows = db.query(_GET_SQL, (user_id, _now(now)))
    return session_from_row(rows[0]) if rows else None


def save_server_session(
    db: Database, user_id: str, session: ServerSession, *, now: int | None = None
) -> ServerSession:
    """Create or update ``user_id``'s session in one upsert and return it as stored.

    Sets ``updated_at`` = now and ``expires_at`` = now + SESSION_TTL_MS; keeps the
    ``created_at`` of a live stored session. Raises InvalidSessionError when the
    table's CHECK rejects the status.
    """
    if not isinstance(user_id, str) or not user_id:
        raise InvalidSessionError("user_id must be a non-empty string")
    at = _now(now)
    status = session.status.value if isinstance(session.status, SessionStatus) else session.status
    params = (
        user_id,
        status,
        encode_json(session.collected_info),
        encode_json(session.last_recommendation),
        encode_json(session.messages),
        at if session.created_at is None else session.created_at,
        at,
        at + SESSION_TTL_MS,
    )
    try:
        result = db.execute(_SAVE_SQL, params)
    except ConstraintError as exc:
        if "CHECK" in str(exc) or status not in STATUSES:
            raise InvalidSessionError(
                f"invalid session status {status!r} for user {user_id!r}: "
                f"must be one of {', '.join(STATUSES)}"
            ) from exc
        raise InvalidSessionError(f"session for user {user_id!r} rejected: {exc}") from exc
    created_at = result.rows[0]["created_at"] if result.rows else params[5]
    return replace(session, created_at=created_at, updated_at=at, expires_at=at + SESSION_TTL_MS)


def delete_server_session(db: Database, user_id: str) -> bool:
    """Delete ``user_id``'s session (live or expired); True when a row was deleted."""
    return db.execute(_DELETE_SQL, (user_id,)).changes > 0


def cleanup_expired_sessions(
    db: Database,
    *,
    now: int | None = None,
    batch_size: int = DEFAULT_CLEANUP_BATCH,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Delete every session with ``expires_at <= now``; return how many were deleted.

    Works in batches of ``batch_size`` rows, each its own short transaction, so the
    bot is never blocked for long. ``now`` is fixed for the whole run: a session the
    bot refreshes meanwhile moves its expires_at past it and survives.
    ``on_batch(deleted)`` is called after each batch with that batch's count.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    cutoff = _now(now)
    total = 0
    while True:
        deleted = db.execute(_CLEANUP_BATCH_SQL, (cutoff, batch_size)).changes
        total += deleted
        if on_batch is not None and deleted:
            on_batch(deleted)
        if deleted < batch_size:
            return total


def count_expired_sessions(db: Database, *, now: int | None = None) -> int:
    """How many sessions cleanup would delete at ``now``."""
    rows = db.query(f"SELECT count(*) AS n FROM {TABLE} WHERE expires_at <= ?", (_now(now),))
    return rows[0]["n"]
