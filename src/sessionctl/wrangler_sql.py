"""Migration files read exactly the way wrangler reads them.

``wrangler d1 migrations apply`` does not hand a file to SQLite as it is. It appends
its ledger INSERT, removes the first ``BEGIN TRANSACTION;`` and the first ``COMMIT;``
(anywhere in the text), refuses a text that still holds ``BEGIN TRANSACTION``,
strips comments and splits the rest into statements with a small scanner of its own,
and D1 then prepares each piece as exactly one statement. What ends up in
``sqlite_master.sql`` is therefore the comment-free text of that scanner, and a
file that D1 would refuse is only known to be refused if it is read the same way.
This module is that reading, rule for rule (JavaScript's notions of white space and
``parseInt`` included), so a local ``migrate`` stores the same schema text and
fails on the same files as D1.

It also orders files as wrangler does: by name (JavaScript string order), then by
the number before the first ``_`` with a sort that keeps ties -- and names without a
number compare equal to everything, so their place follows V8's sort algorithm.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

# JavaScript's white space and line terminators (String.prototype.trim, regex \s):
# not Python's str.isspace(), which lacks U+FEFF (a byte order mark) and adds U+001C-1F and U+0085.
JS_WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_JS_S = "[" + re.escape(JS_WHITESPACE) + "]"
_COMPOUND_START = re.compile(_JS_S + r"(BEGIN|CASE)" + _JS_S + r"\Z", re.I)
_COMPOUND_END = re.compile(_JS_S + r"END[;" + re.escape(JS_WHITESPACE) + r"]\Z")  # case-sensitive, as wrangler

WRAPPER_BEGIN = "BEGIN TRANSACTION;"
WRAPPER_COMMIT = "COMMIT;"

# Statements that open, close or nest a transaction: D1 runs each file in a transaction
# of its own and refuses them.
_TRANSACTION_CONTROL = re.compile(r"^(BEGIN|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE)\b", re.I)


def js_trim(text: str) -> str:
    return text.strip(JS_WHITESPACE)


def ledger_insert_suffix(ledger: str, name: str) -> str:
    """What wrangler appends to a file's text: its ledger INSERT, the name pasted in as text."""
    return (
        f"\n\t\t\t\t\t\t\t\tINSERT INTO {ledger} (name)\n"
        f"\t\t\t\t\t\t\t\tvalues ('{name}');\n\t\t\t\t\t\t"
    )


@dataclass(frozen=True)
class SqlStatement:
    """One statement as D1 receives it, and the 1-based line of the file where it starts."""

    sql: str
    line: int


class SeveralTransactionsError(ValueError):
    """The text still holds ``BEGIN TRANSACTION`` once wrangler's wrapper is removed."""

    def __init__(self, line: int):
        super().__init__(f"line {line}: more than one BEGIN TRANSACTION")
        self.line = line


class TransactionControlError(ValueError):
    """A statement that would open, end or nest a transaction inside a migration."""

    def __init__(self, statement: SqlStatement):
        keyword = _TRANSACTION_CONTROL.match(statement.sql).group(1).upper()  # type: ignore[union-attr]
        super().__init__(f"line {statement.line}: {keyword}")
        self.keyword = keyword
        self.line = statement.line


def read_migration(text: str, ledger: str, name: str) -> list[SqlStatement]:
    """The statements wrangler sends for a migration file, its ledger INSERT last.

    Raises SeveralTransactionsError or TransactionControlError -- before anything runs --
    for a file that D1 would refuse part-way through.
    """
    statements = split_sql(text + ledger_insert_suffix(ledger, name))
    for statement in statements:
        if _TRANSACTION_CONTROL.match(statement.sql):
            raise TransactionControlError(statement)
    return statements


def split_sql(sql: str) -> list[SqlStatement]:
    """wrangler's ``splitSqlQuery``: remove the transaction wrapper, strip comments, split."""
    trimmed, removed = _remove_wrapper(sql)
    if not _may_contain_multiple_statements(trimmed):
        # One statement: sent as it is, comments and all.
        blank = len(trimmed) - len(trimmed.lstrip(JS_WHITESPACE))
        return [SqlStatement(trimmed, _line_of(sql, _original_index(blank, removed)))]
    pieces = _scan_statements(trimmed)
    if not pieces:
        return [SqlStatement(trimmed, 1)]
    newlines = [at for at, char in enumerate(sql) if char == "\n"]
    return [
        SqlStatement(text, bisect.bisect_left(newlines, _original_index(start, removed)) + 1)
        for text, start in pieces
    ]


def _remove_wrapper(sql: str) -> tuple[str, list[tuple[int, int]]]:
    """Drop the first BEGIN TRANSACTION; and the first COMMIT; (plain text search, as wrangler).

    Returns the new text and the removed spans as (index in the new text, length), so a
    position can be mapped back to a line of the file.
    """
    if WRAPPER_BEGIN[:-1] not in sql:
        return sql, []
    original, removed = sql, []
    for marker in (WRAPPER_BEGIN, WRAPPER_COMMIT):
        at = sql.find(marker)
        if at >= 0:
            sql = sql[:at] + sql[at + len(marker):]
            removed.append((at, len(marker)))
    if WRAPPER_BEGIN[:-1] in sql:
        raise SeveralTransactionsError(_line_of(original, _original_index(sql.find(WRAPPER_BEGIN[:-1]), removed)))
    return sql, removed


