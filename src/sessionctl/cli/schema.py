"""migrate, status, verify, rollback: the schema's deploy / verify / revert steps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sessionctl.cli.context import Settings
from sessionctl.cli.options import (
    DryRunOption,
    FormatOption,
    JsonOption,
    ObjectFormatOption,
    YesOption,
    chosen_format,
)
from sessionctl.cli.render import Format, ObjectFormat, render_checks, render_rows
from sessionctl.enums import FieldCase


def migrate(
    ctx: typer.Context,
    dry_run: DryRunOption = False,
) -> None:
    """Apply pending migrations, each file with its ledger row in one transaction."""
    from sessionctl.errors import DatabaseNotFoundError
    from sessionctl.migrations import pending_migrations, plan_statements

    settings: Settings = ctx.obj
    files = settings.migrations()
    ledger = settings.ledger
    if dry_run:
        try:
            db = settings.open()
            settings.note_missing_sessions_migration(files)
            pending = pending_migrations(db, files, ledger)
        except DatabaseNotFoundError:
            target = settings.target()
            if target.path is None:  # remote D1 is never created by migrate
                raise
            settings.announce()
            settings.note_missing_sessions_migration(files)
            pending = files
            print(f"-- {target.path} does not exist; migrate would create it")
        if not pending:
            print("-- nothing to apply")
        for migration in pending:
            print(f"-- {migration.name} (one transaction)")
            for statement in plan_statements(migration, ledger):
                sql = statement.sql
                for value in statement.params:
                    sql = sql.replace("?", "'" + str(value).replace("'", "''") + "'", 1)
                print(sql.rstrip(";") + ";")
        return
    db = settings.open(create=True)
    settings.note_missing_sessions_migration(files)
    apply_and_report(settings.engine(db, files))


def apply_and_report(engine) -> list[str]:
    """Apply pending files, one line each; return the names this run applied."""
    from sessionctl.migrations import Outcome

    applied, seen = [], 0
    for outcome in engine.apply():
        seen += 1
        if outcome.outcome is Outcome.APPLIED:
            applied.append(outcome.name)
            print(f"applied {outcome.name}")
        else:
            print(f"{outcome.name} was applied by another process meanwhile")
    if not seen:
        print("nothing to apply: every migration is applied")
    return applied


def status(
    ctx: typer.Context,
    fmt: FormatOption = Format.table,
    as_json: JsonOption = False,
) -> None:
    """Show each migration: applied (when), pending, modified, or applied-without-file."""
    settings: Settings = ctx.obj
    files = settings.migrations()
    db = settings.open()
    settings.note_missing_sessions_migration(files)
    states = settings.engine(db, files).status()
    rows = [
        {"name": s.name, "state": s.state, "applied_at": s.applied_at, "detail": s.detail}
        for s in states
    ]
    render_rows(rows, chosen_format(fmt, as_json), ["name", "state", "applied_at", "detail"])


def verify(
    ctx: typer.Context,
    fmt: ObjectFormatOption = ObjectFormat.table,
    as_json: JsonOption = False,
) -> None:
    """Prove the schema is what the applied migrations build, and 003's CHECK and index; exit 1 if not."""
    from sessionctl.checks import run_checks

    settings: Settings = ctx.obj
    files = settings.migrations()
    settings.sessions_migration(files)
    db = settings.open()
    checks = run_checks(settings.engine(db, files))
    render_checks(checks, chosen_format(fmt, as_json))
    if not all(check.ok for check in checks):
        raise typer.Exit(1)


