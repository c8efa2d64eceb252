"""sessionctl reads migration files the way the pinned wrangler does: the same statements, in the
same order, refused for the same reasons.

The judge is wrangler's own code: its splitter (``splitSqlQuery``) is taken from the pinned
wrangler's bundle and run under node, and its file order is the comparator wrangler sorts with,
run by node's own V8 sort. Thousands of generated texts and name lists are compared in one node
run each.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from sessionctl.wrangler_sql import (
    SeveralTransactionsError,
    TransactionControlError,
    js_parse_int,
    read_migration,
    split_sql,
    wrangler_order,
)
from wrangler_tools import require_wrangler

# wrangler's bundle: the splitter lies between these two markers.
SPLITTER_START = "// src/d1/trimmer.ts"
SPLITTER_END = "var init_splitter"

# How wrangler orders pending migrations (its migrations apply command): names sorted as
# JavaScript strings, then a stable sort by the number before the first "_".
ORDER_JS = """
const order = (names) => names.toSorted().sort((a, b) => {
  const na = parseInt(a.split("_")[0]); const nb = parseInt(b.split("_")[0]);
  if (na < nb) return -1; if (na > nb) return 1; return 0;
});
"""

RUNNER_JS = """
const fs = require("fs");
const [bundle, mode] = process.argv.slice(2);
const source = fs.readFileSync(bundle, "utf8");
const start = source.indexOf(%(start)s), end = source.indexOf(%(end)s);
if (start < 0 || end < 0) throw new Error("splitter not found in " + bundle);
class UserError extends Error {}
eval(source.slice(start, end).replace(/var init_trimmer = __esm\\(\\{[\\s\\S]*?\\n\\}\\);\\n/, "")
     + "\\nglobalThis.splitSqlQuery = splitSqlQuery;");
