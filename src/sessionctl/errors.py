"""Every error sessionctl raises on purpose, in one place.

The library (repository, migrations, targets) raises these; the CLI maps each
class to one line on stderr and an exit code (see ``sessionctl.cli.errors``).
None of them carries a secret: messages name files, tables, rows and columns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class SessionctlError(Exception):
    """Base class: anything sessionctl reports as a clean one-line error."""


# -- the target could not be used --------------------------------------------------


class DatabaseUnavailableError(SessionctlError):
    """The database is missing, not SQLite, corrupt, locked, or read-only for a write."""


class DatabaseNotFoundError(DatabaseUnavailableError):
    """No database where the target points; ``path`` is the missing file (None for remote D1)."""

    #: How a library caller gets the file created; the CLI names its command instead.
    REMEDY = "create=True creates it"

    def __init__(self, message: str, path: Path | None = None):
        super().__init__(message)
        self.path = path


class NotADatabaseError(DatabaseUnavailableError):
    pass


class DatabaseLockedError(DatabaseUnavailableError):
    """Another connection held the lock for all of ``waited_s`` (the target's timeout) on ``path``."""

    #: What a library caller can do about it; the CLI names its option instead.
    REMEDY = "allow a longer timeout"

    def __init__(self, message: str, *, path: Path | None = None, waited_s: float | None = None):
        super().__init__(message)
        self.path = path
        self.waited_s = waited_s


class ReadOnlyDatabaseError(DatabaseUnavailableError):
    pass


# -- remote D1: what an answer, or its absence, means -------------------------------


class CredentialsRefusedError(DatabaseUnavailableError):
    """The Cloudflare API refused the token (HTTP ``status``, Cloudflare ``code``)."""

    def __init__(self, message: str, *, status: int, code: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class RateLimitedError(DatabaseUnavailableError):
    """The Cloudflare API is rate limiting this token or account; the request was not executed.

    ``retry_after_s`` is the wait the API asked for (None when it named none). sessionctl
    sleeps through a short wait itself; a long one (the account-wide block lasts up to five
    minutes) is reported at once, never slept through silently.
    """

    def __init__(self, retry_after_s: float | None, *, code: int | None = None):
        wait = f"retry after {retry_after_s:g} s" if retry_after_s is not None else "retry later"
        super().__init__(f"rate limited: {wait} (the Cloudflare API answered 429"
                         + (f", code {code}" if code is not None else "") + "; nothing was executed)")
        self.retry_after_s = retry_after_s
        self.code = code


class OutcomeUnknownError(DatabaseUnavailableError):
    """A write reached D1 and no answer says whether it ran (the connection was lost, D1
    failed or reset mid-request): it may or may not have been applied. Never sent again."""

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


class RequestTooLargeError(SessionctlError, ValueError):
    """Something to be sent is over a limit of the target; nothing was sent.

    ``what`` names it (a value's parameter, a migration file), ``size`` and ``limit`` are bytes.
    """

    def __init__(self, message: str, *, what: str, size: int, limit: int):
        super().__init__(message)
        self.what = what
        self.size = size
        self.limit = limit


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


class LaterMigrationsError(RollbackError):
    """Migrations applied after 003 changed server_sessions; a rollback would drop what they built."""

    def __init__(self, names: list[str]):
        super().__init__(
            f"migrations applied after 003 changed server_sessions: {', '.join(names)}; rolling back "
            "would drop what they built as well, so nothing was dropped"
        )
        self.names = names


class BackupError(SessionctlError):
    pass


# -- the operator's request ------------------------------------------------------


class UsageError(SessionctlError):
    """The request cannot be carried out as given (bad option value, unknown name)."""


class UnknownChoiceError(UsageError, ValueError):
    """``value`` is not one of ``choices``, the values of the Enum that ``name`` (a parameter) takes."""

    def __init__(self, name: str, value: object, choices: tuple[str, ...]):
        super().__init__(f"unknown {name} {value!r}: use one of {', '.join(choices)}")
        self.name = name
        self.value = value
        self.choices = choices


class RefusedError(SessionctlError):
    """A destructive command was not confirmed."""


class NoRestorePointError(RefusedError):
    """A remote rollback could not take its Time Travel bookmark, so it dropped nothing.

    ``reason`` says why. ``roll_back(..., require_bookmark=False)`` drops without one.
    """

    REMEDY = "require_bookmark=False drops without one"

    def __init__(self, reason: str):
        super().__init__(f"no Time Travel bookmark could be taken ({reason}), so nothing was dropped: "
                         f"without one the rollback could not be undone on D1 ({self.REMEDY})")
        self.reason = reason


class PatternTooLongError(UsageError):
    """A LIKE/GLOB pattern longer than D1 accepts (``limit`` bytes); ``field`` names the parameter."""

    def __init__(self, field: str, pattern: str, *, size: int, limit: int):
        super().__init__(f"{field} {pattern[:60]!r} is a {size}-byte pattern; D1 refuses LIKE/GLOB patterns "
                         f"over {limit} bytes (nothing was sent)")
        self.field = field
        self.size = size
        self.limit = limit


class ImportValidationError(SessionctlError):
    """A line of an import file is not a valid server_sessions row; nothing was written."""


class WranglerConfigError(SessionctlError):
    """The wrangler config is missing, malformed, or has no usable D1 binding."""


# -- choosing the target -----------------------------------------------------------
# The fields name what the caller passed (``TargetRequest`` fields, environment variables,
# config keys), never a command-line flag: the CLI words its own hints from them.


class ConflictingTargetOptionsError(UsageError):
    """``options`` (TargetRequest field names, the first the one the others clash with) cannot go together."""

    def __init__(self, options: tuple[str, ...], message: str):
        super().__init__(message)
        self.options = options


class WranglerConfigNotFoundError(WranglerConfigError):
    """No wrangler config: ``path`` was asked for and is missing, or none of ``looked_for`` is in
    ``searched_from`` or above while ``needed_by`` (a TargetRequest field) needs one."""

    def __init__(self, *, path: Path | None = None, searched_from: Path | None = None,
                 looked_for: tuple[str, ...] = (), needed_by: str | None = None):
        if path is not None:
            message = f"wrangler config not found: {path}"
        else:
            message = (f"no wrangler config ({', '.join(looked_for)}) in {searched_from} or above, which "
                       f"{needed_by} needs; give config=PATH, or db_path for a plain SQLite file")
        super().__init__(message)
        self.path = path
        self.searched_from = searched_from
        self.looked_for = looked_for
        self.needed_by = needed_by


class DatabaseChoiceError(UsageError):
    """Which D1 database of a wrangler config is meant cannot be told.

    ``problem`` is "unknown" or "ambiguous" (``name`` matches no entry, or several) or
    "unchosen" (no ``name``, several entries, none bound as DB). ``choices`` are the
    entries as "BINDING (database_name)".
    """

    def __init__(self, problem: str, name: str | None, choices: tuple[str, ...], config_path: Path,
                 env: str | None):
        self.problem = problem
        self.name = name
        self.choices = choices
        self.config_path = config_path
        self.env = env
        listed = ", ".join(choices)
        if problem == "unchosen":
            message = f"{self.where} has several D1 databases; choose one by binding or database_name: {listed}"
        else:
            what = "is ambiguous" if problem == "ambiguous" else "is not a binding or database_name"
            message = f"{name!r} {what} in {self.where}; choose one of: {listed}"
        super().__init__(message)

    @property
    def where(self) -> str:
        return f"{self.config_path}" + (f" [env.{self.env}]" if self.env else "")


class UnknownEnvironmentError(UsageError):
    """``env`` is not one of the ``choices`` the wrangler config at ``config_path`` defines."""

    def __init__(self, env: str, choices: tuple[str, ...], config_path: Path):
        super().__init__(f"no environment {env!r} in {config_path} (environments: {', '.join(choices)})")
        self.env = env
        self.choices = choices
        self.config_path = config_path


class RemoteSettingError(UsageError):
    """A remote D1 setting is missing or unsafe; nothing was sent.

    ``setting`` is the environment variable or config key (CLOUDFLARE_API_TOKEN,
    CLOUDFLARE_ACCOUNT_ID, CLOUDFLARE_API_BASE_URL, account_id, database_id, ...);
    ``problem`` is "missing", "malformed" or "unsafe". For a binding without a
    database_id, ``config_path`` and ``database`` (its label) say which. Never the token.
    """

    def __init__(self, setting: str, problem: str, message: str, *, config_path: Path | None = None,
                 database: str | None = None):
        super().__init__(message)
        self.setting = setting
        self.problem = problem
        self.config_path = config_path
        self.database = database
