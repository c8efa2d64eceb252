"""The parts of the db interface every target shares: several reads at once, one text of
statements as one transaction, and parameters written in as SQL literals where D1 takes none."""

from __future__ import annotations

import math

import pytest

from sessionctl.errors import SQLError
from sessionctl.targets.base import Statement, inline, sql_literal


@pytest.mark.parametrize("value, literal", [
    (None, "NULL"), (True, "1"), (7, "7"), (-2**63, str(-2**63)), (1.5, "1.5"),
    ("o'brien", "'o''brien'"), ("'; DROP TABLE x; --", "'''; DROP TABLE x; --'"), ("서버", "'서버'"),
])
def test_values_become_the_literals_sqlite_reads_back_as_themselves(migrated_db, value, literal):
    assert sql_literal(value) == literal
    (row,) = migrated_db.query(f"SELECT {literal} AS v")
    assert row["v"] == (int(value) if isinstance(value, bool) else value)


@pytest.mark.parametrize("value", [math.nan, math.inf, b"bytes", "nul\x00inside", object()])
def test_a_value_with_no_faithful_literal_is_refused(value):
    with pytest.raises(TypeError):
        sql_literal(value)


def test_inline_fills_every_placeholder_in_order_and_refuses_a_miscount():
    statement = inline(Statement("DELETE FROM t WHERE a = ? AND b = ?", ("x'y", 3), repeatable=True))
    assert statement == Statement("DELETE FROM t WHERE a = 'x''y' AND b = 3", (), repeatable=True)
    with pytest.raises(ValueError):
        inline(Statement("SELECT ?", (1, 2)))


def test_query_many_answers_each_read_in_order(migrated_db):
    answers = migrated_db.query_many([Statement("SELECT 1 AS a"), Statement("SELECT ? AS b", ("z",)),
                                      Statement("SELECT name FROM sqlite_master WHERE name = 'nope'")])
    assert answers == [[{"a": 1}], [{"b": "z"}], []]


def test_a_script_is_one_transaction(migrated_db):
    with pytest.raises(SQLError):
        migrated_db.script([Statement("CREATE TABLE half (x)"), Statement("INSERT INTO nowhere VALUES (1)")])
    assert migrated_db.query("SELECT name FROM sqlite_master WHERE name = 'half'") == []
