"""The repository module: the API the bot's agent code imports."""

from __future__ import annotations

import itertools
import sqlite3
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import raw_connect
from sessionctl.errors import InvalidSessionError
from sessionctl.repository import (
    SESSION_TTL_MS,
    ServerSession,
    SessionStatus,
    cleanup_expired_sessions,
    delete_server_session,
    get_server_session,
    save_server_session,
)

T0 = 1_769_558_400_000  # 2026-01-28 00:00:00 UTC, the seed's date, in epoch ms


def _session(**fields) -> ServerSession:
    defaults = dict(
        status=SessionStatus.RECOMMENDING,
        collected_info={"purpose": "web", "budget": 50000},
        last_recommendation={"plan": "vps-2", "price": 12000},
        messages=[{"role": "user", "content": "서버 추천"}],
    )
    defaults.update(fields)
    return ServerSession(**defaults)


def _raw(db_path, user_id, columns="*"):
    conn = raw_connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute(f"SELECT {columns} FROM server_sessions WHERE user_id = ?", (user_id,)).fetchone()
        return dict(row) if row is not None else None
    finally:
        conn.close()


def _count_rows(db_path) -> int:
    conn = raw_connect(db_path)
    try:
        return conn.execute("SELECT count(*) FROM server_sessions").fetchone()[0]
    finally:
        conn.close()


# -- constants and types -----------------------------------------------------------


def test_session_ttl_is_one_hour_in_milliseconds():
    assert SESSION_TTL_MS == 3_600_000


def test_session_status_has_exactly_the_five_statuses_in_flow_order():
    assert [status.value for status in SessionStatus] == [
        "gathering",
        "recommending",
        "selecting",
        "ordering",
        "completed",
    ]


# -- round trip ------------------------------------------------------------------


def test_saved_session_comes_back_from_get(migrated_db):
    session = _session()
    save_server_session(migrated_db, "u1", session, now=T0)

    got = get_server_session(migrated_db, "u1", now=T0 + 1)

    assert got == ServerSession(
        status=SessionStatus.RECOMMENDING,
        collected_info={"purpose": "web", "budget": 50000},
        last_recommendation={"plan": "vps-2", "price": 12000},
        messages=[{"role": "user", "content": "서버 추천"}],
        created_at=T0,
        updated_at=T0,
        expires_at=T0 + SESSION_TTL_MS,
    )
    assert got.status is SessionStatus.RECOMMENDING


def test_get_of_unknown_user_returns_none(migrated_db):
    assert get_server_session(migrated_db, "nobody", now=T0) is None


def test_save_returns_the_session_as_stored(migrated_db):
    stored = save_server_session(migrated_db, "u1", _session(), now=T0)

    assert (stored.created_at, stored.updated_at, stored.expires_at) == (
        T0,
        T0,
        T0 + SESSION_TTL_MS,
    )


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=20,
)
_user_numbers = itertools.count()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    collected_info=st.dictionaries(st.text(), _json_values, max_size=5),
    messages=st.lists(_json_values, max_size=5),
    last_recommendation=_json_values,
    status=st.sampled_from(list(SessionStatus)),
)
def test_any_json_value_survives_save_then_get(
    migrated_db, collected_info, messages, last_recommendation, status
):
    user_id = f"prop-{next(_user_numbers)}"
    session = ServerSession(
        status=status,
        collected_info=collected_info,
        last_recommendation=last_recommendation,
        messages=messages,
    )

    save_server_session(migrated_db, user_id, session, now=T0)
    got = get_server_session(migrated_db, user_id, now=T0)

    assert got is not None
    assert got.status == status
    assert got.collected_info == collected_info
    assert got.messages == messages
    assert got.last_recommendation == last_recommendation


def test_korean_text_is_stored_as_text_not_unicode_escapes(migrated_db, db_path):
    save_server_session(
        migrated_db,
        "u1",
        _session(
            collected_info={"요청": "서버 추천"},
            messages=[{"role": "user", "content": "서버 추천"}],
            last_recommendation="서버 추천",
        ),
        now=T0,
    )

    raw = _raw(db_path, "u1", "collected_info, messages, last_recommendation")

    assert raw == {
        "collected_info": '{"요청":"서버 추천"}',
        "messages": '[{"role":"user","content":"서버 추천"}]',
        "last_recommendation": '"서버 추천"',
    }
    assert not any("\\u" in value for value in raw.values())