def _original_index(index: int, removed: list[tuple[int, int]]) -> int:
    # Spans were removed one after the other: undo them last first.
    for at, length in reversed(removed):
        if index >= at:
            index += length
    return index


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, max(index, 0)) + 1


def _may_contain_multiple_statements(sql: str) -> bool:
    trimmed = sql.rstrip(JS_WHITESPACE)
    at = trimmed.find(";")
    return at != -1 and at != len(trimmed) - 1


def _scan_statements(sql: str) -> list[tuple[str, int]]:
    """wrangler's ``splitSqlIntoStatements``, with where each statement starts in ``sql``."""
    pieces: list[tuple[str, int]] = []
    current_text = ""
    start: int | None = None  # index in ``sql`` of the first non-blank character of ``current``
    compound_ends: list[Callable[[str], bool]] = []
    n = len(sql)
    i = 0

    def consume_until(begin: int, marker: str) -> int:
        """Index just past ``marker`` searched from ``begin`` (or the end of the text)."""
        at = sql.find(marker, begin)
        return n if at < 0 else at + len(marker)

    def append(text: str, at: int) -> None:
        nonlocal current_text, start
        if start is None:
            stripped = len(text) - len(text.lstrip(JS_WHITESPACE))
            if stripped < len(text):
                start = at + stripped
        current_text += text

    while i < n:
        char = sql[i]
        # The patterns span at most 7 characters: look at the tail only (a large file stays linear).
        if compound_ends and compound_ends[0](current_text[-7:] + char):
            compound_ends.pop(0)
        if char in "'\"`":
            end = consume_until(i + 1, char)
            append(sql[i:end], i)
            i = end
        elif char == "$":
            j = i + 1
            # consumeWhile: takes characters while they form an identifier, and the first one that does not.
            while j < n:
                j += 1
                if not _is_dollar_quote_identifier_char(sql[j - 1]):
                    break
            quote = sql[i:j]
            append(quote, i)
            i = j
            if quote.endswith("$"):
                end = consume_until(i, quote)
                append(sql[i:end], i)
                i = end
        elif char == "-":
            if i + 1 < n and sql[i + 1] == "-":
                i = consume_until(i + 2, "\n")
                append("\n", i)
            else:
                append("-", i)
                i += 1
                continue  # the next character is looked at afresh, without the compound check
        elif char == "/":
            if i + 1 < n and sql[i + 1] == "*":
                i = consume_until(i + 2, "*/")
            else:
                append("/", i)
                i += 1
                continue
        elif char == ";":
            if not compound_ends:
                pieces.append((current_text, start if start is not None else i))
                current_text, start = "", None
            else:
                append(";", i)
            i += 1
        else:
            append(char, i)
            i += 1
        if _COMPOUND_START.search(current_text[-7:]):
            compound_ends.insert(0, lambda text: bool(_COMPOUND_END.search(text)))
    pieces.append((current_text, start if start is not None else n))
    return [(js_trim(text), at) for text, at in pieces if js_trim(text)]


def _is_dollar_quote_identifier_char(char: str) -> bool:
    return char != "$" and (char.isdigit() and char.isascii() or char == "_" or char.lower() != char.upper())


# -- file order ---------------------------------------------------------------------


def js_parse_int(text: str) -> float:
    """JavaScript's ``parseInt(text)``: leading blanks, a sign, 0x, the longest run of digits."""
    text = text.lstrip(JS_WHITESPACE)
    sign = 1
    if text[:1] in ("+", "-"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    radix, digits = 10, "0123456789"
    if text[:2] in ("0x", "0X"):
        radix, digits, text = 16, "0123456789abcdefABCDEF", text[2:]
    run = 0
    while run < len(text) and text[run] in digits:
        run += 1
    if run == 0:
        return math.nan
    return float(sign * int(text[:run], radix))


def _compare_by_number(a: str, b: str) -> int:
    number_a, number_b = js_parse_int(a.split("_")[0]), js_parse_int(b.split("_")[0])
    if number_a < number_b:
        return -1
    if number_a > number_b:
        return 1
    return 0  # equal, or either is NaN


def wrangler_order(names: Sequence[str]) -> list[str]:
    """Names in the order wrangler applies them (its pending list is ordered this way)."""
    by_name = sorted(names, key=lambda name: name.encode("utf-16-be", "surrogatepass"))
    return _v8_sort(by_name, _compare_by_number)


def _v8_sort(items: list[str], compare: Callable[[str, str], int]) -> list[str]:
    """V8's Array.prototype.sort for a comparator that may call unrelated items equal.

    For fewer than 64 items V8's TimSort is one run: it takes the leading ascending
    (or strictly descending, then reversed) run and binary-inserts the rest. Larger
    lists go through CPython's list.sort, the TimSort V8's was ported from.
    """
    items = list(items)
    n = len(items)
    if n < 2:
        return items
    if n >= 64:
        return sorted(items, key=functools.cmp_to_key(compare))
    run = 2
    descending = compare(items[1], items[0]) < 0
    while run < n:
        order = compare(items[run], items[run - 1])
        if (descending and order >= 0) or (not descending and order < 0):
            break
        run += 1
    if descending:
        items[:run] = reversed(items[:run])
    for start in range(run, n):
        pivot = items[start]
        left, right = 0, start
        while left < right:
            mid = left + ((right - left) >> 1)
            if compare(pivot, items[mid]) < 0:
                right = mid
            else:
                left = mid + 1
        items[left + 1:start + 1] = items[left:start]
        items[left] = pivot
    return items
