"""sessions list / show / stats / cleanup / delete / export / import."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, List, Optional

import typer

from sessionctl.cli.context import Settings, confirm_or_refuse
from sessionctl.cli.options import (
    DryRunOption,
    FormatOption,
    JsonOption,
    ObjectFormatOption,
    YesOption,
    chosen_format,
)
from sessionctl.cli.render import Format, ObjectFormat, console, render_object, render_rows
from sessionctl.enums import ConflictPolicy, SessionState, SessionStatus, SortKey
from sessionctl.errors import UsageError

app = typer.Typer(help="Inspect and purge sessions (through the repository module).", no_args_is_help=True)

TABLE_COLUMNS = ["user_id", "status", "messages", "updated", "expires"]
StateActive = Annotated[bool, typer.Option("--active", help="Only live sessions (expires_at > now)")]
StateExpired = Annotated[bool, typer.Option("--expired", help="Only expired sessions")]
StateAll = Annotated[bool, typer.Option("--all", help="Live and expired sessions")]


def _text(value: str, what: str) -> str:
    """A command-line value that must be text: bytes that are not UTF-8 are refused in one line."""
    from sessionctl.encoding import has_lone_surrogates

    if has_lone_surrogates(value):  # the arguments' bytes that were not UTF-8, as \udcXX
        raise UsageError(f"{what} is not valid UTF-8 text")
    return value


def _state(active: bool, expired: bool, every: bool, default: SessionState) -> SessionState:
    flags = ((SessionState.ACTIVE, active), (SessionState.EXPIRED, expired), (SessionState.ALL, every))
    chosen = [state for state, on in flags if on]
    if len(chosen) > 1:
        raise UsageError(f"choose one of --active, --expired, --all (got --{' --'.join(chosen)})")
    return chosen[0] if chosen else default


def _message_count(messages: Any) -> str:
    return str(len(messages)) if isinstance(messages, list) else "?"


def _table_row(row: dict[str, Any], now: int) -> dict[str, Any]:
    from sessionctl.cli.timefmt import ago, expires

    return {
        "user_id": row["user_id"],
        "status": row["status"],
        "messages": _message_count(row["messages"]),
        "updated": ago(row["updated_at"], now),
        "expires": expires(row["expires_at"], now),
    }


@app.command("list")
def list_(
    ctx: typer.Context,
    status: Annotated[
        Optional[List[SessionStatus]], typer.Option("--status", "-s", help="Only this status (repeatable)")
    ] = None,
    active: StateActive = False,
    expired: StateExpired = False,
    every: StateAll = False,
    user: Annotated[Optional[str], typer.Option("--user", help="user_id prefix, or a glob (* ? [])")] = None,
    limit: Annotated[int, typer.Option(help="At most N rows; 0 for no limit", min=0)] = 50,
    after: Annotated[Optional[str], typer.Option(help="Start after this user_id (keyset pagination)")] = None,
    cursor: Annotated[Optional[str], typer.Option(help="Continue from the cursor printed by the last page")] = None,
    sort: Annotated[SortKey, typer.Option(help="Sort by this column, then user_id")] = SortKey.EXPIRES,
    desc: Annotated[bool, typer.Option("--desc", help="Sort descending")] = False,
    fmt: FormatOption = Format.table,
    as_json: JsonOption = False,
) -> None:
    """List sessions (default: live ones, soonest to expire first, 50 at a time)."""
    from sessionctl.repository import (
        SessionQuery,
        cursor_for,
        decode_row,
        find_session_row,
        list_sessions,
        now_ms,
    )

    settings: Settings = ctx.obj
    if after is not None and cursor is not None:
        raise UsageError("--after and --cursor cannot be used together")
    for value, what in ((user, "--user"), (after, "--after"), (cursor, "--cursor")):
        if value is not None:
            _text(value, what)
    fmt = chosen_format(fmt, as_json)
    db = settings.open()
    now = now_ms()
    position = None
    if cursor is not None:
        position = _parse_cursor(cursor, sort)
    elif after is not None and sort is SortKey.USER:
        position = (None, after)  # user_id > ? needs no row to exist
    elif after is not None:
        row = find_session_row(db, after)
        if row is None:
            raise UsageError(f"--after {after!r}: no session with that user_id (use --cursor to page past deleted rows)")
        position = cursor_for(row, sort)
    query = SessionQuery(
        statuses=tuple(status or ()),
        state=_state(active, expired, every, SessionState.ACTIVE),
        user_pattern=user,
        limit=limit or None,
        sort=sort,
        desc=desc,
        after=position,
    )
    last: list[dict[str, Any]] = []

    def rows() -> Iterator[dict[str, Any]]:
        for row in list_sessions(db, query, now=now):
            last[:] = [row]
            decoded = decode_row(row)[0]
            yield _table_row(decoded, now) if fmt is Format.table else decoded

    from sessionctl.repository import COLUMNS

    count = render_rows(rows(), fmt, TABLE_COLUMNS if fmt is Format.table else list(COLUMNS))
    if limit and count == limit and last:
        value, user_id = cursor_for(last[0], sort)
        token = f"{'' if sort is SortKey.USER else value}:{user_id}"
        print(f"sessionctl: more rows may follow: --cursor {shlex.quote(token)}", file=sys.stderr)


def _parse_cursor(token: str, sort: SortKey) -> tuple[Any, str]:
    value, sep, user_id = token.partition(":")
    if not sep or not user_id:
        raise UsageError(f"--cursor {token!r} is not a cursor printed by sessions list")
    if sort is SortKey.USER:
        return (None, user_id)
    try:
        return (int(value), user_id)
    except ValueError:
        raise UsageError(f"--cursor {token!r} does not fit --sort {sort}") from None


@app.command()
def show(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(help="The session's user_id")],
    fmt: ObjectFormatOption = ObjectFormat.table,
    as_json: JsonOption = False,
) -> None:
    """Show every field of one session, expired or not."""
    from sessionctl.errors import SessionNotFoundError
    from sessionctl.repository import JSON_COLUMNS, find_session_row, now_ms

    settings: Settings = ctx.obj
    _text(user_id, "USER_ID")
    db = settings.open()
    row = find_session_row(db, user_id)
    if row is None:
        raise SessionNotFoundError(f"no session for user_id {user_id!r}")
    from sessionctl.repository import decode_row

    decoded, malformed = decode_row(row)
    if chosen_format(fmt, as_json) is not Format.table:
        render_object(decoded)
        return
    from sessionctl.cli.render import render_fields
    from sessionctl.cli.timefmt import absolute, ago, expires
    from sessionctl.encoding import dumps_for_terminal, printable

    now = now_ms()
    expired = row["expires_at"] <= now
    fields = [
        ("user_id", printable(row["user_id"]), ""),
        ("status", row["status"], "EXPIRED" if expired else ""),
        ("created", f"{absolute(row['created_at'])}  ({ago(row['created_at'], now)})", ""),
        ("updated", f"{absolute(row['updated_at'])}  ({ago(row['updated_at'], now)})", ""),
        ("expires", f"{absolute(row['expires_at'])}  ({expires(row['expires_at'], now)})", ""),
    ]
    for column in JSON_COLUMNS:
        text = row[column]
        if text is None:
            fields.append((column, "null", ""))
        elif column in malformed:  # did not decode: show it raw, flagged
            fields.append((column, printable(text), "\nMALFORMED JSON (shown raw)"))
        else:
            fields.append((column, dumps_for_terminal(decoded[column], indent=2), ""))
    messages = decoded["messages"]
    if isinstance(messages, list):
        fields.append(("message count", str(len(messages)), ""))
        if messages:
            fields.append(("last message", dumps_for_terminal(messages[-1]), ""))
    render_fields(fields)


@app.command()
def stats(
    ctx: typer.Context,
    fmt: ObjectFormatOption = ObjectFormat.table,
    as_json: JsonOption = False,
) -> None:
    """Session analytics: counts by status, live vs expired, what expires soon, size."""
    from sessionctl.repository import now_ms, session_stats

    settings: Settings = ctx.obj
    db = settings.open()
    now = now_ms()
    result = session_stats(db, now=now)
    if chosen_format(fmt, as_json) is not Format.table:
        render_object(result.as_dict())
        return
    from rich.table import Table

    from sessionctl.cli.timefmt import absolute, ago

    out = console()
    widest = max(result.by_status.values(), default=0) or 1
    chart = Table.grid(padding=(0, 1))
    for _ in range(3):
        chart.add_column()
    for status, count in result.by_status.items():
        bar = "█" * round(30 * count / widest) if count else ""
        chart.add_row(status, f"[cyan]{bar}[/]", str(count))
    out.print(chart)
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("rows", f"{result.total} ({result.active} active, {result.expired} expired)")
    facts.add_row("expiring", f"{result.expiring_within_5m} within 5 min, {result.expiring_within_60m} within 60 min")
    facts.add_row("oldest created", f"{absolute(result.oldest_created_at)} ({ago(result.oldest_created_at, now)})" if result.oldest_created_at else "-")
    facts.add_row("newest update", f"{absolute(result.newest_updated_at)} ({ago(result.newest_updated_at, now)})" if result.newest_updated_at else "-")
    if result.size_bytes is not None:
        facts.add_row("database size", f"{result.size_bytes / 1024:.1f} KiB")
    out.print(facts)


@app.command()
def cleanup(
    ctx: typer.Context,
    batch_size: Annotated[int, typer.Option(help="Rows per transaction", min=1)] = 500,
    dry_run: DryRunOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No output (for cron)")] = False,
) -> None:
    """Delete expired sessions (expires_at <= now) in short batches; safe to run from cron."""
    from sessionctl.repository import count_expired_sessions, now_ms

    settings: Settings = ctx.obj
    settings.quiet = settings.quiet or quiet
    db = settings.open()
    now = now_ms()
    expired = count_expired_sessions(db, now=now)
    if dry_run:
        if not quiet:
            print(f"would delete {expired} expired sessions (dry run, nothing deleted)")
        return
    with _progress_bar(expired if expired > batch_size and not quiet else 0) as advance:
        deleted = _cleanup_reporting_progress(db, now, batch_size, advance)
    if not quiet:
        print(f"deleted {deleted} expired sessions")


@contextlib.contextmanager
def _progress_bar(total: int) -> Iterator[Callable[[int], None]]:
    """A bar on stderr when it is a terminal and there is more than one batch; else nothing."""
    if not total or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.progress import Progress

    with Progress(console=console(stderr=True), transient=True) as progress:
        task = progress.add_task("deleting expired sessions", total=total)
        yield lambda n: progress.advance(task, n)


def _cleanup_reporting_progress(db, now: int, batch_size: int, advance: Callable[[int], None]) -> int:
    """Cleanup that, if a batch fails, says how many rows the earlier batches already deleted."""
    from sessionctl.errors import SessionctlError
    from sessionctl.repository import cleanup_expired_sessions

    done = [0]

    def count(n: int) -> None:
        done[0] += n
        advance(n)

    try:
        return cleanup_expired_sessions(db, now=now, batch_size=batch_size, on_batch=count)
    except SessionctlError as error:
        if done[0]:
            error.args = (f"{error} (after deleting {done[0]} expired sessions in earlier batches)",)
        raise


@app.command()
def delete(
    ctx: typer.Context,
    user_ids: Annotated[List[str], typer.Argument(help="user_id of each session to delete")],
    yes: YesOption = False,
) -> None:
    """Delete these users' sessions, live or expired (asks first, or --yes)."""
    from sessionctl.repository import delete_sessions

    settings: Settings = ctx.obj
    for user_id in user_ids:
        _text(user_id, "USER_ID")
    db = settings.open()
    confirm_or_refuse(
        f"Delete {len(user_ids)} session(s) ({', '.join(user_ids[:5])}{', ...' if len(user_ids) > 5 else ''}) in {db.description}?",
        yes,
        "delete refused, nothing was deleted",
    )
    deleted = delete_sessions(db, user_ids)
    for user_id in deleted:
        print(f"deleted {user_id}")
    missing = [u for u in dict.fromkeys(user_ids) if u not in set(deleted)]
    for user_id in missing:
        print(f"not found {user_id}")
    print(f"{len(deleted)} deleted, {len(missing)} not found")


