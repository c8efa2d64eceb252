"""Remote Cloudflare D1 over its HTTP API (the database the bot runs on in production).

POST {base}/accounts/{account}/d1/database/{id}/query with {"sql", "params"} or
{"batch": [...]}. Each call is a round trip over the internet and counts against
Cloudflare's API limit (1,200 requests per 5 minutes), so this target keeps ONE
connection for its life and lets callers say at once what they need: ``query_many``
is one batch of reads, ``script`` one text of statements.

Every request stays within what D1 takes (``D1_LIMITS``): callers page and chunk
below them, and anything over them is refused here before it is sent. What is sent
again, and when, is decided by what an answer means (see ``d1_answers``): a read goes
again after a failure; a write only when the answer says it did not run -- or when its
statements are ``repeatable`` (writing the same rows into a table only that run uses).

The API token is sent in one header and appears nowhere else: not in messages, not in
``repr``, not in logs; a base URL it could leak through (plain http to another machine,
a user:password in it) is refused before anything is sent.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import SplitResult, quote, urlsplit

from sessionctl import __version__
from sessionctl.errors import (
    DatabaseUnavailableError,
    OutcomeUnknownError,
    RateLimitedError,
    RemoteSettingError,
    RequestTooLargeError,
    SQLError,
)
from sessionctl.targets.base import Limits, RestorePoint, Result, Row, Statement, inline
from sessionctl.targets.d1_answers import MayHaveRun, NotExecuted, raise_for, results_of
from sessionctl.targets.http_connection import KeepAliveConnection, Lost, NotSent

logger = logging.getLogger("sessionctl.targets.d1_http")

DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"
REQUEST_TIMEOUT_S = 35.0  # D1 allows 30 s per request
USER_AGENT = f"sessionctl/{__version__}"

# D1's documented limits, and sessionctl's own bounds on one request: a body of at most
# 1 MB and an answer of at most 10,000 rows, whatever the table holds.
D1_LIMITS = Limits(
    request_bytes=1_000_000,
    response_rows=10_000,
    value_bytes=2_000_000,  # "2 MB per row/string/BLOB"
    sql_bytes=100_000,  # one statement -- and one multi-statement text, which D1 prepares whole
    pattern_bytes=50,  # LIKE/GLOB
)

MAX_ATTEMPTS = 4  # per request, whatever the reason for going again
MAX_RETRY_AFTER_S = 10.0  # a longer wait is reported with its length, never slept through
ANNOUNCED_WAIT_S = 1.0  # a wait longer than this is said on stderr before it is slept
_BOOKMARK = re.compile(r"[A-Za-z0-9._:-]{1,200}")  # it goes into a shell command


class D1HttpDatabase:
    limits = D1_LIMITS

    def __init__(
        self,
        *,
        base_url: str,
        account_id: str,
        database_id: str,
        token: str,
        description: str | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
        database_name: str | None = None,
        env: str | None = None,
    ):
        # Checked here as well as where the target is chosen: whoever builds a client gets the rules.
        check_base_url(base_url)
        check_id(account_id, "account id", setting="account_id")
        check_id(database_id, "database_id", setting="database_id")
        self.base_url = base_url.rstrip("/")
        self.account_id = account_id
        self.database_id = database_id
        self.database_name = database_name
        self.env = env
        self.__token = token
        self.timeout = timeout
        self.host = urlsplit(self.base_url).netloc or self.base_url
        self.description = description or f"remote D1 {database_id} at {self.host}"
        self.requests = 0  # requests sent, retries included
        self._size: int | None = None
        self._path = f"{urlsplit(self.base_url).path}/accounts/{account_id}/d1/database/{database_id}"
        self._connection = KeepAliveConnection(self.base_url, timeout=timeout, user_agent=USER_AGENT)
        self._lock = threading.Lock()  # one connection: one request at a time

    def __repr__(self) -> str:  # never the token
        return f"D1HttpDatabase({self.description!r})"

    @property
    def connections(self) -> int:
        """Connections opened so far (one for a whole command, unless the server closed it)."""
        return self._connection.opened

    # -- the db interface ------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._run([Statement(sql, tuple(params))], repeatable=True)[0].rows

    def query_many(self, statements: Sequence[Statement]) -> list[list[Row]]:
        if not statements:
            return []
        return [result.rows for result in self._run(list(statements), repeatable=True)]

    def iter_query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Row]:
        # One answer holds every row (D1 has no cursor): callers page below limits.response_rows.
        return iter(self.query(sql, params))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        return self._run([Statement(sql, tuple(params))], repeatable=False)[0]

    def batch(self, statements: Iterable[Statement]) -> list[Result]:
        items = list(statements)
        if not items:
            return []
        return self._run(items, repeatable=all(s.repeatable for s in items), as_batch=True)

    def script(self, statements: Sequence[Statement]) -> None:
        """One ``sql`` text, which D1 runs as one transaction; parameters are written in."""
        text = ";\n".join(inline(statement).sql for statement in statements)
        size = self.value_bytes(text)
        if size > D1_LIMITS.sql_bytes:
            raise RequestTooLargeError(
                f"{size} bytes of SQL in one request; D1 takes at most {D1_LIMITS.sql_bytes:,} "
                "(nothing was sent)", what="sql", size=size, limit=D1_LIMITS.sql_bytes)
        found = self._exchange("POST", "/query", self._body({"sql": text, "params": []}),
                               repeatable=all(s.repeatable for s in statements))
        results, self._size = self._sized(found)
        # D1 answers one entry per statement; a binding-backed server, one for the last.
        if not results:
            raise OutcomeUnknownError("D1 answered no result for a write; it may or may not have been applied",
                                      reason="no result")

    def size_bytes(self) -> int | None:
        if self._size is None:
            self.query("SELECT 1 AS one")
        return self._size

    def reopen(self) -> "D1HttpDatabase":
        return D1HttpDatabase(
            base_url=self.base_url, account_id=self.account_id, database_id=self.database_id,
            token=self.__token, description=self.description, timeout=self.timeout,
            database_name=self.database_name, env=self.env,
        )

    def close(self) -> None:
        self._connection.close()

    # -- sizes, as this target measures its limits ---------------------------------------

    def wire_bytes(self, statement: Statement) -> int:
        """The bytes ``statement`` adds to a batch body (its item and the comma before it)."""
        return len(self._body({"sql": statement.sql, "params": list(statement.params)})) + 1

    @staticmethod
    def value_bytes(value: Any) -> int:
        if isinstance(value, str):
            return len(value.encode("utf-8", "surrogatepass"))
        if isinstance(value, (bytes, bytearray, memoryview)):
            return len(value)
        return 8

    # -- Time Travel -------------------------------------------------------------------

    def restore_point(self) -> RestorePoint:
        """A Time Travel bookmark for now, and the wrangler command that restores to it."""
        taken_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        found = self._exchange("GET", f"/time_travel/bookmark?timestamp={quote(taken_at)}", None,
                               repeatable=True)
        result = found.payload.get("result") if isinstance(found.payload, dict) else None
        bookmark = result.get("bookmark") if isinstance(result, dict) else None
        if not isinstance(bookmark, str) or not _BOOKMARK.fullmatch(bookmark):
            raise DatabaseUnavailableError(f"D1 at {self.host} answered no usable Time Travel bookmark")
        command = (f"wrangler d1 time-travel restore {shlex.quote(self.database_name or self.database_id)} "
                   f"--bookmark={bookmark}")
        if self.env:
            command += f" --env {shlex.quote(self.env)}"
        return RestorePoint(bookmark=bookmark, taken_at=taken_at, command=command)

    # -- HTTP ------------------------------------------------------------------------

    def _run(self, statements: list[Statement], *, repeatable: bool, as_batch: bool = False) -> list[Result]:
        for number, statement in enumerate(statements, 1):
            self._check_values(statement, number)
        if len(statements) == 1 and not as_batch:
            body = {"sql": statements[0].sql, "params": list(statements[0].params)}
        else:
            body = {"batch": [{"sql": s.sql, "params": list(s.params)} for s in statements]}
        found = self._exchange("POST", "/query", self._body(body), repeatable=repeatable)
        results, size = self._sized(found)
        if len(results) != len(statements):
            what = "the write may or may not have been applied" if not repeatable else "not trusting it"
            raise DatabaseUnavailableError(
                f"D1 answered {len(results)} results for {len(statements)} statements; {what}")
        return results

    def _sized(self, found: Any) -> tuple[list[Result], int | None]:
        results, size = results_of(found)
        if size is not None:
            self._size = size
        return results, self._size

    def _check_values(self, statement: Statement, number: int) -> None:
        for index, value in enumerate(statement.params, 1):
            if isinstance(value, (bytes, bytearray, memoryview)):
                raise SQLError("a value that is not UTF-8 text cannot be sent to D1 over its HTTP API")
            size = self.value_bytes(value)
            if size > D1_LIMITS.value_bytes:
                raise RequestTooLargeError(
                    f"value {index} of statement {number} is {size:,} bytes; D1 stores at most "
                    f"{D1_LIMITS.value_bytes:,} bytes in one value (nothing was sent)",
                    what=f"statement {number}, value {index}", size=size, limit=D1_LIMITS.value_bytes)

    @staticmethod
    def _body(body: dict[str, Any]) -> bytes:
        try:
            return json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError) as error:
            raise SQLError(f"a value cannot be sent to D1 as JSON ({type(error).__name__})") from None

    def _exchange(self, method: str, path: str, data: bytes | None, *, repeatable: bool):
        """Send one request until it has an answer to go by; the answer's envelope, or raise."""
        if data is not None and len(data) > D1_LIMITS.request_bytes:
            raise RequestTooLargeError(
                f"a request of {len(data):,} bytes; sessionctl sends at most {D1_LIMITS.request_bytes:,} "
                "(nothing was sent)", what="request", size=len(data), limit=D1_LIMITS.request_bytes)
        headers = {"Authorization": f"Bearer {self.__token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        with self._lock:
            return self._attempts(method, self._path + path, data, headers, repeatable)

    def _attempts(self, method: str, path: str, data: bytes | None, headers: dict[str, str],
                  repeatable: bool):
        def counted() -> None:
            self.requests += 1

        return send_with_retries(self._connection, method, path, data, headers, repeatable=repeatable,
                                 service="D1", host=self.host,
                                 what=f"D1 database {self.database_id} in account {self.account_id}",
                                 on_request=counted)


def send_with_retries(connection: KeepAliveConnection, method: str, path: str, data: bytes | None,
                      headers: dict[str, str], *, repeatable: bool, service: str, host: str, what: str,
                      on_request: Callable[[], None]):
    """Send one request to the Cloudflare API until it has an answer to go by (see
    ``d1_answers``); the answer's envelope, or raise what it means."""
    attempt = 0
    while True:
        attempt += 1
        last = attempt >= MAX_ATTEMPTS
        logger.debug("%s %s (%d bytes, attempt %d)", method, path, len(data or b""), attempt)
        on_request()
        try:
            answer = connection.request(method, path, data, headers, fresh=not repeatable)
        except ValueError:
            # http.client refuses a header it cannot send and quotes it: never show that.
            raise DatabaseUnavailableError(
                f"the request to {service} could not be formed (check the ids and the token)") from None
        except NotSent as error:
            if not last:
                _pause(attempt)
                continue
            raise DatabaseUnavailableError(f"cannot reach {service} at {host} ({error}); nothing was sent") from None
        except Lost as error:
            if repeatable and not last:
                _pause(attempt)
                continue
            if repeatable:
                raise DatabaseUnavailableError(f"lost the connection to {service} at {host} ({error})") from None
            raise OutcomeUnknownError(
                f"lost the connection to {service} at {host} during a write ({error}); "
                "it may or may not have been applied: check before running it again",
                reason=str(error)) from None
        try:
            return raise_for(answer, host=host, what=what, service=service)
        except NotExecuted as refused:
            wait = refused.wait_s if refused.wait_s is not None else _backoff(attempt)
            if last or wait > MAX_RETRY_AFTER_S:
                raise RateLimitedError(refused.wait_s) from None
            if wait > ANNOUNCED_WAIT_S:
                logger.warning("rate limited by the Cloudflare API: waiting %g s as it asked, then "
                               "sending again (nothing was executed)", wait)
            time.sleep(wait)
        except MayHaveRun as failed:
            if repeatable and not last:
                _pause(attempt)
                continue
            if repeatable:
                raise DatabaseUnavailableError(f"{service} failed ({failed})") from None
            raise OutcomeUnknownError(
                f"{service} failed during a write ({failed}); it may or may not have been applied: "
                "check before running it again", reason=str(failed)) from None


def _backoff(attempt: int) -> float:
    return 0.25 * 2 ** (attempt - 1)


def _pause(attempt: int) -> None:
    time.sleep(_backoff(attempt))


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
