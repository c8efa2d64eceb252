"""The command line: a thin skin over sessionctl's library."""

from sessionctl.cli.app import app, main

__all__ = ["app", "main"]
