"""A Workers KV namespace over Cloudflare's KV REST API (the bot's KV in production).

Under ``{base}/accounts/{account}/storage/kv/namespaces/{namespace}``:

- ``GET  /keys?prefix=&limit=1000&cursor=``: names with their ``expiration`` (seconds)
  and ``metadata``, a page at a time, ``result_info.cursor`` empty after the last page;
- ``POST /bulk/get`` ``{"keys": [...], "type": "text"}``: up to 100 values a request;
- ``PUT  /bulk`` ``[{"key", "value", "expiration", "metadata"}]``: many writes a request
  (sessionctl sends at most ``WRITE_ITEMS`` pairs and ``WRITE_BYTES`` of body each).

One kept-alive connection, the same token rules and the same retry rules as remote D1
(``d1_http.send_with_retries``): reads go again after a failure; a bulk write -- each of its
pairs sets a key to a given value, so sending it twice leaves the same keys -- goes again too.
The KV API cannot make a write conditional: a key the bot changes between sessionctl's read
and its write is overwritten (``version`` is None here).
"""

from __future__ import annotations

import threading
from typing import Any, Iterator
from urllib.parse import quote, urlencode, urlsplit

from sessionctl.encoding import dumps_like_json_stringify, stored_bytes
from sessionctl.errors import DatabaseUnavailableError
from sessionctl.targets.d1_http import USER_AGENT, check_base_url, check_id, send_with_retries
from sessionctl.targets.http_connection import KeepAliveConnection
from sessionctl.targets.kv_base import KVKey, KVWrite

LIST_PAGE = 1000  # the most the API lists at once
GET_KEYS = 100  # the most one bulk read takes
WRITE_ITEMS = 1000  # the API takes 10,000 pairs and 100 MB; smaller requests fail and retry cheaper
WRITE_BYTES = 10_000_000


class KVHttpNamespace:
    def __init__(self, *, base_url: str, account_id: str, namespace_id: str, token: str,
                 description: str | None = None, timeout: float = 35.0):
        check_base_url(base_url)
        check_id(account_id, "account id", setting="account_id")
        check_id(namespace_id, "namespace id", setting="id")
        self.base_url = base_url.rstrip("/")
        self.namespace_id = namespace_id
        self.host = urlsplit(self.base_url).netloc or self.base_url
        self.description = description or f"remote KV namespace {namespace_id} via {self.host}"
        self.requests = 0
        self.__token = token
        self._path = f"{urlsplit(self.base_url).path}/accounts/{account_id}/storage/kv/namespaces/{namespace_id}"
        self._what = f"KV namespace {namespace_id} in account {account_id}"
        self._connection = KeepAliveConnection(self.base_url, timeout=timeout, user_agent=USER_AGENT)
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the token
        return f"KVHttpNamespace({self.description!r})"

    def keys(self, prefix: str) -> Iterator[KVKey]:
        cursor = ""
        while True:
            query = {"prefix": prefix, "limit": LIST_PAGE, **({"cursor": cursor} if cursor else {})}
            found = self._call("GET", "/keys?" + urlencode(query, quote_via=quote), None, repeatable=True)
            entries = found.payload.get("result")
            if not isinstance(entries, list):
                raise DatabaseUnavailableError(f"Workers KV at {self.host} listed keys in an unknown shape")
            for entry in entries:
                if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                    raise DatabaseUnavailableError(f"Workers KV at {self.host} listed a key without a name")
                expiration = entry.get("expiration")
                yield KVKey(entry["name"], int(expiration) if isinstance(expiration, (int, float)) else None,
                            entry.get("metadata"))
            info = found.payload.get("result_info") or {}
            cursor = info.get("cursor") if isinstance(info, dict) else None
            if not cursor or not entries:
                return

    def values(self, keys: list[KVKey]) -> dict[str, bytes | None]:
        found: dict[str, bytes | None] = {}
        for start in range(0, len(keys), GET_KEYS):
            names = [key.name for key in keys[start:start + GET_KEYS]]
            answer = self._call("POST", "/bulk/get", _json({"keys": names, "type": "text"}), repeatable=True)
            result = answer.payload.get("result")
            values = result.get("values") if isinstance(result, dict) else None
            if not isinstance(values, dict):
                raise DatabaseUnavailableError(f"Workers KV at {self.host} answered a bulk read in an unknown shape")
            for name in names:
                value = values.get(name)
                found[name] = stored_bytes(value) if isinstance(value, str) else None
        return found

    def write(self, writes: list[KVWrite]) -> list[str]:
        batch: list[dict[str, Any]] = []
        size = 0
        for write in writes:
            item = {"key": write.key, "value": write.value, "expiration": write.expiration}
            if write.metadata is not None:
                item["metadata"] = write.metadata
            cost = len(_json(item)) + 1
            if batch and (len(batch) >= WRITE_ITEMS or size + cost > WRITE_BYTES):
                self._write(batch)
                batch, size = [], 0
            batch.append(item)
            size += cost
        if batch:
            self._write(batch)
        return []

    def _write(self, batch: list[dict[str, Any]]) -> None:
        answer = self._call("PUT", "/bulk", _json(batch), repeatable=True)
        result = answer.payload.get("result")
        failed = result.get("unsuccessful_keys") if isinstance(result, dict) else None
        if failed:
            shown = ", ".join(repr(k) for k in failed[:5]) + (" ..." if len(failed) > 5 else "")
            raise DatabaseUnavailableError(f"Workers KV did not write {len(failed)} keys ({shown})")

    def _call(self, method: str, path: str, data: bytes | None, *, repeatable: bool):
        headers = {"Authorization": f"Bearer {self.__token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"

        def counted() -> None:
            self.requests += 1

        with self._lock:
            return send_with_retries(self._connection, method, self._path + path, data, headers,
                                     repeatable=repeatable, service="Workers KV", host=self.host,
                                     what=self._what, on_request=counted)

    def close(self) -> None:
        self._connection.close()


def _json(value: Any) -> bytes:
    return stored_bytes(dumps_like_json_stringify(value))
