"""D1's rules on a local SQLite connection, so SQL that D1 refuses is refused here too.

D1 runs every statement a user sends through a SQLite authorizer (and a few connection
settings) of its own. A migration that passes on a plain local file can therefore still
fail on D1: ``PRAGMA journal_mode``, ``BEGIN``, ``ATTACH``, ``sqlite_version()``, a
table named ``_cf_...``, a temporary table, an R*Tree, a 51-character LIKE pattern...
This module applies the same rules to an APSW connection. They were read from D1's
engine and checked against the pinned wrangler (``wrangler d1 execute --local`` and
``wrangler dev``); where the two differ, the pinned wrangler won: see
tests/test_d1_rules.py, which runs every rule on both sides.

How to use it::

    d1_rules.install(conn)            # once per connection
    conn.execute("BEGIN IMMEDIATE")   # sessionctl's own SQL: unrestricted
    with d1_rules.enforced(conn):     # SQL a user wrote (a migration file): D1's rules
        conn.execute(user_sql)
    conn.execute("COMMIT")

- ``install(conn)`` turns on what D1 turns on for every statement: foreign keys,
  SQLite's defensive mode (no writes to sqlite_master or to an FTS5 table's shadow
  tables) and no extension loading. It also installs the authorizer, which refuses
  nothing until ``enforced()`` is entered: sessionctl needs ``PRAGMA journal_mode=WAL``,
  ``BEGIN IMMEDIATE``, ``PRAGMA integrity_check`` and so on for itself, as D1 runs its
  own bookkeeping SQL unrestricted.
- ``enforced(conn)`` applies D1's authorizer and D1's limits for the block;
  ``trusted(conn)`` lifts them again inside such a block. Both restore the previous
  state on exit, so they nest.
- After a refusal (an ``apsw.AuthError``, or an ``apsw.SQLError`` for a function),
  ``last_refusal(conn)`` says what was refused ("PRAGMA journal_mode = WAL",
  "function sqlite_version", "ATTACH") and ``refusal_message(conn)`` gives the message
  D1 gives for it (SQLite prints only "not authorized" for most refusals).

D1 runs each batch of statements inside a transaction. Some of its behaviour follows
from that alone, and holds here only if the caller also runs user SQL inside one:
``VACUUM`` fails ("cannot VACUUM from within a transaction"), ``PRAGMA foreign_keys =
OFF`` is accepted but changes nothing, and ``PRAGMA defer_foreign_keys = ON`` defers the
foreign key check to the COMMIT.

Switching between trusted and enforced re-installs the authorizer: SQLite then
re-prepares every cached statement before its next run, so a statement prepared while
trusted is checked again when it runs enforced (APSW caches statements by their text).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from types import MappingProxyType
from typing import Iterator

import apsw

# -- what D1 allows ------------------------------------------------------------------------

# D1 refuses every name starting with this (its own tables, like _cf_METADATA), as the
# name of a table, index, view, trigger or savepoint, and to read or write. The
# comparison is case-sensitive in the pinned wrangler: _CF_x is an ordinary name there.
RESERVED_NAME_PREFIX = "_cf_"

# Every SQL function a statement may call; any other is "not authorized to use function".
# D1's own list. Some names in it do not exist in D1's SQLite (soundex, max_scalar,
# min_scalar: "no such function") and load_extension always fails ("not authorized"),
# as extension loading is off on both sides. sqlite_rename_* and sqlite_drop_column are
# what SQLite itself calls to carry out ALTER TABLE.
ALLOWED_FUNCTIONS = frozenset({
    # core functions
    "abs", "changes", "char", "coalesce", "concat", "concat_ws", "format", "glob", "hex",
    "ifnull", "iif", "instr", "last_insert_rowid", "length", "like", "likelihood", "likely",
    "load_extension", "lower", "ltrim", "max_scalar", "min_scalar", "nullif", "octet_length",
    "printf", "quote", "random", "randomblob", "replace", "round", "rtrim", "sign", "soundex",
    "substr", "substring", "total_changes", "trim", "typeof", "unhex", "unicode", "unlikely",
    "upper", "zeroblob",
    # date and time
    "date", "time", "datetime", "julianday", "unixepoch", "strftime", "timediff",
    "current_date", "current_time", "current_timestamp",
    # aggregates
    "avg", "count", "group_concat", "max", "min", "string_agg", "sum", "total",
    # window functions
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value",
    # math (the names only: log10, power and ceiling are refused although SQLite has them)
    "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "cos", "cosh",
    "degrees", "exp", "floor", "ln", "log", "log2", "mod", "pi", "pow", "radians", "sin",
    "sinh", "sqrt", "tan", "tanh", "trunc",
    # JSON (not json_pretty, nor json_error_position)
    "json", "jsonb", "json_array", "jsonb_array", "json_array_length", "json_extract",
    "jsonb_extract", "->", "->>", "json_insert", "jsonb_insert", "json_object", "jsonb_object",
    "json_patch", "jsonb_patch", "json_remove", "jsonb_remove", "json_replace", "jsonb_replace",
    "json_set", "jsonb_set", "json_type", "json_valid", "json_quote", "json_group_array",
    "jsonb_group_array", "json_group_object", "jsonb_group_object", "json_each", "json_tree",
    # FTS5
    "match", "highlight", "bm25", "snippet",
    # ALTER TABLE's own helpers
    "sqlite_rename_column", "sqlite_rename_table", "sqlite_rename_test", "sqlite_drop_column",
    "sqlite_rename_quotefix",
})

# The PRAGMAs D1 allows, by the argument each accepts (a pragma can also be written as
# a table-valued function, SELECT * FROM pragma_x(...): the same rules apply).
PRAGMAS_ALWAYS_ALLOWED = frozenset({"table_list"})
# Argument required, and not a reserved name.
PRAGMAS_TAKING_AN_OBJECT_NAME = frozenset({
    "table_info", "table_xinfo", "foreign_key_list", "index_info", "index_list", "index_xinfo",
})
# Argument optional; if given, not a reserved name.
PRAGMAS_TAKING_AN_OPTIONAL_OBJECT_NAME = frozenset({"foreign_key_check"})
# Argument optional; if given, a spelling of true or false (see _is_boolean).
PRAGMAS_TAKING_A_BOOLEAN = frozenset({
    "case_sensitive_like", "foreign_keys", "defer_foreign_keys", "ignore_check_constraints",
    "legacy_alter_table", "recursive_triggers", "reverse_unordered_selects",
})
# Argument optional; if given, a 32-bit integer (a bit mask).
PRAGMAS_TAKING_A_NUMBER = frozenset({"optimize"})
# Argument optional; if given, an unsigned integer or a name that is not reserved.
PRAGMAS_TAKING_A_NUMBER_OR_OBJECT_NAME = frozenset({"quick_check"})
# No argument at all.
PRAGMAS_WITHOUT_ARGUMENT = frozenset({"data_version"})

# CREATE VIRTUAL TABLE ... USING one of these (compared without case); every other module
# (fts3, fts4, rtree, geopoly, ...) is refused.
ALLOWED_VIRTUAL_TABLE_MODULES = frozenset({"fts5", "fts5vocab"})

# Table-valued functions this SQLite has and D1's has not: D1 says "no such table".
TABLES_D1_LACKS = frozenset({"dbstat", "carray"})

# D1's limits on a statement (sqlite3_limit). Outside enforced() the connection keeps
# its own. Two are refusals in effect: ATTACHED 0, and VDBE_OP, whose overflow SQLite
# reports as "out of memory".
D1_LIMITS = MappingProxyType({
    apsw.SQLITE_LIMIT_LENGTH: 2_200_000,  # bytes in a string or blob
    apsw.SQLITE_LIMIT_SQL_LENGTH: 100_000,  # bytes in one statement
    apsw.SQLITE_LIMIT_COLUMN: 100,
    apsw.SQLITE_LIMIT_EXPR_DEPTH: 100,
    apsw.SQLITE_LIMIT_COMPOUND_SELECT: 5,
    apsw.SQLITE_LIMIT_VDBE_OP: 25_000,
    apsw.SQLITE_LIMIT_FUNCTION_ARG: 127,
    apsw.SQLITE_LIMIT_ATTACHED: 0,
    apsw.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: 50,
    apsw.SQLITE_LIMIT_VARIABLE_NUMBER: 100,
    apsw.SQLITE_LIMIT_TRIGGER_DEPTH: 10,
    apsw.SQLITE_LIMIT_WORKER_THREADS: 0,
})

# What D1 says to BEGIN, COMMIT, ROLLBACK, SAVEPOINT and RELEASE: it runs each batch in a
# transaction of its own.
TRANSACTION_REFUSED_MESSAGE = (
    "To execute a transaction, please use the state.storage.transaction() or "
    "state.storage.transactionSync() APIs instead of the SQL BEGIN TRANSACTION or SAVEPOINT "
    "statements. The JavaScript API is safer because it will automatically roll back on "
    "exceptions, and because it interacts correctly with Durable Objects' automatic atomic "
    "write coalescing."
)

_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"})
_BOOLEAN_SPELLINGS = ("true", "false", "yes", "no", "on", "off", "1", "0")

# How a refused action is described: "<words> <first argument>".
_ACTION_WORDS = {
    apsw.SQLITE_CREATE_TABLE: "CREATE TABLE", apsw.SQLITE_DROP_TABLE: "DROP TABLE",
    apsw.SQLITE_CREATE_VIEW: "CREATE VIEW", apsw.SQLITE_DROP_VIEW: "DROP VIEW",
    apsw.SQLITE_CREATE_INDEX: "CREATE INDEX", apsw.SQLITE_DROP_INDEX: "DROP INDEX",
    apsw.SQLITE_CREATE_TRIGGER: "CREATE TRIGGER", apsw.SQLITE_DROP_TRIGGER: "DROP TRIGGER",
    apsw.SQLITE_CREATE_TEMP_TABLE: "CREATE TEMP TABLE", apsw.SQLITE_DROP_TEMP_TABLE: "DROP TEMP TABLE",
    apsw.SQLITE_CREATE_TEMP_VIEW: "CREATE TEMP VIEW", apsw.SQLITE_DROP_TEMP_VIEW: "DROP TEMP VIEW",
    apsw.SQLITE_CREATE_TEMP_INDEX: "CREATE TEMP INDEX", apsw.SQLITE_DROP_TEMP_INDEX: "DROP TEMP INDEX",
    apsw.SQLITE_CREATE_TEMP_TRIGGER: "CREATE TEMP TRIGGER",
    apsw.SQLITE_DROP_TEMP_TRIGGER: "DROP TEMP TRIGGER",
    apsw.SQLITE_CREATE_VTABLE: "CREATE VIRTUAL TABLE", apsw.SQLITE_DROP_VTABLE: "DROP VIRTUAL TABLE",
    apsw.SQLITE_INSERT: "INSERT INTO", apsw.SQLITE_DELETE: "DELETE FROM", apsw.SQLITE_UPDATE: "UPDATE",
    apsw.SQLITE_READ: "READ", apsw.SQLITE_ALTER_TABLE: "ALTER TABLE", apsw.SQLITE_REINDEX: "REINDEX",
    apsw.SQLITE_ANALYZE: "ANALYZE", apsw.SQLITE_ATTACH: "ATTACH", apsw.SQLITE_DETACH: "DETACH",
}


# -- the public functions ---------------------------------------------------------------------


def install(conn: "apsw.Connection") -> None:
    """Give ``conn`` D1's connection settings and its authorizer (idle until enforced())."""
    conn.execute("PRAGMA foreign_keys = ON")
    conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
    conn.enable_load_extension(False)
    conn.authorizer = _Rules()


