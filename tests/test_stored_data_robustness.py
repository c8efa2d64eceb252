"""Whatever is stored -- wrong-shaped JSON, bytes that are not UTF-8, lone surrogates -- reads never
crash, backups keep it byte for byte, and bad input is refused with one line."""

from __future__ import annotations

import json
import logging
import sqlite3
import raw_sqlite

from conftest import assert_one_error_line
from rows import insert_rows
from sessionctl.repository import (
    SESSION_TTL_MS,
    ServerSession,
    delete_server_session,
    get_server_session,
    save_server_session,
)

T0 = 1_769_558_400_000
LATER = T0 + 10 * 60_000
INVALID_UTF8 = bytes.fromhex("7b2261223a22ff227d")  # {"a":"<0xff>"}


def _row(user_id: str, **columns) -> dict:
    values = {"user_id": user_id, "status": "gathering", "collected_info": "{}", "last_recommendation": None,
              "messages": "[]", "created_at": T0, "updated_at": T0, "expires_at": T0 + SESSION_TTL_MS}
    values.update(columns)
    return values


def _store_invalid_utf8(db_path, user_id: str) -> None:
    conn = raw_sqlite.connect(db_path)
    with conn:
        conn.execute(
            "INSERT INTO server_sessions VALUES (?, 'gathering', CAST(? AS TEXT), NULL, '[]', ?, ?, ?)",
            (user_id, INVALID_UTF8, T0, T0, T0 + SESSION_TTL_MS),
        )
    conn.close()


def _stored_bytes(db_path, user_id: str) -> bytes:
    conn = raw_sqlite.connect(db_path)
    try:
        return conn.execute(
            "SELECT CAST(collected_info AS BLOB) FROM server_sessions WHERE user_id = ?", (user_id,)
        ).fetchone()[0]
    finally:
        conn.close()


def test_json_of_the_wrong_shape_reads_as_empty_with_a_warning(migrated_db, db_path, caplog):
    insert_rows(db_path, [_row("shape", collected_info="null", messages='{"a":1}')])
    with caplog.at_level(logging.WARNING, logger="sessionctl.repository"):
        session = get_server_session(migrated_db, "shape", now=LATER)
    assert session.collected_info == {}
    assert session.messages == []
    warnings = [r.getMessage() for r in caplog.records]
    assert "server_sessions row 'shape': column collected_info holds JSON NoneType, expected dict; read as empty" in warnings
    assert "server_sessions row 'shape': column messages holds JSON dict, expected list; read as empty" in warnings
    # the agent can carry on as it would with a fresh session
    session.messages.append({"role": "user", "content": "서버 추천"})
    session.collected_info["budget"] = 1


def test_text_that_is_not_utf8_reads_as_empty_with_a_warning(migrated_db, db_path, caplog):
    _store_invalid_utf8(db_path, "bytes")
    with caplog.at_level(logging.WARNING, logger="sessionctl.repository"):
        session = get_server_session(migrated_db, "bytes", now=LATER)
    assert session is not None and session.collected_info == {}
    assert [r.getMessage() for r in caplog.records] == [
        "server_sessions row 'bytes': column collected_info holds text that is not valid UTF-8; read as empty"
    ]


def test_one_row_of_invalid_utf8_does_not_stop_list_show_or_stats(cli, migrated_db, db_path):
    _store_invalid_utf8(db_path, "bytes")
    insert_rows(db_path, [_row("fine", expires_at=T0)])
    listed = cli("--db", db_path, "sessions", "list", "--all", "--format", "ndjson")
    assert listed.exit_code == 0, listed.output
    assert [json.loads(line)["user_id"] for line in listed.stdout.splitlines()] == ["fine", "bytes"]
    shown = cli("--db", db_path, "sessions", "show", "bytes")
    assert shown.exit_code == 0, shown.output
    assert "MALFORMED JSON" in shown.stdout
    assert cli("--db", db_path, "sessions", "stats", "--json").exit_code == 0


def test_invalid_utf8_survives_export_and_import_byte_for_byte(run_sessionctl, migrated_db, db_path, tmp_path):
    _store_invalid_utf8(db_path, "bytes")
    exported = run_sessionctl("--db", db_path, "sessions", "export", "-o", tmp_path / "out.jsonl")
    assert exported.returncode == 0, exported.stderr
    line = (tmp_path / "out.jsonl").read_text(encoding="utf-8")
    assert line.isascii() and "\\udcff" in line
    conn = raw_sqlite.connect(db_path)
    with conn:
        conn.execute("DELETE FROM server_sessions")
    conn.close()
    imported = run_sessionctl("--db", db_path, "sessions", "import", tmp_path / "out.jsonl")
    assert imported.returncode == 0, imported.stderr
    assert _stored_bytes(db_path, "bytes") == INVALID_UTF8


def test_rollback_backs_up_invalid_utf8_and_restores_it(run_sessionctl, migrated_db, db_path, tmp_path):
    _store_invalid_utf8(db_path, "bytes")
    backup = tmp_path / "b.jsonl"
    assert run_sessionctl("--db", db_path, "rollback", "--yes", "--backup", backup).returncode == 0
    assert run_sessionctl("--db", db_path, "migrate").returncode == 0
    assert run_sessionctl("--db", db_path, "sessions", "import", backup).returncode == 0
    assert _stored_bytes(db_path, "bytes") == INVALID_UTF8


def test_a_lone_surrogate_in_an_import_line_is_refused_naming_the_line(run_sessionctl, migrated_db, db_path, tmp_path):
    good = json.dumps(_row("good"))
    bad = json.dumps(_row("tg:\ud800"))  # a high surrogate alone: no bytes stand behind it
    (tmp_path / "in.jsonl").write_text(good + "\n" + bad + "\n", encoding="utf-8")
    result = run_sessionctl("--db", db_path, "sessions", "import", tmp_path / "in.jsonl")
    assert result.returncode == 1
    assert_one_error_line(
        result.stderr,
        f"{tmp_path / 'in.jsonl'}:2: user_id holds a lone surrogate, which is not storable text; nothing was imported",
    )
    conn = raw_sqlite.connect(db_path)
    assert conn.execute("SELECT count(*) FROM server_sessions").fetchone() == (0,)
    conn.close()


def test_a_lone_surrogate_in_a_message_is_saved_escaped_like_json_stringify(migrated_db, db_path):
    save_server_session(migrated_db, "u", ServerSession(messages=[{"content": "half \ud83d"}]), now=T0)
    conn = raw_sqlite.connect(db_path)
    stored = conn.execute("SELECT messages FROM server_sessions WHERE user_id = 'u'").fetchone()[0]
    conn.close()
    assert stored == '[{"content":"half \\ud83d"}]'
    assert get_server_session(migrated_db, "u", now=T0).messages == [{"content": "half \ud83d"}]


def test_a_new_row_after_delete_starts_a_new_created_at(migrated_db):
    first = save_server_session(migrated_db, "u", ServerSession(), now=T0)
    assert delete_server_session(migrated_db, "u")
    again = save_server_session(migrated_db, "u", first, now=LATER)  # the old object, old created_at
    assert again.created_at == LATER
    assert get_server_session(migrated_db, "u", now=LATER).created_at == LATER