%(order)s
const inputs = JSON.parse(fs.readFileSync(0, "utf8"));
const out = inputs.map((input) => {
  if (mode === "order") return order(input);
  try { return {statements: splitSqlQuery(input)}; }
  catch (e) { return {error: e instanceof UserError ? "several transactions" : String(e)}; }
});
process.stdout.write(JSON.stringify(out));
""" % {"start": json.dumps(SPLITTER_START), "end": json.dumps(SPLITTER_END), "order": ORDER_JS}


def _run_wrangler_code(tmp_path: Path, mode: str, inputs: list) -> list:
    wrangler = require_wrangler()
    bundle = wrangler.resolve().parents[1] / "wrangler-dist" / "cli.js"
    node = shutil.which("node")
    assert node, "node is needed to run wrangler's splitter (it is installed with npm)"
    script = tmp_path / "runner.js"
    script.write_text(RUNNER_JS)
    done = subprocess.run([node, str(script), str(bundle), mode], input=json.dumps(inputs),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _ours(text: str) -> dict:
    try:
        return {"statements": [s.sql for s in split_sql(text)]}
    except SeveralTransactionsError:
        return {"error": "several transactions"}


# Texts chosen for the rules they exercise.
EXAMPLES = [
    "CREATE TABLE t(a);",
    "CREATE TABLE t(a)",
    "SELECT 1; SELECT 2",
    "BEGIN TRANSACTION;\nCREATE TABLE t(a);\nINSERT INTO t VALUES (1);\nCOMMIT;\n",
    "PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\nCREATE TABLE t(a);\nCOMMIT;\n",
    "BEGIN TRANSACTION;\nSELECT 1;\nBEGIN TRANSACTION;\nSELECT 2;\nCOMMIT;",
    "-- COMMIT; in a comment first\nBEGIN TRANSACTION;\nSELECT 1;\nCOMMIT;\n",
    "SELECT 1;\nCOMMIT;\nSELECT 2;",
    "CREATE TABLE t(a -- a comment; with a semicolon\n, b /* and ; here */);\nSELECT 'x -- not a comment';",
    "SELECT '/* not a comment */'; SELECT \"a;b\"; SELECT `c;d`;",
    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = CASE WHEN new.a > 0 THEN 1 ELSE 0 END; END;\nSELECT 1;",
    "CREATE TRIGGER tr AFTER INSERT ON t begin update t set a = 1; end;\nSELECT 1;",
    "\ufeffCREATE TABLE bom(a);\r\nINSERT INTO bom VALUES (1);\r\n",
    "SELECT $1; SELECT 2;",
    "SELECT $tag$ ; $tag$; SELECT 3;",
    "SELECT 1 - 2; SELECT 4 / 2; SELECT -3;",
    "/* only a comment */",
    "-- only a comment\n;\n",
    ";;;",
    "",
    "SELECT 'unterminated; SELECT 2;",
    "SELECT 1;\u2028SELECT 2;\u00a0",
]

TOKENS = [
    "SELECT 1", "CREATE TABLE t(a)", ";", " ", "\n", "\r\n", "\t", "'", "\"", "`", "'a;b'", "--", "-- c\n",
    "/*", "*/", "/* x; */", "-", "/", "$", "$$", "$t$", "BEGIN", " BEGIN ", " begin ", " CASE ", " END",
    " END;", " END ", " end;", "BEGIN TRANSACTION;", "COMMIT;", "COMMIT", "\ufeff", "\u00a0", "x", "é", "1",
    "_", "INSERT INTO t VALUES (1)", "CREATE TRIGGER tr AFTER INSERT ON t BEGIN ", "WHEN 1 THEN 2",
]


def _generated_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(TOKENS) for _ in range(rng.randint(0, 14))) for _ in range(count)]


def test_handpicked_texts_split_as_wrangler_splits_them(tmp_path):
    theirs = _run_wrangler_code(tmp_path, "split", EXAMPLES)
    for text, expected in zip(EXAMPLES, theirs):
        assert _ours(text) == expected, text


def test_generated_texts_split_as_wrangler_splits_them(tmp_path):
    texts = _generated_texts(3000, seed=20261129)
    theirs = _run_wrangler_code(tmp_path, "split", texts)
    differences = [(text, ours, expected) for text, expected in zip(texts, theirs)
                   if (ours := _ours(text)) != expected]
    assert differences == [], differences[:3]


NAME_PARTS = ["0001", "003", "3", "9", "10", "009", "init", "zz", "a", "-1", "+2", " 7", "0x1A", "1e3", "12abc",
              "Z", "é", "_", "_x", ".hidden", "99999999999999999999"]


def _generated_name_lists(count: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    lists = []
    for _ in range(count):
        names = {rng.choice(NAME_PARTS) + rng.choice(["_", "", "-"]) + rng.choice(NAME_PARTS) + ".sql"
                 for _ in range(rng.randint(0, 12))}
        lists.append(sorted(names))
    return lists


def test_files_are_ordered_as_wrangler_orders_them(tmp_path):
    lists = [["10_a.sql", "9_b.sql", "init.sql", "009_z.sql", "0001_x.sql", "zz.sql"]]
    lists += _generated_name_lists(1500, seed=7)
    theirs = _run_wrangler_code(tmp_path, "order", lists)
    differences = [(names, ours, expected) for names, expected in zip(lists, theirs)
                   if (ours := wrangler_order(names)) != expected]
    assert differences == [], differences[:3]


@pytest.mark.parametrize("text, number", [
    ("003", 3), ("  12abc", 12), ("-4", -4), ("+5", 5), ("0x1F", 31), ("1e3", 1), ("\ufeff8", 8),
])
def test_leading_numbers_are_read_as_javascript_parse_int_reads_them(text, number):
    assert js_parse_int(text) == number


def test_a_name_without_a_number_has_none():
    assert js_parse_int("init") != js_parse_int("init")  # NaN


def test_transaction_control_inside_a_file_is_refused_naming_its_line():
    with pytest.raises(TransactionControlError) as caught:
        read_migration("CREATE TABLE t(a);\n\nSAVEPOINT s;\nINSERT INTO t VALUES (1);\n", "d1_migrations", "x.sql")
    assert (caught.value.keyword, caught.value.line) == ("SAVEPOINT", 3)


def test_a_second_begin_transaction_is_refused_naming_its_line():
    with pytest.raises(SeveralTransactionsError) as caught:
        read_migration("BEGIN TRANSACTION;\nSELECT 1;\nCOMMIT;\nBEGIN TRANSACTION;\n", "d1_migrations", "x.sql")
    assert caught.value.line == 4


def test_the_ledger_insert_goes_last_with_the_name_pasted_in_as_wrangler_does():
    statements = read_migration("CREATE TABLE t(a);", "d1_migrations", "0001_t.sql")
    assert [s.sql.split()[:3] for s in statements] == [["CREATE", "TABLE", "t(a)"], ["INSERT", "INTO", "d1_migrations"]]
    assert statements[-1].sql.endswith("values ('0001_t.sql')")
