"""D1's rules (sessionctl.d1_rules): every rule, on a local connection and on the pinned wrangler.

Each case below is some SQL and what D1 does with it: runs it, or refuses it with a given
message. The same SQL runs twice:

- in D1: the pinned real wrangler (SESSIONCTL_TEST_WRANGLER; missing, the tests FAIL, they
  never skip). One `wrangler dev --local` serves a worker that sends each case through its
  D1 binding as one batch (one transaction, as `wrangler d1 execute` sends a command) and
  reports what D1 said. A case that D1 runs ends with a statement on a missing table, so
  D1 rolls it back and the cases do not see each other's tables; the connection settings
  a case may change are reset after it;
- locally: a fresh APSW connection with ``d1_rules.install()``, the statements inside a
  transaction under ``d1_rules.enforced()``, as sessionctl runs a migration. The message
  compared is the one sessionctl shows: ``refusal_message()`` for an ``apsw.AuthError``,
  else SQLite's own.

A refused case must be refused on both sides, with D1's message (decorations off: the
``D1_ERROR:`` prefix, `` at offset N``, ``: SQLITE_<CODE>``) and, locally, the same message
or, where D1 says only "not authorized", "not authorized: <what>" (``last_refusal()``).
A few cases read rows, and then the rows must be equal too.

A few `wrangler d1 execute --local --command` runs check that the CLI says the same, and
the tests at the end check the module's own contract (trusted and enforced blocks, cached
statements, limits). Networking is loopback only.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import pytest

from sessionctl import d1_rules
from wrangler_tools import BOT_TOML, DB_NAME, LOOPBACK, require_wrangler, wrangler_dev, wrangler_env

pytestmark = pytest.mark.wrangler

RUN_TIMEOUT_S = 60

# D1's own table, as the pinned wrangler creates it in every local database; created here
# (trusted) so the local side has a reserved table to be refused too.
CF_METADATA_DDL = "CREATE TABLE _cf_METADATA (\n        key INTEGER PRIMARY KEY,\n        value BLOB\n      )"

SENTINEL = "SELECT * FROM d1_rules_sentinel"  # fails last, so D1 rolls the case back
SENTINEL_MESSAGE = "no such table: d1_rules_sentinel"

# Connection settings a case may change (they outlive a transaction), reset after each case.
RESET = [f"PRAGMA {name} = OFF" for name in (
    "recursive_triggers", "case_sensitive_like", "reverse_unordered_selects",
    "ignore_check_constraints", "legacy_alter_table")]

WORKER_JS = """\
const RESET = %s;
export default {
  async fetch(request, env) {
    if (request.method !== "POST") return new Response("ready");
    const out = {};
    for (const probe of await request.json()) {
      try {
        const results = await env.DB.batch(probe.sql.map((s) => env.DB.prepare(s)));
        out[probe.id] = { ok: true, rows: results[results.length - 1].results };
      } catch (e) {
        out[probe.id] = { ok: false, message: String(e && e.message) };
      }
      await env.DB.batch(RESET.map((s) => env.DB.prepare(s)));
    }
    return Response.json(out);
  },
};
""" % json.dumps(RESET)

NOT_AUTHORIZED = "not authorized"


@dataclass(frozen=True)
class Case:
    id: str
    sql: tuple[str, ...]
    d1_says: str | None = None  # None: D1 runs it; else D1's message
    what: str | None = None  # last_refusal() locally, when the authorizer refused
    local_says: str | None = None  # only where the local message cannot be D1's (see the case)
    rows: bool = False  # read-only: compare the last statement's rows, no rollback statement
    commit: bool = False  # the refusal comes at COMMIT: no rollback statement

    @property
    def expected_locally(self) -> str | None:
        if self.local_says is not None:
            return self.local_says
        if self.d1_says == NOT_AUTHORIZED and self.what:
            return f"{NOT_AUTHORIZED}: {self.what}"
        return self.d1_says

    @property
    def sent_to_d1(self) -> list[str]:
        return list(self.sql) if self.rows or self.commit else [*self.sql, SENTINEL]


def ok(id: str, *sql: str, rows: bool = False) -> Case:
    return Case(id, sql, rows=rows)


def refused(id: str, *sql: str, says: str = NOT_AUTHORIZED, what: str | None = None,
            local: str | None = None, commit: bool = False) -> Case:
    return Case(id, sql, d1_says=says, what=what, local_says=local, commit=commit)


def function_refused(expression: str) -> Case:
    name = expression.split("(")[0]
    return refused(f"function_{name}", f"SELECT {expression}",
                   says=f"not authorized to use function: {name}", what=f"function {name}")


def pragma_refused(pragma: str, what: str | None = None) -> Case:
    slug = re.sub(r"\W+", "_", pragma).strip("_")
    return refused(f"pragma_{slug}", f"PRAGMA {pragma}", what=what or f"PRAGMA {pragma}")


TRANSACTION = d1_rules.TRANSACTION_REFUSED_MESSAGE
T = "CREATE TABLE t (a INTEGER, b TEXT)"
T_INDEXED = (T, "CREATE INDEX t_a ON t (a)")
FTS = "CREATE VIRTUAL TABLE ft USING fts5(body)"
PARENT_CHILD = ("CREATE TABLE parent (id INTEGER PRIMARY KEY)",
                "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent (id))")


def _in_list(n: int) -> str:
    return "SELECT 5 IN (" + ",".join(str(i) for i in range(n)) + ")"


def _recursive_trigger(levels: int) -> tuple[str, ...]:
    return ("CREATE TABLE r (n INTEGER)",
            f"CREATE TRIGGER r_more AFTER INSERT ON r WHEN new.n < {levels} "
            "BEGIN INSERT INTO r VALUES (new.n + 1); END",
            "PRAGMA recursive_triggers = ON", "INSERT INTO r VALUES (1)")


CASES: list[Case] = [
    # -- functions: D1's allowlist --------------------------------------------------------------
    ok("functions_core",
       "SELECT abs(-1) AS a, char(65) AS b, coalesce(NULL, 1) AS c, concat('a', 1, NULL) AS d, "
       "concat_ws('-', 'a', 'b') AS e, format('%d', 5) AS f, glob('a*', 'ab') AS g, hex('a') AS h, "
       "ifnull(NULL, 2) AS i, iif(1, 'y', 'n') AS j, instr('abc', 'c') AS k, length('abc') AS l, "
       "like('a%', 'abc') AS m, likelihood(1, 0.5) AS n, likely(1) AS o, lower('A') AS p, "
       "ltrim(' a') AS q, nullif(1, 2) AS r, octet_length('é') AS s, printf('%05.1f', 2.5) AS t, "
       "quote('a''b') AS u, length(randomblob(4)) AS v, typeof(random()) AS w, replace('aa', 'a', 'b') AS x, "
       "round(2.567, 2) AS y, rtrim('a ') AS z, sign(-3) AS aa, substr('abc', 2) AS ab, "
       "substring('abc', 1, 1) AS ac, trim(' a ') AS ad, typeof(1.5) AS ae, hex(unhex('4142')) AS af, "
       "unicode('é') AS ag, unlikely(0) AS ah, upper('a') AS ai, length(zeroblob(3)) AS aj, "
       "changes() AS ak, total_changes() AS al, last_insert_rowid() AS am, max(1, 2) AS an, min(1, 2) AS ao, "
       "'abc' LIKE 'A%' AS ap, 'abc' GLOB 'a*' AS aq",
       rows=True),
    ok("functions_date",
       "SELECT date('2024-01-02 03:04:05') AS a, time('2024-01-02 03:04:05') AS b, "
       "datetime(1700000000, 'unixepoch') AS c, julianday('2024-01-01') AS d, "
       "unixepoch('2024-01-02 03:04:05.678', 'subsec') AS e, strftime('%Y', '2024-05-06') AS f, "
       "timediff('2024-01-02', '2024-01-01') AS g, typeof(CURRENT_DATE) AS h, typeof(CURRENT_TIME) AS i, "
       "typeof(CURRENT_TIMESTAMP) AS j",
       rows=True),
    ok("functions_aggregate_and_window",
       "WITH v(x) AS (VALUES (1), (2), (3)) SELECT x, avg(x) OVER () AS a, count(*) OVER () AS b, "
       "group_concat(x, ',') OVER () AS c, string_agg(x, ';') OVER () AS d, max(x) OVER () AS e, "
       "min(x) OVER () AS f, sum(x) OVER () AS g, total(x) OVER () AS h, row_number() OVER w AS i, "
       "rank() OVER w AS j, dense_rank() OVER w AS k, percent_rank() OVER w AS l, cume_dist() OVER w AS m, "
       "ntile(2) OVER w AS n, lag(x) OVER w AS o, lead(x) OVER w AS p, first_value(x) OVER w AS q, "
       "last_value(x) OVER w AS r, nth_value(x, 2) OVER w AS s FROM v WINDOW w AS (ORDER BY x)",
       rows=True),
    ok("functions_math",
       "SELECT acos(1) AS a, acosh(1) AS b, asin(0) AS c, asinh(0) AS d, atan(0) AS e, atan2(0, 1) AS f, "
       "atanh(0) AS g, ceil(1.2) AS h, cos(0) AS i, cosh(0) AS j, degrees(0) AS k, exp(0) AS l, "
       "floor(1.8) AS m, ln(1) AS n, log(100) AS o, log(2, 8) AS p, log2(8) AS q, mod(7, 3) AS r, "
       "round(pi(), 5) AS s, pow(2, 10) AS t, radians(0) AS u, sin(0) AS v, sinh(0) AS w, sqrt(16) AS x, "
       "tan(0) AS y, tanh(0) AS z, trunc(-1.5) AS aa",
       rows=True),
    ok("functions_json",
       "SELECT json(' {\"a\":1} ') AS a, typeof(jsonb('{}')) AS b, json_array(1, 'x') AS c, "
       "typeof(jsonb_array(1)) AS d, json_array_length('[1,2]') AS e, json_extract('{\"a\":[1,2]}', '$.a[1]') AS f, "
       "typeof(jsonb_extract('{\"a\":{}}', '$.a')) AS g, '{\"a\":3}' -> '$.a' AS h, '{\"a\":\"x\"}' ->> '$.a' AS i, "
       "json_insert('{}', '$.a', 1) AS j, typeof(jsonb_insert('{}', '$.a', 1)) AS k, json_object('a', 2) AS l, "
       "typeof(jsonb_object('a', 2)) AS m, json_patch('{\"a\":1}', '{\"b\":2}') AS n, "
       "typeof(jsonb_patch('{}', '{}')) AS o, json_remove('{\"a\":1}', '$.a') AS p, "
       "typeof(jsonb_remove('{}', '$.a')) AS q, json_replace('{\"a\":1}', '$.a', 2) AS r, "
       "typeof(jsonb_replace('{}', '$.a', 1)) AS s, json_set('{}', '$.b', 3) AS t, typeof(jsonb_set('{}', '$.b', 3)) AS u, "
       "json_type('[]') AS v, json_valid('{') AS w, json_quote('x') AS x, "
       "(SELECT json_group_array(value) FROM json_each('[1,2]')) AS y, "
       "(SELECT typeof(jsonb_group_array(value)) FROM json_each('[1]')) AS z, "
       "(SELECT json_group_object(key, value) FROM json_each('{\"k\":1}')) AS aa, "
       "(SELECT typeof(jsonb_group_object(key, value)) FROM json_each('{\"k\":1}')) AS ab, "
       "(SELECT count(*) FROM json_tree('{\"a\":[1,2]}')) AS ac",
       rows=True),
    # (An FTS5 table written to is dropped before the rollback: D1 fails "internal error"
    # rolling back a batch that created one and wrote to it.)
    ok("functions_in_any_case", "SELECT ABS(-1) AS a, Upper('a') AS b, JSON_EXTRACT('{\"a\":1}', '$.a') AS c",
       rows=True),
    # wrangler's own ledger table: a DEFAULT calls current_timestamp
    ok("functions_in_a_default", "CREATE TABLE IF NOT EXISTS d1_migrations(\n\t\tid         INTEGER PRIMARY KEY "
       "AUTOINCREMENT,\n\t\tname       TEXT UNIQUE,\n\t\tapplied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL\n);",
       "INSERT INTO d1_migrations (name) VALUES ('0001_x.sql')", "SELECT typeof(applied_at) FROM d1_migrations"),
    ok("functions_fts5", FTS, "INSERT INTO ft VALUES ('hello world')",
       "SELECT highlight(ft, 0, '[', ']'), snippet(ft, 0, '[', ']', '…', 4), bm25(ft) FROM ft "
       "WHERE ft MATCH 'hello'", "DROP TABLE ft"),
    ok("functions_alter_table_internals", T, "ALTER TABLE t RENAME TO t2", "ALTER TABLE t2 RENAME COLUMN b TO c",
       "ALTER TABLE t2 ADD COLUMN d TEXT NOT NULL DEFAULT 'x' CHECK (d <> '')", "ALTER TABLE t2 DROP COLUMN c"),
    # refused: not in the list
    *[function_refused(e) for e in (
        "sqlite_version()", "sqlite_source_id()", "sqlite_compileoption_used('ENABLE_FTS5')",
        "sqlite_compileoption_get(0)", "json_pretty('[1]')", "json_error_position('{')", "log10(100)",
        "power(2, 3)", "ceiling(1.5)", "fts5_source_id()")],
    refused("function_upper_case", "SELECT SQLITE_VERSION()",
            says="not authorized to use function: SQLITE_VERSION", what="function sqlite_version"),
    refused("function_in_explain", "EXPLAIN SELECT sqlite_version()",
            says="not authorized to use function: sqlite_version", what="function sqlite_version"),
    # In the list, but D1's SQLite has no such function, and neither has ours.
    refused("function_soundex", "SELECT soundex('x')", says="no such function: soundex"),
    refused("function_max_scalar", "SELECT max_scalar(1, 2)", says="no such function: max_scalar"),
    refused("function_min_scalar", "SELECT min_scalar(1, 2)", says="no such function: min_scalar"),
    refused("function_sqlite_offset", "SELECT sqlite_offset(1)", says="no such function: sqlite_offset"),
    # In the list, but extension loading is off on both sides.
    refused("function_load_extension", "SELECT load_extension('x')"),
    # Newer than D1's SQLite: D1 has no such function; here SQLite has it and the list refuses it.
    *[refused(f"function_{name}_newer_than_d1", f"SELECT {call}", says=f"no such function: {name}",
              what=f"function {name}", local=f"not authorized to use function: {name}")
      for name, call in (("if", "if(1, 2, 3)"), ("unistr", "unistr('a')"), ("median", "median(1)"))],

    # -- PRAGMA ------------------------------------------------------------------------------------
    ok("pragma_defaults", "PRAGMA foreign_keys", rows=True),
    *[ok(f"pragma_read_{name}", f"PRAGMA {name}", rows=True) for name in (
        "defer_foreign_keys", "recursive_triggers", "reverse_unordered_selects", "legacy_alter_table",
        "ignore_check_constraints", "case_sensitive_like")],
    ok("pragma_read_data_version", "PRAGMA data_version"),  # a counter: its value differs
    ok("pragma_main_schema", "PRAGMA main.foreign_keys", rows=True),
    ok("pragma_booleans_set",
       *[f"PRAGMA {name} = {value}" for name in d1_rules.PRAGMAS_TAKING_A_BOOLEAN
         for value in ("ON", "off", "'yes'", '"no"', "TRUE", "false", "1", "0", "10", "onion")]),
    ok("pragma_object_names", *T_INDEXED, "PRAGMA table_info(t)", "PRAGMA table_xinfo(t)",
       "PRAGMA index_list(t)", "PRAGMA index_info(t_a)", "PRAGMA index_xinfo(t_a)",
       "PRAGMA foreign_key_list(t)", "PRAGMA foreign_key_check", "PRAGMA foreign_key_check(t)",
       "PRAGMA table_list", "PRAGMA table_list(_cf_METADATA)", "PRAGMA table_info(sqlite_master)",
       "SELECT * FROM pragma_table_info('t')", "SELECT * FROM pragma_index_list('t')"),
    ok("pragma_checks", T, "PRAGMA quick_check", "PRAGMA quick_check(5)", "PRAGMA quick_check(-1)",
       "PRAGMA quick_check(t)", "PRAGMA optimize", "PRAGMA optimize = 2", "PRAGMA optimize = -1",
       "PRAGMA optimize = 0x10002"),
    *[pragma_refused(p) for p in (
        "journal_mode", "journal_mode = WAL", "journal_mode = DELETE", "user_version", "user_version = 3",
        "writable_schema", "writable_schema = 1", "busy_timeout", "busy_timeout = 100", "integrity_check",
        "page_size", "page_size = 4096", "page_count", "freelist_count", "cache_size", "synchronous",
        "schema_version", "application_id", "encoding", "compile_options", "function_list", "pragma_list",
        "module_list", "database_list", "collation_list", "temp_store", "auto_vacuum", "incremental_vacuum",
        "wal_checkpoint", "secure_delete", "cell_size_check", "trusted_schema", "automatic_index",
        "locking_mode", "max_page_count", "mmap_size", "query_only", "read_uncommitted", "shrink_memory",
        "analysis_limit", "threads", "no_such_pragma",
        # allowed pragmas, refused for their argument
        "foreign_keys = 2", "defer_foreign_keys = maybe", "optimize = foo", "optimize = 99999999999",
        "data_version = 1", "table_info", "index_list", "foreign_key_list",
        "table_info = _cf_METADATA", "table_xinfo = _cf_METADATA", "index_list = _cf_METADATA",
        "foreign_key_check = _cf_METADATA", "quick_check = _cf_METADATA")],
    pragma_refused("temp.foreign_keys", what="PRAGMA temp.foreign_keys (temp schema)"),
    refused("pragma_as_table_journal_mode", "SELECT * FROM pragma_journal_mode", what="PRAGMA journal_mode"),
    refused("pragma_as_table_function_list", "SELECT name FROM pragma_function_list", what="PRAGMA function_list"),
    refused("pragma_as_table_reserved", "SELECT * FROM pragma_table_info('_cf_METADATA')",
            what="PRAGMA table_info = _cf_METADATA"),

    # -- transactions: D1 runs each batch in its own --------------------------------------------
    *[refused("transaction_" + re.sub(r"\W+", "_", sql).lower(), sql, says=TRANSACTION, what=what)
      for sql, what in (
          ("BEGIN", "BEGIN"), ("BEGIN TRANSACTION", "BEGIN"), ("BEGIN DEFERRED", "BEGIN"),
          ("BEGIN IMMEDIATE", "BEGIN"), ("BEGIN EXCLUSIVE", "BEGIN"), ("COMMIT", "COMMIT"),
          ("END TRANSACTION", "COMMIT"), ("ROLLBACK", "ROLLBACK"), ("SAVEPOINT sp", "SAVEPOINT sp"),
          ("RELEASE sp", "RELEASE sp"), ("RELEASE SAVEPOINT sp", "RELEASE sp"),
          ("ROLLBACK TO sp", "ROLLBACK TO sp"), ("ROLLBACK TRANSACTION TO SAVEPOINT sp", "ROLLBACK TO sp"),
          ("SAVEPOINT _cf_sp", "SAVEPOINT _cf_sp"))],
    # ... and so VACUUM, which cannot run inside one.
    refused("vacuum", "VACUUM", says="cannot VACUUM from within a transaction"),
    refused("vacuum_into", "VACUUM INTO 'copy.db'", says="cannot VACUUM from within a transaction"),

    # -- other databases ----------------------------------------------------------------------------
    refused("attach_memory", "ATTACH DATABASE ':memory:' AS other", what="ATTACH"),
    refused("attach_file", "ATTACH 'side.db' AS side", what="ATTACH"),
    refused("detach", "DETACH DATABASE other", what="DETACH"),

    # -- D1's reserved names: _cf_ ------------------------------------------------------------------
    refused("reserved_create_table", "CREATE TABLE _cf_x (a)", what="CREATE TABLE _cf_x"),
    ok("reserved_prefix_is_case_sensitive", "CREATE TABLE _CF_x (a)", "CREATE INDEX _Cf_i ON _CF_x (a)"),
    ok("reserved_prefix_only_as_prefix", "CREATE TABLE _cf (a)", "CREATE TABLE x_cf_ (a)"),
    refused("reserved_create_index", T, "CREATE INDEX _cf_i ON t (a)", what="CREATE INDEX _cf_i ON t"),
    refused("reserved_index_on", "CREATE INDEX m ON _cf_METADATA (value)", what="CREATE INDEX m ON _cf_METADATA"),
    refused("reserved_create_view", "CREATE VIEW _cf_v AS SELECT 1", what="CREATE VIEW _cf_v"),
    refused("reserved_create_trigger", T, "CREATE TRIGGER _cf_tr AFTER INSERT ON t BEGIN SELECT 1; END",
            what="CREATE TRIGGER _cf_tr ON t"),
    refused("reserved_trigger_on", "CREATE TRIGGER tr AFTER INSERT ON _cf_METADATA BEGIN SELECT 1; END",
            what="CREATE TRIGGER tr ON _cf_METADATA"),
    refused("reserved_select", "SELECT * FROM _cf_METADATA", says="access to _cf_METADATA.key is prohibited",
            what="READ _cf_METADATA.key"),
    refused("reserved_count", "SELECT count(*) FROM _cf_METADATA", what="READ _cf_METADATA"),
    refused("reserved_insert", "INSERT INTO _cf_METADATA VALUES (99, NULL)", what="INSERT INTO _cf_METADATA"),
    refused("reserved_update", "UPDATE _cf_METADATA SET value = NULL", what="UPDATE _cf_METADATA.value"),
    refused("reserved_delete", "DELETE FROM _cf_METADATA", what="DELETE FROM _cf_METADATA"),
    refused("reserved_drop", "DROP TABLE _cf_METADATA", what="DROP TABLE _cf_METADATA"),
    refused("reserved_alter", "ALTER TABLE _cf_METADATA ADD COLUMN x", what="ALTER TABLE _cf_METADATA"),
    refused("reserved_read_through_view", "CREATE VIEW v AS SELECT value FROM _cf_METADATA", "SELECT * FROM v",
            says="access to _cf_METADATA.value is prohibited", what="READ _cf_METADATA.value"),
    refused("reserved_write_through_trigger", T,
            "CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO _cf_METADATA VALUES (new.a, NULL); END",
            "INSERT INTO t VALUES (1, 'x')", what="INSERT INTO _cf_METADATA"),
    # The pinned wrangler checks only the table renamed, not its new name...
    ok("reserved_rename_into", T, "ALTER TABLE t RENAME TO _cf_t"),
    # ... and the renamed table cannot be read.
    refused("reserved_rename_into_then_read", T, "ALTER TABLE t RENAME TO _cf_t", "SELECT a FROM _cf_t",
            says="access to _cf_t.a is prohibited", what="READ _cf_t.a"),
    # An FTS5 table's own name is not checked, its shadow tables' are. SQLite's message names
    # them; sessionctl's names the refused table.
    refused("reserved_fts5", "CREATE VIRTUAL TABLE _cf_ft USING fts5(body)",
            says="fts5: error creating shadow table _cf_ft_data: not authorized", what="CREATE TABLE _cf_ft_data",
            local="not authorized: CREATE TABLE _cf_ft_data"),

    # -- SQLite's own names: sqlite_ (SQLite refuses these itself, D1's settings make it so) ---------
    ok("sqlite_master_read", "SELECT type, name, tbl_name, sql FROM sqlite_master", rows=True),
    ok("sqlite_schema_read", "SELECT count(*) AS n FROM sqlite_schema", rows=True),
    refused("sqlite_reserved_table_name", "CREATE TABLE sqlite_x (a)",
            says="object name reserved for internal use: sqlite_x"),
    refused("sqlite_reserved_index_name", T, "CREATE INDEX sqlite_autoindex_x ON t (a)",
            says="object name reserved for internal use: sqlite_autoindex_x"),
    refused("sqlite_master_insert", "INSERT INTO sqlite_master VALUES ('table', 'x', 'x', 0, 'CREATE TABLE x (a)')",
            says="table sqlite_master may not be modified"),
    refused("sqlite_master_update", "UPDATE sqlite_master SET sql = sql", says="table sqlite_master may not be modified"),
    refused("sqlite_master_delete", "DELETE FROM sqlite_master", says="table sqlite_master may not be modified"),
    ok("sqlite_sequence_write", "CREATE TABLE s (id INTEGER PRIMARY KEY AUTOINCREMENT)", "INSERT INTO s VALUES (NULL)",
       "UPDATE sqlite_sequence SET seq = 10", "DELETE FROM sqlite_sequence"),
    ok("sqlite_stat1_write", *T_INDEXED, "ANALYZE", "UPDATE sqlite_stat1 SET stat = stat", "DELETE FROM sqlite_stat1"),
    ok("sqlite_stat1_drop", *T_INDEXED, "ANALYZE", "DROP TABLE sqlite_stat1"),
    # defensive mode: an FTS5 table's shadow tables are read-only
    ok("fts5_shadow_read", FTS, "SELECT count(*) FROM ft_config"),
    refused("fts5_shadow_insert", FTS, "INSERT INTO ft_data VALUES (99, x'00')", says="table ft_data may not be modified"),
    refused("fts5_shadow_update", FTS, "UPDATE ft_config SET v = 1", says="table ft_config may not be modified"),

    # -- temporary objects: D1 has none -----------------------------------------------------------
    refused("temp_table", "CREATE TEMP TABLE tt (a)", what="TEMP objects"),
    refused("temporary_table", "CREATE TEMPORARY TABLE tt (a)", what="TEMP objects"),
    refused("temp_schema_table", "CREATE TABLE temp.tt (a)", what="TEMP objects"),
    refused("temp_view", "CREATE TEMP VIEW tv AS SELECT 1", what="TEMP objects"),
    refused("temp_trigger", T, "CREATE TEMP TRIGGER ttr AFTER INSERT ON t BEGIN SELECT 1; END",
            what="CREATE TEMP TRIGGER ttr ON t (temp schema)"),
    ok("temp_schema_read", "SELECT * FROM temp.sqlite_master", rows=True),
    ok("temp_schema_read_alias", "SELECT * FROM sqlite_temp_master", rows=True),

    # -- virtual tables: FTS5 only ------------------------------------------------------------------
    ok("fts5", FTS, "INSERT INTO ft VALUES ('hello')", "INSERT INTO ft(ft) VALUES ('optimize')",
       "SELECT * FROM ft('hello')", "ALTER TABLE ft RENAME TO ft2", "DROP TABLE ft2"),
    ok("fts5_options", "CREATE VIRTUAL TABLE a USING FTS5(body)",
       "CREATE VIRTUAL TABLE b USING fts5(body, tokenize = 'porter unicode61')",
       "CREATE VIRTUAL TABLE c USING fts5(body, tokenize = 'trigram')"),
    ok("fts5vocab", FTS, "CREATE VIRTUAL TABLE fv USING fts5vocab(ft, 'row')", "SELECT * FROM fv", "DROP TABLE fv"),
    *[refused(f"vtable_{module}", f"CREATE VIRTUAL TABLE v USING {module}{args}",
              what=f"CREATE VIRTUAL TABLE v USING {module}")
      for module, args in (("fts4", "(body)"), ("fts3", "(body)"), ("rtree", "(id, x0, x1)"),
                           ("rtree_i32", "(id, x0, x1)"), ("geopoly", "(a)"), ("fts3tokenize", ""),
                           ("series", ""))],
    # table-valued functions D1's SQLite lacks (json_each and json_tree are above)
    refused("table_dbstat", "SELECT * FROM dbstat", says="no such table: dbstat", what="table-valued function dbstat"),
    refused("table_carray", "SELECT * FROM carray(1, 1)", says="no such table: carray",
            what="table-valued function carray"),
    refused("table_generate_series", "SELECT * FROM generate_series(1, 3)", says="no such table: generate_series"),

    # -- D1's limits ----------------------------------------------------------------------------------
    ok("limit_length_at", "SELECT length(zeroblob(2200000)) AS n", rows=True),
    refused("limit_length_over", "SELECT length(zeroblob(2200001))", says="string or blob too big"),
    ok("limit_sql_length_under", "SELECT '" + "a" * 99_000 + "' IS NOT NULL AS ok", rows=True),
    # APSW reports this SQLITE_TOOBIG with SQLite's generic words
    refused("limit_sql_length_over", "SELECT '" + "a" * 100_000 + "'", says="statement too long",
            local="string or blob too big"),
    ok("limit_columns_at", "CREATE TABLE w (" + ", ".join(f"c{i}" for i in range(100)) + ")"),
    refused("limit_columns_over", "CREATE TABLE w (" + ", ".join(f"c{i}" for i in range(101)) + ")",
            says="too many columns on w"),
    ok("limit_expression_depth_under", "SELECT " + "-(" * 98 + "1" + ")" * 98 + " AS n", rows=True),
    refused("limit_expression_depth_over", "SELECT " + "-(" * 101 + "1" + ")" * 101,
            says="Expression tree is too large (maximum depth 100)"),
    ok("limit_compound_select_at", "SELECT 1 UNION SELECT 2 UNION SELECT 3 UNION SELECT 4 UNION SELECT 5", rows=True),
    refused("limit_compound_select_over",
            "SELECT 1 UNION SELECT 2 UNION SELECT 3 UNION SELECT 4 UNION SELECT 5 UNION SELECT 6",
            says="too many terms in compound SELECT"),
    ok("limit_program_size_under", _in_list(4000) + " AS n", rows=True),
    refused("limit_program_size_over", _in_list(9000), says="out of memory"),
    ok("limit_function_arguments_at", "SELECT json_array(" + ", ".join(["1"] * 127) + ") IS NOT NULL AS ok", rows=True),
    refused("limit_function_arguments_over", "SELECT json_array(" + ", ".join(["1"] * 128) + ")",
            says="too many arguments on function json_array"),
    ok("limit_like_pattern_at", f"SELECT '{'a' * 50}' LIKE '{'a' * 50}' AS m", rows=True),
    refused("limit_like_pattern_over", f"SELECT '{'a' * 51}' LIKE '{'a' * 51}'", says="LIKE or GLOB pattern too complex"),
    refused("limit_glob_pattern_over", f"SELECT '{'a' * 51}' GLOB '{'a' * 51}'", says="LIKE or GLOB pattern too complex"),
    refused("limit_variable_number", "SELECT ?101", says="variable number must be between ?1 and ?100"),
    ok("limit_trigger_depth_under", *_recursive_trigger(5), "SELECT count(*) FROM r"),
    # SQLite 3.54's words for the same limit
    refused("limit_trigger_depth_over", *_recursive_trigger(30), says="too many levels of trigger recursion",
            local="triggers nested too deep"),

    # -- foreign keys: on, as in D1 -----------------------------------------------------------------
    refused("foreign_key_enforced", *PARENT_CHILD, "INSERT INTO child VALUES (1, 7)",
            says="FOREIGN KEY constraint failed"),
    # inside D1's transaction, turning them off changes nothing
    refused("foreign_keys_off_is_a_no_op", "PRAGMA foreign_keys = OFF", *PARENT_CHILD,
            "INSERT INTO child VALUES (1, 7)", says="FOREIGN KEY constraint failed"),
    ok("foreign_keys_deferred_then_fixed", *PARENT_CHILD, "PRAGMA defer_foreign_keys = ON",
       "INSERT INTO child VALUES (1, 7)", "INSERT INTO parent VALUES (7)"),

    # -- ordinary SQL a migration uses ------------------------------------------------------------------
    ok("ordinary_ddl_and_dml", *T_INDEXED, "CREATE VIEW tv AS SELECT a FROM t",
       "CREATE TRIGGER tt AFTER INSERT ON t BEGIN UPDATE t SET b = 'x' WHERE a = new.a; END",
       "INSERT INTO t VALUES (1, NULL) ON CONFLICT DO NOTHING RETURNING a",
       "CREATE TABLE s (k TEXT PRIMARY KEY, v INTEGER) STRICT, WITHOUT ROWID",
       "CREATE TABLE g (a INTEGER, b INTEGER GENERATED ALWAYS AS (a * 2) VIRTUAL)",
       "INSERT INTO s VALUES ('k', 1) ON CONFLICT (k) DO UPDATE SET v = v + 1",
       "DROP TRIGGER tt", "DROP VIEW tv", "DROP INDEX t_a", "DROP TABLE t",
       "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5) SELECT count(*) FROM c"),
    ok("double_quoted_string_literal", 'SELECT "not a column" AS s', rows=True),
    ok("analyze_and_reindex", *T_INDEXED, "ANALYZE", "ANALYZE t", "ANALYZE sqlite_master", "ANALYZE _cf_METADATA",
       "REINDEX", "REINDEX t", "REINDEX t_a", "REINDEX NOCASE"),
    ok("explain", "EXPLAIN SELECT 1", "EXPLAIN QUERY PLAN SELECT * FROM sqlite_master"),

    # last, as D1 resets the database's object after it: the deferred check fails at COMMIT
    refused("foreign_keys_deferred_and_left_broken", *PARENT_CHILD, "PRAGMA defer_foreign_keys = ON",
            "INSERT INTO child VALUES (1, 7)", commit=True,
            says="Durable Object was reset and rolled back to its last known good state because the "
                 "application left the database in a state where constraints were violated: "
                 "FOREIGN KEY constraint failed",
            local="FOREIGN KEY constraint failed"),
]

assert len({case.id for case in CASES}) == len(CASES), "case ids must be unique"


# -- the two sides ---------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    message: str | None = None
    rows: list[dict[str, Any]] | None = None
    what: str | None = None


def d1_core(message: str) -> str:
    """D1's message without its decorations."""
    message = message.removeprefix("D1_ERROR: ")
    message = re.sub(r": SQLITE_[A-Z_]+( \(extended: SQLITE_[A-Z_]+\))?$", "", message)
    return re.sub(r" at offset \d+$", "", message)


