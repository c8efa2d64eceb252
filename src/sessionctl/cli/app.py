"""The Typer app: global options, the error handler, and the command modules joined up."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from sessionctl import __version__
from sessionctl.cli.context import DEFAULT_DB, Settings
from sessionctl.cli.errors import (
    EXIT_CODES_HELP,
    OUTPUT_ERRNOS,
    reader_went_away,
    report,
    report_internal,
    report_output_error,
    report_usage_error,
)
from sessionctl.errors import SessionctlError


GLOBAL_OPTIONS = {"--db", "--config", "-c", "--database", "--env", "-e", "--local", "--remote",
                  "--persist-to", "--migrations-dir", "--migrations-table", "--timeout", "--debug"}


class _Group(TyperGroup):
    """Turns every SessionctlError raised by a command, and every usage error, into one line and its exit code."""

    def make_context(self, *args, **kwargs):  # type: ignore[override]
        try:  # the global options are parsed here, before invoke
            return super().make_context(*args, **kwargs)
        except Exception as error:
            code = report_usage_error(error)
            if code is None:
                raise
            raise typer.Exit(code) from None

    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        settings = lambda: ctx.obj if isinstance(ctx.obj, Settings) else Settings()  # noqa: E731
        try:
            try:
                return super().invoke(ctx)
            finally:
                # Flushed here, not at exit: a full disk or a closed pipe must reach the
                # handlers below instead of leaving a truncated output and exit 0.
                sys.stdout.flush()
        except BrokenPipeError:
            raise typer.Exit(reader_went_away()) from None
        except OSError as error:
            if error.errno not in OUTPUT_ERRNOS:
                if settings().debug:
                    raise
                raise typer.Exit(report_internal(error)) from None
            raise typer.Exit(report_output_error(error)) from None
        except SessionctlError as error:
            raise typer.Exit(report(error, settings().debug)) from None
        except Exception as error:
            if type(error).__module__.split(".")[0] in ("click", "typer"):
                if type(error).__name__ == "NoSuchOption" and getattr(error, "option_name", None) in GLOBAL_OPTIONS:
                    error.message += f" ({error.option_name} is a global option: put it before the command)"
                code = report_usage_error(error)
                if code is not None:
                    raise typer.Exit(code) from None
                raise
            if settings().debug:
                raise
            raise typer.Exit(report_internal(error)) from None


app = typer.Typer(
    cls=_Group,
    help="Operate the bot's server_sessions table (migration 003).",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        import apsw  # a few ms: the engine every local target runs

        print(f"sessionctl {__version__} (SQLite {apsw.sqlite_lib_version()}, APSW {apsw.apsw_version()})")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    db: Annotated[
        Optional[Path],
        typer.Option(
            "--db",
            envvar="SESSIONCTL_DB",
            readable=False,  # an unreadable file is the database's problem (exit 3), not a usage error
            help=f"SQLite database file [default: wrangler's local D1 in a wrangler project, else ./{DEFAULT_DB}]",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Optional[Path],
        typer.Option("--config", "-c", help="wrangler.toml / .json / .jsonc [default: found upward from here]",
                     show_default=False),
    ] = None,
    database: Annotated[
        Optional[str],
        typer.Option("--database", help="D1 binding or database_name [default: the only one, else DB]",
                     show_default=False),
    ] = None,
    env: Annotated[
        Optional[str],
        typer.Option("--env", "-e", show_default=False,
                     help='wrangler environment (reads env.NAME.d1_databases) [default: $CLOUDFLARE_ENV; "" is the top level]'),
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="wrangler's local D1 state (the default in a wrangler project)")
    ] = False,
    remote: Annotated[
        bool, typer.Option("--remote", help="Cloudflare D1 over its HTTP API (CLOUDFLARE_API_TOKEN, CLOUDFLARE_ACCOUNT_ID)")
    ] = False,
    persist_to: Annotated[
        Optional[Path], typer.Option("--persist-to", help="wrangler's --persist-to folder", show_default=False)
    ] = None,
    migrations_dir: Annotated[
        Optional[Path],
        typer.Option(
            envvar="SESSIONCTL_MIGRATIONS_DIR",
            help="Folder of *.sql migrations [default: the ones shipped with sessionctl]",
            show_default=False,
        ),
    ] = None,
    migrations_table: Annotated[
        Optional[str],
        typer.Option(help="Ledger table [default: the config's migrations_table, else d1_migrations]",
                     show_default=False),
    ] = None,
    timeout: Annotated[
        Optional[float],
        typer.Option(help="Seconds to wait for a locked database [default: 5], or for remote D1 to answer "
                          "a request [default: 35]", min=0, show_default=False),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version"),
    ] = False,
) -> None:
    """Operate the bot's server_sessions table (migration 003)."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="sessionctl: %(levelname)s: %(message)s",
    )
    source = ctx.get_parameter_source("db")
    ctx.obj = Settings(
        db_path=db,
        db_from_env=getattr(source, "name", "") == "ENVIRONMENT",
        config=config,
        database=database,
        env=env,
        local=local,
        remote=remote,
        persist_to=persist_to,
        migrations_dir=migrations_dir,
        migrations_table=migrations_table,
        timeout=timeout,
        debug=debug,
    )


def _register() -> None:
    from sessionctl.cli import checks, kv, schema, sessions

    schema.register(app)
    checks.register(app)
    app.add_typer(sessions.app, name="sessions")
    app.add_typer(kv.app, name="kv")


_register()


def main() -> None:
    app(prog_name="sessionctl")
