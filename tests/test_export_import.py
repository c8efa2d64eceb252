"""sessions export / import: raw JSON Lines, conflict policies, validation, the rollback round trip, streaming."""

from __future__ import annotations

import json
import os
import sqlite3
import raw_sqlite
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SESSIONCTL, assert_one_error_line, not_one_of
from sessionctl.migrations import apply_migrations, bundled_migrations_dir, discover_migrations
from sessionctl.repository import COLUMNS, now_ms
from sessionctl.targets.sqlite_file import open_sqlite_file
from rows import insert_rows as insert, raw_rows

MINUTE = 60_000
STATUSES = "gathering, recommending, selecting, ordering, completed"


def user_ids(db_path: Path) -> list[str]:
    conn = raw_sqlite.connect(db_path)
    try:
        return [r[0] for r in conn.execute("SELECT user_id FROM server_sessions ORDER BY user_id")]
    finally:
        conn.close()


def session(user_id: str, at: int, *, expires_in: int = 30 * MINUTE, now: int | None = None, **overrides):
    now = now_ms() if now is None else now
    values = {
        "user_id": user_id,
        "status": "gathering",
        "collected_info": '{"budget":50000}',
        "last_recommendation": None,
        "messages": '[{"role":"user","content":"서버 추천"}]',
        "created_at": at - MINUTE,
        "updated_at": at,
        "expires_at": now + expires_in,
    }
    values.update(overrides)
    return values


def json_lines(text: str) -> list[str]:
    """JSON Lines split on "\\n" only: U+2028 and U+0085 may stand raw inside a JSON string."""
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1]


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


@pytest.fixture
def varied(migrated_db, db_path):
    """Live and expired rows whose JSON columns are not what our encoder would write."""
    now = now_ms()
    rows = [
        session("a-live", now - MINUTE, now=now),
        session("b-malformed", now - 2 * MINUTE, now=now, collected_info='{"budget": 5',
                messages='[{"role": "user"', last_recommendation="[oops]"),
        session("c-spacing", now - 3 * MINUTE, now=now, collected_info='{ "b":2, "a":1 }  ',
                messages="[] ", last_recommendation='"\\uc11c\\ubc84"'),
        session("d-odd-text", now - 4 * MINUTE, now=now, status="completed",
                messages='["line\\nbreak", "tab\\t", "🚀", "\u2028", "back\\\\slash"]',
                collected_info="raw\nnewline\tand tab 🚀 서울 \x85 \u2029", last_recommendation=""),
        session("e-expired", now - 90 * MINUTE, now=now, expires_in=-30 * MINUTE, status="ordering",
                collected_info=None, messages=None),
        session("f-expired", now - 3 * 60 * MINUTE, now=now, expires_in=-2 * 60 * MINUTE, status="selecting"),
    ]
    insert(db_path, rows)
    return rows


# -- export ----------------------------------------------------------------------------


def test_export_writes_every_row_as_raw_json_lines_to_stdout_by_default(cli, db_path, varied):
    result = cli("--db", db_path, "sessions", "export")
    assert result.exit_code == 0, result.output
    lines = json_lines(result.stdout)
    assert len(lines) == len(varied)
    exported = [json.loads(line) for line in lines]
    assert exported == sorted(varied, key=lambda r: r["user_id"])  # raw values, user_id order
    assert all(list(row) == list(COLUMNS) for row in exported)
    assert "서버 추천" in result.stdout  # text kept as text


def test_export_output_file_writes_the_file_and_reports_on_stderr(cli, db_path, varied, tmp_path):
    result = cli("--db", db_path, "sessions", "export", "--output", "out/sessions.jsonl")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "exported 6 sessions to out/sessions.jsonl" in result.stderr.splitlines()
    written = (tmp_path / "out" / "sessions.jsonl").read_text(encoding="utf-8")
    assert written == cli("--db", db_path, "sessions", "export").stdout
    assert os.listdir(tmp_path / "out") == ["sessions.jsonl"]  # no temporary file left behind


