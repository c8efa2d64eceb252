"""What a Workers KV namespace is to sessionctl: keys under a prefix, their values, writes.

Two stores give it: wrangler's local KV state (``kv_local``) and the KV REST API
(``kv_http``). Times are KV's own: ``expiration`` in seconds since the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol

# Workers KV's limits, as the pinned wrangler's local KV and the KV API enforce them.
MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 25 * 1024 * 1024
MIN_TTL_S = 60  # an expiration must be at least this far in the future


@dataclass(frozen=True)
class KVKey:
    """A key as a listing gives it; ``version`` tells a later write whether it changed meanwhile
    (the blob id locally; None where the store cannot tell)."""

    name: str
    expiration: int | None  # seconds since the epoch; None: never expires
    metadata: Any = None
    version: str | None = None


@dataclass(frozen=True)
class KVWrite:
    key: str
    value: str
    expiration: int  # seconds since the epoch
    metadata: Any = None
    replaces: KVKey | None = None  # what was read under the key (None: nothing was)


class KVStore(Protocol):
    description: str

    def keys(self, prefix: str) -> Iterable[KVKey]:
        """Every key starting with ``prefix`` (expired ones included where the store still has them), by name."""

    def values(self, keys: list[KVKey]) -> dict[str, bytes | None]:
        """The values of ``keys`` (None where there is none any more)."""

    def write(self, writes: list[KVWrite]) -> list[str]:
        """Write ``writes``; the keys NOT written because they changed since they were read."""

    def close(self) -> None: ...
