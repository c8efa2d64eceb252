"""sessions list: state filters, status, user patterns, limits, keyset paging, sorts, formats, query plan."""

from __future__ import annotations

import csv
import io
import json
import shlex
import sqlite3
import raw_sqlite
from pathlib import Path

import pytest

from conftest import assert_one_error_line, not_one_of
from sessionctl.migrations import apply_migrations, bundled_migrations_dir, discover_migrations
from sessionctl.repository import COLUMNS, SESSION_TTL_MS, SORT_COLUMNS, SessionQuery, build_list_query, now_ms
from sessionctl.targets.sqlite_file import open_sqlite_file
from rows import insert_rows as insert

MINUTE = 60_000
CURSOR_PREFIX = "sessionctl: more rows may follow: --cursor "


def session_row(
    user_id: str,
    now: int,
    *,
    status: str = "gathering",
    expires_in: int = 30 * MINUTE,
    updated_ago: int = 5 * MINUTE,
    created_ago: int = 20 * MINUTE,
    collected_info: str | None = '{"budget":50000}',
    last_recommendation: str | None = None,
    messages: str | None = '[{"role":"user","content":"서버 추천"}]',
) -> dict:
    return {
        "user_id": user_id,
        "status": status,
        "collected_info": collected_info,
        "last_recommendation": last_recommendation,
        "messages": messages,
        "created_at": now - created_ago,
        "updated_at": now - updated_ago,
        "expires_at": now + expires_in,
    }


def ndjson_ids(stdout: str) -> list[str]:
    return [json.loads(line)["user_id"] for line in stdout.splitlines()]


def cursor_of(stderr: str) -> str | None:
    lines = [line for line in stderr.splitlines() if line.startswith(CURSOR_PREFIX)]
    if not lines:
        return None
    assert len(lines) == 1, stderr
    (token,) = shlex.split(lines[0][len(CURSOR_PREFIX):])
    return token


def table_cells(stdout: str) -> list[list[str]]:
    """The body rows of a rich table, as stripped cells."""
    return [[cell.strip() for cell in line.split("│")] for line in stdout.splitlines() if "│" in line]


@pytest.fixture
def mixed(migrated_db, db_path):
    """Three live and two expired sessions, at known offsets from now."""
    now = now_ms()
    rows = [
        session_row("live-late", now, status="ordering", expires_in=50 * MINUTE, updated_ago=10 * MINUTE),
        session_row("live-soon", now, status="gathering", expires_in=2 * MINUTE + 30_000, updated_ago=3 * MINUTE),
        session_row("live-mid", now, status="selecting", expires_in=20 * MINUTE, updated_ago=40 * MINUTE,
                    messages="[1,2,3]"),
        session_row("gone-old", now, status="completed", expires_in=-2 * 60 * MINUTE, updated_ago=3 * 60 * MINUTE),
        session_row("gone-new", now, status="gathering", expires_in=-10 * MINUTE, updated_ago=70 * MINUTE),
    ]
    insert(db_path, rows)
    return {row["user_id"]: row for row in rows}


# -- state filters -------------------------------------------------------------------


def test_list_shows_only_live_sessions_soonest_expiry_first_by_default(cli, db_path, mixed):
    result = cli("--db", db_path, "sessions", "list", "--format", "ndjson")
    assert result.exit_code == 0, result.output
    assert ndjson_ids(result.stdout) == ["live-soon", "live-mid", "live-late"]


def test_list_active_flag_is_the_default(cli, db_path, mixed):
    result = cli("--db", db_path, "sessions", "list", "--active", "--format", "ndjson")
    assert result.exit_code == 0, result.output
    assert ndjson_ids(result.stdout) == ["live-soon", "live-mid", "live-late"]


def test_list_expired_shows_only_expired_sessions(cli, db_path, mixed):
    result = cli("--db", db_path, "sessions", "list", "--expired", "--format", "ndjson")
    assert result.exit_code == 0, result.output
    assert ndjson_ids(result.stdout) == ["gone-old", "gone-new"]