@contextmanager
def enforced(conn: "apsw.Connection") -> Iterator[None]:
    """Run the block under D1's rules: SQL a user wrote."""
    rules = _rules(conn)
    rules.refusal = None
    with _mode(conn, rules, enforcing=True):
        yield


@contextmanager
def trusted(conn: "apsw.Connection") -> Iterator[None]:
    """Run the block unrestricted (sessionctl's own SQL), even inside enforced()."""
    with _mode(conn, _rules(conn), enforcing=False):
        yield


def last_refusal(conn: "apsw.Connection") -> str | None:
    """What D1's rules last refused on ``conn`` since enforced() was entered, or None."""
    refusal = _rules(conn).refusal
    return refusal[0] if refusal else None


def refusal_message(conn: "apsw.Connection") -> str | None:
    """D1's message for the last refusal ("not authorized" names what, here), or None."""
    refusal = _rules(conn).refusal
    return refusal[1] if refusal else None


# -- the authorizer -----------------------------------------------------------------------------


class _Rules:
    """The authorizer callback, and the state of one connection."""

    def __init__(self) -> None:
        self.enforcing = False
        self.refusal: tuple[str, str] | None = None  # (what, message)
        self.saved_limits: dict[int, int] = {}

    def __call__(self, action: int, arg1: str | None, arg2: str | None, db: str | None,
                 _trigger: str | None) -> int:
        # The 5th argument (trigger or view) changes nothing: in D1, what a trigger does
        # is checked like the statement that fired it.
        if not self.enforcing:
            return apsw.SQLITE_OK
        refusal = _refusal(action, arg1, arg2, db)
        if refusal is None:
            return apsw.SQLITE_OK
        self.refusal = refusal
        return apsw.SQLITE_DENY