def run_locally(case: Case) -> Outcome:
    conn = apsw.Connection(":memory:")
    try:
        d1_rules.install(conn)
        conn.execute(CF_METADATA_DDL)
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows: list[dict[str, Any]] = []
            with d1_rules.enforced(conn):
                for sql in case.sql:
                    rows = _rows(conn.execute(sql))
            conn.execute("COMMIT" if case.commit else "ROLLBACK")
            return Outcome(True, rows=json.loads(json.dumps(rows)))
        except apsw.Error as exc:
            # what sessionctl shows: refusal_message() for an authorizer's refusal
            message = (d1_rules.refusal_message(conn) if isinstance(exc, apsw.AuthError) else None) or str(exc)
            return Outcome(False, message, what=d1_rules.last_refusal(conn))
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
    finally:
        conn.close()


def _rows(cursor: apsw.Cursor) -> list[dict[str, Any]]:
    rows = []
    names: list[str] | None = None
    for values in cursor:
        if names is None:
            names = [d[0] for d in cursor.get_description()]
        rows.append(dict(zip(names, values)))
    return rows


def make_project(root: Path, worker_js: str = "export default { fetch() { return new Response('ok'); } };\n") -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "index.js").write_text(worker_js, encoding="utf-8")
    (root / "wrangler.toml").write_text(BOT_TOML, encoding="utf-8")
    return root


