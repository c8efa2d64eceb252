"""The db interface every target implements.

The repository and the migration engine speak only this interface, so the
same functions run over a local SQLite file, wrangler's local D1 state and
(later) remote D1 over HTTP. It is shaped by what D1 can do: single statements,
and batches that commit as one transaction. There is no open-ended
``BEGIN ... COMMIT`` because D1 rejects explicit transactions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Protocol, Sequence

Row = dict[str, Any]


@dataclass(frozen=True)
class Statement:
    sql: str
    params: tuple[Any, ...] = ()
    #: SQL a user wrote (a migration file's statement): run under D1's rules, as exactly
    #: one statement, the way D1 prepares it. sessionctl's own statements leave it False.
    from_user: bool = False


@dataclass
class Result:
    rows: list[Row] = field(default_factory=list)
    changes: int = 0


class Database(Protocol):
    #: one line naming the target, e.g. "sqlite file sessions.db"
    description: str

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a read and return every row as a dict."""

    def iter_query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Row]:
        """Run a read and yield rows one at a time (for streaming exports)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """Run one write statement in its own short transaction."""

    def batch(self, statements: Iterable[Statement]) -> list[Result]:
        """Run statements as ONE transaction: all commit, or none does.

        ``statements`` may be a generator, so a large import streams into it.
        """

    def reopen(self) -> "Database":
        """A second, independent connection to the same target (for concurrent work)."""

    def size_bytes(self) -> int | None:
        """The database's size on disk, when the target knows it."""

    def close(self) -> None: ...
