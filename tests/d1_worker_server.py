"""D1 and Workers KV answering their REST paths: tests/d1_worker served by the pinned `wrangler dev`.

Where tests/d1_server.py (FakeD1) re-implements what D1 is documented to do, this runs the SQL
on D1's own engine -- the D1 binding of the pinned wrangler's workerd -- behind the same paths
sessionctl's --remote target calls. tests/d1_worker/worker.js says what the binding gives for a
multi-statement string, a batch and an error, and where the answer differs from D1's REST API.

Use the ``d1_worker`` fixture (one server per test module: startup takes a few seconds)::

    from d1_worker_server import d1_worker, fresh_d1  # noqa: F401  (pytest finds them by name)

    def test_x(fresh_d1):  # the module's server, its database emptied and its stats zeroed
        fresh_d1.query("SELECT 1 AS one")             # through the worker, as a client would
        fresh_d1.stats()["requests"]                  # what the worker served
        fresh_d1.read("SELECT name FROM sqlite_master")  # the local D1 file, read-only

The same worker answers Workers KV's REST paths from its KV binding (``kv_url`` is the
namespace's base URL; worker.js lists the routes and their answers)::

    fresh_d1.kv_put("tg:1", "v", expiration_ttl=3600, metadata={"a": 1})  # bulk write, one item
    fresh_d1.kv_get("tg:1")                           # "v"; None for a missing key
    fresh_d1.kv_list("tg:")                           # [{"name", "expiration", "metadata"}], every page
    fresh_d1.kv_request("POST", "/bulk/get", {"keys": ["tg:1"]})  # (status, JSON or bytes)

The server is shared by the module's tests, and so are its database and KV namespace:
``fresh_d1`` drops what earlier tests made (``wipe()``), deletes every KV key (``kv_wipe()``)
and zeroes the stats; ``d1_worker`` leaves all of it as it is.

The requests reach wrangler through a small loopback proxy that counts TCP connections: the
worker cannot see connections, and a request budget cares about both.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import sqlite3
import threading
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from wrangler_tools import D1_SUBDIR, LOOPBACK, require_wrangler, wrangler_dev

WORKER_DIR = Path(__file__).resolve().parent / "d1_worker"



class D1WorkerError(Exception):
    """The worker answered with success false: ``status``, D1's ``code`` and ``message``."""

    def __init__(self, status: int, code: int | None, message: str):
        super().__init__(f"HTTP {status}, code {code}: {message}")
        self.status, self.code, self.message = status, code, message


