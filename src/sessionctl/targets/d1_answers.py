"""What an answer from D1's HTTP API means: rows, an error to report, or "go again?".

The question that decides a retry is whether the request RAN, not what the status was:

- not executed, safe to send again: a 429 from the API's rate limiter that is not D1's
  own 7429 (the request was turned away at the door; ``retry-after`` says when to come
  back). The account-wide block (429 with code 10000) lasts up to five minutes: it is
  reported at once with its wait, never slept through and never called a credentials
  problem.
- may have run: any 5xx, and D1's resets -- code 7429 ("D1 DB exceeded its CPU time
  limit and was reset"), "Network connection lost.", a storage or code reset -- which
  can come after the statements started. A read goes again; a write is reported as
  "may or may not have been applied", never sent twice.
- refused, nothing ran: 401/403 (credentials), 404 (no such database), 400 with D1's
  SQL error (code 7500), anything else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sessionctl.errors import (
    ConstraintError,
    CredentialsRefusedError,
    DatabaseNotFoundError,
    DatabaseUnavailableError,
    RateLimitedError,
    SQLError,
)
from sessionctl.targets.base import Result
from sessionctl.targets.http_connection import Answer

RESET_AFTER_EXECUTION = 7429  # D1 reset or overloaded, possibly after the statements ran
ACCOUNT_BLOCKED = 10000  # with 429: the account-wide API limit (with 401/403: authentication)
SQL_ERROR = 7500

# D1 messages for a request that failed in transit or a database that was reset: the
# statements may have run. Matched as text, since they come with several codes and statuses.
TRANSIENT_MESSAGES = (
    "D1 DB is overloaded",
    "Network connection lost",
    "D1 DB reset because its code was updated",
    "D1 DB storage caused object to be reset",
    "exceeded its CPU time limit and was reset",
    "Cannot resolve D1 DB due to transient issue",
)

_D1_SUFFIX = re.compile(r":?\s*SQLITE_[A-Z_]+(?:\s*\[code: \d+\])?\s*$|\s*\[code: \d+\]\s*$")


class NotExecuted(Exception):
    """Turned away before running; ``wait_s`` is the wait asked for (None: not said)."""

    def __init__(self, summary: str, wait_s: float | None):
        super().__init__(summary)
        self.wait_s = wait_s


class MayHaveRun(Exception):
    """Failed in a way that leaves open whether the statements ran."""


@dataclass(frozen=True)
class Envelope:
    status: int
    payload: Any  # the parsed JSON, or None when the body was not JSON
    code: int | None
    message: str

    @property
    def summary(self) -> str:
        return f"HTTP {self.status}" + (f", code {self.code}: {self.message}" if self.code is not None else "")


def envelope(answer: Answer) -> Envelope:
    try:
        payload = json.loads(answer.body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        payload = None
    errors = payload.get("errors") if isinstance(payload, dict) else None
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    code = first.get("code")
    return Envelope(answer.status, payload, code if isinstance(code, int) else None,
                    " ".join(str(first.get("message", "")).split()))


def raise_for(answer: Answer, *, host: str, what: str, service: str = "D1") -> Envelope:
    """The envelope of a successful answer; otherwise raise what the answer means.

    ``what`` names the database (or namespace) for "not found" messages; ``service`` is
    the API's name in messages ("D1", "Workers KV"): the envelope and the meaning of a
    status are the Cloudflare API's, the same for both.
    """
    found = envelope(answer)
    status, code = found.status, found.code
    if 300 <= status < 400:
        raise DatabaseUnavailableError(
            f"{service} at {host} answered HTTP {status} (a redirect); not following it with the token")
    if status == 429 and code == ACCOUNT_BLOCKED:
        raise RateLimitedError(retry_after(answer), code=code)
    if status == 429 and code != RESET_AFTER_EXECUTION and not _transient(found):
        raise NotExecuted(found.summary, retry_after(answer))
    if status >= 500 or code == RESET_AFTER_EXECUTION or _transient(found):
        raise MayHaveRun(found.summary)
    if status in (401, 403) or code in (ACCOUNT_BLOCKED, 7403, 6003):
        raise CredentialsRefusedError(
            f"the Cloudflare API refused the credentials ({found.summary}); check CLOUDFLARE_API_TOKEN "
            f"and its {service} permissions", status=status, code=code)
    if status == 404 or code == 7404:
        raise DatabaseNotFoundError(f"{what} not found ({found.summary})")
    if status == 413:
        raise DatabaseUnavailableError(f"{service} refused the request as too large ({found.summary}); nothing ran")
    if not isinstance(found.payload, dict):
        raise DatabaseUnavailableError(f"{service} at {host} answered HTTP {status} with something that is not JSON")
    if not found.payload.get("success") or status != 200:
        if code != SQL_ERROR:
            raise DatabaseUnavailableError(f"{service} refused the request ({found.summary})")
        cleaned = _D1_SUFFIX.sub("", found.message).strip() or found.summary
        if "SQLITE_CONSTRAINT" in found.message or "constraint failed" in found.message:
            raise ConstraintError(cleaned)
        raise SQLError(cleaned)
    return found


def results_of(found: Envelope) -> tuple[list[Result], int | None]:
    """The statements' results, and the database size D1 reported (``meta.size_after``)."""
    results, size = [], None
    entries = found.payload.get("result")
    for entry in entries if isinstance(entries, list) else []:
        entry = entry if isinstance(entry, dict) else {}
        meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
        if isinstance(meta.get("size_after"), int):
            size = meta["size_after"]
        rows = entry.get("results")
        changes = meta.get("changes")
        results.append(Result(rows=list(rows) if isinstance(rows, list) else [],
                              changes=changes if isinstance(changes, int) else 0))
    return results, size


def retry_after(answer: Answer) -> float | None:
    """``retry-after`` in seconds (a number; an HTTP date is not what this API sends)."""
    value = answer.headers.get("retry-after")
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


def _transient(found: Envelope) -> bool:
    return any(text in found.message for text in TRANSIENT_MESSAGES)