def rollback(
    ctx: typer.Context,
    yes: YesOption = False,
    dry_run: DryRunOption = False,
    backup: Annotated[
        Optional[Path],
        typer.Option(help="Backup file [default: ./backups/server_sessions-<UTC time>.jsonl]"),
    ] = None,
    no_backup: Annotated[
        bool, typer.Option("--no-backup", help="Drop without writing a backup first")
    ] = False,
    through_later: Annotated[
        bool,
        typer.Option("--through-later",
                     help="Also roll back later migrations that changed server_sessions (unrecording them)"),
    ] = False,
    without_bookmark: Annotated[
        bool,
        typer.Option("--without-bookmark",
                     help="Remote D1: drop even if no Time Travel bookmark can be taken to undo it"),
    ] = False,
    to_kv: Annotated[
        Optional[str],
        typer.Option("--to-kv", metavar="PREFIX", show_default=False,
                     help="First export the live sessions into the bot's KV namespace under PREFIX "
                          "(as `kv export` does; a newer KV value is kept)"),
    ] = None,
    kv_binding: Annotated[str, typer.Option("--kv-binding", help="The KV binding for --to-kv")] = "SESSION_KV",
    kv_case: Annotated[FieldCase, typer.Option("--kv-case", help="Field names of the KV values --to-kv writes")]
    = FieldCase.CAMEL,
) -> None:
    """Back up every session, then run the seed's rollback (drop table and index, unrecord 003).

    With --to-kv the live sessions go back into KV first, for the KV-era code. On remote
    D1 a Time Travel bookmark is taken before anything is dropped, and the command that
    restores it is printed and written beside the backup.
    """
    from sessionctl.backup import default_backup_path
    from sessionctl.cli.context import confirm_or_refuse
    from sessionctl.errors import UsageError
    from sessionctl.rollback import MIGRATION_NAME, plan_rollback, roll_back
    from sessionctl.targets.base import SupportsTimeTravel

    if backup is not None and no_backup:
        raise UsageError("--backup and --no-backup cannot be used together")
    if backup is not None and backup.exists():
        raise UsageError(f"--backup {backup} already exists; a backup never overwrites a file")
    settings: Settings = ctx.obj
    files = settings.migrations()
    db = settings.open()
    plan = plan_rollback(settings.engine(db, files), through_later=through_later)
    if not plan.needed:
        print(f"nothing to roll back: no server_sessions table and {MIGRATION_NAME} is not in the ledger")
        return
    backup_path = None if no_backup else (backup or default_backup_path())
    if to_kv is not None:
        from sessionctl.kv_sessions import check_prefix

        check_prefix(to_kv)
    if dry_run:
        if to_kv is not None and plan.table_exists:
            _export_to_kv(settings, db, to_kv, kv_binding, kv_case, dry_run=True)
        if plan.table_exists:
            where = f"to {backup_path}" if backup_path else "(no backup: --no-backup)"
            print(f"would back up {plan.rows} rows {where}")
        if isinstance(db, SupportsTimeTravel):
            print("would take a Time Travel bookmark first, to undo the drop with"
                  + (" (or drop without one: --without-bookmark)" if without_bookmark else ""))
        print("would run, in one transaction:")
        for statement in plan.statements:
            print(f"  {statement.sql};" + (f"  -- {list(statement.params)}" if statement.params else ""))
        return
    confirm_or_refuse(
        f"Drop server_sessions ({plan.rows} rows) in {db.description}?"
        + (f" Later migrations are unrecorded with it: {', '.join(plan.later)}." if plan.later else "")
        + (f" A backup is written to {backup_path} first." if backup_path else " NO backup is written."),
        yes,
        "rollback refused, nothing was dropped",
    )
    if to_kv is not None and plan.table_exists:
        _export_to_kv(settings, db, to_kv, kv_binding, kv_case, dry_run=False)
    report_rollback(plan, roll_back(db, plan, backup_path, require_bookmark=not without_bookmark,
                                    on_restore_point=report_restore_point))


def _export_to_kv(settings: Settings, db, prefix: str, binding: str, case: FieldCase, *, dry_run: bool) -> None:
    """``kv export`` before the drop: a failure stops the rollback with nothing dropped."""
    from sessionctl.cli.kv import open_kv
    from sessionctl.kv_sessions import export_to_kv, summary_lines

    store = open_kv(settings, binding, None)
    try:
        result = export_to_kv(db, store, prefix, case=case, dry_run=dry_run)
    finally:
        store.close()
    for line in summary_lines(result, "server_sessions", f"KV {binding}"):
        print(line, flush=True)


def report_restore_point(point) -> None:
    """Printed before anything is dropped: the way back stays known whatever happens next."""
    print(f"time travel: bookmark {point.bookmark} taken; to undo this rollback run: {point.command}",
          flush=True)


def report_rollback(plan, outcome) -> None:
    """What a rollback did, for the operator: the backup, the drop, the ledger."""
    from sessionctl.rollback import MIGRATION_NAME

    report_backup(outcome)
    if outcome.restore_file is not None:
        print(f"restore command written to {outcome.restore_file}")
    print(f"rolled back {MIGRATION_NAME}: dropped server_sessions and idx_server_sessions_expires"
          + (", removed its ledger row" if plan.in_ledger else ""))
    if plan.later:
        print(f"unrecorded {', '.join(plan.later)}: they changed server_sessions, which is gone "
              "(`migrate` applies them again)")
    if plan.kept:
        print(f"still recorded: {', '.join(plan.kept)} (their objects remain)")


def report_backup(outcome) -> None:
    """The line that tells the operator where the dropped rows are."""
    if outcome.backup_path is not None:
        print(f"backed up {outcome.rows_backed_up} rows to {outcome.backup_path}")


def register(app: typer.Typer) -> None:
    app.command()(migrate)
    app.command()(status)
    app.command()(verify)
    app.command()(rollback)