def _refusal(action: int, arg1: str | None, arg2: str | None, db: str | None) -> tuple[str, str] | None:
    """None if D1 allows the action, else (what, D1's message)."""
    if action in (apsw.SQLITE_ALTER_TABLE, apsw.SQLITE_DETACH):
        # SQLite passes the schema first for these two; put the table name first.
        arg1, arg2, db = arg2, db, arg1

    if db == "temp":
        # D1 has no temporary objects: the temp schema may be read (it is always empty),
        # and nothing else.
        if action in (apsw.SQLITE_READ, apsw.SQLITE_UPDATE) and _name_ok(arg1):
            return None
        if action in (apsw.SQLITE_INSERT, apsw.SQLITE_DELETE) and arg1 in _SCHEMA_TABLES:
            what = "TEMP objects"  # CREATE TEMP TABLE and the like write the temp schema first
        else:
            what = f"{_describe(action, arg1, arg2, db)} (temp schema)"
        return what, f"not authorized: {what}"
    if db is not None and db != "main":
        what = _describe(action, arg1, arg2, db)
        return what, f"not authorized: {what}"

    if action == apsw.SQLITE_FUNCTION:
        # Without case: SQLite 3.54 passes CURRENT_TIMESTAMP as written when it checks a
        # column's DEFAULT, where D1's SQLite passes the function's own lower-case name.
        if arg2 is not None and arg2.lower() in ALLOWED_FUNCTIONS:
            return None
        return f"function {arg2}", f"not authorized to use function: {arg2}"
    if action in (apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT):
        return _describe_transaction(action, arg1, arg2), TRANSACTION_REFUSED_MESSAGE
    if action == apsw.SQLITE_READ and arg1 in TABLES_D1_LACKS:
        return f"table-valued function {arg1}", f"no such table: {arg1}"
    if action == apsw.SQLITE_READ and arg2 and not _name_ok(arg1):
        # SQLite's own message for a refused column, as D1 shows it. (A read without a
        # column, as in count(*), gets the plain "not authorized" below.)
        return f"READ {arg1}.{arg2}", f"access to {arg1}.{arg2} is prohibited"
    if _allowed(action, arg1, arg2):
        return None
    what = _describe(action, arg1, arg2, db)
    return what, f"not authorized: {what}"


