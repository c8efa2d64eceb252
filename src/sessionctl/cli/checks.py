"""smoke and deploy: the seed's testing checklist against a real target, and the whole rollout."""

from __future__ import annotations

from typing import Annotated

import typer

from sessionctl.cli.context import SESSIONS_MIGRATION, Settings
from sessionctl.cli.options import JsonOption, ObjectFormatOption, chosen_format
from sessionctl.cli.render import Format, ObjectFormat, render_checks


def smoke(
    ctx: typer.Context,
    fmt: ObjectFormatOption = ObjectFormat.table,
    as_json: JsonOption = False,
) -> None:
    """Run the seed's testing checklist (create, get, status flow, expiry, concurrency, delete)."""
    from sessionctl.smoke import run_smoke

    settings: Settings = ctx.obj
    db = settings.open()
    checks = run_smoke(db)
    render_checks(checks, chosen_format(fmt, as_json))
    if not all(check.ok for check in checks):
        raise typer.Exit(1)


def deploy(
    ctx: typer.Context,
    rollback_on_failure: Annotated[
        bool,
        typer.Option(help="If verify or smoke fails, roll back (with a backup) what this run applied"),
    ] = False,
) -> None:
    """migrate → verify → smoke, stopping at the first failure (exit 1)."""
    from sessionctl.checks import run_checks
    from sessionctl.cli.schema import apply_and_report
    from sessionctl.smoke import run_smoke

    settings: Settings = ctx.obj
    files = settings.migrations()
    migration = settings.sessions_migration(files)
    db = settings.open(create=True)
    schema_before = _schema_objects(db)

    print("== migrate")
    applied = apply_and_report(db, files, settings.ledger)

    for step, run in (("verify", lambda: run_checks(db, migration, settings.ledger, files)),
                      ("smoke", lambda: run_smoke(db))):
        print(f"== {step}")
        checks = run()
        render_checks(checks, Format.table)
        if not all(check.ok for check in checks):
            print(f"deploy stopped: {step} failed")
            if rollback_on_failure and SESSIONS_MIGRATION in applied:
                _roll_back(db, settings, applied, schema_before)
            elif rollback_on_failure:
                print(f"not rolling back: this run did not apply {SESSIONS_MIGRATION}")
            raise typer.Exit(1)
    print("deploy ok: migrated, verified, smoke-tested")


def _schema_objects(db) -> set[tuple[str, str]]:
    return {(r["type"], r["name"]) for r in db.query("SELECT type, name FROM sqlite_master")}


def _unrecord(db, settings: Settings, names: list[str]) -> None:
    from sessionctl.migrations import unrecord_statements

    db.batch(unrecord_statements(db, names, settings.ledger))


def _roll_back(db, settings: Settings, applied: list[str], schema_before: set[tuple[str, str]]) -> None:
    """Undo what this run applied: 003 by the seed's rollback, the later files by unrecording them."""
    from sessionctl.backup import default_backup_path
    from sessionctl.cli.schema import report_backup
    from sessionctl.names import CHECKSUM_TABLE, TABLE
    from sessionctl.rollback import plan_rollback, rollback_sessions_migration

    print("== rollback (--rollback-on-failure)")
    later = applied[applied.index(SESSIONS_MIGRATION) + 1:]
    if ("table", TABLE) in schema_before:
        # The table predates this run (e.g. created by `wrangler d1 execute --file`): this run only
        # recorded 003, so only that is undone. Its live rows are never dropped.
        _unrecord(db, settings, [SESSIONS_MIGRATION])
        print(f"not dropping {TABLE}: it existed before this run; unrecorded {SESSIONS_MIGRATION}")
        if later:
            print(f"not rolled back (no down migration): {', '.join(later)}")
        return
    plan = plan_rollback(db, settings.ledger)
    report_backup(rollback_sessions_migration(db, plan, default_backup_path()))
    print(f"rolled back {SESSIONS_MIGRATION}")
    if later:
        # They ran against the table just dropped; the ledger must not claim them.
        _unrecord(db, settings, later)
        print(f"unrecorded {', '.join(later)} (applied by this run after {SESSIONS_MIGRATION})")
        ledger_tables = {("table", settings.ledger), ("table", CHECKSUM_TABLE),
                         ("table", "sqlite_sequence")}
        left = sorted(_schema_objects(db) - schema_before - ledger_tables)
        if left:
            print("left in place, remove by hand: " + ", ".join(f"{t} {n}" for t, n in left))


def register(app: typer.Typer) -> None:
    app.command()(smoke)
    app.command()(deploy)
