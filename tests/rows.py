"""Test helpers that write and read server_sessions rows with plain sqlite3, independent of sessionctl."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterable

from sessionctl.repository import COLUMNS

_INSERT = f"INSERT INTO server_sessions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"


def insert_rows(db_path: Path, rows: Iterable[dict]) -> None:
    """Insert raw rows (missing columns are NULL) in one transaction."""
    conn = sqlite3.connect(db_path)
    with conn:
        conn.executemany(_INSERT, [tuple(r.get(c) for c in COLUMNS) for r in rows])
    conn.close()


def raw_rows(db_path: Path) -> list[tuple]:
    """Every row exactly as stored: each value with its SQLite type, text as its UTF-8 bytes in hex."""
    columns = ", ".join(
        f"typeof({c}), CASE WHEN typeof({c}) = 'text' THEN hex({c}) ELSE {c} END" for c in COLUMNS
    )
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(f"SELECT {columns} FROM server_sessions ORDER BY user_id").fetchall()
    finally:
        conn.close()