def _allowed(action: int, arg1: str | None, arg2: str | None) -> bool:
    if action in (apsw.SQLITE_SELECT, apsw.SQLITE_RECURSIVE, apsw.SQLITE_ANALYZE):
        # ANALYZE may touch any table: it only writes statistics to sqlite_stat1.
        return True
    if action in (apsw.SQLITE_CREATE_TABLE, apsw.SQLITE_DROP_TABLE, apsw.SQLITE_CREATE_VIEW,
                  apsw.SQLITE_DROP_VIEW, apsw.SQLITE_INSERT, apsw.SQLITE_DELETE,
                  apsw.SQLITE_UPDATE, apsw.SQLITE_READ, apsw.SQLITE_REINDEX,
                  apsw.SQLITE_ALTER_TABLE):
        # ALTER TABLE ... RENAME TO _cf_x passes: the pinned wrangler checks only the
        # table being altered (and reading _cf_x afterwards is refused).
        return _name_ok(arg1)
    if action in (apsw.SQLITE_CREATE_INDEX, apsw.SQLITE_DROP_INDEX,
                  apsw.SQLITE_CREATE_TRIGGER, apsw.SQLITE_DROP_TRIGGER):
        return _name_ok(arg1) and _name_ok(arg2)  # the index or trigger, and its table
    if action in (apsw.SQLITE_CREATE_VTABLE, apsw.SQLITE_DROP_VTABLE):
        # The table's own name is not checked, but FTS5's shadow tables (<name>_data, ...)
        # are created as tables, so a reserved name still fails.
        return arg2 is not None and arg2.lower() in ALLOWED_VIRTUAL_TABLE_MODULES
    if action == apsw.SQLITE_PRAGMA:
        return _pragma_allowed(arg1 or "", arg2)
    # ATTACH, DETACH, temporary objects, and anything SQLite may add later.
    return False


