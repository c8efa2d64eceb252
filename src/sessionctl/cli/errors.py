"""One map from sessionctl's exceptions to exit codes, and the one place they are printed."""

from __future__ import annotations

import errno
import os
import sys
import traceback

from sessionctl.cli.hints import cli_message
from sessionctl.errors import (
    DatabaseUnavailableError,
    LaterMigrationsError,
    MigrationsDirError,
    RefusedError,
    SessionctlError,
    SQLError,
    UsageError,
    WranglerConfigError,
)

EXIT_OK = 0
EXIT_FAILED = 1  # a check failed, or the data/migration rejected the operation
EXIT_USAGE = 2  # bad usage, or a destructive command refused
EXIT_DATABASE = 3  # the database could not be used
EXIT_OUTPUT_CLOSED = 141  # 128 + SIGPIPE: the reader of stdout went away (`| head`), as cat and grep exit

# Writing stdout failed for a reason of the output's own: nothing the database did.
OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}
MAX_MESSAGE_CHARS = 1000  # a server's answer or a pasted value can be megabytes: one line stays readable

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 a check or operation failed; 2 usage error or refused; "
    "3 the database could not be used (missing, not SQLite, corrupt, locked, read-only); "
    "141 the reader of the output went away (e.g. | head), nothing printed about it."
)

_EXIT_CODES: tuple[tuple[type[SessionctlError], int], ...] = (
    (DatabaseUnavailableError, EXIT_DATABASE),
    (UsageError, EXIT_USAGE),
    (RefusedError, EXIT_USAGE),
    (LaterMigrationsError, EXIT_USAGE),
    (MigrationsDirError, EXIT_USAGE),
    (WranglerConfigError, EXIT_USAGE),
)


def exit_code_for(error: SessionctlError) -> int:
    for cls, code in _EXIT_CODES:
        if isinstance(error, cls):
            return code
    return EXIT_FAILED


def message_for(error: SessionctlError) -> str:
    hinted = cli_message(error)  # the library names its own terms; the CLI names its flags
    if hinted is not None:
        return hinted
    message = str(error)
    if isinstance(error, SQLError) and "no such table: server_sessions" in message:
        return "table server_sessions does not exist (migration 003 is not applied: run `sessionctl migrate`)"
    if isinstance(error, LaterMigrationsError):
        return f"{message} (`rollback --through-later` rolls back through them and unrecords them)"
    return message


def report_usage_error(error: Exception) -> int | None:
    """Print a click usage error (bad option, value, argument or command) as one line; return its exit code.

    click would print its usage block and a hint around the message; sessionctl prints
    every error as one line. None, and nothing printed, for any other exception and for
    the help page a group shows when given no command. Matched by class name and module:
    typer vendors click from 0.28 on, so the classes live in click or in typer._click.
    """
    kinds = {cls.__name__ for cls in type(error).__mro__ if cls.__module__.split(".")[0] in ("click", "typer")}
    if "UsageError" not in kinds or "NoArgsIsHelpError" in kinds:
        return None
    line = " ".join(error.format_message().split())  # type: ignore[attr-defined]
    print(f"sessionctl: error: {line}", file=sys.stderr)
    return error.exit_code  # type: ignore[attr-defined]


def report_internal(error: Exception) -> int:
    """A bug, not a user error: still one line, and the way to the traceback."""
    detail = one_line(str(error))
    print(
        f"sessionctl: error: internal error: {type(error).__name__}{': ' + detail if detail else ''} "
        "(this is a bug in sessionctl; rerun with --debug for the traceback)",
        file=sys.stderr,
    )
    return EXIT_FAILED


def report(error: SessionctlError, debug: bool) -> int:
    """Print ``error`` as one line on stderr (and the traceback with --debug); return its exit code."""
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    print(f"sessionctl: error: {one_line(message_for(error))}", file=sys.stderr)
    return exit_code_for(error)


def one_line(message: str) -> str:
    """One line of bounded length, whatever the message carries (newlines, megabytes)."""
    line = " ".join(message.split())
    if len(line) > MAX_MESSAGE_CHARS:
        cut = len(line) - MAX_MESSAGE_CHARS
        line = f"{line[:MAX_MESSAGE_CHARS]}… ({cut} more characters)"
    return line


def reader_went_away() -> int:
    """stdout's reader closed the pipe: stop quietly, and keep Python from complaining at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_OUTPUT_CLOSED


def report_output_error(error: OSError) -> int:
    """stdout could not be written (a full disk, a quota): one line, and never exit 0."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more goes there
    except (OSError, ValueError):
        pass
    print(f"sessionctl: error: cannot write the output: {error.strerror}; what was printed is incomplete",
          file=sys.stderr)
    return EXIT_FAILED