class D1Worker:
    """A running worker. ``base_url`` is what CLOUDFLARE_API_BASE_URL takes."""

    def __init__(self, *, proxy_port: int, direct_port: int, account_id: str, database_id: str,
                 kv_namespace_id: str, token: str, persist_to: Path, counter: "_ConnectionCounter"):
        self.base_url = f"http://127.0.0.1:{proxy_port}/client/v4"
        self.direct_url = f"http://127.0.0.1:{direct_port}/client/v4"  # wrangler itself, past the proxy
        self.account_id, self.database_id, self.token = account_id, database_id, token
        self.kv_namespace_id = kv_namespace_id
        self.persist_to = persist_to
        self._counter = counter

    def __repr__(self) -> str:  # never the token
        return f"D1Worker({self.base_url!r}, database_id={self.database_id!r})"

    @property
    def database_url(self) -> str:
        return f"{self.base_url}/accounts/{self.account_id}/d1/database/{self.database_id}"

    @property
    def kv_url(self) -> str:
        """The KV namespace's base URL: ``/keys``, ``/bulk``, ``/values/{key}``... go below it."""
        return f"{self.base_url}/accounts/{self.account_id}/storage/kv/namespaces/{self.kv_namespace_id}"

    @property
    def state_file(self) -> Path:
        """The local D1 database file wrangler dev uses (found on disk: the name is a hash).

        Read it with the stdlib sqlite3 (see ``read``) only while no APSW connection in this
        process has it open: two SQLite libraries in one process break each other's locks.
        """
        folder = self.persist_to / D1_SUBDIR
        files = [p for p in folder.glob("*.sqlite") if p.name != "metadata.sqlite"]
        assert len(files) == 1, f"expected one D1 database file in {folder}, found {files}"
        return files[0]

    # -- through the worker ------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                raw_body: bytes | None = None) -> tuple[int, Any]:
        """(status, parsed JSON) for ``path`` below the database (``/query``) or a full URL.

        ``token`` replaces the fixture's (``""``: no Authorization header at all).
        """
        url = path if path.startswith("http") else self.database_url + path
        data = raw_body if raw_body is not None else (None if body is None else json.dumps(body).encode())
        token = self.token if token is None else token
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with LOOPBACK.open(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read())

    def batch(self, statements: Sequence[tuple[str, Sequence[Any]] | str], *, raw: bool = False) -> list[dict]:
        """Run ``[(sql, params) | sql, ...]`` as one {"batch"}; the result entries, or D1WorkerError."""
        items = [{"sql": s, "params": []} if isinstance(s, str) else {"sql": s[0], "params": list(s[1])}
                 for s in statements]
        return self._ok(*self.request("POST", "/raw" if raw else "/query", {"batch": items}))

    def execute(self, sql: str, params: Sequence[Any] = (), *, raw: bool = False) -> list[dict]:
        """Run one {"sql"} body; every result entry (with meta), or D1WorkerError."""
        return self._ok(*self.request("POST", "/raw" if raw else "/query", {"sql": sql, "params": list(params)}))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict]:
        """The rows of one {"sql"} body, as objects."""
        (entry,) = self.execute(sql, params)
        return entry["results"]

    @staticmethod
    def _ok(status: int, payload: Any) -> list[dict]:
        if status != 200 or not payload.get("success"):
            error = (payload.get("errors") or [{}])[0]
            raise D1WorkerError(status, error.get("code"), error.get("message", ""))
        return payload["result"]

    def wipe(self) -> None:
        """Drop every table, view and trigger the tests made (D1's own _cf_ tables stay)."""
        objects = self.query(
            "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view', 'trigger') "
            "AND name NOT LIKE 'sqlite^_%' ESCAPE '^' AND name NOT LIKE '^_cf^_%' ESCAPE '^'")
        order = {"trigger": 0, "view": 1, "table": 2}  # a table's indexes go with it
        drops = [f'DROP {o["type"].upper()} IF EXISTS "{o["name"].replace(chr(34), chr(34) * 2)}"'
                 for o in sorted(objects, key=lambda o: order[o["type"]])]
        if drops:
            # deferred, so tables referring to each other drop in any order
            self.batch(["PRAGMA defer_foreign_keys = ON", *drops])
        if self.query("SELECT 1 AS x FROM sqlite_master WHERE name = 'sqlite_sequence'"):
            self.query("DELETE FROM sqlite_sequence")

    # -- Workers KV, through the worker -------------------------------------------------

    @staticmethod
    def kv_key_path(key: str) -> str:
        """``key`` as one path segment: percent-encoded, '/' and ':' included."""
        return urllib.parse.quote(key, safe="")

    def kv_request(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                   raw_body: bytes | None = None, headers: dict[str, str] | None = None,
                   ) -> tuple[int, Any]:
        """(status, parsed JSON -- or the bytes, for a value) for ``path`` below ``kv_url``
        (``/keys?prefix=a``) or a full URL. ``token`` as in ``request``."""
        url = path if path.startswith("http") else self.kv_url + path
        data = raw_body if raw_body is not None else (None if body is None else json.dumps(body).encode())
        token = self.token if token is None else token
        sent = {"content-type": "application/json", **(headers or {})}
        if token:
            sent["authorization"] = f"Bearer {token}"
        request = urllib.request.Request(url, data=data, method=method, headers=sent)
        try:
            response = LOOPBACK.open(request, timeout=60)
        except urllib.error.HTTPError as error:
            response = error
        with response:
            content = response.read()
            json_answer = (response.headers.get("content-type") or "").startswith("application/json")
            return response.status, json.loads(content) if json_answer else content

    def _kv_ok(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = self.kv_request(method, path, body)
        if status != 200 or not payload.get("success"):
            error = (payload.get("errors") or [{}])[0]
            raise D1WorkerError(status, error.get("code"), error.get("message", ""))
        return payload

    def kv_put(self, key: str, value: str, *, expiration_ttl: int | None = None,
               expiration: int | None = None, metadata: Any = None) -> None:
        """Write one key through the bulk write (PUT /bulk), or raise D1WorkerError."""
        item: dict[str, Any] = {"key": key, "value": value}
        for name, given in (("expiration_ttl", expiration_ttl), ("expiration", expiration), ("metadata", metadata)):
            if given is not None:
                item[name] = given
        self._kv_ok("PUT", "/bulk", [item])

    def kv_get(self, key: str) -> str | None:
        """The value of ``key`` as text (GET /values/{key}); None when KV has no such key."""
        status, payload = self.kv_request("GET", "/values/" + self.kv_key_path(key))
        if status == 404 and isinstance(payload, dict) and payload["errors"][0]["code"] == 10009:
            return None
        if status != 200 or not isinstance(payload, bytes):
            raise D1WorkerError(status, None, repr(payload))
        return payload.decode()

    def kv_list(self, prefix: str = "") -> list[dict]:
        """Every key under ``prefix`` ({name, expiration?, metadata?}), following the cursor."""
        keys: list[dict] = []
        cursor = ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, **({"cursor": cursor} if cursor else {})})
            payload = self._kv_ok("GET", "/keys?" + query)
            keys += payload["result"]
            cursor = payload["result_info"]["cursor"]
            if not cursor:
                return keys

    def kv_wipe(self) -> int:
        """Delete every key in the namespace (the worker's /__kv/wipe hook, not counted); how many."""
        request = urllib.request.Request(self.direct_url.removesuffix("/client/v4") + "/__kv/wipe",
                                         data=b"", method="POST")
        with LOOPBACK.open(request, timeout=60) as response:
            return json.loads(response.read())["deleted"]

    # -- what was served ---------------------------------------------------------------

    def stats(self) -> dict:
        """The worker's counts (see worker.js) plus ``connections``: TCP connections opened to
        base_url since the last reset (``requests`` minus it is how many were reused)."""
        with LOOPBACK.open(self.direct_url.removesuffix("/client/v4") + "/__stats", timeout=10) as response:
            counts = json.loads(response.read())
        counts["connections"] = self._counter.connections
        return counts

    def reset_stats(self) -> None:
        request = urllib.request.Request(self.direct_url.removesuffix("/client/v4") + "/__stats/reset",
                                         data=b"", method="POST")
        with LOOPBACK.open(request, timeout=10) as response:
            response.read()
        self._counter.connections = 0

    # -- behind the worker's back --------------------------------------------------------

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Rows from the local D1 file, read-only (stdlib sqlite3; see ``state_file``)."""
        conn = sqlite3.connect(self.state_file.as_uri() + "?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(sql, tuple(params)).fetchall()
        finally:
            conn.close()


class _ConnectionCounter:
    """A loopback TCP proxy in front of wrangler that counts the connections it accepts."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.connections = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="d1-worker-proxy", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return  # closed
            self.connections += 1
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
            pending = [2]  # both directions: the sockets close when neither has more to say
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, client, upstream, pending),
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, client: socket.socket,
              upstream: socket.socket, pending: list[int]) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        try:  # pass the half-close on: the other side sees the end of this direction
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        with self._lock:
            pending[0] -= 1
            if pending[0] == 0:
                for sock in (client, upstream):
                    self._open.discard(sock)
                    sock.close()

    def close(self) -> None:
        self._sock.close()
        with self._lock:
            for sock in self._open:
                sock.close()
            self._open.clear()