def _pragma_allowed(pragma: str, value: str | None) -> bool:
    if pragma in PRAGMAS_ALWAYS_ALLOWED:
        return True
    if pragma in PRAGMAS_TAKING_AN_OBJECT_NAME:
        return value is not None and _name_ok(value)
    if pragma in PRAGMAS_TAKING_AN_OPTIONAL_OBJECT_NAME:
        return value is None or _name_ok(value)
    if pragma in PRAGMAS_TAKING_A_BOOLEAN:
        return value is None or _is_boolean(value)
    if pragma in PRAGMAS_TAKING_A_NUMBER:
        return value is None or _integer(value, -2**31, 2**31 - 1)
    if pragma in PRAGMAS_TAKING_A_NUMBER_OR_OBJECT_NAME:
        return value is None or _integer(value, 0, 2**32 - 1) or _name_ok(value)
    if pragma in PRAGMAS_WITHOUT_ARGUMENT:
        return value is None
    return False


def _name_ok(name: str | None) -> bool:
    # A missing name (None) where one is expected is refused, as D1 does.
    return name is not None and not name.startswith(RESERVED_NAME_PREFIX)


def _is_boolean(value: str) -> bool:
    # D1 compares a prefix, without case, after one pair of quotes: "onion" and "10" pass.
    if len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]:
        value = value[1:-1]
    return value.lower().startswith(_BOOLEAN_SPELLINGS)


def _integer(value: str, low: int, high: int) -> bool:
    # Decimal, or hexadecimal with 0x (D1 accepts PRAGMA optimize = 0x10002).
    match = re.fullmatch(r"(-?)0[xX]([0-9a-fA-F]+)|([+-]?[0-9]+)", value)
    if not match:
        return False
    number = int(match[1] + match[2], 16) if match[2] else int(match[3])
    return low <= number <= high and not (low == 0 and value.startswith("-"))


def _describe(action: int, arg1: str | None, arg2: str | None, db: str | None) -> str:
    if action == apsw.SQLITE_PRAGMA:
        schema = f"{db}." if db else ""
        if arg2 is None:
            return f"PRAGMA {schema}{arg1}"
        return f"PRAGMA {schema}{arg1} = {arg2}"
    words = _ACTION_WORDS.get(action, f"action {action}")
    if action in (apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH):
        return words
    if action in (apsw.SQLITE_CREATE_VTABLE, apsw.SQLITE_DROP_VTABLE):
        return f"{words} {arg1} USING {arg2}"
    if action in (apsw.SQLITE_CREATE_INDEX, apsw.SQLITE_DROP_INDEX, apsw.SQLITE_CREATE_TRIGGER,
                  apsw.SQLITE_DROP_TRIGGER, apsw.SQLITE_CREATE_TEMP_INDEX,
                  apsw.SQLITE_DROP_TEMP_INDEX, apsw.SQLITE_CREATE_TEMP_TRIGGER,
                  apsw.SQLITE_DROP_TEMP_TRIGGER):
        return f"{words} {arg1} ON {arg2}"
    if action in (apsw.SQLITE_READ, apsw.SQLITE_UPDATE) and arg2:
        return f"{words} {arg1}.{arg2}"
    return f"{words} {arg1}" if arg1 else words


def _describe_transaction(action: int, operation: str | None, savepoint: str | None) -> str:
    if action == apsw.SQLITE_TRANSACTION:
        return operation or "BEGIN"
    return {"BEGIN": "SAVEPOINT", "RELEASE": "RELEASE", "ROLLBACK": "ROLLBACK TO"}.get(
        operation or "", "SAVEPOINT") + f" {savepoint}"


# -- switching ---------------------------------------------------------------------------------


def _rules(conn: "apsw.Connection") -> _Rules:
    rules = conn.authorizer
    if not isinstance(rules, _Rules):
        raise RuntimeError("sessionctl.d1_rules.install() has not been called on this connection")
    return rules


@contextmanager
def _mode(conn: "apsw.Connection", rules: _Rules, *, enforcing: bool) -> Iterator[None]:
    before = rules.enforcing
    _switch(conn, rules, enforcing)
    try:
        yield
    finally:
        _switch(conn, rules, before)


def _switch(conn: "apsw.Connection", rules: _Rules, enforcing: bool) -> None:
    if enforcing and not rules.enforcing:
        rules.saved_limits = {limit: conn.limit(limit, value) for limit, value in D1_LIMITS.items()}
    elif rules.enforcing and not enforcing:
        for limit, value in rules.saved_limits.items():
            conn.limit(limit, value)
    rules.enforcing = enforcing
    # Setting the authorizer again makes SQLite re-prepare (and so re-check) every cached
    # statement before its next run.
    conn.authorizer = rules
