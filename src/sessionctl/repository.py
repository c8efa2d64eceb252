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

import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Collection, Iterable, Iterator

from sessionctl import encoding
from sessionctl.encoding import dumps_like_json_stringify, has_lone_surrogates, is_storable_text, storable_text
from sessionctl.enums import ConflictPolicy, SessionState, SessionStatus, SortKey
from sessionctl.errors import ConstraintError, InvalidSessionError, PatternTooLongError
from sessionctl.names import TABLE
from sessionctl.targets.base import (
    Database,
    MeasuresRequests,
    Row,
    Statement,
    SupportsDeferredCheckpoints,
    limits_of,
)

logger = logging.getLogger("sessionctl.repository")

SESSION_TTL_MS = 3600 * 1000
"""A session lives one hour after its last save (the seed's SESSION_TTL_MS)."""

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


# SessionStatus (defined in sessionctl.enums with the other closed sets) is part of this API.
STATUSES = SessionStatus.values()


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
    """A JSON column's value as the bot's JSON.stringify writes it; None is stored as NULL.

    See :func:`sessionctl.encoding.dumps_like_json_stringify` (NaN and Infinity raise ValueError).
    """
    if value is None:
        return None
    return dumps_like_json_stringify(value)


# What each JSON column must decode to, and what a malformed value reads as.
_JSON_SHAPES: dict[str, tuple[type | None, Callable[[], Any]]] = {
    "collected_info": (dict, dict),
    "last_recommendation": (None, lambda: None),
    "messages": (list, list),
}


def decode_json(user_id: str, column: str, text: str | None) -> Any:
    """Decode a stored JSON column for the agent.

    Not JSON, not UTF-8, or JSON of the wrong shape (``messages`` must be a list,
    ``collected_info`` an object): the field reads as empty and a warning is logged.
    """
    shape, empty = _JSON_SHAPES[column]
    if text is None:
        return empty()
    problem = None
    if has_lone_surrogates(text):
        problem = "text that is not valid UTF-8"
    else:
        try:
            value = encoding.loads(text)
        except (TypeError, ValueError):
            problem = "malformed JSON"
        else:
            if shape is None or isinstance(value, shape):
                return value
            problem = f"JSON {type(value).__name__}, expected {shape.__name__}"
    logger.warning("server_sessions row %r: column %s holds %s; read as empty", user_id, column, problem)
    return empty()


def decode_row(row: Row) -> tuple[Row, list[str]]:
    """For operators: a raw row with its JSON columns decoded, and the columns that would not decode.

    Those keep their raw stored text (the agent's ``get`` reads them as empty instead).
    """
    out, malformed = dict(row), []
    for column in JSON_COLUMNS:
        text = row.get(column)
        if text is None:
            continue
        try:
            if has_lone_surrogates(text):
                raise ValueError("not UTF-8")
            out[column] = encoding.loads(text)
        except ValueError:
            malformed.append(column)
    return out, malformed


