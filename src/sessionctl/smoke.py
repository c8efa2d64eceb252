"""``smoke``: the seed's unticked testing checklist, run against a real target.

Session creation, retrieval, update through the five statuses, expiry, concurrent
handling and delete -- through the same repository functions the bot uses. It
writes only reserved user ids (``sessionctl-smoke-<run>-...``), touches no other
row, and removes its own rows at the end, also when a check fails.
"""

from __future__ import annotations

import secrets
import threading
from typing import Callable

from sessionctl.checks import Check
from sessionctl.repository import (
    SESSION_TTL_MS,
    ServerSession,
    SessionQuery,
    SessionStatus,
    cleanup_expired_sessions,
    count_expired_sessions,
    delete_server_session,
    delete_sessions,
    get_server_session,
    list_sessions,
    now_ms,
    save_server_session,
)
from sessionctl.targets.base import Database

SMOKE_PREFIX = "sessionctl-smoke-"
THREADS = 4
SAVES_PER_THREAD = 10


class _CheckFailed(Exception):
    pass


def _expect(condition: object, failure: str) -> None:
    # Not `assert`: smoke must keep checking under `python -O`.
    if not condition:
        raise _CheckFailed(failure)


class _Run:
    def __init__(self, db: Database, clock: Callable[[], int]):
        self.db = db
        self.clock = clock
        self.prefix = f"{SMOKE_PREFIX}{secrets.token_hex(4)}-"

    def uid(self, name: str) -> str:
        return self.prefix + name

    def own_rows(self) -> list[str]:
        query = SessionQuery(state="all", user_pattern=self.prefix, sort="user", limit=None)
        return [row["user_id"] for row in list_sessions(self.db, query)]

    # -- the checklist ---------------------------------------------------------

    def creation(self) -> str:
        now = self.clock()
        saved = save_server_session(
            self.db, self.uid("create"), ServerSession(messages=[{"role": "user", "content": "서버 추천"}]), now=now
        )
        _expect(saved.created_at == now and saved.updated_at == now, "times not set to now")
        _expect(saved.expires_at == now + SESSION_TTL_MS, "expires_at is not now + SESSION_TTL_MS")
        return "saved a new session; created_at = updated_at = now, expires_at = now + 1 h"

    def retrieval(self) -> str:
        info = {"budget_krw": 50000, "needs": ["ssd", "서울"], "nested": {"a": [1, {"b": None}]}}
        save_server_session(self.db, self.uid("get"), ServerSession(collected_info=info, messages=[{"role": "user", "content": "서버 추천"}]))
        found = get_server_session(self.db, self.uid("get"))
        if found is None:
            raise _CheckFailed("get returned None for a session just saved")
        _expect(found.collected_info == info, f"collected_info came back as {found.collected_info!r}")
        _expect(found.messages == [{"role": "user", "content": "서버 추천"}], "messages differ")
        return "get returns what was saved (Korean text, nested JSON)"

    def update_flow(self) -> str:
        user = self.uid("flow")
        start = self.clock()
        created = None
        for step, status in enumerate(SessionStatus):
            session = get_server_session(self.db, user, now=start + step) or ServerSession()
            session.status = status
            session.messages.append({"role": "assistant", "content": f"step {status.value}"})
            saved = save_server_session(self.db, user, session, now=start + step)
            created = created or saved.created_at
            back = get_server_session(self.db, user, now=start + step)
            _expect(back is not None and back.status == status, f"status did not move to {status.value}")
            _expect(back.created_at == created, "created_at changed across saves")
            _expect(back.expires_at == start + step + SESSION_TTL_MS, "expiry did not slide forward")
        _expect(len(back.messages) == len(SessionStatus), "messages lost along the flow")
        return "gathering → recommending → selecting → ordering → completed; created_at kept"

    def expiry(self) -> str:
        user = self.uid("expired")
        long_ago = 1  # epoch ms: no real session expires this early, so cleanup touches only ours
        saved = save_server_session(self.db, user, ServerSession(), now=long_ago)
        _expect(get_server_session(self.db, user) is None, "an expired session is visible to get")
        # Scoped to this run's ids: other rows (another smoke's included) are never touched.
        cutoff = saved.expires_at
        own = count_expired_sessions(self.db, now=cutoff, user_prefix=self.prefix)
        _expect(own == 1, f"{own} rows of this run expired by {cutoff}, expected 1")
        deleted = cleanup_expired_sessions(self.db, now=cutoff, user_prefix=self.prefix)
        _expect(deleted == 1, f"cleanup deleted {deleted} rows, expected 1")
        _expect(user not in self.own_rows(), "cleanup left the expired session behind")
        return "expired session invisible to get and removed by cleanup"

    def concurrency(self) -> str:
        shared = self.uid("shared")
        errors: list[BaseException] = []

        def writer(n: int) -> None:
            db = self.db.reopen()
            try:
                for i in range(SAVES_PER_THREAD):
                    batch = [{"writer": n, "i": k} for k in range(i + 1)]
                    save_server_session(db, self.uid(f"w{n}"), ServerSession(messages=batch))
                    save_server_session(db, shared, ServerSession(messages=batch))
            except BaseException as exc:  # reported below as the check's failure
                errors.append(exc)
            finally:
                db.close()

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise _CheckFailed(f"{type(errors[0]).__name__}: {errors[0]}")
        for n in range(THREADS):
            own = get_server_session(self.db, self.uid(f"w{n}"))
            _expect(own is not None and len(own.messages) == SAVES_PER_THREAD, f"writer {n} lost saves")
        last = get_server_session(self.db, shared)
        writers = {m["writer"] for m in last.messages} if last else set()
        _expect(last is not None and len(writers) == 1, "shared session mixes writers' saves")
        _expect(last is not None and len(last.messages) == SAVES_PER_THREAD, "shared session is not one writer's last save")
        return f"{THREADS} threads × {SAVES_PER_THREAD} saves, same and different users: no errors, consistent"

    def delete(self) -> str:
        user = self.uid("delete")
        save_server_session(self.db, user, ServerSession())
        _expect(delete_server_session(self.db, user) is True, "delete did not report the row")
        _expect(get_server_session(self.db, user) is None, "deleted session still visible")
        _expect(delete_server_session(self.db, user) is False, "second delete found a row")
        return "delete removes the session; deleting again is a no-op"

    def remove_own_rows(self) -> int:
        return len(delete_sessions(self.db, self.own_rows()))


CHECKLIST = (
    ("session creation", _Run.creation),
    ("session retrieval", _Run.retrieval),
    ("status flow", _Run.update_flow),
    ("session expiry", _Run.expiry),
    ("concurrent handling", _Run.concurrency),
    ("session delete", _Run.delete),
)


def run_smoke(db: Database, clock: Callable[[], int] = now_ms) -> list[Check]:
    """Run the checklist; every check a Check. Always removes the run's own rows."""
    run = _Run(db, clock)
    checks: list[Check] = []
    try:
        for name, step in CHECKLIST:
            try:
                checks.append(Check(name, True, step(run)))
            except _CheckFailed as failure:
                checks.append(Check(name, False, str(failure)))
            except Exception as error:  # noqa: BLE001 - a smoke check reports, it does not crash
                checks.append(Check(name, False, f"{type(error).__name__}: {error}"))
    finally:
        removed = run.remove_own_rows()
        left = run.own_rows()
    checks.append(
        Check("cleanup of smoke rows", not left,
              f"removed {removed} smoke rows; none left" if not left else f"{len(left)} smoke rows left: {left[:3]}")
    )
    return checks
