"""Faults and hostile inputs a user meets: each answered by one line, a documented exit code,
and nothing lost or half-written.

Deeply nested JSON, an export aimed at the database itself or at a FIFO or a device, a reader
that closes the pipe, a full disk on stdout, NaN and Infinity, a carriage return in a CSV cell,
an unreadable database or folder, megabyte-long messages, a database file left empty by a
crash, the temporary file of a killed export, and stats read beside a writer.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import SESSIONCTL, error_lines, raw_connect
from rows import insert_rows
from sessionctl.repository import ServerSession, get_server_session, save_server_session, session_stats

FAR = 4_102_444_800_000  # 2100: live for the whole test
DEEP = "[" * 5000 + "]" * 5000  # valid JSON, deeper than Python's recursion limit


def _row(user_id: str, **columns) -> dict:
    values = {"user_id": user_id, "status": "gathering", "collected_info": "{}", "last_recommendation": None,
              "messages": "[]", "created_at": 1, "updated_at": 2, "expires_at": FAR}
    values.update(columns)
    return values


def _run(*args, stdout=subprocess.PIPE, cwd=None, input=None, preexec_fn=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONCTL_")}
    return subprocess.run([str(SESSIONCTL), *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL if input is None else None, input=input,
                          cwd=cwd, env=env, text=True, timeout=120, preexec_fn=preexec_fn)


# -- deeply nested JSON -----------------------------------------------------------------------


def test_deeply_nested_json_never_stops_a_read_and_is_refused_on_import_naming_the_line(
        migrated_db, db_path, tmp_path):
    insert_rows(db_path, [_row("deep", messages=DEEP), _row("plain")])
    assert get_server_session(migrated_db, "deep").messages == []  # malformed for the agent: read as empty
    listed = _run("--db", db_path, "sessions", "list", "--all", "--format", "ndjson")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["user_id"] for line in listed.stdout.splitlines()] == ["deep", "plain"]
    assert _run("--db", db_path, "sessions", "show", "deep").returncode == 0

    source = tmp_path / "deep.jsonl"
    source.write_text(json.dumps(_row("ok")) + "\n" + '{"user_id": ' + DEEP + "}\n")
    result = _run("--db", db_path, "sessions", "import", source)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        f"sessionctl: error: {source}:2: not valid JSON (JSON nested too deeply to read); nothing was imported"]
    assert get_server_session(migrated_db, "ok") is None  # nothing of the file was written


def test_saving_a_value_nested_too_deeply_is_refused_and_writes_nothing(migrated_db):
    value: list = []
    for _ in range(3000):
        value = [value]
    with pytest.raises(ValueError, match="messages: nested too deeply to store as JSON"):
        save_server_session(migrated_db, "deep", ServerSession(messages=[value]))
    assert get_server_session(migrated_db, "deep") is None


# -- export's output ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "-wal"])
def test_export_onto_the_database_it_reads_is_refused_and_the_database_survives(migrated_db, db_path, suffix):
    insert_rows(db_path, [_row("u1")])
    target = f"{db_path}{suffix}"
    result = _run("--db", db_path, "sessions", "export", "--output", target)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"sessionctl: error: --output {target} is the database being exported ({db_path}{suffix}); "
        "nothing was written: choose another file"]
    assert get_server_session(migrated_db, "u1") is not None


def test_export_into_a_fifo_writes_through_it_and_leaves_the_fifo_a_fifo(migrated_db, db_path, tmp_path):
    insert_rows(db_path, [_row(f"u{i}") for i in range(3)])
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    result = _run("--db", db_path, "sessions", "export", "--output", fifo)
    received = reader.communicate(timeout=60)[0]
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["user_id"] for line in received.splitlines()] == ["u0", "u1", "u2"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_export_into_a_device_leaves_the_device_alone(migrated_db, db_path):
    insert_rows(db_path, [_row("u1")])
    assert _run("--db", db_path, "sessions", "export", "--output", "/dev/null").returncode == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_killed_export_leaves_a_temporary_the_next_export_removes(migrated_db, db_path, tmp_path):
    insert_rows(db_path, [_row(f"u{i:06d}", messages='["' + "서버" * 200 + '"]') for i in range(60_000)])
    out = tmp_path / "out" / "sessions.jsonl"
    out.parent.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONCTL_")}
    export = subprocess.Popen([str(SESSIONCTL), "--db", str(db_path), "sessions", "export", "--output", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".sessions.jsonl.") and p.stat().st_size > 0 for p in out.parent.iterdir()):
        assert export.poll() is None, "the export finished before it could be killed mid-write"
        assert time.monotonic() < deadline
    export.send_signal(signal.SIGKILL)
    export.wait()
    left = [p.name for p in out.parent.iterdir()]
    assert not out.exists() and len(left) == 1  # half-written, under a temporary name only

    assert _run("--db", db_path, "sessions", "export", "--output", out).returncode == 0
    assert [p.name for p in out.parent.iterdir()] == ["sessions.jsonl"]
    assert sum(1 for _ in out.open()) == 60_000


# -- stdout: a closed pipe, a full disk ----------------------------------------------------------


def test_a_reader_that_closes_the_pipe_stops_the_output_quietly(migrated_db, db_path):
    insert_rows(db_path, [_row(f"u{i:05d}") for i in range(20_000)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONCTL_")}
    for command in (["sessions", "list", "--all", "--limit", "0", "--format", "ndjson"], ["sessions", "export"]):
        pipeline = subprocess.run(
            f"'{SESSIONCTL}' --db '{db_path}' {' '.join(command)} | head -1; echo \"exit ${{PIPESTATUS[0]}}\" >&2",
            shell=True, executable="/bin/bash", capture_output=True, text=True, env=env, timeout=60)
        assert len(pipeline.stdout.splitlines()) == 1
        assert error_lines(pipeline.stderr) == ["exit 141"], pipeline.stderr  # no message, no traceback


@pytest.mark.parametrize("command", [
    ["sessions", "list", "--all"], ["sessions", "list", "--all", "--format", "csv"], ["sessions", "export"],
    ["sessions", "show", "u00001"], ["sessions", "stats"], ["status"], ["verify"],
])
def test_a_full_disk_on_stdout_is_one_line_and_never_exit_0(migrated_db, db_path, command):
    insert_rows(db_path, [_row(f"u{i:05d}") for i in range(5_000)])
    with open("/dev/full", "w") as full:
        result = _run("--db", db_path, *command, stdout=full)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        "sessionctl: error: cannot write the output: No space left on device; what was printed is incomplete"]


# -- values JSON and CSV cannot hold as they are ------------------------------------------------------


def test_json_output_is_json_whatever_is_stored(migrated_db, db_path):
    conn = raw_connect(db_path)
    conn.execute("INSERT INTO server_sessions VALUES ('nan', 'gathering', '{\"a\": NaN}', 'Infinity', "
                 "'[-Infinity]', 1, 2, ?)", (FAR,))
    conn.execute("INSERT INTO server_sessions VALUES ('inf', 'gathering', '{}', NULL, '[]', 1e999, 2, ?)", (FAR,))
    conn.close()
    for args in (["sessions", "list", "--all", "--format", "json"], ["sessions", "show", "nan", "--json"],
                 ["sessions", "export"]):
        result = _run("--db", db_path, *args)
        assert result.returncode == 0, result.stderr
        text = result.stdout if args[-1] != "export" else "[" + ",".join(result.stdout.splitlines()) + "]"
        json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {args}: not JSON"))
    exported = {json.loads(line)["user_id"]: json.loads(line) for line in _run("--db", db_path, "sessions",
                                                                                   "export").stdout.splitlines()}
    assert exported["inf"]["created_at"] == float("inf")  # 1e999: read back as what was stored
    assert exported["nan"]["collected_info"] == '{"a": NaN}'  # stored text, kept as text


def test_a_carriage_return_in_a_value_stays_inside_its_csv_cell(migrated_db, db_path):
    insert_rows(db_path, [_row("cr\rlf", collected_info='{"note": "a\\rb"}'), _row("plain")])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONCTL_")}
    result = subprocess.run([str(SESSIONCTL), "--db", str(db_path), "sessions", "list", "--all", "--format", "csv"],
                            capture_output=True, env=env, timeout=60)  # bytes: no newline translation
    assert result.returncode == 0
    rows = list(csv.reader(io.StringIO(result.stdout.decode("utf-8"), newline="")))
    assert [row[0] for row in rows] == ["user_id", "cr\rlf", "plain"]
    assert len({len(row) for row in rows}) == 1


# -- the database: unreadable, unreachable, left empty ----------------------------------------------------


def _as_a_user_without_access(cli, *args: object) -> tuple[int, str]:
    """Run the CLI in a forked child that is no longer root (root reads everything).

    The child cannot load modules from root's Python any more, so the command is run once
    here first: everything it imports is then already in the fork.
    """
    cli(*args)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, run, report, and leave without cleanup
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            result = cli(*args)
            os.write(write_end, json.dumps([result.exit_code, result.stderr]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as answer:
        data = answer.read()
    os.waitpid(pid, 0)
    code, stderr = json.loads(data)
    return code, stderr


def test_an_unreadable_database_is_one_line_exit_3(cli, migrated_db, db_path):
    # In a folder anyone may enter (pytest's own is root's alone), the file itself closed.
    folder = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        os.chmod(folder, 0o755)
        unreadable = folder / "sessions.db"
        shutil.copyfile(db_path, unreadable)
        os.chmod(unreadable, 0)
        code, stderr = _as_a_user_without_access(cli, "--db", unreadable, "status")
        assert code == 3
        assert error_lines(stderr) == [f"sessionctl: error: cannot open {unreadable}: unable to open database file"]
    finally:
        shutil.rmtree(folder)


def test_a_database_in_a_folder_the_user_may_not_enter_is_one_line_exit_3(cli, tmp_path):
    locked = tmp_path / "locked"
    (locked / "inner").mkdir(parents=True)
    os.chmod(locked, 0)
    os.chmod(tmp_path, 0o755)
    code, stderr = _as_a_user_without_access(cli, "--db", locked / "inner" / "s.db", "status")
    assert code == 3
    assert error_lines(stderr) == [f"sessionctl: error: cannot use {locked / 'inner' / 's.db'}: Permission denied"]


def test_migrate_on_an_empty_file_left_by_a_crash_puts_it_in_wal_mode(db_path):
    db_path.write_bytes(b"")
    assert _run("--db", db_path, "migrate").returncode == 0
    conn = raw_connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
    finally:
        conn.close()


def test_a_megabyte_long_message_is_cut_to_one_readable_line(migrated_db, db_path, tmp_path):
    source = tmp_path / "long.jsonl"
    source.write_text(json.dumps(_row("u1", status="x" * 2_000_000)) + "\n")
    result = _run("--db", db_path, "sessions", "import", source)
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert line.startswith(f"sessionctl: error: {source}:1: status 'xxx") and len(line) < 1_200
    assert line.endswith("more characters)")


# -- stats beside a writer -------------------------------------------------------------------------------------------


def test_stats_read_every_figure_in_one_statement_so_they_always_agree(migrated_db, db_path):
    insert_rows(db_path, [_row(f"u{i}", expires_at=FAR if i % 2 else 0) for i in range(10)])
    statements = []

    class Counting:
        def __init__(self, db):
            self.db = db

        def query(self, sql, params=()):
            statements.append(sql)
            return self.db.query(sql, params)

        def size_bytes(self):
            return self.db.size_bytes()

    stats = session_stats(Counting(migrated_db))
    assert len(statements) == 1  # one snapshot: a writer between queries cannot make active > total
    assert (stats.total, stats.active, stats.expired) == (10, 5, 5)
    assert stats.by_status["gathering"] == 10


# -- rollback's backup must restore ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stored, reason", [
    ("('', 'gathering', '{}', NULL, '[]', 1, 2, 3)", "user_id must be a non-empty string"),
    ("('r', 'gathering', '{}', NULL, '[]', 1.5, 2, 3)", "created_at must be an integer (epoch ms), got 1.5"),
])
def test_rollback_refuses_to_drop_when_its_backup_would_not_import(migrated_db, db_path, tmp_path, stored, reason):
    conn = raw_connect(db_path)
    conn.execute(f"INSERT INTO server_sessions VALUES {stored}")  # legal in the table, refused by import
    conn.close()
    backup = tmp_path / "b.jsonl"
    result = _run("--db", db_path, "rollback", "--yes", "--backup", backup)
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        f"sessionctl: error: the backup would not restore ({backup}:1: {reason}); nothing was dropped: "
        "fix that row in the table, then roll back again"]
    conn = raw_connect(db_path)
    try:
        assert conn.execute("SELECT count(*) FROM server_sessions").fetchall() == [(1,)]
    finally:
        conn.close()
