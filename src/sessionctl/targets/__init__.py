"""Targets: where the sessions live. ``open_sqlite_file`` is the embedded default."""

from sessionctl.targets.base import Database, Result, Row, Statement
from sessionctl.targets.sqlite_file import SqliteFileDatabase, open_sqlite_file

__all__ = ["Database", "Result", "Row", "Statement", "SqliteFileDatabase", "open_sqlite_file"]