def test_export_piped_into_import_dash_round_trips_every_row(run_sessionctl, db_path, varied):
    before = raw_rows(db_path)
    exported = run_sessionctl("--db", db_path, "sessions", "export")
    assert exported.returncode == 0, exported.stderr
    conn = raw_sqlite.connect(db_path)
    with conn:
        conn.execute("DELETE FROM server_sessions")
    conn.close()
    imported = run_sessionctl("--db", db_path, "sessions", "import", "-", input=exported.stdout)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == "imported 6 of 6 sessions from <stdin>\n"
    assert raw_rows(db_path) == before


def test_export_dash_output_is_stdout(cli, db_path, varied):
    dash = cli("--db", db_path, "sessions", "export", "-o", "-")
    assert dash.exit_code == 0, dash.output
    assert dash.stdout == cli("--db", db_path, "sessions", "export").stdout


@pytest.mark.parametrize(
    "flag, expected",
    [
        ("--active", ["a-live", "b-malformed", "c-spacing", "d-odd-text"]),
        ("--expired", ["e-expired", "f-expired"]),
        ("--all", ["a-live", "b-malformed", "c-spacing", "d-odd-text", "e-expired", "f-expired"]),
    ],
)
def test_export_state_flags_choose_the_rows(cli, db_path, varied, flag, expected):
    result = cli("--db", db_path, "sessions", "export", flag)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["user_id"] for line in json_lines(result.stdout)] == expected


def test_export_refuses_conflicting_state_flags_with_exit_2(cli, db_path, varied, tmp_path):
    result = cli("--db", db_path, "sessions", "export", "--active", "--expired", "-o", "x.jsonl")
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "choose one of --active, --expired, --all (got --active --expired)")
    assert not (tmp_path / "x.jsonl").exists()


def test_export_to_an_unwritable_path_exits_1_and_leaves_no_file(cli, db_path, varied, tmp_path):
    (tmp_path / "taken").mkdir()
    result = cli("--db", db_path, "sessions", "export", "-o", "taken")
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, "cannot write taken: Is a directory")
    assert os.listdir(tmp_path / "taken") == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_of_an_empty_table_is_empty(cli, db_path, migrated_db, tmp_path):
    result = cli("--db", db_path, "sessions", "export", "-o", "empty.jsonl")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "empty.jsonl").read_bytes() == b""
    assert "exported 0 sessions to empty.jsonl" in result.stderr


def test_export_then_import_round_trips_malformed_json_byte_for_byte(cli, db_path, varied, tmp_path):
    before = raw_rows(db_path)
    assert cli("--db", db_path, "sessions", "export", "-o", "dump.jsonl").exit_code == 0
    conn = raw_sqlite.connect(db_path)
    with conn:
        conn.execute("DELETE FROM server_sessions")
    conn.close()
    result = cli("--db", db_path, "sessions", "import", "dump.jsonl")
    assert result.exit_code == 0, result.output
    assert result.stdout == "imported 6 of 6 sessions from dump.jsonl\n"
    assert raw_rows(db_path) == before


# -- import: conflict policies ---------------------------------------------------------


@pytest.fixture
def stored(migrated_db, db_path):
    now = now_ms()
    rows = [
        session("older-in-db", now - 10 * MINUTE, now=now, messages='["db"]'),
        session("newer-in-db", now - 1 * MINUTE, now=now, messages='["db"]'),
    ]
    insert(db_path, rows)
    return now, {r["user_id"]: r for r in rows}


