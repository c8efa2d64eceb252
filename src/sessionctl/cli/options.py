"""Options shared by several commands, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

from sessionctl.cli.render import Format, ObjectFormat

FormatOption = Annotated[
    Format, typer.Option("--format", "-f", help="Output format", case_sensitive=False)
]
ObjectFormatOption = Annotated[
    ObjectFormat, typer.Option("--format", "-f", help="Output format", case_sensitive=False)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Same as --format json")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Show what would be done; change nothing")]


def chosen_format(fmt: Format | ObjectFormat, as_json: bool) -> Format:
    return Format.json if as_json else Format(fmt.value)
