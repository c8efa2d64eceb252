"""Remote Cloudflare D1 over its HTTP API (the database the bot runs on in production).

POST {base}/accounts/{account}/d1/database/{id}/query with {"sql", "params"} or
{"batch": [...]}: a batch runs as one transaction, which is what ``batch`` means in
the db interface. D1 rejects explicit BEGIN/COMMIT, so none is ever sent.

Retries follow what is safe: a 429 was not executed, so any request waits
``retry-after`` and goes again; a 5xx or a dropped connection is retried only for
reads -- a write may have been applied, so it is reported, never repeated.
The API token is sent in one header and appears nowhere else: not in messages,
not in ``repr``, not in logs; a base URL it could leak through (plain http to another
machine, a user:password in it) is refused before anything is sent.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Iterable, Iterator, Sequence
from urllib.parse import SplitResult, urlsplit

from sessionctl.errors import (
    ConstraintError,
    DatabaseNotFoundError,
    DatabaseUnavailableError,
    RemoteSettingError,
    SQLError,
)
from sessionctl.targets.base import Result, Row, Statement

logger = logging.getLogger("sessionctl.targets.d1_http")

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
REQUEST_TIMEOUT_S = 35.0  # D1 allows 30 s per request
MAX_ATTEMPTS = 4
MAX_RETRY_AFTER_S = 10.0

_D1_SUFFIX = re.compile(r":?\s*SQLITE_[A-Z_]+(?:\s*\[code: \d+\])?\s*$|\s*\[code: \d+\]\s*$")


class D1HttpDatabase:
    def __init__(
        self,
        *,
        base_url: str,
        account_id: str,
        database_id: str,
        token: str,
        description: str | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
    ):
        # Checked here as well as where the target is chosen: whoever builds a client gets the rules.
        check_base_url(base_url)
        check_id(account_id, "account id", setting="account_id")
        check_id(database_id, "database_id", setting="database_id")
        self.base_url = base_url.rstrip("/")
        self.account_id = account_id
        self.database_id = database_id
        self.__token = token
        self.timeout = timeout
        self.host = urlsplit(self.base_url).netloc or self.base_url
        self.description = description or f"remote D1 {database_id} at {self.host}"
        self._size: int | None = None

    def __repr__(self) -> str:  # never the token
        return f"D1HttpDatabase({self.description!r})"

    # -- the db interface ------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._post({"sql": sql, "params": list(params)}, idempotent=True)[0].rows

    def iter_query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Row]:
        # One response holds every row (D1 has no cursor across requests).
        return iter(self.query(sql, params))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        return self._post({"sql": sql, "params": list(params)}, idempotent=False)[0]

    def batch(self, statements: Iterable[Statement]) -> list[Result]:
        body = {"batch": [{"sql": s.sql, "params": [_json_value(v) for v in s.params]} for s in statements]}
        if not body["batch"]:
            return []
        return self._post(body, idempotent=False)

    def size_bytes(self) -> int | None:
        if self._size is None:
            self.query("SELECT 1 AS one")
        return self._size

    def reopen(self) -> "D1HttpDatabase":
        return D1HttpDatabase(
            base_url=self.base_url,
            account_id=self.account_id,
            database_id=self.database_id,
            token=self.__token,
            description=self.description,
            timeout=self.timeout,
        )

    def close(self) -> None:
        pass

    # -- HTTP ------------------------------------------------------------------------

    def _post(self, body: dict[str, Any], *, idempotent: bool) -> list[Result]:
        url = f"{self.base_url}/accounts/{self.account_id}/d1/database/{self.database_id}/query"
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        expected = len(body["batch"]) if "batch" in body else None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            last = attempt == MAX_ATTEMPTS
            request = urllib.request.Request(
                url,
                data=data,
                method="POST",
                headers={"Authorization": f"Bearer {self.__token}", "Content-Type": "application/json"},
            )
            logger.debug("POST %s (%d bytes, attempt %d)", url, len(data), attempt)
            try:
                status, payload, headers = _send(request, self.timeout)
            except (ValueError, http.client.InvalidURL):
                # http.client rejects a header or URL it cannot send and quotes it: never show that.
                raise DatabaseUnavailableError(
                    "the request to D1 could not be formed (check the ids and the token)"
                ) from None
            except _NotSent as error:
                if not last:
                    time.sleep(0.2 * attempt)
                    continue
                raise DatabaseUnavailableError(
                    f"cannot reach D1 at {self.host} ({error}); nothing was sent"
                ) from None
            except _Lost as error:
                if idempotent and not last:
                    time.sleep(0.2 * attempt)
                    continue
                if idempotent:
                    raise DatabaseUnavailableError(f"lost the connection to D1 at {self.host} ({error})") from None
                raise DatabaseUnavailableError(
                    f"lost the connection to D1 at {self.host} during a write ({error}); "
                    "it may or may not have been applied: check before running it again"
                ) from None
            if 300 <= status < 400:
                # Never follow: urllib would resend the token to wherever the answer points.
                raise DatabaseUnavailableError(
                    f"D1 at {self.host} answered HTTP {status} (a redirect); not following it with the token"
                )
            if status == 429 and not last:
                time.sleep(_retry_after(headers))
                continue
            retryable = status >= 500 or _retryable_message(payload)
            if retryable and idempotent and not last:
                time.sleep(0.2 * attempt)
                continue
            results = self._results(status, payload, idempotent)
            if len(results) != (expected or 1):
                raise DatabaseUnavailableError(
                    f"D1 answered {len(results)} results for {expected or 1} statements; "
                    + ("the write may or may not have been applied" if not idempotent else "not trusting it")
                )
            return results
        raise AssertionError("unreachable")  # pragma: no cover

    def _results(self, status: int, payload: Any, idempotent: bool) -> list[Result]:
        errors = payload.get("errors") if isinstance(payload, dict) else None
        first = errors[0] if errors and isinstance(errors[0], dict) else {}
        code, message = first.get("code"), str(first.get("message", ""))
        summary = f"HTTP {status}" + (f", code {code}: {message}" if code is not None else "")
        if status in (401, 403) or code in (10000, 7403, 6003):
            raise DatabaseUnavailableError(
                f"the Cloudflare API refused the credentials ({summary}); check CLOUDFLARE_API_TOKEN "
                "and its D1 permissions"
            )
        if status == 404 or code in (7404, 7400):
            raise DatabaseNotFoundError(
                f"D1 database {self.database_id} not found in account {self.account_id} ({summary})"
            )
        if status == 429:
            raise DatabaseUnavailableError(f"D1 is rate limiting requests ({summary}); try again later")
        if status >= 500 or _retryable_message(payload):
            if idempotent:
                raise DatabaseUnavailableError(f"D1 failed ({summary})")
            raise DatabaseUnavailableError(
                f"D1 failed during a write ({summary}); it may or may not have been applied: "
                "check before running it again"
            )
        if not isinstance(payload, dict):
            raise DatabaseUnavailableError(f"D1 at {self.host} answered HTTP {status} with something that is not JSON")
        if not payload.get("success"):
            if code != 7500:
                raise DatabaseUnavailableError(f"D1 refused the request ({summary})")
            cleaned = _D1_SUFFIX.sub("", message).strip() or summary
            if "SQLITE_CONSTRAINT" in message or "constraint failed" in message:
                raise ConstraintError(cleaned)
            raise SQLError(cleaned)
        results = []
        for entry in payload.get("result") or []:
            meta = (entry.get("meta") if isinstance(entry, dict) else None) or {}
            if isinstance(meta.get("size_after"), int):
                self._size = meta["size_after"]
            rows = entry.get("results") if isinstance(entry, dict) else None
            results.append(Result(rows=list(rows or []), changes=int(meta.get("changes") or 0)))
        return results


def check_base_url(url: str, setting: str = "base_url") -> str:
    """Refuse a URL the token must not be sent to; return its host[:port] for display.

    https only, except to this machine (the token would travel in clear), and no
    user:password (the token is the credential, and the URL gets shown).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or not _has_valid_port(parts):
        raise RemoteSettingError(setting, "malformed", f"{setting} must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise RemoteSettingError(
            setting, "unsafe", f"{setting} must not carry a user or password (the token is the credential)"
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise RemoteSettingError(
            setting, "unsafe",
            f"{setting} must be https (plain http only to this machine): the token would travel in clear",
        )
    return parts.hostname + (f":{parts.port}" if parts.port else "")


def _has_valid_port(parts: SplitResult) -> bool:
    try:
        parts.port  # raises ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def check_id(value: str, what: str, *, setting: str) -> None:
    """An account or database id goes into the URL's path: only what Cloudflare's ids hold."""
    if not re.fullmatch(r"[A-Za-z0-9-]+", value):
        raise RemoteSettingError(
            setting, "malformed", f"the {what} {value!r} is not an id Cloudflare uses (letters, digits and -)"
        )


class _NotSent(Exception):
    """The request never reached the server (refused, no such host): always safe to retry."""


class _Lost(Exception):
    """The request may have reached the server, but no answer came back whole."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx comes back as an HTTPError, handled by the caller


_OPENER = urllib.request.build_opener(_NoRedirects)


def _send(request: urllib.request.Request, timeout: float) -> tuple[int, Any, Any]:
    """POST ``request``; (status, parsed JSON or None, headers). Raises _NotSent or _Lost."""
    try:
        try:
            response = _OPENER.open(request, timeout=timeout)
        except urllib.error.HTTPError as error:
            response = error  # an answer all the same: its status and body say what happened
        with response:
            return response.status, _read_json(response), response.headers
    except urllib.error.URLError as error:
        if isinstance(error.reason, (ConnectionRefusedError, socket.gaierror)):
            raise _NotSent(str(error.reason)) from None
        raise _Lost(str(error.reason)) from None
    except (ConnectionRefusedError, socket.gaierror) as error:
        raise _NotSent(str(error)) from None
    except http.client.InvalidURL:
        raise
    except (http.client.HTTPException, OSError) as error:  # reset, timeout, bad status line, cut body
        raise _Lost(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__) from None


def _retryable_message(payload: Any) -> bool:
    if not isinstance(payload, dict):
        return False
    text = " ".join(str(e.get("message", "")) for e in payload.get("errors") or [] if isinstance(e, dict))
    return any(m in text for m in _RETRYABLE)


_RETRYABLE = ("D1 DB is overloaded", "Network connection lost", "D1 DB reset because its code was updated")


def _read_json(response: Any) -> Any:
    """The body as JSON, or None when it is not JSON. A body cut off in transit raises."""
    body = response.read()
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None


def _retry_after(headers: Any) -> float:
    try:
        return min(max(float(headers.get("retry-after", 1)), 0.0), MAX_RETRY_AFTER_S)
    except (TypeError, ValueError):
        return 1.0


def _json_value(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise SQLError("a value that is not UTF-8 text cannot be sent to D1 over its HTTP API")
    return value
