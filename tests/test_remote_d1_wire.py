"""Remote D1 when the wire misbehaves: redirects, cut-off or non-HTTP answers, odd bodies, bad URLs.

Each case is a tiny raw server on 127.0.0.1 that answers every request with canned bytes and
records what it received, so the test can check where the token went.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import SESSIONCTL
from remote_cli import SECRET, no_proxies, one_error, write_project  # noqa: F401 (no_proxies: autouse)

ACCOUNT = "acc123"
DATABASE = "d1d1d1d1-0000-4000-8000-000000000009"


class CannedServer:
    """Answers each connection with ``reply(request_bytes) -> bytes``; records requests."""

    def __init__(self, reply):
        self.reply = reply
        self.requests: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/client/v4"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    while len(body) < length:
                        body += conn.recv(65536)
                    self.requests.append(head + b"\r\n\r\n" + body)
                    conn.sendall(self.reply(head + b"\r\n\r\n" + body))
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def http(status: str, body: bytes | str, headers: str = "", length: int | None = None) -> bytes:
    body = body.encode() if isinstance(body, str) else body
    size = len(body) if length is None else length
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n"
            f"Connection: close\r\n{headers}\r\n").encode() + body


def run(project: Path, base_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SESSIONCTL_", "CLOUDFLARE_")) and not k.lower().endswith("_proxy")}
    env.update(CLOUDFLARE_API_BASE_URL=base_url, CLOUDFLARE_API_TOKEN=SECRET, CLOUDFLARE_ACCOUNT_ID=ACCOUNT)
    result = subprocess.run([str(SESSIONCTL), "--remote", *args], cwd=project, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert SECRET not in result.stdout + result.stderr
    return result


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "bot", DATABASE)


@pytest.fixture
def serve():
    servers = []

    def start(reply) -> CannedServer:
        server = CannedServer(reply)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_a_redirect_is_not_followed_and_the_token_goes_nowhere_else(project, serve):
    elsewhere = serve(lambda request: http("200 OK", '{"success": true, "errors": [], "result": []}'))
    redirecting = serve(lambda request: http("302 Found", "", f"Location: {elsewhere.url}/evil\r\n"))
    result = run(project, redirecting.url, "status")
    line = one_error(result, 3)
    assert "HTTP 302 (a redirect); not following it with the token" in line
    assert elsewhere.requests == []


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (lambda r: http("200 OK", '{"success": true, "res', length=500), "lost the connection to D1"),
        (lambda r: b"SSH-2.0-OpenSSH_9.2\r\n", "lost the connection to D1"),
        (lambda r: http("200 OK", "<html>captive portal</html>"), "something that is not JSON"),
        (lambda r: http("200 OK", '{"success": true, "errors": [], "messages": [], "result": []}'),
         "D1 answered 0 results for 1 statements"),
        (lambda r: http("400 Bad Request", '{"success": false, "errors": [{"code": 6003, "message": "Invalid request headers"}]}'),
         "refused the credentials"),
    ],
    ids=["cut-off-body", "not-http", "html", "no-results", "code-6003"],
)
def test_a_broken_answer_to_a_read_is_one_line_exit_3(project, serve, reply, expected):
    server = serve(reply)
    line = one_error(run(project, server.url, "sessions", "list"), 3)
    assert expected in line


def test_an_overloaded_d1_is_retried_for_reads(project, serve):
    answers = iter([
        http("500 Internal Server Error", '{"success": false, "errors": [{"code": 7500, "message": "D1 DB is overloaded. Requests queued for too long."}]}'),
        http("200 OK", json.dumps({"success": True, "errors": [], "messages": [],
                                   "result": [{"results": [], "success": True, "meta": {"changes": 0}}]})),
    ] * 20)
    server = serve(lambda request: next(answers))
    result = run(project, server.url, "status", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert len(server.requests) >= 2


def test_a_write_to_a_closed_port_says_nothing_was_sent(project):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    line = one_error(run(project, f"http://127.0.0.1:{port}/client/v4", "sessions", "delete", "--yes", "tg:1"), 3)
    assert "nothing was sent" in line and "may or may not" not in line


def test_a_write_whose_answer_is_cut_off_may_have_been_applied_and_is_not_repeated(project, serve):
    server = serve(lambda r: http("200 OK", '{"success": true', length=400))
    line = one_error(run(project, server.url, "sessions", "delete", "--yes", "tg:1"), 3)
    assert "it may or may not have been applied" in line
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:hunter2@127.0.0.1:9/client/v4", "must not carry a user or password"),
        ("http://api.example.com/client/v4", "must be https (plain http only to this machine)"),
        ("ftp://127.0.0.1/client/v4", "must be an http(s) URL with a host"),
    ],
)
def test_a_base_url_that_would_expose_the_token_is_refused(project, url, expected):
    result = run(project, url, "status")
    line = one_error(result, 2)
    assert expected in line
    assert "hunter2" not in result.stderr


def test_https_goes_through_an_https_proxy_as_a_tunnel_and_http_to_this_machine_never(monkeypatch):
    from sessionctl.targets.http_connection import KeepAliveConnection

    monkeypatch.setenv("https_proxy", "http://alice:s%40cret@proxy.internal:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    conn = KeepAliveConnection("https://api.cloudflare.com/client/v4", timeout=5, user_agent="t")._new_connection()
    assert (conn.host, conn.port) == ("proxy.internal", 3128)
    assert (conn._tunnel_host, conn._tunnel_port) == ("api.cloudflare.com", 443)
    assert conn._tunnel_headers == {"Proxy-Authorization": "Basic YWxpY2U6c0BjcmV0"}  # alice:s@cret

    monkeypatch.setenv("no_proxy", ".cloudflare.com")
    direct = KeepAliveConnection("https://api.cloudflare.com/client/v4", timeout=5, user_agent="t")._new_connection()
    assert direct.host == "api.cloudflare.com" and direct._tunnel_host is None

    monkeypatch.setenv("http_proxy", "http://proxy.internal:3128")
    local = KeepAliveConnection("http://127.0.0.1:8787/client/v4", timeout=5, user_agent="t")._new_connection()
    assert (local.host, local.port, local._tunnel_host) == ("127.0.0.1", 8787, None)
