"""The db interface every target implements.

The repository and the migration engine speak only this interface, so the
same functions run over a local SQLite file, wrangler's local D1 state and
remote D1 over HTTP. It is shaped by what D1 can do: single statements, batches
that commit as one transaction, and one text of several statements that D1
documents as one transaction. There is no open-ended ``BEGIN ... COMMIT``
because D1 rejects explicit transactions.

Over HTTP every call is a round trip, so the interface lets a caller say at once
what it needs: ``query_many`` reads several things in one request, ``script``
sends a migration as one text. ``limits`` says how much one request may carry,
so callers page and chunk below it instead of discovering it from a refusal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Iterator, Protocol, Sequence, runtime_checkable

Row = dict[str, Any]


@dataclass(frozen=True)
class Statement:
    sql: str
    params: tuple[Any, ...] = ()
    #: SQL a user wrote (a migration file's statement): run under D1's rules, as exactly
    #: one statement, the way D1 prepares it. sessionctl's own statements leave it False.
    from_user: bool = False
    #: Running it twice leaves what running it once leaves (a write into a table only this
    #: run uses): a remote target may send it again when an answer was lost.
    repeatable: bool = False


@dataclass
class Result:
    rows: list[Row] = field(default_factory=list)
    changes: int = 0


@dataclass(frozen=True)
class Limits:
    """What one request to a target may carry; None is no bound (a local file streams)."""

    request_bytes: int | None = None  # a request's body
    response_rows: int | None = None  # rows one answer may hold: readers page below it
    value_bytes: int | None = None  # one string or blob
    sql_bytes: int | None = None  # the SQL text of one request (a migration sent as one text)
    pattern_bytes: int | None = None  # a LIKE/GLOB pattern


NO_LIMITS = Limits()


def limits_of(db: object) -> Limits:
    """``db.limits``; a target written before limits existed (a wrapper in the bot's code) has none."""
    return getattr(db, "limits", NO_LIMITS)


class Database(Protocol):
    #: one line naming the target, e.g. "sqlite file sessions.db"
    description: str
    limits: Limits

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a read and return every row as a dict."""

    def query_many(self, statements: Sequence[Statement]) -> list[list[Row]]:
        """Run several reads, in order; each one's rows. Remote D1 sends them as ONE request."""

    def iter_query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Row]:
        """Run a read and yield rows one at a time (for streaming exports)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """Run one write statement in its own short transaction."""

    def batch(self, statements: Iterable[Statement]) -> list[Result]:
        """Run statements as ONE transaction: all commit, or none does.

        ``statements`` may be a generator, so a large import streams into it.
        """

    def script(self, statements: Sequence[Statement]) -> None:
        """Run statements as ONE transaction sent as ONE text, the form whose atomicity D1
        documents (a migration, a rollback's drop). No parameters: inline them with
        ``sql_literal``."""

    def reopen(self) -> "Database":
        """A second, independent connection to the same target (for concurrent work)."""

    def size_bytes(self) -> int | None:
        """The database's size on disk, when the target knows it."""

    def close(self) -> None: ...


@runtime_checkable
class MeasuresRequests(Protocol):
    """A target whose ``limits`` are in bytes of its own wire format (remote D1): callers
    that chunk below a limit measure with it, so they agree with what is sent."""

    def wire_bytes(self, statement: Statement) -> int:
        """The bytes ``statement`` adds to a request's body."""

    def value_bytes(self, value: Any) -> int:
        """The bytes one value takes, as the target measures its value limit."""


@dataclass(frozen=True)
class RestorePoint:
    """A moment the database can be put back to, and the command that does it."""

    bookmark: str
    taken_at: str  # ISO 8601, UTC
    command: str  # e.g. wrangler d1 time-travel restore telegram-conversations --bookmark=...


@runtime_checkable
class SupportsTimeTravel(Protocol):
    """A target that can name a point to restore the whole database to (remote D1)."""

    def restore_point(self) -> RestorePoint:
        """A bookmark for now; raises when none can be taken."""


@runtime_checkable
class SupportsDeferredCheckpoints(Protocol):
    """A local file in WAL mode, whose log a long run of short transactions copies back itself."""

    def deferred_checkpoints(self) -> ContextManager[Callable[[], None]]:
        """While open, this connection's commits never checkpoint the log (a checkpoint run
        inside a commit makes that transaction long); the function it gives checkpoints
        (PASSIVE: it neither waits for nor blocks a writer) and is called between transactions."""


def sql_literal(value: Any) -> str:
    """``value`` as SQL text, for statements that cannot take parameters (a ``script``).

    Text is single-quoted with its quotes doubled, which is all SQLite's string literals
    need; numbers as themselves; None as NULL. Anything else is refused rather than guessed.
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, str) and "\x00" not in value:
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for {type(value).__name__} {value!r:.40}")


def inline(statement: Statement) -> Statement:
    """``statement`` with its ``?`` parameters written in as literals.

    Only for sessionctl's own statements, whose ``?`` are all parameters (none sits in
    a string literal or a comment of theirs).
    """
    if not statement.params:
        return statement
    pieces = statement.sql.split("?")
    if len(pieces) != len(statement.params) + 1:
        raise ValueError(f"{len(statement.params)} parameters for {len(pieces) - 1} placeholders")
    text = pieces[0]
    for value, piece in zip(statement.params, pieces[1:]):
        text += sql_literal(value) + piece
    return Statement(text, (), from_user=statement.from_user, repeatable=statement.repeatable)