def test_list_all_shows_live_and_expired_sessions(cli, db_path, mixed):
    result = cli("--db", db_path, "sessions", "list", "--all", "--format", "ndjson")
    assert result.exit_code == 0, result.output
    assert ndjson_ids(result.stdout) == ["gone-old", "gone-new", "live-soon", "live-mid", "live-late"]


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--active", "--expired"], "--active --expired"),
        (["--active", "--all"], "--active --all"),
        (["--expired", "--all"], "--expired --all"),
        (["--all", "--expired", "--active"], "--active --expired --all"),
    ],
)
def test_list_refuses_conflicting_state_flags_with_exit_2(cli, db_path, mixed, flags, named):
    result = cli("--db", db_path, "sessions", "list", *flags)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert_one_error_line(result.stderr, f"choose one of --active, --expired, --all (got {named})")


# -- status --------------------------------------------------------------------------


def test_list_status_filter_keeps_only_that_status(cli, db_path, mixed):
    result = cli("--db", db_path, "sessions", "list", "--all", "--status", "gathering", "--format", "ndjson")
    assert result.exit_code == 0, result.output
    assert ndjson_ids(result.stdout) == ["gone-new", "live-soon"]


def test_list_status_is_repeatable(cli, db_path, mixed):
    result = cli(
        "--db", db_path, "sessions", "list", "--all",
        "--status", "completed", "-s", "ordering", "--status", "selecting", "--format", "ndjson",
    )
    assert result.exit_code == 0, result.output
    assert ndjson_ids(result.stdout) == ["gone-old", "live-mid", "live-late"]


def test_list_status_combines_with_the_state_filter(cli, db_path, mixed):
    result = cli("--db", db_path, "sessions", "list", "--status", "gathering", "--format", "ndjson")
    assert result.exit_code == 0, result.output
    assert ndjson_ids(result.stdout) == ["live-soon"]


@pytest.mark.parametrize("bad", ["bogus", "GATHERING", "completed "])
def test_list_refuses_an_unknown_status_with_exit_2(cli, db_path, mixed, bad):
    result = cli("--db", db_path, "sessions", "list", "--status", "gathering", "--status", bad)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert_one_error_line(
        result.stderr,
        not_one_of("'--status' / '-s'", bad, ["gathering", "recommending", "selecting", "ordering", "completed"]),
    )


# -- --user: prefix or glob, % and _ literal --------------------------------------------


@pytest.fixture
def wildcard_users(migrated_db, db_path):
    now = now_ms()
    ids = ["a%b", "a_b", "axb", "ab", "b%", "A%b"]
    insert(db_path, [session_row(u, now, expires_in=(10 + i) * MINUTE) for i, u in enumerate(ids)])
    return ids


def list_user(cli, db_path, pattern):
    result = cli("--db", db_path, "sessions", "list", "--user", pattern, "--sort", "user", "--format", "ndjson")
    assert result.exit_code == 0, result.output
    return ndjson_ids(result.stdout)


def test_user_prefix_with_percent_matches_only_a_literal_percent(cli, db_path, wildcard_users):
    assert list_user(cli, db_path, "a%") == ["a%b"]


def test_user_prefix_with_underscore_matches_only_a_literal_underscore(cli, db_path, wildcard_users):
    assert list_user(cli, db_path, "a_") == ["a_b"]


def test_user_prefix_matches_every_id_starting_with_it_case_sensitively(cli, db_path, wildcard_users):
    assert list_user(cli, db_path, "a") == ["a%b", "a_b", "ab", "axb"]


def test_user_prefix_that_is_a_whole_id_matches_it(cli, db_path, wildcard_users):
    assert list_user(cli, db_path, "a%b") == ["a%b"]


def test_user_percent_alone_is_not_a_wildcard(cli, db_path, wildcard_users):
    assert list_user(cli, db_path, "%") == []


def test_user_glob_question_mark_matches_one_character(cli, db_path, wildcard_users):
    assert list_user(cli, db_path, "a?b") == ["a%b", "a_b", "axb"]