# -- expiry and times ----------------------------------------------------------------


def test_session_is_visible_until_just_before_it_expires(migrated_db):
    save_server_session(migrated_db, "u1", _session(), now=T0)

    assert get_server_session(migrated_db, "u1", now=T0 + SESSION_TTL_MS - 1) is not None


@pytest.mark.parametrize("after_expiry_ms", [0, 1, SESSION_TTL_MS])
def test_expired_session_is_invisible_to_get(migrated_db, after_expiry_ms):
    save_server_session(migrated_db, "u1", _session(), now=T0)

    assert get_server_session(migrated_db, "u1", now=T0 + SESSION_TTL_MS + after_expiry_ms) is None


def test_get_uses_the_wall_clock_when_now_is_not_given(migrated_db):
    save_server_session(migrated_db, "long-ago", _session(), now=T0)
    save_server_session(migrated_db, "current", _session())

    assert get_server_session(migrated_db, "long-ago") is None
    assert get_server_session(migrated_db, "current") is not None


def test_save_sets_updated_at_to_now_and_expires_at_one_ttl_later(migrated_db, db_path):
    save_server_session(migrated_db, "u1", _session(), now=T0)
    save_server_session(migrated_db, "u1", _session(status=SessionStatus.SELECTING), now=T0 + 5_000)

    raw = _raw(db_path, "u1", "status, created_at, updated_at, expires_at")

    assert raw == {
        "status": "selecting",
        "created_at": T0,
        "updated_at": T0 + 5_000,
        "expires_at": T0 + 5_000 + SESSION_TTL_MS,
    }


def test_created_at_is_preserved_across_saves_of_a_live_session(migrated_db):
    first = save_server_session(migrated_db, "u1", _session(), now=T0)
    save_server_session(migrated_db, "u1", _session(status=SessionStatus.SELECTING), now=T0 + 60_000)
    # the agent's usual flow: get, change, save the object it got
    got = get_server_session(migrated_db, "u1", now=T0 + 120_000)
    got.status = SessionStatus.ORDERING
    saved = save_server_session(migrated_db, "u1", got, now=T0 + 120_000)

    final = get_server_session(migrated_db, "u1", now=T0 + 120_000)
    assert first.created_at == saved.created_at == final.created_at == T0
    assert final.updated_at == T0 + 120_000
    assert final.status is SessionStatus.ORDERING


def test_created_at_is_kept_even_if_the_saved_object_carries_another(migrated_db):
    save_server_session(migrated_db, "u1", _session(), now=T0)

    saved = save_server_session(migrated_db, "u1", _session(created_at=T0 + 999), now=T0 + 1_000)

    assert saved.created_at == T0
    assert get_server_session(migrated_db, "u1", now=T0 + 1_000).created_at == T0


def test_saving_a_new_session_over_an_expired_row_resets_created_at(migrated_db):
    save_server_session(migrated_db, "u1", _session(), now=T0)
    later = T0 + SESSION_TTL_MS + 10_000

    saved = save_server_session(migrated_db, "u1", _session(), now=later)

    assert saved.created_at == later
    got = get_server_session(migrated_db, "u1", now=later)
    assert (got.created_at, got.updated_at, got.expires_at) == (later, later, later + SESSION_TTL_MS)


def test_saving_a_stale_session_object_over_an_expired_row_resets_created_at(migrated_db):
    # The agent held the object past its hour (get returned it before it expired).
    stale = save_server_session(migrated_db, "u1", _session(), now=T0)
    later = T0 + SESSION_TTL_MS + 10_000

    saved = save_server_session(migrated_db, "u1", stale, now=later)

    assert saved.created_at == later
    assert get_server_session(migrated_db, "u1", now=later).created_at == later


def test_session_is_expired_reports_expiry_at_the_boundary():
    session = ServerSession(expires_at=T0)
    assert session.is_expired(now=T0)
    assert not session.is_expired(now=T0 - 1)


# -- delete and cleanup ----------------------------------------------------------


