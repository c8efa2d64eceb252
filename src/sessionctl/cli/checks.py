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
    settings.sessions_migration(files)
    db = settings.open(create=True)
    engine = settings.engine(db, files)
    table_before = _has_sessions_table(db)

    print("== migrate")
    applied = apply_and_report(engine)

    for step, run in (("verify", lambda: run_checks(engine)), ("smoke", lambda: run_smoke(db))):
        print(f"== {step}")
        checks = run()
        render_checks(checks, Format.table)
        if not all(check.ok for check in checks):
            print(f"deploy stopped: {step} failed")
            if rollback_on_failure and SESSIONS_MIGRATION in applied and not table_before:
                _roll_back(engine)
            elif rollback_on_failure and SESSIONS_MIGRATION in applied:
                # 003 only recorded a table that was already there (made by hand or by
                # `wrangler d1 execute`): its rows are never dropped, and 003 stays recorded
                # because its objects remain.
                print(f"not rolling back: server_sessions existed before this run; its rows are kept "
                      f"and {SESSIONS_MIGRATION} stays recorded")
            elif rollback_on_failure:
                print(f"not rolling back: this run did not apply {SESSIONS_MIGRATION}")
            raise typer.Exit(1)
    print("deploy ok: migrated, verified, smoke-tested")


def _has_sessions_table(db) -> bool:
    from sessionctl.migrations import table_exists
    from sessionctl.names import TABLE

    return table_exists(db, TABLE)


def _roll_back(engine) -> None:
    """The one rollback, through what this run applied after 003 on the same table."""
    from sessionctl.backup import default_backup_path
    from sessionctl.cli.schema import report_restore_point, report_rollback
    from sessionctl.rollback import plan_rollback, roll_back

    print("== rollback (--rollback-on-failure)")
    plan = plan_rollback(engine, through_later=True)
    report_rollback(plan, roll_back(engine.db, plan, default_backup_path(), on_restore_point=report_restore_point))


def register(app: typer.Typer) -> None:
    app.command()(smoke)
    app.command()(deploy)