@pytest.fixture
def incoming(stored, tmp_path):
    now, rows = stored
    lines = [
        dict(rows["older-in-db"], updated_at=now - 5 * MINUTE, messages='["file"]'),  # the file's is newer
        dict(rows["newer-in-db"], updated_at=now - 5 * MINUTE, messages='["file"]'),  # the file's is older
        session("only-in-file", now - 2 * MINUTE, now=now, messages='["file"]'),
    ]
    (tmp_path / "in.jsonl").write_text(jsonl(*lines), encoding="utf-8")
    return {r["user_id"]: r for r in lines}


def messages_by_user(db_path: Path) -> dict[str, str]:
    conn = raw_sqlite.connect(db_path)
    try:
        return dict(conn.execute("SELECT user_id, messages FROM server_sessions"))
    finally:
        conn.close()


def test_import_on_conflict_skip_is_the_default_and_keeps_stored_rows(cli, db_path, incoming):
    result = cli("--db", db_path, "sessions", "import", "in.jsonl")
    assert result.exit_code == 0, result.output
    assert result.stdout == "imported 1 of 3 sessions from in.jsonl (2 skipped: on-conflict skip)\n"
    assert messages_by_user(db_path) == {"older-in-db": '["db"]', "newer-in-db": '["db"]', "only-in-file": '["file"]'}


def test_import_on_conflict_replace_overwrites_every_stored_row(cli, db_path, incoming):
    result = cli("--db", db_path, "sessions", "import", "in.jsonl", "--on-conflict", "replace")
    assert result.exit_code == 0, result.output
    assert result.stdout == "imported 3 of 3 sessions from in.jsonl\n"
    assert messages_by_user(db_path) == {"older-in-db": '["file"]', "newer-in-db": '["file"]', "only-in-file": '["file"]'}
    conn = raw_sqlite.connect(db_path)
    stored = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM server_sessions WHERE user_id = 'newer-in-db'").fetchone()
    conn.close()
    assert stored == tuple(incoming["newer-in-db"][c] for c in COLUMNS)  # every column, even older times


def test_import_on_conflict_newer_keeps_the_larger_updated_at(cli, db_path, incoming):
    result = cli("--db", db_path, "sessions", "import", "in.jsonl", "--on-conflict", "newer")
    assert result.exit_code == 0, result.output
    assert result.stdout == "imported 2 of 3 sessions from in.jsonl (1 skipped: on-conflict newer)\n"
    assert messages_by_user(db_path) == {"older-in-db": '["file"]', "newer-in-db": '["db"]', "only-in-file": '["file"]'}


def test_import_on_conflict_newer_keeps_the_stored_row_on_equal_updated_at(cli, db_path, stored, tmp_path):
    now, rows = stored
    (tmp_path / "tie.jsonl").write_text(jsonl(dict(rows["older-in-db"], messages='["file"]')), encoding="utf-8")
    result = cli("--db", db_path, "sessions", "import", "tie.jsonl", "--on-conflict", "newer")
    assert result.exit_code == 0, result.output
    assert messages_by_user(db_path)["older-in-db"] == '["db"]'


def test_import_refuses_an_unknown_on_conflict_policy_with_exit_2(cli, db_path, incoming):
    result = cli("--db", db_path, "sessions", "import", "in.jsonl", "--on-conflict", "merge")
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, not_one_of("'--on-conflict'", "merge", ["skip", "replace", "newer"]))


def test_import_reads_standard_input_for_dash(cli, db_path, stored):
    now, _ = stored
    result = cli("--db", db_path, "sessions", "import", "-", input=jsonl(session("piped", now, now=now)))
    assert result.exit_code == 0, result.output
    assert result.stdout == "imported 1 of 1 sessions from <stdin>\n"
    assert "piped" in user_ids(db_path)


def test_import_ignores_blank_lines_but_counts_line_numbers_with_them(cli, db_path, stored, tmp_path):
    now, _ = stored
    text = "\n" + jsonl(session("x1", now, now=now)) + "   \n" + '{"user_id": "x2"}\n'
    (tmp_path / "gaps.jsonl").write_text(text, encoding="utf-8")
    result = cli("--db", db_path, "sessions", "import", "gaps.jsonl")
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, f"gaps.jsonl:4: status None is not one of {STATUSES}; nothing was imported")