@app.command()
def export(
    ctx: typer.Context,
    output: Annotated[str, typer.Option("--output", "-o", help="File to write, or - for stdout")] = "-",
    active: StateActive = False,
    expired: StateExpired = False,
    every: StateAll = False,
) -> None:
    """Write sessions as JSON Lines with raw column values (the rollback backup format)."""
    from sessionctl.backup import write_rows, write_rows_file
    from sessionctl.repository import iter_session_rows

    settings: Settings = ctx.obj
    state = _state(active, expired, every, SessionState.ALL)
    db = settings.open()
    if output != "-":
        _refuse_to_export_onto_the_database(Path(output), settings.target().path)
    rows = iter_session_rows(db, state)
    if output == "-":
        write_rows(rows, sys.stdout)
        sys.stdout.flush()
        return
    path = Path(output)
    if path.exists() and not path.is_file() and not path.is_dir():
        # A FIFO, a device, a socket: written into as it is. The temporary-file-and-rename
        # of a regular file would replace the node itself with a plain file.
        with open(path, "w", encoding="utf-8", newline="\n") as out:
            count = write_rows(rows, out)
    else:
        count = write_rows_file(rows, path, overwrite=True)
    print(f"exported {count} sessions to {output}", file=sys.stderr)


def _refuse_to_export_onto_the_database(output: Path, database: Path | None) -> None:
    """The export would replace the file it reads (or its WAL, its journal): refuse, naming it."""
    if database is None:
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        part = Path(f"{database}{suffix}")
        try:
            same = output.exists() and part.exists() and os.path.samefile(output, part)
        except OSError:
            same = False
        if same or output.resolve() == part.resolve():
            raise UsageError(f"--output {output} is the database being exported ({part}); "
                             "nothing was written: choose another file")