def test_user_glob_star_and_class_match_literal_percent(cli, db_path, wildcard_users):
    assert list_user(cli, db_path, "*[%]*") == ["A%b", "a%b", "b%"]


# -- --limit ---------------------------------------------------------------------------


@pytest.fixture
def sixty_live(migrated_db, db_path):
    now = now_ms()
    rows = [session_row(f"user-{i:03d}", now, expires_in=(5 + i) * MINUTE) for i in range(60)]
    insert(db_path, rows)
    return [row["user_id"] for row in rows]


def test_list_limit_defaults_to_50_and_prints_a_cursor_on_stderr(cli, db_path, sixty_live):
    result = cli("--db", db_path, "sessions", "list", "--format", "ndjson")
    assert result.exit_code == 0, result.output
    assert ndjson_ids(result.stdout) == sixty_live[:50]
    assert cursor_of(result.stderr) is not None
    assert "--cursor" not in result.stdout


def test_list_limit_caps_the_page(cli, db_path, sixty_live):
    result = cli("--db", db_path, "sessions", "list", "--limit", "3", "--format", "ndjson")
    assert result.exit_code == 0, result.output
    assert ndjson_ids(result.stdout) == sixty_live[:3]


def test_list_limit_zero_lists_everything_without_a_cursor(cli, db_path, sixty_live):
    result = cli("--db", db_path, "sessions", "list", "--limit", "0", "--format", "ndjson")
    assert result.exit_code == 0, result.output
    assert ndjson_ids(result.stdout) == sixty_live
    assert cursor_of(result.stderr) is None


def test_list_prints_no_cursor_when_the_page_is_not_full(cli, db_path, sixty_live):
    result = cli("--db", db_path, "sessions", "list", "--limit", "61", "--format", "ndjson")
    assert result.exit_code == 0, result.output
    assert len(ndjson_ids(result.stdout)) == 60
    assert cursor_of(result.stderr) is None


@pytest.mark.parametrize(
    "bad, message",
    [
        ("-1", "Invalid value for '--limit': -1 is not in the range x>=0."),
        ("abc", "Invalid value for '--limit': 'abc' is not a valid int range."),
        ("1.5", "Invalid value for '--limit': '1.5' is not a valid int range."),
    ],
)
def test_list_refuses_a_bad_limit_with_exit_2(cli, db_path, sixty_live, bad, message):
    result = cli("--db", db_path, "sessions", "list", "--limit", bad)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr


# -- keyset paging: --cursor and --after ------------------------------------------------


@pytest.fixture
def forty_with_ties(migrated_db, db_path):
    """40 sessions, live and expired, whose sort columns repeat so pages split ties."""
    now = now_ms()
    rows = []
    for i in range(40):
        n = (i * 17) % 40  # insertion order differs from every sort order
        rows.append(
            session_row(
                f"u{n:02d}",
                now,
                expires_in=((n % 8) - 3) * 10 * MINUTE + MINUTE,
                updated_ago=(n % 7) * MINUTE,
                created_ago=(n % 3) * 60 * MINUTE + 60 * MINUTE,
            )
        )
    insert(db_path, rows)
    return rows


def expected_order(rows: list[dict], sort: str, desc: bool) -> list[str]:
    column = SORT_COLUMNS[sort]
    ordered = sorted(rows, key=lambda r: (r[column], r["user_id"]), reverse=desc)
    return [r["user_id"] for r in ordered]