# -- import: validation, nothing written on a bad line -----------------------------------


def good_lines(now: int) -> list[str]:
    return [json.dumps(session(f"new-{i}", now - i, now=now)) for i in range(4)]


def with_time(column: str, value):
    def make(now):
        return json.dumps(session("bad", now, now=now, **{column: value}))
    return make


BAD_LINES = {
    "bad status": (lambda now: json.dumps(session("bad", now, now=now, status="cancelled")),
                   f"status 'cancelled' is not one of {STATUSES}"),
    "status wrong case": (lambda now: json.dumps(session("bad", now, now=now, status="GATHERING")),
                          f"status 'GATHERING' is not one of {STATUSES}"),
    "time as text": (with_time("created_at", "1700000000000"),
                     "created_at must be an integer (epoch ms), got '1700000000000'"),
    "time as float": (with_time("updated_at", 1.5), "updated_at must be an integer (epoch ms), got 1.5"),
    "time as bool": (with_time("expires_at", True), "expires_at must be an integer (epoch ms), got True"),
    "time missing": (lambda now: json.dumps({k: v for k, v in session("bad", now, now=now).items()
                                             if k != "expires_at"}),
                     "expires_at must be an integer (epoch ms), got None"),
    "user_id missing": (lambda now: json.dumps({k: v for k, v in session("bad", now, now=now).items()
                                                if k != "user_id"}),
                        "user_id must be a non-empty string"),
    "user_id empty": (lambda now: json.dumps(session("", now, now=now)), "user_id must be a non-empty string"),
    "user_id a number": (lambda now: json.dumps(session(42, now, now=now)), "user_id must be a non-empty string"),
    "invalid JSON": (lambda now: '{"user_id": "bad", "status": ', "not valid JSON (Expecting value)"),
    "not an object": (lambda now: '["bad", "gathering"]', "not a JSON object"),
    "unknown column": (lambda now: json.dumps(dict(session("bad", now, now=now), colour="red")),
                       "unknown column 'colour'"),
    "decoded JSON column": (lambda now: json.dumps(session("bad", now, now=now, messages=[{"role": "user"}])),
                            "messages must be the stored JSON text (a string) or null"),
}


@pytest.mark.parametrize("position", [1, 3, 5], ids=["first", "middle", "last"])
@pytest.mark.parametrize("case", list(BAD_LINES))
def test_import_reports_a_bad_line_with_its_number_and_writes_nothing(cli, db_path, stored, tmp_path, case, position):
    now, _ = stored
    before = raw_rows(db_path)
    make, problem = BAD_LINES[case]
    lines = good_lines(now)
    lines.insert(position - 1, make(now))
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = cli("--db", db_path, "sessions", "import", "in.jsonl", "--on-conflict", "replace")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert_one_error_line(result.stderr, f"in.jsonl:{position}: {problem}; nothing was imported")
    assert raw_rows(db_path) == before  # not even the good lines before it


def test_import_reports_a_duplicate_user_id_and_writes_nothing(cli, db_path, stored, tmp_path):
    now, _ = stored
    before = raw_rows(db_path)
    lines = good_lines(now) + [json.dumps(session("new-1", now, now=now))]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = cli("--db", db_path, "sessions", "import", "in.jsonl")
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, "in.jsonl:5: user_id 'new-1' also on line 2; nothing was imported")
    assert raw_rows(db_path) == before


def test_import_reports_a_time_beyond_sqlite_integers_and_writes_nothing(cli, db_path, stored, tmp_path):
    now, _ = stored
    before = raw_rows(db_path)
    lines = good_lines(now)
    lines.insert(2, json.dumps(session("huge", now, now=now, created_at=2**63)))
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = cli("--db", db_path, "sessions", "import", "in.jsonl")
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("sessionctl: error: ")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("sessionctl: error: in.jsonl:3: created_at ")
    assert errors[0].endswith("; nothing was imported")
    assert raw_rows(db_path) == before


