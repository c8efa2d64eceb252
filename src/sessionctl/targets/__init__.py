"""Targets: where the sessions live.

``open_target`` opens what a ``TargetRequest`` means, with every rule the CLI applies;
``open_sqlite_file`` opens one plain file.
"""

from sessionctl.targets.base import Database, Result, Row, Statement
from sessionctl.targets.resolve import (
    RemoteD1,
    ResolvedTarget,
    TargetKind,
    TargetRequest,
    open_target,
    resolve_target,
)
from sessionctl.targets.sqlite_file import SqliteFileDatabase, open_sqlite_file

__all__ = [
    "Database", "Result", "Row", "Statement", "SqliteFileDatabase", "open_sqlite_file",
    "RemoteD1", "ResolvedTarget", "TargetKind", "TargetRequest", "open_target", "resolve_target",
]