def test_delete_returns_true_when_a_row_was_deleted(migrated_db):
    save_server_session(migrated_db, "u1", _session(), now=T0)
    save_server_session(migrated_db, "u2", _session(), now=T0)

    assert delete_server_session(migrated_db, "u1") is True
    assert get_server_session(migrated_db, "u1", now=T0) is None
    assert get_server_session(migrated_db, "u2", now=T0) is not None


def test_delete_returns_false_when_there_is_no_row(migrated_db):
    assert delete_server_session(migrated_db, "nobody") is False


def test_delete_removes_an_expired_row_too(migrated_db, db_path):
    save_server_session(migrated_db, "u1", _session(), now=T0)

    assert delete_server_session(migrated_db, "u1") is True
    assert _count_rows(db_path) == 0


def test_cleanup_deletes_only_expired_rows_in_batches_and_returns_the_count(migrated_db, db_path):
    for i in range(10):
        save_server_session(migrated_db, f"old-{i}", _session(), now=T0 + i)
    cutoff = T0 + SESSION_TTL_MS + 100
    for i in range(4):
        save_server_session(migrated_db, f"live-{i}", _session(), now=cutoff)
    batches: list[int] = []

    deleted = cleanup_expired_sessions(migrated_db, now=cutoff, batch_size=3, on_batch=batches.append)

    assert deleted == 10
    assert batches == [3, 3, 3, 1]
    conn = raw_connect(db_path)
    left = [row[0] for row in conn.execute("SELECT user_id FROM server_sessions ORDER BY user_id")]
    conn.close()
    assert left == ["live-0", "live-1", "live-2", "live-3"]


def test_cleanup_deletes_a_row_expiring_exactly_now_as_get_hides_it(migrated_db):
    save_server_session(migrated_db, "u1", _session(), now=T0)
    at_expiry = T0 + SESSION_TTL_MS

    assert get_server_session(migrated_db, "u1", now=at_expiry) is None
    assert cleanup_expired_sessions(migrated_db, now=at_expiry) == 1


def test_cleanup_with_nothing_expired_returns_zero(migrated_db):
    save_server_session(migrated_db, "u1", _session(), now=T0)

    assert cleanup_expired_sessions(migrated_db, now=T0) == 0
    assert get_server_session(migrated_db, "u1", now=T0) is not None


def test_cleanup_rejects_a_batch_size_below_one(migrated_db):
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        cleanup_expired_sessions(migrated_db, now=T0, batch_size=0)


# -- graceful JSON -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "empty"),
    [("collected_info", {}), ("messages", []), ("last_recommendation", None)],
)
def test_malformed_json_column_reads_as_empty_and_logs_a_warning(
    migrated_db, db_path, caplog, column, empty
):
    save_server_session(migrated_db, "u1", _session(), now=T0)
    conn = raw_connect(db_path)
    conn.execute(f"UPDATE server_sessions SET {column} = ? WHERE user_id = 'u1'", ('{"broken": ',))
    conn.close()

    with caplog.at_level(logging.WARNING, logger="sessionctl.repository"):
        got = get_server_session(migrated_db, "u1", now=T0)

    assert got is not None
    assert getattr(got, column) == empty
    assert got.status is SessionStatus.RECOMMENDING
    intact = {"collected_info", "messages", "last_recommendation"} - {column}
    assert all(getattr(got, other) == getattr(_session(), other) for other in intact)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "sessionctl.repository"
    assert warnings[0].getMessage() == (
        f"server_sessions row 'u1': column {column} holds malformed JSON; read as empty"
    )


def test_reading_well_formed_rows_logs_nothing(migrated_db, caplog):
    save_server_session(migrated_db, "u1", _session(), now=T0)

    with caplog.at_level(logging.DEBUG, logger="sessionctl"):
        get_server_session(migrated_db, "u1", now=T0)

    assert caplog.records == []


# -- invalid input -----------------------------------------------------------------


def test_invalid_status_raises_invalid_session_error_naming_the_status(migrated_db, db_path):
    with pytest.raises(InvalidSessionError) as caught:
        save_server_session(migrated_db, "u1", _session(status="bogus"), now=T0)

    assert str(caught.value) == (
        "invalid session status 'bogus' for user 'u1': "
        "must be one of gathering, recommending, selecting, ordering, completed"
    )
    assert isinstance(caught.value, ValueError)
    assert _count_rows(db_path) == 0