def d1_execute(binary: Path, project: Path, env: dict[str, str], command: str) -> Any:
    """`wrangler d1 execute --local --command ... --json`: the rows, or {"error": {"text": ...}}."""
    proc = subprocess.run([str(binary), "d1", "execute", DB_NAME, "--local", "--command", command, "--json"],
                          cwd=project, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"wrangler d1 execute printed no JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


# The CLI runs: (command, what wrangler prints as the error text, or None for rows).
CLI_RUNS = {
    "allowed": ("SELECT printf('%03d', 7) AS p, concat('a', 'b') AS c; PRAGMA foreign_keys; "
                "SELECT json_extract('{\"a\":[1,2]}', '$.a[1]') AS j", None),
    "function": ("SELECT sqlite_version()", "not authorized to use function: sqlite_version at offset 7: SQLITE_ERROR"),
    "pragma": ("PRAGMA journal_mode = WAL", "not authorized: SQLITE_AUTH"),
    "savepoint": ("SAVEPOINT sp", TRANSACTION),
}


@pytest.fixture(scope="module")
def d1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case through `wrangler dev`, and the CLI runs through `wrangler d1 execute`, at once."""
    binary = require_wrangler()
    root = tmp_path_factory.mktemp("d1_rules")
    logs = root / "logs"
    logs.mkdir()
    env = wrangler_env(logs)
    with ThreadPoolExecutor(len(CLI_RUNS)) as pool:
        cli = {name: pool.submit(d1_execute, binary, make_project(root / f"cli_{name}"), env, command)
               for name, (command, _) in CLI_RUNS.items()}
        with wrangler_dev(binary, make_project(root / "dev", WORKER_JS), logs) as url:
            probes = [{"id": case.id, "sql": case.sent_to_d1} for case in CASES]
            request = urllib.request.Request(url, data=json.dumps(probes).encode(), method="POST",
                                             headers={"content-type": "application/json"})
            with LOOPBACK.open(request, timeout=RUN_TIMEOUT_S) as response:
                said = json.loads(response.read().decode("utf-8"))
        return {"cases": said, "cli": {name: future.result() for name, future in cli.items()}}


# -- every rule, both sides ------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_local_connection_does_what_d1_does(case: Case, d1: dict[str, Any]) -> None:
    said = d1["cases"][case.id]
    here = run_locally(case)
    d1_ok = said["ok"] or (not (case.rows or case.commit) and d1_core(said["message"]) == SENTINEL_MESSAGE)
    if case.d1_says is None:
        assert d1_ok, f"D1 refused it: {said['message']}"
        assert here.ok, f"refused locally: {here.message} ({here.what})"
        if case.rows:
            assert here.rows == said["rows"]
        return
    assert not d1_ok, "D1 ran it"
    assert d1_core(said["message"]) == case.d1_says
    assert not here.ok, "it ran locally"
    assert here.message == case.expected_locally
    assert here.what == case.what


@pytest.mark.parametrize("name", list(CLI_RUNS))
def test_wrangler_d1_execute_says_the_same(name: str, d1: dict[str, Any]) -> None:
    command, error_text = CLI_RUNS[name]
    said = d1["cli"][name]
    case = Case(name, tuple(s.strip() for s in command.split(";")), rows=True)
    here = run_locally(case)
    if error_text is None:
        assert isinstance(said, list), said
        assert here.ok, here.message
        assert [r["results"] for r in said][-1] == here.rows
        assert [r["results"] for r in said][:2] == [[{"p": "007", "c": "ab"}], [{"foreign_keys": 1}]]
    else:
        assert said == {"error": {"text": error_text}}
        assert not here.ok
        assert d1_core(error_text) in here.message


def test_every_allowed_function_is_tried() -> None:
    """Each function of the allowlist appears in a case: run, or refused for the reason given."""
    tried = " ".join(" ".join(case.sql) for case in CASES).lower()
    alter_internals = {"sqlite_rename_column", "sqlite_rename_table", "sqlite_rename_test",
                       "sqlite_drop_column", "sqlite_rename_quotefix"}  # called by ALTER TABLE
    missing = {name for name in d1_rules.ALLOWED_FUNCTIONS - alter_internals
               if not (name in tried if not name[0].isalpha() else re.search(rf"\b{name}\b", tried))}
    assert not missing


# -- the module's own contract -----------------------------------------------------------------


def _connection(path: str = ":memory:") -> apsw.Connection:
    conn = apsw.Connection(path)
    d1_rules.install(conn)
    return conn


def test_install_sets_what_d1_sets() -> None:
    conn = _connection()
    assert conn.execute("PRAGMA foreign_keys").fetchall() == [(1,)]
    assert conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, -1) == 1
    assert conn.execute("SELECT sqlite_version()").fetchall()  # not enforced yet


def test_sessionctl_runs_its_own_statements_unrestricted(tmp_path: Path) -> None:
    conn = _connection(str(tmp_path / "own.db"))
    assert conn.execute("PRAGMA journal_mode=WAL").fetchall() == [("wal",)]
    conn.execute("PRAGMA busy_timeout = 100")
    conn.execute("BEGIN IMMEDIATE")
    with d1_rules.enforced(conn):
        conn.execute("CREATE TABLE t (a INTEGER)")
    conn.execute("COMMIT")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ROLLBACK")
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    assert conn.execute("EXPLAIN QUERY PLAN SELECT * FROM t").fetchall()
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]
    assert [r[1] for r in conn.execute("PRAGMA table_info(t)")] == ["a"]
    assert conn.execute("PRAGMA user_version").fetchall() == [(0,)]


def test_trusted_inside_enforced_and_back() -> None:
    conn = _connection()
    with d1_rules.enforced(conn):
        with pytest.raises(apsw.AuthError):
            conn.execute("PRAGMA user_version")
        with d1_rules.trusted(conn):
            assert conn.execute("PRAGMA user_version").fetchall() == [(0,)]
        with pytest.raises(apsw.AuthError):
            conn.execute("PRAGMA user_version")
        assert d1_rules.last_refusal(conn) == "PRAGMA user_version"
        assert d1_rules.refusal_message(conn) == "not authorized: PRAGMA user_version"
    assert conn.execute("PRAGMA user_version").fetchall() == [(0,)]


def test_a_statement_cached_while_trusted_is_checked_again() -> None:
    conn = _connection()
    sql = "SELECT sqlite_version()"
    assert conn.execute(sql).fetchall()  # prepared, and kept in APSW's statement cache
    with d1_rules.enforced(conn), pytest.raises(apsw.SQLError, match="not authorized to use function"):
        conn.execute(sql).fetchall()
    assert conn.execute(sql).fetchall()


def test_limits_apply_only_while_enforced() -> None:
    conn = _connection()
    before = {limit: conn.limit(limit) for limit in d1_rules.D1_LIMITS}
    with d1_rules.enforced(conn):
        assert {limit: conn.limit(limit) for limit in d1_rules.D1_LIMITS} == dict(d1_rules.D1_LIMITS)
        with d1_rules.trusted(conn):
            assert {limit: conn.limit(limit) for limit in d1_rules.D1_LIMITS} == before
        assert {limit: conn.limit(limit) for limit in d1_rules.D1_LIMITS} == dict(d1_rules.D1_LIMITS)
    assert {limit: conn.limit(limit) for limit in d1_rules.D1_LIMITS} == before


def test_each_enforced_block_starts_without_a_refusal() -> None:
    conn = _connection()
    assert d1_rules.last_refusal(conn) is None and d1_rules.refusal_message(conn) is None
    with d1_rules.enforced(conn), pytest.raises(apsw.AuthError):
        conn.execute("ATTACH ':memory:' AS x")
    assert d1_rules.last_refusal(conn) == "ATTACH"
    with d1_rules.enforced(conn):
        assert d1_rules.last_refusal(conn) is None


def test_enforced_needs_install() -> None:
    with pytest.raises(RuntimeError, match="install"):
        with d1_rules.enforced(apsw.Connection(":memory:")):
            pass
