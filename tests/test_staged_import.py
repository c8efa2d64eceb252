"""A local import beside a live bot: staged in short transactions, merged all at once.

Reading and validating a large file takes seconds; the bot saves a session every few
milliseconds. The import must not hold the write lock while it reads (the bot would wait,
and give up after its busy timeout), and must still write all of the file or none of it.
"""

from __future__ import annotations

import time

import pytest

from sessionctl.errors import ImportValidationError
from sessionctl.names import IMPORT_STAGING_PREFIX
from sessionctl.repository import ServerSession, get_server_session, import_session_rows, save_server_session
from sessionctl.targets.sqlite_file import open_sqlite_file

FAR = 4_102_444_800_000  # 2100


def row(i: int) -> dict:
    return {"user_id": f"imp:{i:05d}", "status": "gathering", "collected_info": "{}", "last_recommendation": None,
            "messages": "[]", "created_at": 1, "updated_at": 2, "expires_at": FAR}


def staging_tables(db) -> list[str]:
    return [r["name"] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'table'")
            if r["name"].startswith(IMPORT_STAGING_PREFIX)]


def test_a_bot_saving_beside_a_large_local_import_is_not_kept_waiting(migrated_db, db_path):
    bot = open_sqlite_file(db_path, timeout=0.2)  # gives up on a lock held longer than this
    waited: list[float] = []

    def rows():
        for i in range(3_000):
            if i == 1_700:  # mid-import, as the bot would: one save, its own short transaction
                started = time.monotonic()
                save_server_session(bot, "tg:live", ServerSession(messages=[{"role": "user", "content": "서버"}]))
                waited.append(time.monotonic() - started)
            yield row(i)

    try:
        assert import_session_rows(migrated_db, rows()) == (3_000, 0)
        assert waited and waited[0] < 0.2
        assert get_server_session(bot, "tg:live") is not None
    finally:
        bot.close()
    assert migrated_db.query("SELECT count(*) AS n FROM server_sessions")[0]["n"] == 3_001
    assert staging_tables(migrated_db) == []


def test_a_local_import_failing_after_chunks_were_staged_writes_nothing(migrated_db):
    save_server_session(migrated_db, "tg:kept", ServerSession())
    before = migrated_db.query("SELECT * FROM server_sessions")

    def rows():
        for i in range(1_300):
            yield row(i)
        raise ImportValidationError("in.jsonl:1301: status 'bogus' is not one of ...; nothing was imported")

    with pytest.raises(ImportValidationError, match="in.jsonl:1301"):
        import_session_rows(migrated_db, rows())
    assert migrated_db.query("SELECT * FROM server_sessions") == before
    assert staging_tables(migrated_db) == []


def test_a_local_import_clears_a_staging_table_a_killed_run_left(migrated_db):
    migrated_db.execute(f"CREATE TABLE {IMPORT_STAGING_PREFIX}0badc0ffee00 (user_id TEXT PRIMARY KEY)")
    assert import_session_rows(migrated_db, [row(1)]) == (1, 0)
    assert staging_tables(migrated_db) == []


def test_the_same_user_twice_in_the_rows_given_is_refused(migrated_db):
    with pytest.raises(ImportValidationError, match="row 2: user_id 'imp:00001' appears twice"):
        import_session_rows(migrated_db, [row(1), row(1)])
    assert migrated_db.query("SELECT count(*) AS n FROM server_sessions")[0]["n"] == 0
