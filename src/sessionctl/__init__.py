"""sessionctl: operations toolkit for the bot's server-consultation sessions (migration 003)."""

__version__ = "0.1.0"
