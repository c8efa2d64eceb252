"""Test helpers that write and read server_sessions rows through sqlite-utils, independent of sessionctl.

Issue 2: "for local files use sqlite-utils". sessionctl's own SQLite target uses the standard
library's sqlite3 (start-up cost), so the tests check it against a second, independent
reader/writer: sqlite-utils, on its own connection to the same file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from collections.abc import Iterable

import sqlite_utils

from sessionctl.repository import COLUMNS, TABLE

_RAW_SELECT = "SELECT {} FROM {} ORDER BY user_id".format(
    ", ".join(f"typeof({c}), CASE WHEN typeof({c}) = 'text' THEN hex({c}) ELSE {c} END" for c in COLUMNS),
    TABLE,
)


def insert_rows(db_path: Path, rows: Iterable[dict]) -> None:
    """Insert raw rows (missing columns are NULL) in one transaction.

    The table must exist (migrated): sqlite-utils would otherwise create one of its own
    guessing, which is not the table under test.
    """
    db = sqlite_utils.Database(db_path)
    try:
        table = db[TABLE]
        if not table.exists():
            raise sqlite3.OperationalError(f"no such table: {TABLE}")
        with db.atomic():  # one transaction, however many chunks insert_all splits the rows into
            table.insert_all(({c: row.get(c) for c in COLUMNS} for row in rows), batch_size=500)
    finally:
        db.close()


def raw_rows(db_path: Path) -> list[tuple]:
    """Every row exactly as stored: each value with its SQLite type, text as its UTF-8 bytes in hex."""
    db = sqlite_utils.Database(db_path)
    try:
        return db.execute(_RAW_SELECT).fetchall()
    finally:
        db.close()
