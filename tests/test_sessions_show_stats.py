"""sessions show (every field, EXPIRED, malformed JSON, json shape) and sessions stats."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import raw_sqlite
from pathlib import Path

import pytest

from conftest import assert_one_error_line
from sessionctl.repository import COLUMNS, get_server_session, now_ms
from rows import insert_rows

MINUTE = 60_000
LABEL_WIDTH = len("last_recommendation") + 2  # the grid's first column and its padding


def insert(db_path: Path, *rows: dict) -> None:
    insert_rows(db_path, rows)


def utc(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def grid(*fields: tuple[str, str]) -> list[str]:
    """The lines `sessions show` prints for these (label, value) pairs, trailing spaces stripped."""
    lines = []
    for label, value in fields:
        first, *rest = value.split("\n")
        lines.append(f"{label.ljust(LABEL_WIDTH)}{first}".rstrip())
        lines.extend(f"{' ' * LABEL_WIDTH}{line}".rstrip() for line in rest)
    return lines


def stripped(stdout: str) -> list[str]:
    return [line.rstrip() for line in stdout.splitlines()]


# -- show ------------------------------------------------------------------------------


@pytest.fixture
def live_session(migrated_db, db_path):
    now = now_ms()
    row = {
        "user_id": "12345",
        "status": "selecting",
        "collected_info": '{"budget":50000,"needs":["ssd"]}',
        "last_recommendation": '{"plan":"vps-2"}',
        "messages": '[{"role":"user","content":"서버 추천"},{"role":"assistant","content":"vps-2"}]',
        "created_at": now - 20 * MINUTE,
        "updated_at": now - 5 * MINUTE,
        "expires_at": now + 55 * MINUTE,
    }
    insert(db_path, row)
    return row


def test_show_prints_every_field_with_pretty_json_and_absolute_and_relative_times(cli, db_path, live_session):
    row = live_session
    result = cli("--db", db_path, "sessions", "show", "12345")
    assert result.exit_code == 0, result.output
    assert stripped(result.stdout) == grid(
        ("user_id", "12345"),
        ("status", "selecting"),
        ("created", f"{utc(row['created_at'])}  (20m ago)"),
        ("updated", f"{utc(row['updated_at'])}  (5m ago)"),
        ("expires", f"{utc(row['expires_at'])}  (in 54m)"),
        ("collected_info", '{\n  "budget": 50000,\n  "needs": [\n    "ssd"\n  ]\n}'),
        ("last_recommendation", '{\n  "plan": "vps-2"\n}'),
        (
            "messages",
            '[\n  {\n    "role": "user",\n    "content": "서버 추천"\n  },\n'
            '  {\n    "role": "assistant",\n    "content": "vps-2"\n  }\n]',
        ),
        ("message count", "2"),
        ("last message", '{"role": "assistant", "content": "vps-2"}'),
    )
    assert "EXPIRED" not in result.stdout


def test_show_marks_an_expired_session_expired_and_still_shows_it(cli, db_path, migrated_db):
    now = now_ms()
    insert(db_path, {
        "user_id": "old", "status": "completed", "collected_info": None, "last_recommendation": None,
        "messages": "[]", "created_at": now - 3 * 60 * MINUTE, "updated_at": now - 70 * MINUTE,
        "expires_at": now - 10 * MINUTE,
    })
    assert get_server_session(migrated_db, "old") is None  # the agent's get hides it
    result = cli("--db", db_path, "sessions", "show", "old")
    assert result.exit_code == 0, result.output
    assert stripped(result.stdout) == grid(
        ("user_id", "old"),
        ("status", "completed  EXPIRED"),
        ("created", f"{utc(now - 3 * 60 * MINUTE)}  (3h ago)"),
        ("updated", f"{utc(now - 70 * MINUTE)}  (1h ago)"),
        ("expires", f"{utc(now - 10 * MINUTE)}  (expired 10m ago)"),
        ("collected_info", "null"),
        ("last_recommendation", "null"),
        ("messages", "[]"),
        ("message count", "0"),
    )


def test_show_flags_a_malformed_json_column_and_shows_it_raw(cli, db_path, migrated_db):
    now = now_ms()
    insert(db_path, {
        "user_id": "broken", "status": "gathering", "collected_info": '{"budget": 5',
        "last_recommendation": None, "messages": '{"role": "user"',
        "created_at": now - MINUTE * 2, "updated_at": now - MINUTE * 2, "expires_at": now + 58 * MINUTE,
    })
    result = cli("--db", db_path, "sessions", "show", "broken")
    assert result.exit_code == 0, result.output
    assert stripped(result.stdout)[5:] == grid(
        ("collected_info", '{"budget": 5\nMALFORMED JSON (shown raw)'),
        ("last_recommendation", "null"),
        ("messages", '{"role": "user"\nMALFORMED JSON (shown raw)'),
    )
    assert "Traceback" not in result.output


def test_show_prints_malformed_json_with_square_brackets_verbatim(cli, db_path, migrated_db):
    now = now_ms()
    insert(db_path, {
        "user_id": "brackets", "status": "gathering", "collected_info": "[oops]",
        "last_recommendation": None, "messages": '[{"content": [draft]',
        "created_at": now, "updated_at": now, "expires_at": now + 59 * MINUTE,
    })
    result = cli("--db", db_path, "sessions", "show", "brackets")
    assert result.exit_code == 0, result.output
    assert stripped(result.stdout)[5:] == grid(
        ("collected_info", "[oops]\nMALFORMED JSON (shown raw)"),
        ("last_recommendation", "null"),
        ("messages", '[{"content": [draft]\nMALFORMED JSON (shown raw)'),
    )


def test_show_prints_message_text_with_square_brackets_verbatim(cli, db_path, migrated_db):
    now = now_ms()
    insert(db_path, {
        "user_id": "tagged", "status": "gathering", "collected_info": "{}", "last_recommendation": None,
        "messages": '[{"role":"user","content":"[urgent] need a server"}]',
        "created_at": now, "updated_at": now, "expires_at": now + 59 * MINUTE,
    })
    result = cli("--db", db_path, "sessions", "show", "tagged")
    assert result.exit_code == 0, result.output
    assert stripped(result.stdout)[-1] == grid(
        ("last message", '{"role": "user", "content": "[urgent] need a server"}')
    )[0]


def test_show_an_unknown_user_is_one_line_and_exit_1(cli, db_path, live_session):
    result = cli("--db", db_path, "sessions", "show", "nobody")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert_one_error_line(result.stderr, "no session for user_id 'nobody'")


def test_show_json_is_shaped_like_a_list_json_row(cli, db_path, live_session):
    shown = cli("--db", db_path, "sessions", "show", "12345", "--format", "json")
    listed = cli("--db", db_path, "sessions", "list", "--format", "json")
    assert shown.exit_code == 0, shown.output
    obj = json.loads(shown.stdout)
    assert obj == json.loads(listed.stdout)[0]
    assert list(obj) == list(COLUMNS)
    assert obj["collected_info"] == {"budget": 50000, "needs": ["ssd"]}
    assert obj["expires_at"] == live_session["expires_at"]


def test_show_json_flag_is_format_json(cli, db_path, live_session):
    as_flag = cli("--db", db_path, "sessions", "show", "12345", "--json")
    as_format = cli("--db", db_path, "sessions", "show", "12345", "--format", "json")
    assert as_flag.exit_code == 0, as_flag.output
    assert as_flag.stdout == as_format.stdout


def test_show_json_keeps_malformed_columns_raw_for_an_expired_row(cli, db_path, migrated_db):
    insert(db_path, {
        "user_id": "x", "status": "ordering", "collected_info": "{bad", "last_recommendation": '"rec"',
        "messages": None, "created_at": 1, "updated_at": 2, "expires_at": 3,
    })
    result = cli("--db", db_path, "sessions", "show", "x", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "user_id": "x", "status": "ordering", "collected_info": "{bad", "last_recommendation": "rec",
        "messages": None, "created_at": 1, "updated_at": 2, "expires_at": 3,
    }


# -- stats -----------------------------------------------------------------------------


@pytest.fixture
def populated(migrated_db, db_path):
    now = now_ms()

    def row(user_id, status, expires_in, created_ago=30 * MINUTE, updated_ago=10 * MINUTE):
        return {
            "user_id": user_id, "status": status, "collected_info": "{}", "last_recommendation": None,
            "messages": "[]", "created_at": now - created_ago, "updated_at": now - updated_ago,
            "expires_at": now + expires_in,
        }

    rows = [
        row("g1", "gathering", 3 * MINUTE),                      # expires within 5 and 60 minutes
        row("g2", "gathering", 30 * MINUTE, updated_ago=MINUTE),  # within 60 minutes; newest update
        row("g3", "gathering", -5 * MINUTE),                      # expired
        row("o1", "ordering", 90 * MINUTE),                       # live, beyond 60 minutes
        row("c1", "completed", -3 * 60 * MINUTE, created_ago=5 * 60 * MINUTE),  # expired; oldest
        row("c2", "completed", 59 * MINUTE),                      # within 60 minutes
    ]
    insert(db_path, *rows)
    return now, {r["user_id"]: r for r in rows}


def test_stats_json_counts_by_status_state_and_expiry_window(cli, db_path, populated):
    now, rows = populated
    result = cli("--db", db_path, "sessions", "stats", "--format", "json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert list(stats) == [
        "total", "active", "expired", "by_status", "oldest_created_at", "newest_updated_at",
        "expiring_within_5m", "expiring_within_60m", "size_bytes",
    ]
    size = stats.pop("size_bytes")
    assert stats == {
        "total": 6,
        "active": 4,
        "expired": 2,
        "by_status": {"gathering": 3, "recommending": 0, "selecting": 0, "ordering": 1, "completed": 2},
        "oldest_created_at": rows["c1"]["created_at"],
        "newest_updated_at": rows["g2"]["updated_at"],
        "expiring_within_5m": 1,
        "expiring_within_60m": 3,
    }
    assert isinstance(size, int) and size >= db_path.stat().st_size > 0


def test_stats_json_flag_is_format_json(cli, db_path, populated):
    as_flag = cli("--db", db_path, "sessions", "stats", "--json")
    assert as_flag.exit_code == 0, as_flag.output
    assert json.loads(as_flag.stdout)["total"] == 6


def test_stats_table_draws_a_bar_per_status_and_the_facts(cli, db_path, populated):
    now, rows = populated
    result = cli("--db", db_path, "sessions", "stats")
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert lines[:5] == [
        "gathering " + "█" * 30 + " 3",
        "recommending 0",
        "selecting 0",
        "ordering " + "█" * 10 + " 1",
        "completed " + "█" * 20 + " 2",
    ]
    assert lines[5:9] == [
        "rows 6 (4 active, 2 expired)",
        "expiring 1 within 5 min, 3 within 60 min",
        f"oldest created {utc(rows['c1']['created_at'])} (5h ago)",
        f"newest update {utc(rows['g2']['updated_at'])} (1m ago)",
    ]
    assert lines[9].startswith("database size ") and lines[9].endswith(" KiB")
    assert len(lines) == 10


def test_stats_of_an_empty_table_is_all_zeros(cli, db_path, migrated_db):
    result = cli("--db", db_path, "sessions", "stats", "--format", "json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    stats.pop("size_bytes")
    assert stats == {
        "total": 0, "active": 0, "expired": 0,
        "by_status": {s: 0 for s in ("gathering", "recommending", "selecting", "ordering", "completed")},
        "oldest_created_at": None, "newest_updated_at": None,
        "expiring_within_5m": 0, "expiring_within_60m": 0,
    }
    table = cli("--db", db_path, "sessions", "stats")
    assert table.exit_code == 0, table.output
    lines = [" ".join(line.split()) for line in table.stdout.splitlines()]
    assert "rows 0 (0 active, 0 expired)" in lines
    assert "oldest created -" in lines and "newest update -" in lines


def test_stats_without_the_sessions_table_exits_1_and_says_to_migrate(cli, db_path):
    raw_sqlite.connect(db_path).execute("CREATE TABLE other (x)").connection.close()
    result = cli("--db", db_path, "sessions", "stats")
    assert result.exit_code == 1
    assert_one_error_line(
        result.stderr,
        "table server_sessions does not exist (migration 003 is not applied: run `sessionctl migrate`)",
    )