def session_from_row(row: Row) -> ServerSession:
    """Build a ServerSession from a raw ``server_sessions`` row (JSON columns as stored text)."""
    user_id = row["user_id"]
    status = row["status"]
    return ServerSession(
        status=SessionStatus.lookup(status) or status,  # an unknown stored status is kept as read
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


def _cleanup_select(where: str) -> str:
    return f"SELECT user_id FROM {TABLE} WHERE {where} ORDER BY expires_at LIMIT ?"


CLEANUP_SELECT_SQL = _cleanup_select("expires_at <= ?")
"""The query cleanup's batches select with; ``verify`` checks that its plan uses the index."""


def _expired(cutoff: int, user_prefix: str | None) -> tuple[str, tuple]:
    """The WHERE clause (and its params) of the rows cleanup deletes."""
    if not user_prefix:
        return "expires_at <= ?", (cutoff,)
    return "expires_at <= ? AND user_id >= ? AND user_id < ?", (cutoff, *_prefix_range(user_prefix))


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
    ``created_at`` of a live stored session. ``session.status`` is a SessionStatus or
    its string. Raises InvalidSessionError, before anything is written, for any other
    status and for NaN or Infinity in a JSON field (the bot's JSON.parse refuses them).
    """
    if not isinstance(user_id, str) or not user_id:
        raise InvalidSessionError("user_id must be a non-empty string")
    status = SessionStatus.lookup(session.status)
    if status is None:
        raise InvalidSessionError(_invalid_status(session.status, user_id))
    at = _now(now)
    params = (
        user_id,
        status.value,
        *_json_fields(user_id, session),
        at,  # created_at of a new row; a live stored row keeps its own (see _SAVE_SQL)
        at,
        at + SESSION_TTL_MS,
    )
    _check_stored_size(db, user_id, dict(zip(COLUMNS, params)))
    try:
        result = db.execute(_SAVE_SQL, params)
    except ConstraintError as exc:
        if "CHECK" in str(exc):  # a table whose CHECK allows fewer statuses than 003's
            raise InvalidSessionError(_invalid_status(status.value, user_id)) from exc
        raise InvalidSessionError(f"session for user {user_id!r} rejected: {exc}") from exc
    created_at = result.rows[0]["created_at"] if result.rows else at
    return replace(session, created_at=created_at, updated_at=at, expires_at=at + SESSION_TTL_MS)


def _check_stored_size(db: Database, user_id: str, row: dict[str, Any]) -> None:
    """A row over the target's value limit (D1: 2 MB per value and per row) is refused by name."""
    limit = limits_of(db).value_bytes
    if limit is None or not isinstance(db, MeasuresRequests):
        return
    sizes = {column: db.value_bytes(value) for column, value in row.items()}
    column = max(sizes, key=sizes.__getitem__)
    if sum(sizes.values()) > limit:
        raise InvalidSessionError(
            f"session for user {user_id!r} rejected: {sum(sizes.values()):,} bytes (of which {column} "
            f"{sizes[column]:,}); D1 stores at most {limit:,} bytes in one row. Nothing was written")


def _invalid_status(status: object, user_id: str) -> str:
    return f"invalid session status {status!r} for user {user_id!r}: must be one of {', '.join(STATUSES)}"


def _json_fields(user_id: str, session: ServerSession) -> list[str | None]:
    """The JSON columns' stored text, in JSON_COLUMNS order."""
    fields = []
    for column in JSON_COLUMNS:
        try:
            fields.append(encode_json(getattr(session, column)))
        except ValueError as exc:
            raise InvalidSessionError(f"session for user {user_id!r} rejected: {column}: {exc}") from None
    return fields


def delete_server_session(db: Database, user_id: str) -> bool:
    """Delete ``user_id``'s session (live or expired); True when a row was deleted."""
    return db.execute(_DELETE_SQL, (user_id,)).changes > 0


def cleanup_expired_sessions(
    db: Database,
    *,
    now: int | None = None,
    batch_size: int = DEFAULT_CLEANUP_BATCH,
    on_batch: Callable[[int], None] | None = None,
    user_prefix: str | None = None,
) -> int:
    """Delete every session with ``expires_at <= now``; return how many were deleted.

    Works in batches of ``batch_size`` rows, each its own short transaction, so the
    bot is never blocked for long. ``now`` is fixed for the whole run: a session the
    bot refreshes meanwhile moves its expires_at past it and survives.
    ``on_batch(deleted)`` is called after each batch with that batch's count.
    ``user_prefix`` limits the cleanup to user ids starting with it (smoke's own rows).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    where, params = _expired(_now(now), user_prefix)
    # Each batch is one short statement that walks the expires_at index, so a bot
    # writing beside the cleanup waits at most one batch for the lock.
    sql = f"DELETE FROM {TABLE} WHERE user_id IN ({_cleanup_select(where)})"
    params = (*params, batch_size)
    # A local file copies its log back between the batches, never inside one: a checkpoint
    # run by a batch's commit made that batch hundreds of ms long.
    checkpoints = db.deferred_checkpoints() if isinstance(db, SupportsDeferredCheckpoints) else nullcontext()
    total = 0
    with checkpoints as checkpoint:
        while True:
            deleted = db.execute(sql, params).changes
            total += deleted
            if on_batch is not None and deleted:
                on_batch(deleted)
            if deleted < batch_size:
                return total
            if checkpoint is not None:
                checkpoint()


def count_expired_sessions(db: Database, *, now: int | None = None, user_prefix: str | None = None) -> int:
    """How many sessions cleanup would delete at ``now`` (optionally only ids with ``user_prefix``)."""
    where, params = _expired(_now(now), user_prefix)
    return db.query(f"SELECT count(*) AS n FROM {TABLE} WHERE {where}", params)[0]["n"]


# -- the operator's queries (sessionctl sessions ...) ----------------------------------
#
# Raw rows: JSON columns as their stored text, times as epoch ms. Listing walks
# an index (the primary key, or idx_server_sessions_expires) and pages by keyset,
# so a page of 50 never scans a table of a million rows.

SORT_COLUMNS = {
    SortKey.EXPIRES: "expires_at",  # index-backed (idx_server_sessions_expires)
    SortKey.USER: "user_id",  # index-backed (primary key)
    SortKey.UPDATED: "updated_at",  # no index: a top-N sort over the matching rows
    SortKey.CREATED: "created_at",  # no index: a top-N sort over the matching rows
}
STATES = SessionState.values()


@dataclass(frozen=True)
class SessionQuery:
    """What ``sessions list`` asks for. ``after`` is the (sort value, user_id) of the last row seen.

    ``statuses``, ``state`` and ``sort`` take Enum members or their strings.
    """

    statuses: tuple[SessionStatus | str, ...] = ()
    state: SessionState | str = SessionState.ACTIVE
    user_pattern: str | None = None
    limit: int | None = 50
    sort: SortKey | str = SortKey.EXPIRES
    desc: bool = False
    after: tuple[Any, str] | None = None


def _prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (in UTF-8 order)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            following = last + 1 if last + 1 != 0xD800 else 0xE000  # surrogates are not text
            return prefix[:-1] + chr(following)
        prefix = prefix[:-1]
    return None


def _prefix_range(prefix: str) -> tuple[str, str]:
    upper = _prefix_upper_bound(prefix)
    return prefix, upper if upper is not None else "\U0010ffff" * (len(prefix) + 1)


def _user_filter(pattern: str) -> tuple[str, list[Any]]:
    """A glob (``*``, ``?``, ``[``) matches with GLOB; anything else is a prefix, as a key range.

    Never LIKE: ``%`` and ``_`` are ordinary characters in user ids.
    """
    if any(ch in pattern for ch in "*?["):
        return "user_id GLOB ?", [pattern]
    upper = _prefix_upper_bound(pattern)
    if upper is None:
        return "user_id >= ?", [pattern]
    return "user_id >= ? AND user_id < ?", [pattern, upper]


def build_list_query(query: SessionQuery, now: int) -> tuple[str, list[Any]]:
    """The SQL ``list_sessions`` runs (exposed so tests can EXPLAIN it).

    An unknown sort or state raises UnknownChoiceError, an unknown status InvalidSessionError.
    """
    sort = SortKey.parse(query.sort, "sort")
    state = SessionState.parse(query.state, "state")
    statuses = [SessionStatus.lookup(status) for status in query.statuses]
    if None in statuses:
        unknown = query.statuses[statuses.index(None)]
        raise InvalidSessionError(f"unknown status {unknown!r}: must be one of {', '.join(STATUSES)}")
    where: list[str] = []
    params: list[Any] = []
    if state is SessionState.ACTIVE:
        where.append("expires_at > ?")
        params.append(now)
    elif state is SessionState.EXPIRED:
        where.append("expires_at <= ?")
        params.append(now)
    if statuses:
        where.append(f"status IN ({', '.join('?' for _ in statuses)})")
        params.extend(status.value for status in statuses)
    if query.user_pattern:
        clause, values = _user_filter(query.user_pattern)
        where.append(clause)
        params.extend(values)
    column = SORT_COLUMNS[sort]
    direction = "DESC" if query.desc else "ASC"
    if query.after is not None:
        value, user_id = query.after
        op = "<" if query.desc else ">"
        if column == "user_id":
            where.append(f"user_id {op} ?")
            params.append(user_id)
        else:
            # Written so the range on `column` can still use its index.
            where.append(f"{column} {op}= ? AND ({column} {op} ? OR user_id {op} ?)")
            params.extend([value, value, user_id])
    if column == "user_id":
        # Walking the primary key would step over every expired row (unbounded until cleanup
        # runs) to find live ones; live rows are at most one TTL of traffic, so take them from
        # the expires_at index and sort them. A --user prefix keeps its primary-key range.
        order = "+user_id" if state is SessionState.ACTIVE and not query.user_pattern else "user_id"
    else:
        order = f"{column} {direction}, user_id"
    sql = f"SELECT {_SELECT_COLUMNS} FROM {TABLE}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {order} {direction}"
    if query.limit is not None:
        sql += " LIMIT ?"
        params.append(query.limit)
    return sql, params


PAGE_ROWS = 1_000
"""Rows per request where a target bounds its answers (remote D1) and more are asked for."""


def list_sessions(db: Database, query: SessionQuery, *, now: int | None = None) -> Iterator[Row]:
    """Stream raw rows matching ``query`` (live and/or expired), one page of it.

    On a target whose answers are bounded (remote D1) a page longer than PAGE_ROWS, or no
    limit at all, is read in requests of PAGE_ROWS rows, each continuing after the last
    row of the one before (keyset paging, as ``--cursor`` does).
    """
    _check_pattern(db, query.user_pattern)
    at = _now(now)
    bound = limits_of(db).response_rows
    if bound is None or (query.limit is not None and query.limit <= bound):
        return db.iter_query(*build_list_query(query, at))
    return _pages(db, query, at, min(PAGE_ROWS, bound))


def _pages(db: Database, query: SessionQuery, at: int, page: int) -> Iterator[Row]:
    remaining = query.limit
    while remaining is None or remaining > 0:
        size = page if remaining is None else min(page, remaining)
        rows = db.query(*build_list_query(replace(query, limit=size), at))
        yield from rows
        if len(rows) < size:
            return
        remaining = None if remaining is None else remaining - len(rows)
        query = replace(query, after=cursor_for(rows[-1], query.sort))


def _check_pattern(db: Database, pattern: str | None) -> None:
    """A glob longer than the target's LIKE/GLOB limit is refused before it is sent."""
    limit = limits_of(db).pattern_bytes
    if not pattern or limit is None or not any(ch in pattern for ch in "*?[") or not isinstance(db, MeasuresRequests):
        return
    size = db.value_bytes(pattern)
    if size > limit:
        raise PatternTooLongError("user_pattern", pattern, size=size, limit=limit)


def cursor_for(row: Row, sort: SortKey | str) -> tuple[Any, str]:
    """The keyset position just after ``row`` for the next page."""
    return (row[SORT_COLUMNS[SortKey.parse(sort, "sort")]], row["user_id"])


def find_session_row(db: Database, user_id: str) -> Row | None:
    """The raw row of ``user_id``, expired or not (the agent's ``get`` hides expired ones)."""
    rows = db.query(f"SELECT {_SELECT_COLUMNS} FROM {TABLE} WHERE user_id = ?", (user_id,))
    return rows[0] if rows else None


def delete_sessions(db: Database, user_ids: list[str]) -> list[str]:
    """Delete these users' sessions in one transaction; return the ids that existed."""
    chunks = [user_ids[i : i + 90] for i in range(0, len(user_ids), 90)]  # D1: <= 100 params
    results = db.batch(
        Statement(
            f"DELETE FROM {TABLE} WHERE user_id IN ({', '.join('?' for _ in chunk)}) RETURNING user_id",
            tuple(chunk),
        )
        for chunk in chunks
    )
    deleted = {row["user_id"] for result in results for row in result.rows}
    return [user_id for user_id in dict.fromkeys(user_ids) if user_id in deleted]


@dataclass
class SessionStats:
    total: int
    active: int
    expired: int
    by_status: dict[str, int]
    oldest_created_at: int | None
    newest_updated_at: int | None
    expiring_within_5m: int
    expiring_within_60m: int
    size_bytes: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def session_stats(db: Database, *, now: int | None = None) -> SessionStats:
    """Counts by status, live vs expired, what expires soon, oldest/newest, size."""
    at = _now(now)
    # ONE statement, so every figure comes from the same snapshot: separate queries beside
    # a writing bot could report more active sessions than there are sessions.
    row = db.query(
        f"SELECT (SELECT json_group_object(status, n) FROM "
        f"        (SELECT status, count(*) AS n FROM {TABLE} GROUP BY status)) AS by_status,"
        f" (SELECT count(*) FROM {TABLE}) AS total,"
        f" (SELECT min(created_at) FROM {TABLE}) AS oldest,"
        f" (SELECT max(updated_at) FROM {TABLE}) AS newest,"
        # Three range counts on the expires_at index.
        f" (SELECT count(*) FROM {TABLE} WHERE expires_at > ?) AS active,"
        f" (SELECT count(*) FROM {TABLE} WHERE expires_at > ? AND expires_at <= ?) AS in5,"
        f" (SELECT count(*) FROM {TABLE} WHERE expires_at > ? AND expires_at <= ?) AS in60",
        (at, at, at + 5 * 60_000, at, at + 60 * 60_000),
    )[0]
    by_status = {status: 0 for status in STATUSES}
    by_status.update(encoding.loads(row["by_status"] or "{}"))
    overall = soon = row
    return SessionStats(
        total=overall["total"],
        active=soon["active"],
        expired=overall["total"] - soon["active"],
        by_status=by_status,
        oldest_created_at=overall["oldest"],
        newest_updated_at=overall["newest"],
        expiring_within_5m=soon["in5"],
        expiring_within_60m=soon["in60"],
        size_bytes=db.size_bytes(),
    )


# -- raw rows in and out (export / import / rollback backups) ---------------------------

CONFLICT_POLICIES = ConflictPolicy.values()

def iter_session_rows(db: Database, state: str = "all", *, now: int | None = None) -> Iterator[Row]:
    """Every raw row (``state`` active / expired / all) in user_id order, streamed: export's source.

    Every column the table has (later migrations' too), as rollback's backup holds them.
    Walks the primary key (``user_id > last ORDER BY user_id LIMIT n`` where answers are
    bounded), so each page reads about as many rows as it returns.
    """
    at = _now(now)
    state = SessionState.parse(state, "state")
    # "+expires_at": the filter must not lure the planner onto the expires_at index, which
    # would read every matching row and sort them for each page.
    where, params = {
        SessionState.ACTIVE: ("+expires_at > ?", (at,)),
        SessionState.EXPIRED: ("+expires_at <= ?", (at,)),
    }.get(state, ("", ()))
    return iter_rows_by_key(db, "*", where, params)


def iter_rows_by_key(db: Database, columns: str = "*", where: str = "", params: tuple = (),
                     page_rows: int = PAGE_ROWS, *, table: str = TABLE) -> Iterator[Row]:
    """``SELECT columns FROM table [WHERE where] ORDER BY user_id``, streamed (server_sessions
    unless ``table`` names a copy of it).

    A local file streams it as one query (one snapshot); a target with bounded answers
    (remote D1) is read a page at a time by key: ``user_id > last ... LIMIT page_rows``.
    """
    condition = f" AND ({where})" if where else ""
    bound = limits_of(db).response_rows
    if bound is None:
        return db.iter_query(f"SELECT {columns} FROM {table}{' WHERE ' + where if where else ''} "
                             "ORDER BY user_id", params)
    return _rows_by_key(db, table, columns, condition, params, min(page_rows, bound))


def _rows_by_key(db: Database, table: str, columns: str, condition: str, params: tuple,
                 page: int) -> Iterator[Row]:
    sql = f"SELECT {columns} FROM {table} WHERE user_id > ?{condition} ORDER BY user_id LIMIT ?"
    last = ""  # every user_id is a non-empty string, so > '' starts at the first
    while True:
        rows = db.query(sql, (last, *params, page))
        yield from rows
        if len(rows) < page:
            return
        last = rows[-1]["user_id"]


def extra_columns(db: Database) -> tuple[str, ...]:
    """Columns the table has beyond 003's eight (added by later migrations), in table order."""
    return tuple(row["name"] for row in db.query(f"PRAGMA table_info({TABLE})") if row["name"] not in COLUMNS)


def raw_row_problem(row: Any, extra: Collection[str] = ()) -> str | None:
    """Why ``row`` cannot be stored as a server_sessions row, or None if it can.

    ``extra`` names the columns later migrations added; they take any JSON scalar.
    """
    if not isinstance(row, dict):
        return "not a JSON object"
    unknown = [key for key in row if key not in COLUMNS and key not in extra]
    if unknown:
        return f"unknown column {unknown[0]!r}"
    for column in extra:
        value = row.get(column)
        if isinstance(value, (dict, list)) or isinstance(value, bool):
            return f"{column} must be a string, a number or null, got {type(value).__name__}"
        if isinstance(value, str) and not is_storable_text(value):
            return f"{column} holds a lone surrogate, which is not storable text"
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            return f"{column} does not fit a 64-bit integer, got {value!r}"
    user_id = row.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        return "user_id must be a non-empty string"
    if row.get("status") not in STATUSES:
        return f"status {row.get('status')!r} is not one of {', '.join(STATUSES)}"
    for column in TIME_COLUMNS:
        value = row.get(column)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{column} must be an integer (epoch ms), got {value!r}"
        if not -(2**63) <= value < 2**63:
            return f"{column} does not fit a 64-bit integer, got {value!r}"
    for column in JSON_COLUMNS:
        if not isinstance(row.get(column), (str, type(None))):
            return f"{column} must be the stored JSON text (a string) or null"
    for column in ("user_id", *JSON_COLUMNS):
        value = row.get(column)
        if isinstance(value, str) and not is_storable_text(value):
            return f"{column} holds a lone surrogate, which is not storable text"
    return None


def import_session_rows(db: Database, rows: Iterable[Row], on_conflict: str = "skip") -> tuple[int, int]:
    """Write raw rows all or nothing; return (written, skipped).

    Rows are staged in chunks, each its own short transaction (the live table is not
    locked meanwhile), then merged into the live table in ONE transaction (see
    ``sessionctl.staged_import``). ``rows`` may be a generator that validates as it
    goes: if it raises, nothing is written. Keys beyond 003's columns (a backup of a
    table that later migrations widened) are written to the columns of those names.
    ``on_conflict`` decides a user_id already stored: skip, replace, or newer (the
    larger updated_at wins).
    """
    from sessionctl.staged_import import import_staged

    return import_staged(db, rows, ConflictPolicy.parse(on_conflict, "on_conflict"), COLUMNS)