@pytest.mark.parametrize("desc", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize("sort", ["expires", "user", "updated", "created"])
def test_list_sorts_by_the_chosen_column_then_user_id(cli, db_path, forty_with_ties, sort, desc):
    args = ["--db", db_path, "sessions", "list", "--all", "--limit", "0", "--sort", sort, "--format", "ndjson"]
    result = cli(*args, *(["--desc"] if desc else []))
    assert result.exit_code == 0, result.output
    assert ndjson_ids(result.stdout) == expected_order(forty_with_ties, sort, desc)


@pytest.mark.parametrize("desc", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize("sort", ["expires", "user", "updated", "created"])
def test_cursor_pages_through_every_row_once_in_order(cli, db_path, forty_with_ties, sort, desc):
    base = ["--db", db_path, "sessions", "list", "--all", "--limit", "7", "--sort", sort, "--format", "ndjson"]
    if desc:
        base.append("--desc")
    seen: list[str] = []
    pages = 0
    cursor = None
    while True:
        result = cli(*base, *(["--cursor", cursor] if cursor else []))
        assert result.exit_code == 0, result.output
        pages += 1
        page = ndjson_ids(result.stdout)
        seen.extend(page)
        cursor = cursor_of(result.stderr)
        if cursor is None:
            break
        assert len(page) == 7
        assert pages < 10, "paging does not end"
    assert seen == expected_order(forty_with_ties, sort, desc)  # no duplicates, no gaps
    assert pages == 6  # 5 full pages of 7, then the last 5 rows without a cursor


def test_cursor_pages_the_default_active_listing(cli, db_path, sixty_live):
    first = cli("--db", db_path, "sessions", "list", "--limit", "25", "--format", "ndjson")
    second = cli("--db", db_path, "sessions", "list", "--limit", "25", "--format", "ndjson",
                 "--cursor", cursor_of(first.stderr))
    third = cli("--db", db_path, "sessions", "list", "--limit", "25", "--format", "ndjson",
                "--cursor", cursor_of(second.stderr))
    assert ndjson_ids(first.stdout) + ndjson_ids(second.stdout) + ndjson_ids(third.stdout) == sixty_live
    assert cursor_of(third.stderr) is None


def test_cursor_keeps_working_after_its_row_is_deleted(cli, db_path, sixty_live):
    first = cli("--db", db_path, "sessions", "list", "--limit", "10", "--sort", "user", "--format", "ndjson")
    assert ndjson_ids(first.stdout)[-1] == "user-009"
    conn = raw_sqlite.connect(db_path)
    with conn:
        conn.execute("DELETE FROM server_sessions WHERE user_id = 'user-009'")
    conn.close()
    second = cli("--db", db_path, "sessions", "list", "--limit", "3", "--sort", "user", "--format", "ndjson",
                 "--cursor", cursor_of(first.stderr))
    assert second.exit_code == 0, second.output
    assert ndjson_ids(second.stdout) == ["user-010", "user-011", "user-012"]


@pytest.mark.parametrize("sort", ["expires", "user", "updated", "created"])
def test_after_user_id_starts_right_after_that_row(cli, db_path, forty_with_ties, sort):
    order = expected_order(forty_with_ties, sort, False)
    result = cli("--db", db_path, "sessions", "list", "--all", "--sort", sort, "--limit", "4",
                 "--after", order[10], "--format", "ndjson")
    assert result.exit_code == 0, result.output
    assert ndjson_ids(result.stdout) == order[11:15]


def test_after_with_desc_continues_downwards(cli, db_path, forty_with_ties):
    order = expected_order(forty_with_ties, "expires", True)
    result = cli("--db", db_path, "sessions", "list", "--all", "--desc", "--limit", "3",
                 "--after", order[20], "--format", "ndjson")
    assert result.exit_code == 0, result.output
    assert ndjson_ids(result.stdout) == order[21:24]


def test_after_an_unknown_user_is_refused_with_exit_2(cli, db_path, sixty_live):
    result = cli("--db", db_path, "sessions", "list", "--after", "nobody")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert_one_error_line(
        result.stderr,
        "--after 'nobody': no session with that user_id (use --cursor to page past deleted rows)",
    )


def test_after_and_cursor_together_are_refused_with_exit_2(cli, db_path, sixty_live):
    result = cli("--db", db_path, "sessions", "list", "--after", "user-001", "--cursor", "1:user-001")
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "--after and --cursor cannot be used together")


@pytest.mark.parametrize(
    "token, sort, message",
    [
        ("junk", "expires", "--cursor 'junk' is not a cursor printed by sessions list"),
        ("123:", "expires", "--cursor '123:' is not a cursor printed by sessions list"),
        ("abc:user-001", "expires", "--cursor 'abc:user-001' does not fit --sort expires"),
        ("abc:user-001", "updated", "--cursor 'abc:user-001' does not fit --sort updated"),
    ],
)
def test_a_malformed_cursor_is_refused_with_exit_2(cli, db_path, sixty_live, token, sort, message):
    result = cli("--db", db_path, "sessions", "list", "--sort", sort, "--cursor", token)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert_one_error_line(result.stderr, message)


def test_list_refuses_an_unknown_sort_with_exit_2(cli, db_path, sixty_live):
    result = cli("--db", db_path, "sessions", "list", "--sort", "name")
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, not_one_of("'--sort'", "name", ["expires", "user", "updated", "created"]))