def test_invalid_status_leaves_the_existing_session_unchanged(migrated_db):
    save_server_session(migrated_db, "u1", _session(), now=T0)

    with pytest.raises(InvalidSessionError, match="'Completed'"):
        save_server_session(migrated_db, "u1", _session(status="Completed"), now=T0 + 1)

    got = get_server_session(migrated_db, "u1", now=T0 + 1)
    assert got.status is SessionStatus.RECOMMENDING
    assert got.updated_at == T0


def test_status_may_be_given_as_its_plain_string(migrated_db):
    save_server_session(migrated_db, "u1", _session(status="completed"), now=T0)

    assert get_server_session(migrated_db, "u1", now=T0).status is SessionStatus.COMPLETED


def test_empty_user_id_is_rejected(migrated_db):
    with pytest.raises(InvalidSessionError, match="user_id must be a non-empty string"):
        save_server_session(migrated_db, "", _session(), now=T0)


ODD_USER_IDS = [
    "o'brien",
    'say "hi"',
    "100%",
    "%",
    "_",
    "a_b",
    "사용자-1",
    "emoji-🙂",
    "x'); DROP TABLE server_sessions; --",
    "1 OR 1=1",
    "back\\slash",
]


def test_odd_user_ids_round_trip_and_do_not_touch_other_rows(migrated_db, db_path):
    save_server_session(migrated_db, "bystander", _session(collected_info={"who": "bystander"}), now=T0)
    for user_id in ODD_USER_IDS:
        save_server_session(migrated_db, user_id, _session(collected_info={"who": user_id}), now=T0)

    for user_id in ODD_USER_IDS + ["bystander"]:
        got = get_server_session(migrated_db, user_id, now=T0)
        assert got is not None, user_id
        assert got.collected_info == {"who": user_id}
    assert _count_rows(db_path) == len(ODD_USER_IDS) + 1
    assert get_server_session(migrated_db, "a%", now=T0) is None  # never LIKE
    assert get_server_session(migrated_db, "abb", now=T0) is None

    assert delete_server_session(migrated_db, "%") is True
    assert delete_server_session(migrated_db, "_") is True
    assert delete_server_session(migrated_db, "x'); DROP TABLE server_sessions; --") is True
    assert _count_rows(db_path) == len(ODD_USER_IDS) + 1 - 3
    assert get_server_session(migrated_db, "100%", now=T0) is not None
    assert get_server_session(migrated_db, "a_b", now=T0) is not None
    assert get_server_session(migrated_db, "bystander", now=T0) is not None


# -- one query ---------------------------------------------------------------------


class _CountingDb:
    """Wraps a target and records every call that reaches the database."""

    def __init__(self, db):
        self._db = db
        self.calls: list[tuple[str, str]] = []
        self.description = db.description

    def query(self, sql, params=()):
        self.calls.append(("query", sql))
        return self._db.query(sql, params)

    def iter_query(self, sql, params=()):
        self.calls.append(("iter_query", sql))
        return self._db.iter_query(sql, params)

    def execute(self, sql, params=()):
        self.calls.append(("execute", sql))
        return self._db.execute(sql, params)

    def batch(self, statements):
        statements = list(statements)
        self.calls.append(("batch", "; ".join(s.sql for s in statements)))
        return self._db.batch(statements)


def test_get_issues_exactly_one_query_filtering_on_user_and_expiry(migrated_db):
    save_server_session(migrated_db, "u1", _session(), now=T0)
    counting = _CountingDb(migrated_db)

    assert get_server_session(counting, "u1", now=T0) is not None

    assert len(counting.calls) == 1
    kind, sql = counting.calls[0]
    assert kind == "query"
    assert "WHERE user_id = ? AND expires_at > ?" in sql


def test_get_of_an_expired_session_also_issues_one_query(migrated_db):
    save_server_session(migrated_db, "u1", _session(), now=T0)
    counting = _CountingDb(migrated_db)

    assert get_server_session(counting, "u1", now=T0 + SESSION_TTL_MS) is None
    assert len(counting.calls) == 1


def test_save_is_one_write_statement(migrated_db):
    counting = _CountingDb(migrated_db)

    save_server_session(counting, "u1", _session(), now=T0)
    save_server_session(counting, "u1", _session(), now=T0 + 1)

    assert [kind for kind, _ in counting.calls] == ["execute", "execute"]