def test_import_of_a_missing_file_exits_2_and_writes_nothing(cli, db_path, stored):
    before = raw_rows(db_path)
    result = cli("--db", db_path, "sessions", "import", "missing.jsonl")
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "cannot read missing.jsonl: No such file or directory")
    assert raw_rows(db_path) == before


def test_import_of_a_directory_exits_2(cli, db_path, stored, tmp_path):
    (tmp_path / "adir").mkdir()
    result = cli("--db", db_path, "sessions", "import", "adir")
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "cannot read adir: Is a directory")


def test_import_of_a_file_that_is_not_utf8_exits_2_and_writes_nothing(cli, db_path, stored, tmp_path):
    before = raw_rows(db_path)
    now, _ = stored
    (tmp_path / "latin1.jsonl").write_bytes(jsonl(session("ok", now, now=now)).encode() + b'{"user_id": "caf\xe9"}\n')
    result = cli("--db", db_path, "sessions", "import", "latin1.jsonl")
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "cannot read latin1.jsonl: not UTF-8 text (invalid continuation byte); nothing was imported")
    assert raw_rows(db_path) == before


def test_import_without_the_sessions_table_exits_1_and_says_to_migrate(cli, db_path, tmp_path):
    raw_sqlite.connect(db_path).execute("CREATE TABLE other (x)").connection.close()
    (tmp_path / "one.jsonl").write_text(jsonl(session("x", 1, now=1)), encoding="utf-8")
    result = cli("--db", db_path, "sessions", "import", "one.jsonl")
    assert result.exit_code == 1
    assert_one_error_line(
        result.stderr,
        "table server_sessions does not exist (migration 003 is not applied: run `sessionctl migrate`)",
    )


# -- the rollback round trip -------------------------------------------------------------


def test_export_rollback_migrate_import_restores_identical_rows(cli, db_path, varied, tmp_path):
    before = raw_rows(db_path)
    assert cli("--db", db_path, "sessions", "export", "-o", "before.jsonl").exit_code == 0

    rolled = cli("--db", db_path, "rollback", "--yes", "--backup", "rollback.jsonl")
    assert rolled.exit_code == 0, rolled.output
    conn = raw_sqlite.connect(db_path)
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'server_sessions'").fetchone() == (0,)
    conn.close()

    migrated = cli("--db", db_path, "migrate")
    assert migrated.exit_code == 0, migrated.output
    assert raw_rows(db_path) == []

    restored = cli("--db", db_path, "sessions", "import", "before.jsonl")
    assert restored.exit_code == 0, restored.output
    assert restored.stdout == "imported 6 of 6 sessions from before.jsonl\n"
    assert raw_rows(db_path) == before


def test_restoring_the_rollback_backup_gives_back_exactly_the_dropped_rows(cli, db_path, varied, tmp_path):
    before = raw_rows(db_path)
    rolled = cli("--db", db_path, "rollback", "--yes")
    assert rolled.exit_code == 0, rolled.output
    (backup,) = (tmp_path / "backups").glob("server_sessions-*.jsonl")
    assert f"backed up 6 rows to backups/{backup.name}" in rolled.stdout.splitlines()
    assert cli("--db", db_path, "migrate").exit_code == 0

    restored = cli("--db", db_path, "sessions", "import", f"backups/{backup.name}")
    assert restored.exit_code == 0, restored.output
    assert restored.stdout == f"imported 6 of 6 sessions from backups/{backup.name}\n"
    assert raw_rows(db_path) == before
    # and the backup is byte for byte what export writes
    assert backup.read_text(encoding="utf-8") == cli("--db", db_path, "sessions", "export").stdout


# -- streaming: memory stays flat ---------------------------------------------------------