def test_user_ids_with_colons_and_spaces_page_through_the_cursor(cli, db_path, migrated_db):
    now = now_ms()
    ids = ["a b", "a:b", "a:b:c", "a'b", "a\"b"]
    insert(db_path, [session_row(u, now, expires_in=10 * MINUTE) for u in ids])
    seen = []
    cursor = None
    for _ in range(6):
        result = cli("--db", db_path, "sessions", "list", "--limit", "2", "--format", "ndjson",
                     *(["--cursor", cursor] if cursor else []))
        assert result.exit_code == 0, result.output
        seen += ndjson_ids(result.stdout)
        cursor = cursor_of(result.stderr)
        if cursor is None:
            break
    assert seen == sorted(ids)


# -- formats ---------------------------------------------------------------------------


def test_list_json_decodes_json_columns_and_keeps_times_as_epoch_ms(cli, db_path, mixed):
    result = cli("--db", db_path, "sessions", "list", "--format", "json", "--status", "gathering")
    assert result.exit_code == 0, result.output
    stored = mixed["live-soon"]
    assert json.loads(result.stdout) == [
        {
            "user_id": "live-soon",
            "status": "gathering",
            "collected_info": {"budget": 50000},
            "last_recommendation": None,
            "messages": [{"role": "user", "content": "서버 추천"}],
            "created_at": stored["created_at"],
            "updated_at": stored["updated_at"],
            "expires_at": stored["expires_at"],
        }
    ]
    assert "서버 추천" in result.stdout  # text, not \\u escapes


def test_list_json_flag_is_format_json(cli, db_path, mixed):
    as_flag = cli("--db", db_path, "sessions", "list", "--json")
    as_format = cli("--db", db_path, "sessions", "list", "--format", "json")
    assert as_flag.exit_code == 0, as_flag.output
    assert as_flag.stdout == as_format.stdout
    assert [row["user_id"] for row in json.loads(as_flag.stdout)] == ["live-soon", "live-mid", "live-late"]


def test_list_json_of_nothing_is_an_empty_array(cli, db_path, migrated_db):
    result = cli("--db", db_path, "sessions", "list", "--format", "json")
    assert result.exit_code == 0, result.output
    assert result.stdout == "[]\n"


