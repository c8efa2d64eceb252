"""Every error sessionctl raises on purpose, in one place.

The library (repository, migrations, targets) raises these; the CLI maps each
class to one line on stderr and an exit code (see ``sessionctl.cli.errors``).
None of them carries a secret: messages name files, tables, rows and columns.
"""

from __future__ import annotations


class SessionctlError(Exception):
    """Base class: anything sessionctl reports as a clean one-line error."""


# -- the target could not be used --------------------------------------------------


class DatabaseUnavailableError(SessionctlError):
    """The database is missing, not SQLite, corrupt, locked, or read-only for a write."""


class DatabaseNotFoundError(DatabaseUnavailableError):
    pass


class NotADatabaseError(DatabaseUnavailableError):
    pass


class DatabaseLockedError(DatabaseUnavailableError):
    pass


class ReadOnlyDatabaseError(DatabaseUnavailableError):
    pass


# -- a statement failed ------------------------------------------------------------


class SQLError(SessionctlError):
    """SQLite (or D1) rejected a statement; ``str()`` is the engine's message."""


class ConstraintError(SQLError):
    """A constraint (CHECK, UNIQUE, NOT NULL) rejected a write."""


# -- sessions --------------------------------------------------------------------


class InvalidSessionError(SessionctlError, ValueError):
    """A session value the table's constraints reject (e.g. an unknown status)."""


class SessionNotFoundError(SessionctlError, LookupError):
    pass


# -- migrations ------------------------------------------------------------------


class MigrationError(SessionctlError):
    pass


class MigrationsDirError(MigrationError):
    pass


class MigrationFailedError(MigrationError):
    def __init__(self, name: str, message: str, line: int | None = None):
        where = f" at line {line}" if line is not None else ""
        super().__init__(f"migration {name} failed{where}: {message}; nothing of it was applied")
        self.name = name
        self.line = line
        self.reason = message


class ModifiedMigrationError(MigrationError):
    def __init__(self, names: list[str]):
        listed = ", ".join(names)
        super().__init__(
            f"applied migration file changed since it was applied: {listed} "
            "(restore the file as applied, or add a new migration instead of editing it)"
        )
        self.names = names


class RollbackError(SessionctlError):
    pass


class BackupError(SessionctlError):
    pass


# -- the operator's request ------------------------------------------------------


class UsageError(SessionctlError):
    """The request cannot be carried out as given (bad option value, unknown name)."""


class RefusedError(SessionctlError):
    """A destructive command was not confirmed."""


class ImportValidationError(SessionctlError):
    """A line of an import file is not a valid server_sessions row; nothing was written."""


class WranglerConfigError(SessionctlError):
    """The wrangler config is missing, malformed, or has no usable D1 binding."""
