"""One kept-alive HTTP connection to the Cloudflare API, and what a failure on it means.

A command makes a few requests to one host; a TLS handshake costs more than most of
them, so one connection is opened and reused for the whole command. What matters
for safety is *when* something failed:

- ``NotSent``: the request never left whole (no connection, DNS, a refused connect, the
  socket failing while the request was being written): the server cannot have run it.
- ``Lost``: the request was written and no whole answer came back (reset, timeout, cut
  body, not HTTP): the server may or may not have run it.

A server may close an idle kept-alive connection at any moment (node, which serves
``wrangler dev``, closes after 5 s), and a request written into that closing connection
is "lost" though nothing ran. So a connection the server has already closed (its socket
reads as ready: an end of file) is replaced before anything is written into it; reads
just go again after a loss; and a write that must not be sent twice asks for
``fresh=True``, which after an idle spell opens a new connection rather than race the close.

Redirects are never followed (the request carries the token), and the connection is
never routed through a proxy to this machine. For https, an ``https_proxy`` from the
environment is used as a CONNECT tunnel, as wrangler and urllib use it.
"""

from __future__ import annotations

import base64
import http.client
import logging
import select
import socket
import ssl
import time
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

logger = logging.getLogger("sessionctl.targets.http")

# Past this idle time a kept-alive connection may be closing under us (node's default
# keep-alive timeout is 5 s): a write that must not be repeated opens a fresh one.
IDLE_REUSE_S = 4.0


class NotSent(Exception):
    """The request never reached the server whole: safe to send again."""


class Lost(Exception):
    """The request was sent; no whole answer came back. It may have run."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


class KeepAliveConnection:
    """Requests to one origin over one reused connection (reopened only when it must be)."""

    def __init__(self, base_url: str, *, timeout: float, user_agent: str):
        parts = urlsplit(base_url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port
        self.timeout = timeout
        self.user_agent = user_agent
        self.opened = 0  # connections opened so far (one, unless the server closed one)
        self._conn: http.client.HTTPConnection | None = None
        self._last_used = 0.0

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str], *,
                fresh: bool = False) -> Answer:
        """Send one request and read its whole answer; raise NotSent or Lost."""
        if self._conn is not None and (self._closed_by_server()
                                       or (fresh and time.monotonic() - self._last_used > IDLE_REUSE_S)):
            self.close()
        conn = self._connected()
        all_headers = {"User-Agent": self.user_agent, "Accept": "application/json", **headers}
        try:
            conn.request(method, path, body=body, headers=all_headers)
        except ValueError:
            # A header http.client will not send (it would quote it, token and all).
            self.close()
            raise ValueError("a request header could not be sent") from None
        except (OSError, http.client.HTTPException) as error:
            # Not all of it was written: the server has no whole request to run.
            self.close()
            raise NotSent(_describe(error)) from None
        try:
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as error:
            self.close()
            raise Lost(_describe(error)) from None
        self._last_used = time.monotonic()
        if response.will_close:
            self.close()
        return Answer(response.status, response.headers, data)

    def _closed_by_server(self) -> bool:
        """An idle connection whose socket is readable has been closed (or spoken on) by the
        server: it cannot carry a request."""
        sock = self._conn.sock if self._conn is not None else None
        if sock is None:
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connected(self) -> http.client.HTTPConnection:
        if self._conn is not None:
            return self._conn
        conn = self._new_connection()
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as error:
            conn.close()
            raise NotSent(_describe(error)) from None
        self.opened += 1
        logger.debug("connected to %s (connection %d)", self.host, self.opened)
        self._conn = conn
        return conn

    def _new_connection(self) -> http.client.HTTPConnection:
        if self.scheme == "http":  # only ever this machine (see check_base_url): no proxy
            return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        context = ssl.create_default_context()
        proxy = _https_proxy(self.host)
        if proxy is None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=context)
        conn = http.client.HTTPSConnection(proxy.hostname or "", proxy.port or 8080, timeout=self.timeout,
                                           context=context)
        tunnel_headers = {}
        if proxy.username:
            credentials = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
            tunnel_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        conn.set_tunnel(self.host, self.port, headers=tunnel_headers)
        return conn


def _https_proxy(host: str):  # -> SplitResult | None
    proxies = urllib.request.getproxies()
    url = proxies.get("https")
    if not url or urllib.request.proxy_bypass(host):
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts if parts.hostname else None


def _describe(error: BaseException) -> str:
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host: {error.strerror or error}"
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "timed out"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