def test_list_json_keeps_a_malformed_json_column_as_its_raw_text(cli, db_path, migrated_db):
    now = now_ms()
    insert(db_path, [session_row("broken", now, collected_info='{"budget": 5', messages="[oops")])
    result = cli("--db", db_path, "sessions", "list", "--format", "json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["collected_info"] == '{"budget": 5'
    assert row["messages"] == "[oops"


def test_list_ndjson_is_one_row_object_per_line(cli, db_path, mixed):
    result = cli("--db", db_path, "sessions", "list", "--all", "--format", "ndjson")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    for line in lines:
        row = json.loads(line)
        assert list(row) == list(COLUMNS)
        stored = mixed[row["user_id"]]
        assert row["messages"] == json.loads(stored["messages"])
        assert [row[c] for c in ("created_at", "updated_at", "expires_at")] == [
            stored["created_at"], stored["updated_at"], stored["expires_at"]
        ]


def test_list_csv_header_is_the_columns_and_json_cells_are_json(cli, db_path, mixed):
    result = cli("--db", db_path, "sessions", "list", "--format", "csv")
    assert result.exit_code == 0, result.output
    records = list(csv.reader(io.StringIO(result.stdout)))
    assert records[0] == list(COLUMNS)
    assert [r[0] for r in records[1:]] == ["live-soon", "live-mid", "live-late"]
    by_id = {r[0]: dict(zip(COLUMNS, r)) for r in records[1:]}
    soon = by_id["live-soon"]
    assert json.loads(soon["collected_info"]) == {"budget": 50000}
    assert json.loads(soon["messages"]) == [{"role": "user", "content": "서버 추천"}]
    assert soon["last_recommendation"] == ""
    assert int(soon["expires_at"]) == mixed["live-soon"]["expires_at"]
    assert by_id["live-mid"]["messages"] == "[1, 2, 3]"


def test_list_csv_of_nothing_is_just_the_header(cli, db_path, migrated_db):
    result = cli("--db", db_path, "sessions", "list", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout == ",".join(COLUMNS) + "\n"


def test_list_table_shows_user_status_message_count_and_relative_times(cli, db_path, mixed):
    result = cli("--db", db_path, "sessions", "list", "--all")
    assert result.exit_code == 0, result.output
    header = [cell.strip() for cell in result.stdout.splitlines()[0].split("┃")]
    assert header == ["user_id", "status", "messages", "updated", "expires"]
    assert table_cells(result.stdout) == [
        ["gone-old", "completed", "1", "3h ago", "expired 2h ago"],
        ["gone-new", "gathering", "1", "1h ago", "expired 10m ago"],
        ["live-soon", "gathering", "1", "3m ago", "in 2m"],
        ["live-mid", "selecting", "3", "40m ago", "in 19m"],
        ["live-late", "ordering", "1", "10m ago", "in 49m"],
    ]


def test_list_table_marks_an_unreadable_message_count(cli, db_path, migrated_db):
    now = now_ms()
    insert(db_path, [session_row("broken", now, messages="[oops"), session_row("none", now, messages=None,
                                                                             expires_in=40 * MINUTE)])
    result = cli("--db", db_path, "sessions", "list")
    assert result.exit_code == 0, result.output
    assert [row[:3] for row in table_cells(result.stdout)] == [
        ["broken", "gathering", "?"],
        ["none", "gathering", "?"],
    ]


def test_list_table_shows_user_ids_with_brackets_verbatim(cli, db_path, migrated_db):
    now = now_ms()
    insert(db_path, [session_row("[bold]x", now)])
    result = cli("--db", db_path, "sessions", "list")
    assert result.exit_code == 0, result.output
    assert [row[0] for row in table_cells(result.stdout)] == ["[bold]x"]


def test_list_refuses_an_unknown_format_with_exit_2(cli, db_path, mixed):
    result = cli("--db", db_path, "sessions", "list", "--format", "xml")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "Invalid value for '--format'" in result.stderr


def test_list_on_a_missing_database_exits_3(cli, tmp_path):
    result = cli("--db", tmp_path / "nope.db", "sessions", "list")
    assert result.exit_code == 3
    assert not (tmp_path / "nope.db").exists()


# -- the query plan on a big table -------------------------------------------------------

BIG_ROWS = 200_000


@pytest.fixture(scope="module")
def big_db(tmp_path_factory):
    """200k sessions, most of them expired (cleanup has not run for a while): built in one transaction."""
    path = tmp_path_factory.mktemp("big") / "big.db"
    db = open_sqlite_file(path, create=True)
    list(apply_migrations(db, discover_migrations(bundled_migrations_dir())))
    db.close()
    now = now_ms()
    conn = raw_sqlite.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO server_sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            (
                f"user-{i:07d}",
                "gathering",
                '{"budget":50000}',
                None,
                '[{"role":"user","content":"서버 추천"}]',
                now - 2 * 3_600_000,
                now - 3_600_000 + i,
                # user order and expiry order disagree; only the last 1% is live
                now - (BIG_ROWS - i) * 1000 if i < BIG_ROWS * 99 // 100 else now + (i % 3000) * 1000,
            )
            for i in range(BIG_ROWS)
        ),
    )
    conn.execute("COMMIT")
    conn.close()
    return path, now


