"""The installed console script on a real terminal (a pseudo-terminal), where isatty() is true.

On a terminal sessionctl draws a progress bar for a cleanup of more than one batch, and asks
before rollback and sessions delete; elsewhere (the other tests, cron) it does neither. Each
test reads everything the process writes to the terminal until it exits, with a deadline, so a
prompt nobody answers fails the test instead of hanging it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import sqlite3
import raw_sqlite
import struct
import subprocess
import termios
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import SESSIONCTL, SESSIONS_MIGRATION
from rows import insert_rows, raw_rows
from sessionctl.repository import SESSION_TTL_MS, now_ms

DEADLINE_S = 20  # a bound against hangs, not a speed claim: each run takes well under a second
BAR_TEXT = "deleting expired sessions"


@dataclass
class TerminalRun:
    returncode: int
    output: str  # everything written to the terminal: stdout, stderr and the echo of what was typed


def run_on_terminal(*args: object, cwd: Path, answer: str | None = None,
                    prompt: str | None = "[y/N]", stdout_to: Path | None = None) -> TerminalRun:
    """Run sessionctl with stdin, stdout and stderr on one pseudo-terminal.

    With ``answer``, it is typed once ``prompt`` has appeared on the terminal (with ``prompt=None``
    at once, typed ahead as a person may type before the question shows). With
    ``stdout_to``, stdout goes to that file instead (``sessionctl ... > file`` typed at a terminal).
    """
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, cols
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SESSIONCTL_", "NO_COLOR", "FORCE_COLOR", "TTY_", "COLUMNS", "LINES"))}
    env["TERM"] = "xterm-256color"
    redirected = open(stdout_to, "wb") if stdout_to else None  # noqa: SIM115 (closed below)
    try:
        proc = subprocess.Popen(
            [str(SESSIONCTL), *map(str, args)], cwd=cwd, env=env, stdin=slave,
            stdout=redirected or slave, stderr=slave, start_new_session=True,
        )
    finally:
        os.close(slave)
        if redirected:
            redirected.close()
    chunks: list[bytes] = []
    answered = answer is None
    if answer is not None and prompt is None:
        os.write(master, answer.encode())
        answered = True
    deadline = time.monotonic() + DEADLINE_S
    try:
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"sessionctl {args} still running after {DEADLINE_S} s; "
                                     f"terminal so far:\n{b''.join(chunks).decode(errors='replace')}")
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError as exc:  # EIO: every slave end is closed, the process is gone
                    if exc.errno != errno.EIO:
                        raise
                    data = b""
                if not data:
                    break
                chunks.append(data)
                if not answered and prompt.encode() in b"".join(chunks):
                    os.write(master, answer.encode())
                    answered = True
            elif proc.poll() is not None and not select.select([master], [], [], 0)[0]:
                break
        returncode = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    output = b"".join(chunks).decode("utf-8", errors="replace")
    assert answered, f"the prompt {prompt!r} never appeared; terminal:\n{output}"
    return TerminalRun(returncode, output)


def migrate(db_path: Path) -> None:
    proc = subprocess.run([str(SESSIONCTL), "--db", str(db_path), "migrate"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"applied {SESSIONS_MIGRATION}\n"


def session_row(user_id: str, expires_at: int) -> dict:
    return {"user_id": user_id, "status": "gathering", "collected_info": "{}", "messages": "[]",
            "created_at": expires_at - SESSION_TTL_MS, "updated_at": expires_at - SESSION_TTL_MS,
            "expires_at": expires_at}


def user_ids(db_path: Path) -> list[str]:
    return [bytes.fromhex(row[1]).decode() for row in raw_rows(db_path)]


def seed(db_path: Path, expired: int, live: int) -> None:
    now = now_ms()
    insert_rows(db_path, [session_row(f"expired-{i:04d}", now - 60_000 - i) for i in range(expired)]
                + [session_row(f"live-{i:04d}", now + SESSION_TTL_MS) for i in range(live)])


# -- sessions cleanup -----------------------------------------------------------------------


def test_cleanup_of_several_batches_on_a_terminal_shows_a_progress_bar_and_deletes_every_expired_row(tmp_path):
    db_path = tmp_path / "sessions.db"
    migrate(db_path)
    seed(db_path, expired=300, live=3)

    run = run_on_terminal("--db", db_path, "sessions", "cleanup", "--batch-size", "10", cwd=tmp_path)

    assert run.returncode == 0, run.output
    assert BAR_TEXT in run.output
    assert "100%" in run.output  # the bar advanced with the batches to the end
    assert "deleted 300 expired sessions" in run.output
    assert "Traceback" not in run.output
    assert user_ids(db_path) == ["live-0000", "live-0001", "live-0002"]


def test_cleanup_redirected_to_a_file_at_a_terminal_draws_the_bar_on_the_terminal_and_keeps_the_file_clean(tmp_path):
    """`sessionctl sessions cleanup > cleanup.log` typed at a terminal: stderr is the terminal.

    The bar belongs on the terminal; the file gets exactly the result line.
    """
    db_path = tmp_path / "sessions.db"
    migrate(db_path)
    seed(db_path, expired=300, live=1)
    log = tmp_path / "cleanup.log"

    run = run_on_terminal("--db", db_path, "sessions", "cleanup", "--batch-size", "10", cwd=tmp_path,
                          stdout_to=log)

    assert run.returncode == 0, run.output
    assert user_ids(db_path) == ["live-0000"]
    assert log.read_text(encoding="utf-8") == "deleted 300 expired sessions\n"
    assert BAR_TEXT in run.output


def test_cleanup_of_a_single_batch_on_a_terminal_draws_no_bar(tmp_path):
    db_path = tmp_path / "sessions.db"
    migrate(db_path)
    seed(db_path, expired=10, live=1)

    run = run_on_terminal("--db", db_path, "sessions", "cleanup", "--batch-size", "10", cwd=tmp_path)

    assert run.returncode == 0, run.output
    assert BAR_TEXT not in run.output
    assert "deleted 10 expired sessions" in run.output
    assert user_ids(db_path) == ["live-0000"]


def test_quiet_cleanup_on_a_terminal_prints_nothing_even_for_many_batches(tmp_path):
    db_path = tmp_path / "sessions.db"
    migrate(db_path)
    seed(db_path, expired=300, live=1)

    run = run_on_terminal("--db", db_path, "sessions", "cleanup", "--batch-size", "10", "--quiet", cwd=tmp_path)

    assert run.returncode == 0, run.output
    assert run.output == ""
    assert user_ids(db_path) == ["live-0000"]


# -- rollback asks on a terminal ----------------------------------------------------------------


def _ledger_and_tables(db_path: Path) -> tuple[list, list]:
    conn = raw_sqlite.connect(db_path)
    try:
        ledger = conn.execute("SELECT name FROM d1_migrations").fetchall()
        objects = conn.execute(
            "SELECT type, name FROM sqlite_master WHERE tbl_name = 'server_sessions' ORDER BY type, name"
        ).fetchall()
        return ledger, objects
    finally:
        conn.close()


def test_rollback_on_a_terminal_answered_no_refuses_with_exit_2_and_drops_nothing(tmp_path):
    db_path = tmp_path / "sessions.db"
    migrate(db_path)
    seed(db_path, expired=2, live=3)
    rows_before, schema_before = raw_rows(db_path), _ledger_and_tables(db_path)

    run = run_on_terminal("--db", db_path, "rollback", cwd=tmp_path, answer="n\n")

    assert run.returncode == 2, run.output
    assert "Drop server_sessions (5 rows)" in run.output
    assert "rollback refused, nothing was dropped: not confirmed" in run.output
    assert raw_rows(db_path) == rows_before
    assert _ledger_and_tables(db_path) == schema_before
    assert not (tmp_path / "backups").exists()  # it asked before writing the backup


def test_rollback_on_a_terminal_answered_yes_backs_up_and_drops(tmp_path):
    db_path = tmp_path / "sessions.db"
    migrate(db_path)
    seed(db_path, expired=2, live=3)

    run = run_on_terminal("--db", db_path, "rollback", cwd=tmp_path, answer="y\n")

    assert run.returncode == 0, run.output
    assert "backed up 5 rows to backups" in run.output
    assert f"rolled back {SESSIONS_MIGRATION}" in run.output
    assert _ledger_and_tables(db_path) == ([], [])
    (backup,) = (tmp_path / "backups").glob("server_sessions-*.jsonl")
    assert len(backup.read_text(encoding="utf-8").splitlines()) == 5


# -- sessions delete asks on a terminal -----------------------------------------------------------


def test_delete_on_a_terminal_answered_no_refuses_with_exit_2_and_deletes_nothing(tmp_path):
    db_path = tmp_path / "sessions.db"
    migrate(db_path)
    seed(db_path, expired=1, live=2)
    before = raw_rows(db_path)

    run = run_on_terminal("--db", db_path, "sessions", "delete", "live-0000", cwd=tmp_path, answer="n\n")

    assert run.returncode == 2, run.output
    assert "Delete 1 session(s) (live-0000)" in run.output
    assert "delete refused, nothing was deleted: not confirmed" in run.output
    assert raw_rows(db_path) == before


def test_delete_on_a_terminal_answered_yes_deletes_the_named_sessions(tmp_path):
    db_path = tmp_path / "sessions.db"
    migrate(db_path)
    seed(db_path, expired=1, live=2)

    run = run_on_terminal("--db", db_path, "sessions", "delete", "live-0000", "expired-0000", "nobody",
                          cwd=tmp_path, answer="y\n")

    assert run.returncode == 0, run.output
    assert "deleted live-0000" in run.output
    assert "deleted expired-0000" in run.output
    assert "not found nobody" in run.output
    assert "2 deleted, 1 not found" in run.output
    assert user_ids(db_path) == ["live-0001"]


def test_delete_with_stdout_redirected_asks_on_the_terminal_and_keeps_the_question_out_of_the_file(tmp_path):
    """`sessionctl sessions delete USER > out.txt` typed at a terminal: the question must reach the
    person (stderr is the terminal), not the file, where nobody sees it while the command waits."""
    db_path = tmp_path / "sessions.db"
    migrate(db_path)
    seed(db_path, expired=1, live=2)
    out = tmp_path / "out.txt"

    # typed ahead: if the question went to the file, waiting for it on the terminal would hang
    run = run_on_terminal("--db", db_path, "sessions", "delete", "live-0000", cwd=tmp_path,
                          answer="y\n", prompt=None, stdout_to=out)

    assert run.returncode == 0, run.output
    assert user_ids(db_path) == ["expired-0000", "live-0001"]
    assert "Delete 1 session(s) (live-0000)" in run.output
    assert out.read_text(encoding="utf-8") == "deleted live-0000\n1 deleted, 0 not found\n"


# -- sessions show ----------------------------------------------------------------------------


def test_show_on_a_terminal_draws_the_grid_with_rich_and_piped_prints_the_same_lines_plainly(tmp_path):
    db = tmp_path / "s.db"
    migrate(db)
    now = now_ms()
    insert_rows(db, [{**session_row("tg:[bold]1", now - 1_000), "collected_info": '{"budget": [1, 2]}',
                      "messages": '{"not": "a list"'}])

    shown = run_on_terminal("--db", db, "sessions", "show", "tg:[bold]1", cwd=tmp_path)
    piped = subprocess.run([str(SESSIONCTL), "--db", str(db), "sessions", "show", "tg:[bold]1"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)

    assert shown.returncode == 0 and piped.returncode == 0
    assert "\x1b[1;31mEXPIRED" in shown.output  # bold red, drawn by rich on the terminal
    assert "\x1b[" not in piped.stdout  # piped: plain text, no escape codes
    screen = [line.rstrip() for line in shown.output.replace("\x1b[1;31m", "").replace("\x1b[1m", "")
              .replace("\x1b[0m", "").replace("\r", "").splitlines() if not line.startswith("sessionctl:")]
    assert screen == piped.stdout.splitlines()  # the same lines, whoever draws them
    assert piped.stdout.splitlines()[:2] == ["user_id              tg:[bold]1", "status               gathering  EXPIRED"]
    assert "MALFORMED JSON (shown raw)" in piped.stdout
