"""Epoch-millisecond times for people: "3m ago", "in 42m", "expired 2h ago"."""

from __future__ import annotations

import datetime as _dt


def span(ms: int) -> str:
    seconds = abs(ms) // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def ago(at: int | None, now: int) -> str:
    if at is None:
        return ""
    return f"{span(now - at)} ago" if at <= now else f"in {span(at - now)}"


def expires(at: int | None, now: int) -> str:
    if at is None:
        return ""
    return f"in {span(at - now)}" if at > now else f"expired {span(now - at)} ago"


def absolute(at: int | None) -> str:
    if at is None:
        return ""
    stamp = _dt.datetime.fromtimestamp(at / 1000, tz=_dt.timezone.utc)
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")