def plan_details(path: Path, query: SessionQuery, now: int) -> list[str]:
    sql, params = build_list_query(query, now)
    conn = raw_sqlite.connect(path)
    try:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    finally:
        conn.close()


@pytest.mark.parametrize(
    "query",
    [
        SessionQuery(),
        SessionQuery(desc=True),
        SessionQuery(state="expired"),
        SessionQuery(statuses=("gathering", "ordering")),
        SessionQuery(after=(10**13, "user-0000001")),
        SessionQuery(sort="user"),
        SessionQuery(sort="user", desc=True),
        SessionQuery(sort="user", after=(None, "user-0100000")),
        SessionQuery(user_pattern="user-00001"),
    ],
    ids=[
        "default", "desc", "expired", "statuses", "after-cursor",
        "sort-user", "sort-user-desc", "sort-user-after", "user-prefix",
    ],
)
def test_list_query_searches_an_index_and_never_scans_the_table(big_db, query):
    path, now = big_db
    details = plan_details(path, query, now)
    assert not [d for d in details if d.startswith("SCAN server_sessions")], details
    assert any(
        d.startswith("SEARCH server_sessions USING INDEX idx_server_sessions_expires")
        or d.startswith("SEARCH server_sessions USING INDEX sqlite_autoindex_server_sessions_1")
        for d in details
    ), details


def vm_steps(path: Path, sql: str, params) -> tuple[int, int]:
    """(VM instructions / 1000, rows) for one query: the work SQLite did, independent of the clock."""
    conn = raw_sqlite.connect(path)
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(tick, 1000)
    try:
        rows = conn.execute(sql, params).fetchall()
    finally:
        conn.close()
    return steps[0], len(rows)


def test_default_first_page_reads_a_tiny_fraction_of_a_200k_table(big_db):
    path, now = big_db
    sql, params = build_list_query(SessionQuery(limit=50), now)
    page_steps, rows = vm_steps(path, sql, params)
    scan_steps, _ = vm_steps(path, "SELECT * FROM server_sessions WHERE messages LIKE '%nothing%'", ())
    assert rows == 50
    assert scan_steps > 100
    assert page_steps * 100 < scan_steps, (page_steps, scan_steps)


def test_list_limit_50_on_a_200k_table_prints_50_rows_and_a_cursor(cli, big_db):
    path, now = big_db
    result = cli("--db", path, "sessions", "list", "--format", "ndjson")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 50
    assert all(row["expires_at"] > now for row in rows)
    assert [r["expires_at"] for r in rows] == sorted(r["expires_at"] for r in rows)
    assert cursor_of(result.stderr) == f"{rows[-1]['expires_at']}:{rows[-1]['user_id']}"


def test_user_prefix_ending_just_below_the_surrogates_lists_cleanly(cli, db_path, migrated_db):
    now = now_ms()
    insert(db_path, [_session_row("tg\ud7ff-1", now), _session_row("tg\ue000", now), _session_row("tg", now)])
    result = cli("--db", db_path, "sessions", "list", "--user", "tg\ud7ff", "--format", "ndjson")
    assert result.exit_code == 0, result.output
    assert ndjson_ids(result.stdout) == ["tg\ud7ff-1"]


def test_after_a_user_id_that_no_longer_exists_pages_by_user(cli, db_path, migrated_db):
    now = now_ms()
    insert(db_path, [_session_row(u, now) for u in ("a", "b", "c")])
    result = cli("--db", db_path, "sessions", "list", "--sort", "user", "--after", "a-gone", "--format", "ndjson")
    assert result.exit_code == 0, result.output
    assert ndjson_ids(result.stdout) == ["b", "c"]


def _session_row(user_id: str, now: int) -> dict:
    return {"user_id": user_id, "status": "gathering", "collected_info": "{}", "last_recommendation": None,
            "messages": "[]", "created_at": now, "updated_at": now, "expires_at": now + SESSION_TTL_MS}