_MEASURE = (
    "import resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def build_db(path: Path, rows: int) -> Path:
    db = open_sqlite_file(path, create=True)
    list(apply_migrations(db, discover_migrations(bundled_migrations_dir())))
    db.close()
    messages = "[" + ",".join('{"role":"user","content":"서버 추천 %d"}' % k for k in range(8)) + "]"
    conn = raw_sqlite.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO server_sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            (f"user-{i:07d}", "gathering", '{"budget":50000,"needs":["ssd","서울"]}', None, messages, i, i, i)
            for i in range(rows)
        ),
    )
    conn.execute("COMMIT")
    conn.close()
    return path


@pytest.fixture(scope="module")
def sized_dbs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("streaming")
    return {n: build_db(folder / f"{n}.db", n) for n in (20_000, 200_000)}


def peak_rss_kib(*args: str) -> int:
    """Peak resident memory of one sessionctl process (its own, measured by a fresh parent)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONCTL_")}
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(SESSIONCTL), *args],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


def test_exporting_200k_rows_to_a_file_keeps_memory_flat(sized_dbs, tmp_path):
    peaks = {}
    for rows, path in sized_dbs.items():
        out = tmp_path / f"{rows}.jsonl"
        peaks[rows] = peak_rss_kib("--db", str(path), "sessions", "export", "--output", str(out))
        with out.open(encoding="utf-8") as handle:
            assert sum(1 for _ in handle) == rows
    assert (tmp_path / "200000.jsonl").stat().st_size > 100 * 1024 * 1024  # far more than the bound below
    assert peaks[200_000] < 1.5 * peaks[20_000] + 10 * 1024, peaks


def test_exporting_200k_rows_to_stdout_keeps_memory_flat(sized_dbs):
    peaks = {rows: peak_rss_kib("--db", str(path), "sessions", "export") for rows, path in sized_dbs.items()}
    assert peaks[200_000] < 1.5 * peaks[20_000] + 10 * 1024, peaks


def test_listing_200k_rows_as_ndjson_keeps_memory_flat(sized_dbs):
    peaks = {
        rows: peak_rss_kib("--db", str(path), "sessions", "list", "--all", "--limit", "0", "--format", "ndjson")
        for rows, path in sized_dbs.items()
    }
    assert peaks[200_000] < 1.5 * peaks[20_000] + 10 * 1024, peaks


def test_a_backup_never_overwrites_a_file_that_appears_while_it_is_written(migrated_db, tmp_path, monkeypatch):
    import sessionctl.backup as backup

    target = tmp_path / "b.jsonl"
    real_write_rows = backup.write_rows

    def write_then_someone_creates_the_file(rows, out):
        count = real_write_rows(rows, out)
        target.write_text("precious\n", encoding="utf-8")
        return count

    monkeypatch.setattr(backup, "write_rows", write_then_someone_creates_the_file)
    from sessionctl.errors import BackupError
    from sessionctl.repository import iter_session_rows

    with pytest.raises(BackupError, match="already exists; not overwriting it"):
        backup.write_rows_file(iter_session_rows(migrated_db), target)
    assert target.read_text(encoding="utf-8") == "precious\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".b.jsonl")] == []


def test_rollback_refuses_an_existing_backup_path_before_doing_anything(cli, db_path, migrated_db, tmp_path):
    existing = tmp_path / "old.jsonl"
    existing.write_text("keep me\n", encoding="utf-8")
    for args in (("--dry-run",), ("--yes",)):
        result = cli("--db", db_path, "rollback", *args, "--backup", existing)
        assert result.exit_code == 2
        assert_one_error_line(result.stderr, f"--backup {existing} already exists; a backup never overwrites a file")
    assert existing.read_text(encoding="utf-8") == "keep me\n"
    conn = raw_sqlite.connect(db_path)
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'server_sessions'").fetchone() == (1,)
    conn.close()
