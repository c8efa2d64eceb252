"""Test helpers that write and read server_sessions rows with plain SQL, independent of sessionctl.

They go through ``raw_sqlite`` (a connection of their own, no sessionctl code), never the
standard library's sqlite3: see raw_sqlite for why one process must use one SQLite library.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Iterable

import raw_sqlite
from sessionctl.repository import COLUMNS, TABLE

_RAW_SELECT = "SELECT {} FROM {} ORDER BY user_id".format(
    ", ".join(f"typeof({c}), CASE WHEN typeof({c}) = 'text' THEN hex({c}) ELSE {c} END" for c in COLUMNS),
    TABLE,
)
_INSERT = "INSERT INTO {} ({}) VALUES ({})".format(TABLE, ", ".join(COLUMNS), ", ".join("?" for _ in COLUMNS))


def insert_rows(db_path: Path, rows: Iterable[dict]) -> None:
    """Insert raw rows (missing columns are NULL) in one transaction; the table must exist."""
    conn = raw_sqlite.connect(db_path)
    try:
        with conn:
            conn.executemany(_INSERT, ([row.get(c) for c in COLUMNS] for row in rows))
    finally:
        conn.close()


def raw_rows(db_path: Path) -> list[tuple]:
    """Every row exactly as stored: each value with its SQLite type, text as its UTF-8 bytes in hex."""
    conn = raw_sqlite.connect(db_path)
    try:
        return conn.execute(_RAW_SELECT).fetchall()
    finally:
        conn.close()