@app.command("import")
def import_(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="JSON Lines file (as written by export or rollback), or -")],
    on_conflict: Annotated[
        ConflictPolicy, typer.Option(help="A user_id already stored: keep it, replace it, or keep the newer updated_at")
    ] = ConflictPolicy.SKIP,
) -> None:
    """Import sessions all or nothing; any bad line (named by number) and nothing is written."""
    from sessionctl.backup import read_rows
    from sessionctl.repository import extra_columns, import_session_rows

    settings: Settings = ctx.obj
    if file == "-":
        handle, source = sys.stdin, "<stdin>"
    else:
        source = file
        try:
            handle = open(file, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read {file}: {exc.strerror}") from None
    try:
        db = settings.open()
        # One pass: rows are validated as they stream into the staging table; a bad line
        # drops it, and the live table only changes in the final merge.
        written, skipped = import_session_rows(db, read_rows(handle, source, extra_columns(db)), on_conflict)
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read {source}: not UTF-8 text ({exc.reason}); nothing was imported") from None
    except IsADirectoryError:
        raise UsageError(f"cannot read {source}: Is a directory") from None
    finally:
        if handle is not sys.stdin:
            handle.close()
    print(f"imported {written} of {written + skipped} sessions from {source}"
          + (f" ({skipped} skipped: on-conflict {on_conflict})" if skipped else ""))
