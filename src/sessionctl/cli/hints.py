"""The CLI's words for library errors that point at what the caller passed.

The library names its own terms (TargetRequest fields, ``create=True``, a timeout);
here those become the flags and commands an operator types. Imported at start-up with
the error map, so it imports nothing but the exception classes.
"""

from __future__ import annotations

from sessionctl.errors import (
    ConflictingTargetOptionsError,
    DatabaseChoiceError,
    DatabaseLockedError,
    DatabaseNotFoundError,
    NoRestorePointError,
    PatternTooLongError,
    RemoteSettingError,
    SessionctlError,
    WranglerConfigNotFoundError,
)

# TargetRequest field -> the global option that sets it.
FLAGS = {
    "db_path": "--db (or SESSIONCTL_DB)",
    "config": "--config",
    "database": "--database",
    "env": "--env",
    "local": "--local",
    "remote": "--remote",
    "persist_to": "--persist-to",
}

# Error class -> the CLI's words for the remedy its message names (``cls.REMEDY``).
_REMEDIES = (
    (DatabaseLockedError, "raise --timeout"),
    (DatabaseNotFoundError, "`sessionctl migrate` creates it"),
    (NoRestorePointError, "--without-bookmark drops without one"),
)

# Library parameter -> the command option that sets it.
OPTIONS = {"user_pattern": "--user"}


def cli_message(error: SessionctlError) -> str | None:
    """The line the CLI prints for ``error`` when it differs from ``str(error)``, else None."""
    if isinstance(error, ConflictingTargetOptionsError):
        return _conflict(error.options)
    if isinstance(error, WranglerConfigNotFoundError) and error.needed_by is not None:
        return (f"no wrangler config ({', '.join(error.looked_for)}) in {error.searched_from} or above "
                f"for {FLAGS[error.needed_by]}; pass --config PATH, or --db PATH for a plain SQLite file")
    if isinstance(error, DatabaseChoiceError):
        choices = ", ".join(error.choices)
        if error.problem == "unchosen":
            return f"{error.where} has several D1 databases; choose one with --database: {choices}"
        what = "is ambiguous" if error.problem == "ambiguous" else "is not a binding or database_name"
        return f"--database {error.name!r} {what} in {error.where}; choose one of: {choices}"
    if isinstance(error, RemoteSettingError) and error.problem == "missing":
        return _remote_needs(error)
    if isinstance(error, PatternTooLongError) and error.field in OPTIONS:
        return str(error).replace(error.field, OPTIONS[error.field], 1)
    # Swapped inside the message, not rebuilt from the fields: a command may have added context
    # to it (cleanup says how many rows its earlier batches deleted).
    for cls, cli_remedy in _REMEDIES:
        if isinstance(error, cls) and cls.REMEDY in str(error):
            return str(error).replace(cls.REMEDY, cli_remedy)
    return None



def _conflict(options: tuple[str, ...]) -> str:
    if set(options) == {"local", "remote"}:
        return "--local and --remote cannot be used together"
    if set(options) == {"persist_to", "remote"}:
        return "--persist-to is for the local state; it cannot be used with --remote"
    first, *others = options
    return f"{FLAGS[first]} cannot be combined with {', '.join(FLAGS[o] for o in others)}"


def _remote_needs(error: RemoteSettingError) -> str | None:
    if error.setting == "database_id":
        return f"{error.config_path}: {error.database} has no database_id, which --remote needs"
    if error.setting == "CLOUDFLARE_ACCOUNT_ID":
        return "--remote needs the account: set CLOUDFLARE_ACCOUNT_ID (or account_id in the config)"
    if error.setting == "CLOUDFLARE_API_TOKEN":
        return "--remote needs an API token: set CLOUDFLARE_API_TOKEN"
    return None
