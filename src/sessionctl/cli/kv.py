"""``sessionctl kv import|export``: carry live sessions between the bot's KV namespace and D1.

A thin skin over ``sessionctl.kv_sessions``. The D1 side is the global options' target; the
KV side is the same wrangler project's ``kv_namespaces`` entry (``--binding``), local or
remote as the D1 side is.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from sessionctl.cli.context import Settings
from sessionctl.cli.options import DryRunOption, ObjectFormatOption
from sessionctl.cli.render import Format, ObjectFormat
from sessionctl.enums import FieldCase

app = typer.Typer(help="Move live sessions between the bot's Workers KV namespace and server_sessions.",
                  no_args_is_help=True)

PrefixOption = Annotated[str, typer.Option(
    "--prefix", help="The sessions' key prefix, e.g. 'server_session:'; user_id is the rest of the key. "
                     "Keys under any other prefix are never read or written.", show_default=False)]
BindingOption = Annotated[str, typer.Option("--binding", help="The KV binding in the wrangler config")]
PreviewOption = Annotated[Optional[bool], typer.Option(
    "--preview/--no-preview", show_default=False,
    help="preview_id or id [default: locally what wrangler dev binds (preview_id if set), remotely id]")]


def open_kv(settings: Settings, binding: str, preview: bool | None):
    from sessionctl.targets.resolve import open_kv as open_store, resolve_kv

    target = resolve_kv(settings.request(), binding=binding, preview=preview)
    store = open_store(target)
    if not settings.quiet:
        print(f"sessionctl: kv: {target.description}", file=sys.stderr)
    return store


@app.command("import")
def import_(
    ctx: typer.Context,
    prefix: PrefixOption,
    binding: BindingOption = "SESSION_KV",
    preview: PreviewOption = None,
    dry_run: DryRunOption = False,
    fmt: ObjectFormatOption = ObjectFormat.table,
) -> None:
    """Import the live KV sessions under PREFIX into server_sessions; a newer D1 row is kept.

    Expired keys are skipped; a value that is not a session is listed with its reason and
    skipped. Run it before the deploy and right after it: the newer side wins, and a second
    run changes nothing.
    """
    from sessionctl.kv_sessions import import_from_kv

    result = _with_both(ctx.obj, binding, preview, lambda db, store: import_from_kv(db, store, prefix, dry_run=dry_run))
    _report(result, fmt, f"KV {binding}", "server_sessions")


@app.command("export")
def export(
    ctx: typer.Context,
    prefix: PrefixOption,
    binding: BindingOption = "SESSION_KV",
    preview: PreviewOption = None,
    case: Annotated[FieldCase, typer.Option("--case", help="Field names of the KV value: collectedInfo or collected_info")]
    = FieldCase.CAMEL,
    dry_run: DryRunOption = False,
    fmt: ObjectFormatOption = ObjectFormat.table,
) -> None:
    """Export every live session into KV under PREFIX, as the KV-era code reads it; a newer KV value is kept.

    Each key expires when its session does (KV refuses lifetimes under 60 s: those are
    listed and skipped). For a code rollback to the KV-era bot.
    """
    from sessionctl.kv_sessions import export_to_kv

    result = _with_both(ctx.obj, binding, preview,
                        lambda db, store: export_to_kv(db, store, prefix, case=case, dry_run=dry_run))
    _report(result, fmt, "server_sessions", f"KV {binding}")


def _with_both(settings: Settings, binding: str, preview: bool | None, work):
    """``work(db, store)`` with the global options' D1 target and the binding's KV store."""
    store = open_kv(settings, binding, preview)
    try:
        return work(settings.open(), store)
    finally:
        store.close()


def _report(result, fmt: ObjectFormat, source: str, target: str) -> None:
    from sessionctl.cli.render import render_object
    from sessionctl.kv_sessions import summary_lines

    if Format(fmt.value) is Format.json:
        render_object(result.as_dict())
        return
    for line in summary_lines(result, source, target):
        print(line)
