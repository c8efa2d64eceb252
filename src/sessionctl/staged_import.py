"""Import rows all or nothing, in short steps: staged in a table of the run's own, merged at once.

Writing a whole file in one transaction holds the write lock for as long as the file
takes to read and validate (a bot writing beside a local import waits for all of it),
and on remote D1 one request is bounded (1 MB of body here, 30 s there). So:

1. Tables a killed import left behind are dropped, and a staging table named for this
   run is created with the live table's columns (``sessionctl_import_<run>``).
2. Rows are validated as they are read and sent in chunks, each its own short
   transaction (a request of at most ``limits.request_bytes`` on remote D1). A chunk
   writes only into the staging table, with INSERT OR REPLACE by user_id, so sending one
   again after a lost answer writes the same rows: chunks are ``repeatable``.
3. One final batch checks the staging table holds exactly the rows sent, counts what the
   conflict policy will write, merges (skip / replace / newer, as ``ON CONFLICT`` clauses)
   and drops the staging table. The live table changes only here, all at once.

Anything failing before the merge (a bad line, a chunk D1 refuses, a lost connection)
leaves the live table as it was; the staging table is dropped on the way out, or by the
next import if that drop could not be sent. Two imports at once: the second clears the
first's staging table, and the first then fails whole ("nothing was imported").

A row too large for one request (a value of more than about 1 MB, up to D1's 2 MB) is
staged with its largest values empty, and each is then appended piece by piece, each
append written so that sending it twice leaves the same text.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from sessionctl.encoding import storable_text
from sessionctl.enums import ConflictPolicy
from sessionctl.errors import (
    DatabaseUnavailableError,
    ImportValidationError,
    OutcomeUnknownError,
    SessionctlError,
    SQLError,
)
from sessionctl.names import IMPORT_STAGING_PREFIX, TABLE
from sessionctl.targets.base import Database, MeasuresRequests, Statement, limits_of

LOCAL_CHUNK_ROWS = 500  # one short transaction each: a bot waits at most this many rows' writing
REMOTE_CHUNK_ROWS = 5_000  # and at most REQUEST_BUDGET bytes
REQUEST_SHARE = 0.9  # of limits.request_bytes for the statements; the rest is the envelope's
MAX_PARAMS = 100  # bound parameters in one statement (D1's limit)
KEYS_COLUMN = "sessionctl_keys"  # which optional columns a staged row carries


@dataclass(frozen=True)
class StagedRow:
    where: str  # "FILE:LINE", or "row N" when the rows came from no file
    user_id: str
    values: dict[str, Any]  # column -> value to bind (the row's own columns only)
    keys: int  # index of its set of optional columns


@dataclass
class _Plan:
    """The live table's columns and this run's staging table."""

    staging: str
    columns: list[str]  # 003's columns first, then later migrations' (table order)
    types: dict[str, str]
    required: tuple[str, ...]  # every row carries these (003's columns)
    keysets: list[tuple[str, ...]] = field(default_factory=list)  # optional columns, per key index

    def keys_of(self, extra: tuple[str, ...]) -> int:
        if extra not in self.keysets:
            self.keysets.append(extra)
        return self.keysets.index(extra)


def import_staged(db: Database, rows: Iterable[dict[str, Any]], on_conflict: ConflictPolicy | str,
                  required: tuple[str, ...]) -> tuple[int, int]:
    """Stage ``rows`` and merge them into the live table in one transaction; (written, skipped).

    ``required`` are the columns every row is written with (missing ones as NULL);
    other keys of a row name later migrations' columns.
    """
    policy = ConflictPolicy.parse(on_conflict, "on_conflict")
    plan = _prepare(db, required)
    sent = 0
    try:
        for chunk, first, last in _chunks(db, plan, rows):
            try:
                db.batch(chunk)
            except SessionctlError as exc:
                replacement = _staging_failed(exc, first, last, plan.staging)
                if replacement is exc:
                    raise
                raise replacement from exc
            sent = last[1]
        written = _merge(db, plan, policy, sent)
    except BaseException:
        _drop_quietly(db, plan.staging)
        raise
    return written, sent - written


# -- 1. the staging table ---------------------------------------------------------------


def _prepare(db: Database, required: tuple[str, ...]) -> _Plan:
    prefix = IMPORT_STAGING_PREFIX
    info, stale = db.query_many([
        Statement(f"PRAGMA table_info({TABLE})"),
        Statement(f"SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, {len(prefix)}) = ?",
                  (prefix,)),
    ])
    if not info:
        raise SQLError(f"no such table: {TABLE}")
    types = {row["name"]: str(row["type"] or "") for row in info}
    columns = [c for c in required if c in types] + [c for c in types if c not in required]
    plan = _Plan(f"{prefix}{secrets.token_hex(6)}", columns, types, required)
    definition = ", ".join(
        f"{_quote(c)} {types[c]}" + (" PRIMARY KEY" if c == "user_id" else "") for c in columns)
    db.batch([
        *(Statement(f"DROP TABLE IF EXISTS {_quote(row['name'])}", repeatable=True) for row in stale),
        Statement(f"CREATE TABLE IF NOT EXISTS {plan.staging} ({definition}, {KEYS_COLUMN} INTEGER NOT NULL)",
                  repeatable=True),
    ])
    return plan


def _drop_quietly(db: Database, staging: str) -> None:
    try:
        db.batch([Statement(f"DROP TABLE IF EXISTS {staging}", repeatable=True)])
    except SessionctlError:
        pass  # the next import drops it


# -- 2. chunks ---------------------------------------------------------------------------


def _chunks(db: Database, plan: _Plan,
            rows: Iterable[dict[str, Any]]) -> Iterator[tuple[list[Statement], tuple[str, int], tuple[str, int]]]:
    """(one request's statements, (where, number) of its first row, of its last row), in order."""
    limits = limits_of(db)
    measure = db if isinstance(db, MeasuresRequests) else None
    budget = int(limits.request_bytes * REQUEST_SHARE) if limits.request_bytes else None
    most_rows = REMOTE_CHUNK_ROWS if budget else LOCAL_CHUNK_ROWS
    pending: list[StagedRow] = []
    pending_bytes = 0
    first: tuple[str, int] | None = None
    number = 0
    seen: set[str | bytes] = set()
    for row in rows:
        number += 1
        staged = _staged(plan, row, number, db)
        stored_id = staged.values["user_id"]  # two spellings can store as the same text
        if stored_id in seen:  # the staging table would keep one of them, silently
            raise ImportValidationError(f"{staged.where}: user_id {staged.user_id!r} appears twice; "
                                        "nothing was imported")
        seen.add(stored_id)
        cost = _cost(measure, plan, staged) if measure else 0
        if budget is not None and cost > budget:
            if pending:
                yield _statements(plan, pending), first, (pending[-1].where, number - 1)
                pending, pending_bytes = [], 0
            for statement in _large_row(db, plan, staged, budget):  # one request each
                yield [statement], (staged.where, number), (staged.where, number)
            first = None
            continue
        if pending and (len(pending) >= most_rows or (budget is not None and pending_bytes + cost > budget)):
            yield _statements(plan, pending), first, (pending[-1].where, number - 1)
            pending, pending_bytes = [], 0
        if not pending:
            first = (staged.where, number)
        pending.append(staged)
        pending_bytes += cost
    if pending:
        yield _statements(plan, pending), first, (pending[-1].where, number)


def _cost(measure: MeasuresRequests, plan: _Plan, row: StagedRow) -> int:
    """About what ``row`` adds to a chunk's body: its values and its ``(?, ...)``, plus its share
    of the INSERT it goes in (a little more than it takes, never less)."""
    alone = _insert(plan, [row])
    head, _, values = alone.sql.partition(" VALUES ")
    rows_per_statement = max(1, MAX_PARAMS // (len(row.values) + 1))
    return measure.wire_bytes(Statement(values, alone.params)) + len(head) // rows_per_statement + 8


def _staged(plan: _Plan, row: dict[str, Any], number: int, db: Database) -> StagedRow:
    source, line = getattr(row, "source", None), getattr(row, "line", None)
    where = f"{source}:{line}" if source is not None and line is not None else f"row {number}"
    extra = tuple(c for c in plan.columns if c not in plan.required and c in row)
    values: dict[str, Any] = {}
    for column in (*plan.required, *extra):
        value = row.get(column)
        if isinstance(value, str):
            value = storable_text(value)
        values[column] = value
    _check_values(db, where, values)
    return StagedRow(where, row["user_id"], values, plan.keys_of(extra))


def _check_values(db: Database, where: str, values: dict[str, Any]) -> None:
    """D1 stores at most ``limits.value_bytes`` in one value, and in one row (SQLite's record)."""
    limit = limits_of(db).value_bytes
    if limit is None or not isinstance(db, MeasuresRequests):
        return
    total = 0
    for column, value in values.items():
        if isinstance(value, (bytes, bytearray)):
            raise ImportValidationError(f"{where}: {column} holds text that is not UTF-8, which D1's HTTP API "
                                        "cannot carry; nothing was imported")
        size = db.value_bytes(value)
        if size > limit:
            raise ImportValidationError(f"{where}: {column} is {size:,} bytes; D1 stores at most {limit:,} "
                                        "bytes in one value; nothing was imported")
        total += size
    if total > limit:
        raise ImportValidationError(f"{where}: the row is {total:,} bytes; D1 stores at most {limit:,} bytes "
                                    "in one row; nothing was imported")


def _insert(plan: _Plan, rows: list[StagedRow]) -> Statement:
    """One INSERT OR REPLACE of ``rows`` (all of one key set) into the staging table."""
    columns = [*rows[0].values, KEYS_COLUMN]
    tuples, params = [], []
    for row in rows:
        values = [*row.values.values(), row.keys]
        tuples.append("(" + ", ".join(_placeholder(plan, c, v) for c, v in zip(columns, values)) + ")")
        params += values
    return Statement(
        f"INSERT OR REPLACE INTO {plan.staging} ({', '.join(map(_quote, columns))}) VALUES " + ", ".join(tuples),
        tuple(params), repeatable=True)


def _placeholder(plan: _Plan, column: str, value: Any) -> str:
    # A value bound as bytes is text that was not UTF-8 (rows hold no BLOBs): CAST keeps it
    # TEXT, byte for byte, whatever the column's type; the merge copies it as it is.
    if isinstance(value, (bytes, bytearray)):
        return "CAST(? AS TEXT)"
    declared = plan.types.get(column, "").upper()
    text_affinity = "INT" not in declared and any(word in declared for word in ("CHAR", "CLOB", "TEXT"))
    return "CAST(? AS TEXT)" if text_affinity else "?"


def _statements(plan: _Plan, rows: list[StagedRow]) -> list[Statement]:
    """``rows`` as INSERTs of at most MAX_PARAMS parameters, rows of one key set together."""
    statements = []
    by_keys: dict[int, list[StagedRow]] = {}
    for row in rows:
        by_keys.setdefault(row.keys, []).append(row)
    for group in by_keys.values():
        per_statement = max(1, MAX_PARAMS // (len(group[0].values) + 1))
        statements += [_insert(plan, group[i:i + per_statement]) for i in range(0, len(group), per_statement)]
    return statements


def _large_row(db: Database, plan: _Plan, row: StagedRow, budget: int) -> list[Statement]:
    """A row over one request: staged with its largest texts empty, then appended piece by
    piece. Each statement is a request of its own (together they are over the budget)."""
    assert isinstance(db, MeasuresRequests)
    values = dict(row.values)
    deferred: list[str] = []
    by_size = sorted((c for c, v in values.items() if isinstance(v, str)),
                     key=lambda c: db.value_bytes(values[c]), reverse=True)
    for column in by_size:
        if db.wire_bytes(_insert(plan, [StagedRow(row.where, row.user_id, values, row.keys)])) <= budget:
            break
        values[column] = ""
        deferred.append(column)
    statements = [_insert(plan, [StagedRow(row.where, row.user_id, values, row.keys)])]
    for column in deferred:
        text, done = row.values[column], 0
        for piece in _pieces(db, text, budget):
            # substr() first: sent again after a lost answer, it appends the same piece once.
            statements.append(Statement(
                f"UPDATE {plan.staging} SET {_quote(column)} = substr({_quote(column)}, 1, ?) || ? "
                "WHERE user_id = ?", (done, piece, row.user_id), repeatable=True))
            done += len(piece)
    return statements


def _pieces(db: MeasuresRequests, text: str, budget: int) -> Iterator[str]:
    """``text`` cut into pieces that each fit in a request (as the target measures them)."""
    start = 0
    while start < len(text):
        size = len(text) - start
        while True:
            cost = db.wire_bytes(Statement("", (text[start:start + size],))) + 200
            if cost <= budget:
                break
            size = max(1, size * budget // cost - 16)
        yield text[start:start + size]
        start += size


# -- 3. the merge ----------------------------------------------------------------------


def _merge(db: Database, plan: _Plan, policy: ConflictPolicy, sent: int) -> int:
    """Merge the staging table into the live table in one transaction; how many rows it wrote."""
    staging = plan.staging
    guard = Statement(
        f"SELECT CASE WHEN (SELECT count(*) FROM {staging}) = ? THEN 1 "
        "ELSE json('the staging table does not hold the rows sent') END AS complete", (sent,))
    statements = [guard, Statement(_count_sql(staging, policy))]
    for keys, extra in enumerate(plan.keysets):
        statements.append(Statement(_merge_sql(plan, policy, extra), (keys,)))
    statements.append(Statement(f"DROP TABLE {staging}"))
    try:
        results = db.batch(statements)
    except OutcomeUnknownError as exc:
        raise OutcomeUnknownError(
            f"{exc} (the import's final merge: the rows were all written, or none)", reason=exc.reason) from exc
    except SQLError as exc:
        if "no such table" in str(exc) and staging in str(exc):
            raise _cleared(staging) from exc
        if "malformed JSON" in str(exc):  # the guard's refusal
            raise SQLError(f"the staging table {staging} does not hold the {sent} rows sent (another import "
                           "at the same time?); nothing was imported") from exc
        exc.args = (f"the final merge failed: {exc}; nothing was imported",)
        raise
    return int(results[1].rows[0]["n"]) if sent else 0


def _count_sql(staging: str, policy: ConflictPolicy) -> str:
    if policy is ConflictPolicy.REPLACE:
        return f"SELECT count(*) AS n FROM {staging}"
    newer = f" AND t.updated_at >= s.updated_at" if policy is ConflictPolicy.NEWER else ""
    return (f"SELECT count(*) AS n FROM {staging} AS s WHERE NOT EXISTS "
            f"(SELECT 1 FROM {TABLE} AS t WHERE t.user_id = s.user_id{newer})")


def _merge_sql(plan: _Plan, policy: ConflictPolicy, extra: tuple[str, ...]) -> str:
    columns = ", ".join(_quote(c) for c in (*plan.required, *extra))
    # WHERE on the SELECT: without it SQLite would read ON CONFLICT as a join's ON.
    sql = (f"INSERT INTO {TABLE} ({columns}) SELECT {columns} FROM {plan.staging} "
           f"WHERE {KEYS_COLUMN} = ? ON CONFLICT(user_id) DO ")
    if policy is ConflictPolicy.SKIP:
        return sql + "NOTHING"
    updates = ", ".join(f"{_quote(c)} = excluded.{_quote(c)}" for c in (*plan.required, *extra) if c != "user_id")
    sql += f"UPDATE SET {updates}"
    if policy is ConflictPolicy.NEWER:
        sql += f" WHERE excluded.updated_at > {TABLE}.updated_at"
    return sql


# -- errors ------------------------------------------------------------------------------


def _staging_failed(exc: SessionctlError, first: tuple[str, int], last: tuple[str, int],
                    staging: str) -> SessionctlError:
    rows = first[0] if first == last else f"{first[0]} to {last[0]}"
    if isinstance(exc, SQLError) and "no such table" in str(exc) and staging in str(exc):
        return _cleared(staging)
    if isinstance(exc, OutcomeUnknownError):
        # Whatever that chunk did, it did it to the staging table only.
        return DatabaseUnavailableError(f"{exc.reason} while staging {rows}; nothing was imported "
                                        "(the live table was not touched)")
    if isinstance(exc, (SQLError, DatabaseUnavailableError)):
        exc.args = (f"{exc} (while staging {rows}); nothing was imported",)
    return exc


def _cleared(staging: str) -> SQLError:
    return SQLError(f"the staging table {staging} is gone: another import started meanwhile and cleared "
                    "it; nothing was imported (run it again)")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
