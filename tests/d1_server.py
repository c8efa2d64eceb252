"""FakeD1: a loopback TEST DOUBLE of Cloudflare D1's HTTP API, backed by a real SQLite file.

Not Cloudflare: a small stand-in that behaves like the API as
it is documented to behave, so the
remote target can be tested end to end, offline, over real HTTP:

- ``POST {base}/accounts/{account_id}/d1/database/{database_id}/query`` (and ``/raw``) with
  ``{"sql": ..., "params": [...]}`` or ``{"batch": [{"sql": ..., "params": [...]}, ...]}``.
- ``Authorization: Bearer <token>``; missing or wrong: 401, code 10000. Unknown account or
  database: 404, code 7404.
- A ``sql`` may hold several ``;``-separated statements (only the last may take params). A
  batch, or a multi-statement ``sql``, runs as ONE transaction: all or nothing. The result
  list has one entry per statement executed (a multi-statement batch item adds several).
- Like D1, it refuses explicit transaction control (BEGIN/COMMIT/ROLLBACK/SAVEPOINT/RELEASE/
  END), PRAGMAs outside D1's allow-list, ATTACH, access to ``_cf_*`` tables, more than 100
  bound parameters, statements over 100,000 bytes, and non-scalar values; errors are HTTP 400, code 7500, with D1's
  ``<message>: SQLITE_<KIND> [code: 7500]`` shape. BLOBs come back as lists of ints.
- ``meta.rows_read`` / ``rows_written`` are approximations (rows returned / rows changed).

``fail_next`` injects faults (429 with retry-after, 500, a dropped connection, a slow answer).
``requests`` records every request's method, path, parsed JSON body, response status, arrival
time and User-Agent -- never the other headers, so never the token. ``connections`` counts the
TCP connections accepted; ``close_after_answer`` closes each one after its answer without
saying so (as a server whose keep-alive timed out does).

Since the remote tests run against D1 itself (tests/d1_worker), this double serves only what
workerd cannot produce: the faults above and 403.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ALLOWED_PRAGMAS = frozenset({
    "table_list", "table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "foreign_key_check", "quick_check", "optimize", "data_version",
})
MAX_PARAMS = 100
MAX_STATEMENT_BYTES = 100_000
TRANSACTION_MESSAGE = (
    "To execute a transaction, please use the state.storage.transaction() or "
    "state.storage.transactionSync() APIs instead of the SQL BEGIN TRANSACTION or SAVEPOINT "
    "statements: SQLITE_AUTH [code: 7500]"
)
_ROUTE = re.compile(r"^/client/v4/accounts/([^/]+)/d1/database/([^/]+)/(query|raw)$")
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?(\*/|$)", re.S)


class D1Error(Exception):
    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def envelope(result: Any = None, errors: list | None = None) -> dict:
    return {"success": not errors, "errors": errors or [], "messages": [], "result": result}


def split_sql(sql: str) -> list[str]:
    """Split on ``;`` where sqlite3.complete_statement says a statement ends; drop empty ones."""
    statements, current = [], ""
    pieces = sql.split(";")
    for i, piece in enumerate(pieces):
        current += piece + (";" if i < len(pieces) - 1 else "")
        if sqlite3.complete_statement(current) or i == len(pieces) - 1:
            if _COMMENTS.sub("", current).strip(" \t\r\n;"):
                statements.append(current.strip())
            current = ""
    return statements


def _value_in(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, str)):
        return int(value) if isinstance(value, bool) else value
    raise D1Error(400, 7500, f"D1_TYPE_ERROR: Type '{type(value).__name__}' not supported for value '{value}'")


def _value_out(value: Any) -> Any:
    return list(value) if isinstance(value, bytes) else value


class FakeD1:
    """Use as ``with FakeD1(tmp_path) as d1: ...`` or call ``close()``."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, token: str = "test-token",
                 account_id: str = "0123456789abcdef0123456789abcdef",
                 database_id: str = "d1d1d1d1-0000-4000-8000-000000000001"):
        folder = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="fake-d1-"))
        folder.mkdir(parents=True, exist_ok=True)
        self.token, self.account_id, self.database_id = token, account_id, database_id
        self.db_path = folder / f"{database_id}.sqlite"
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.close_after_answer = False
        self._faults: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # guards requests and faults
        self._db_lock = threading.Lock()  # D1 runs one request at a time per database
        with sqlite3.connect(self.db_path) as conn:  # D1's own table, as remote D1 databases have
            conn.execute("CREATE TABLE IF NOT EXISTS _cf_KV (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID")
        conn.close()
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/client/v4"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-d1", daemon=True)
        self._thread.start()

    # -- test knobs ------------------------------------------------------------------

    def fail_next(self, status: int, code: int, message: str, times: int = 1,
                  headers: dict[str, str] | None = None, *, when: str | None = None,
                  execute: bool = False, delay: float = 0.0) -> None:
        """Answer the next ``times`` authenticated requests with this error instead of running them.

        ``status=0``: close the connection without any response (a dropped connection);
        ``status=200``: answer as usual (with ``delay``: a slow answer). ``when``: only
        requests whose SQL contains this text. ``execute=True``: run the request (and
        commit) first, then answer with the error -- the lost-response case. ``delay``:
        seconds to wait before running and answering.
        """
        with self._lock:
            self._faults.append({"status": status, "code": code, "message": message, "times": times,
                                 "headers": dict(headers or {}), "when": when, "execute": execute,
                                 "delay": delay})

    def sql_sent(self) -> list[str]:
        """Every statement text received, in order (batch items flattened)."""
        out = []
        for request in self.requests:
            body = request["body"] if isinstance(request["body"], dict) else {}
            items = body.get("batch") if isinstance(body.get("batch"), list) else [body]
            out += [item["sql"] for item in items if isinstance(item, dict) and isinstance(item.get("sql"), str)]
        return out

    def inspect(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Read the backing file directly, behind the API's back."""
        conn = sqlite3.connect(self.db_path)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeD1":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the API ---------------------------------------------------------------------

    def handle(self, method: str, path: str, authorization: str | None, raw: bytes,
               user_agent: str | None = None) -> tuple[int, dict, dict]:
        try:
            body = json.loads(raw.decode("utf-8")) if raw else None
        except (ValueError, UnicodeDecodeError):
            body = ValueError
        record = {"method": method, "path": path, "body": None if body is ValueError else body,
                  "status": None, "at": time.monotonic(), "user_agent": user_agent, "bytes": len(raw)}
        with self._lock:
            self.requests.append(record)
        headers: dict[str, str] = {}
        try:
            match = _ROUTE.match(path)
            if match is None:
                raise D1Error(404, 7000, "No route for that URI")
            if method != "POST":
                raise D1Error(405, 7001, "Method not allowed")
            if authorization != f"Bearer {self.token}":
                raise D1Error(401, 10000, "Authentication error")
            if match.group(1) != self.account_id or match.group(2) != self.database_id:
                raise D1Error(404, 7404, "database not found")
            items = self._items(body)
            fault = self._take_fault(items)
            if fault is not None and fault["delay"]:
                time.sleep(fault["delay"])
            if fault is not None and fault["status"] == 200:
                fault = None  # only slow
            if fault is not None and not fault["execute"]:
                headers = fault["headers"]
                raise D1Error(fault["status"], fault["code"], fault["message"])
            result = self._run(items, raw_form=match.group(3) == "raw")
            if fault is not None:
                headers = fault["headers"]
                raise D1Error(fault["status"], fault["code"], fault["message"])
            status, payload = 200, envelope(result)
        except D1Error as error:
            status, payload = error.status, envelope(None, [{"code": error.code, "message": error.message}])
        record["status"] = status
        return status, payload, headers

    def _items(self, body: Any) -> list[tuple[str, list]]:
        if not isinstance(body, dict) or not (isinstance(body.get("sql"), str) or isinstance(body.get("batch"), list)):
            raise D1Error(400, 7400, "Malformed request body: expected a JSON object with sql or batch")
        items = body["batch"] if "batch" in body else [body]
        out = []
        for item in items:
            params = item.get("params", []) if isinstance(item, dict) else None
            if not isinstance(item, dict) or not isinstance(item.get("sql"), str) or not isinstance(params, list):
                raise D1Error(400, 7400, "Malformed request body: each query needs sql (string) and params (list)")
            out.append((item["sql"], params))
        return out

    def _take_fault(self, items: list[tuple[str, list]]) -> dict | None:
        text = "\n".join(sql for sql, _ in items)
        with self._lock:
            for fault in self._faults:
                if fault["when"] is None or fault["when"] in text:
                    fault["times"] -= 1
                    if fault["times"] <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _run(self, items: list[tuple[str, list]], raw_form: bool) -> list[dict]:
        plan = []  # (statement, params): params bind to the last statement of each sql
        for sql, params in items:
            statements = split_sql(sql)
            if not statements:
                raise D1Error(400, 7500, "No SQL statements detected.: SQLITE_ERROR [code: 7500]")
            if len(params) > MAX_PARAMS:
                raise D1Error(400, 7500, "too many SQL variables: SQLITE_ERROR [code: 7500]")
            if any(len(s.encode("utf-8")) > MAX_STATEMENT_BYTES for s in statements):
                raise D1Error(400, 7500, "statement too long: SQLITE_TOOBIG [code: 7500]")
            values = [_value_in(v) for v in params]
            plan += [(s, values if i == len(statements) - 1 else []) for i, s in enumerate(statements)]
        with self._db_lock:
            conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=5)
            denied: list[str] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.set_authorizer(lambda *args: self._authorize(denied, *args))
                entries = [self._execute(conn, sql, params, raw_form) for sql, params in plan]
                conn.set_authorizer(None)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.set_authorizer(None)
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise self._translate(exc, denied) from None
            finally:
                conn.close()
        size = os.path.getsize(self.db_path)
        for entry in entries:
            entry["meta"]["size_after"] = size
        return entries

    @staticmethod
    def _execute(conn: sqlite3.Connection, sql: str, params: list, raw_form: bool) -> dict:
        started = time.perf_counter()
        before = conn.total_changes
        cursor = conn.execute(sql, params)
        names = [d[0] for d in cursor.description or ()]
        rows = [[_value_out(v) for v in row] for row in cursor.fetchall()]
        # changes() is the last finished INSERT/UPDATE/DELETE's count (triggers excluded), as in D1.
        changed_rows = conn.total_changes != before
        changes, last_row_id = conn.execute("SELECT changes(), last_insert_rowid()").fetchone()
        changes = changes if changed_rows else 0
        changed = changed_rows or sql.lstrip().split(None, 1)[0].upper() in ("CREATE", "DROP", "ALTER")
        results = {"columns": names, "rows": rows} if raw_form else [dict(zip(names, r)) for r in rows]
        return {"results": results, "success": True, "meta": {
            "served_by_region": "LOOPBACK", "served_by_primary": True, "duration": (time.perf_counter() - started) * 1000,
            "changes": changes, "last_row_id": last_row_id, "changed_db": changed, "size_after": None,
            "rows_read": len(rows), "rows_written": changes}}

    @staticmethod
    def _authorize(denied: list[str], action: int, arg1: str | None, arg2: str | None, *_: object) -> int:
        """D1's restrictions, enforced the way workerd does: an SQLite authorizer."""
        if action in (sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT):
            denied.append("transaction")
        elif action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() not in ALLOWED_PRAGMAS:
            denied.append("pragma")
        elif action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            denied.append("attach")
        elif isinstance(arg1, str) and arg1.lower().startswith("_cf_"):
            denied.append(f"access to {arg1}.{arg2 or ''} is prohibited")
        else:
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY

    @staticmethod
    def _translate(exc: sqlite3.Error, denied: list[str]) -> D1Error:
        message = str(exc)
        if "transaction" in denied:
            return D1Error(400, 7500, TRANSACTION_MESSAGE)
        if denied and denied[-1].startswith("access to"):
            return D1Error(400, 7500, f"{denied[-1]}: SQLITE_AUTH [code: 7500]")
        if isinstance(exc, sqlite3.IntegrityError):
            kind = "SQLITE_CONSTRAINT"
        elif "not authorized" in message:
            kind = "SQLITE_AUTH"
        elif "locked" in message or "busy" in message:
            kind = "SQLITE_BUSY"
        elif isinstance(exc, sqlite3.ProgrammingError):
            kind, message = "SQLITE_RANGE", f"Wrong number of parameter bindings for SQL query ({message})"
        else:
            kind = "SQLITE_ERROR"
        return D1Error(400, 7500, f"{message}: {kind} [code: 7500]")


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and left: its answer has nowhere to go


class _Handler(BaseHTTPRequestHandler):
    fake: FakeD1
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.fake._lock:
            self.fake.connections += 1

    def _serve(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, payload, headers = self.fake.handle(self.command, self.path, self.headers.get("Authorization"), raw,
                                                    self.headers.get("User-Agent"))
        if status == 0:  # fail_next(0, ...): drop the connection, answer nothing
            self.close_connection = True
            return
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        if self.fake.close_after_answer:
            self.close_connection = True  # and no "Connection: close" said beforehand

    do_POST = do_GET = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet; nothing secret is in it anyway
        pass