@contextmanager
def running_d1_worker(wrangler: Path, folder: Path, *, token: str | None = None,
                      kv_preview_id: str | None = None) -> Iterator[D1Worker]:
    """Copy the worker into ``folder``, serve it, yield a D1Worker once it answers; stop it after.

    ``token``: the one the worker accepts (default: a random one), e.g. a distinctive string
    a test then looks for in every output. ``kv_preview_id``: give the KV binding this
    preview_id beside its id (the worker then answers for the id wrangler dev binds, which
    the test learns from ``kv_namespace_id``).
    """
    project, persist_to, logs = folder / "project", folder / "state", folder / "logs"
    shutil.copytree(WORKER_DIR, project)
    logs.mkdir(parents=True)
    toml = project / "wrangler.toml"
    config = tomllib.loads(toml.read_text(encoding="utf-8"))
    account_id, database_id = config["vars"]["ACCOUNT_ID"], config["vars"]["DATABASE_ID"]
    kv_namespace_id = config["vars"]["KV_NAMESPACE_ID"]
    assert config["d1_databases"][0]["database_id"] == database_id, "wrangler.toml's two database ids disagree"
    assert config["kv_namespaces"][0]["id"] == kv_namespace_id, "wrangler.toml's two KV namespace ids disagree"
    if kv_preview_id is not None:
        text = toml.read_text(encoding="utf-8")
        text = text.replace(f'KV_NAMESPACE_ID = "{kv_namespace_id}"', f'KV_NAMESPACE_ID = "{kv_preview_id}"')
        toml.write_text(text + f'preview_id = "{kv_preview_id}"\n', encoding="utf-8")
        kv_namespace_id = kv_preview_id  # what the worker's binding is, if wrangler dev binds the preview
    token = token or "d1w-" + secrets.token_hex(16)
    if not token.isprintable() or '"' in token or "\\" in token:
        raise ValueError("the token goes into .dev.vars between double quotes: printable, no quote or backslash")
    # .dev.vars rather than --var: wrangler shows a --var's value in its bindings table (its
    # output, and the log below) and on the command line; a .dev.vars value it shows as hidden.
    dev_vars = project / ".dev.vars"
    dev_vars.write_text(f'TOKEN="{token}"\n', encoding="utf-8")
    dev_vars.chmod(0o600)

    counter = None
    with wrangler_dev(wrangler, project, logs, ready_path="/__stats",
                      extra=("--persist-to", str(persist_to))) as url:
        port = int(url.rsplit(":", 1)[1])
        counter = _ConnectionCounter(port)
        try:
            worker = D1Worker(proxy_port=counter.port, direct_port=port, account_id=account_id,
                              database_id=database_id, kv_namespace_id=kv_namespace_id, token=token,
                              persist_to=persist_to, counter=counter)
            # One query makes the D1 database file (it is created on first use), so state_file exists.
            assert worker.query("SELECT 1 AS ready") == [{"ready": 1}]
            worker.state_file  # noqa: B018 -- fail here, clearly, if wrangler put it elsewhere
            worker.reset_stats()
            yield worker
        finally:
            counter.close()


@pytest.fixture(scope="module")
def d1_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[D1Worker]:
    """One D1 worker per test module; a missing wrangler FAILS the test (never a skip)."""
    wrangler = require_wrangler()
    with running_d1_worker(wrangler, tmp_path_factory.mktemp("d1-worker")) as worker:
        yield worker


@pytest.fixture
def fresh_d1(d1_worker: D1Worker) -> D1Worker:
    """The module's worker with an empty database, an empty KV namespace and zeroed stats."""
    d1_worker.wipe()
    d1_worker.kv_wipe()
    d1_worker.reset_stats()
    return d1_worker
