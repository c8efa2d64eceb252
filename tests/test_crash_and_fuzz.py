"""A bounded fault battery: kill -9 at varied moments, fuzzed import lines and stored values, a full disk.

1. kill -9 loops. Each writing command (migrate, sessions import, sessions cleanup, rollback --yes,
   sessions export --output) runs as the real console script and is killed with SIGKILL at a fixed
   list of moments, nearly all defined by something observable (a line on stdout or stderr, a file
   that appears, the WAL or a temporary file reaching a size) and polled for with a deadline; one
   is a fixed delay after start. Nothing waits on a sleep for synchronisation. After each kill the
   file must pass ``PRAGMA integrity_check``, the ledger and the schema must agree, the command's
   own promise must hold (import: all rows or none; cleanup: only expired rows gone; rollback:
   nothing or everything; export: the named file absent, as it was, or complete), and a normal
   run of the same command must then succeed and finish the job. Each loop also checks that its
   kills landed on both sides of the commit, so that it proves something.
2. Property-based fuzzing (hypothesis) of import lines (deep nesting, huge strings, NaN and
   Infinity tokens, control characters, bytes that are not UTF-8, duplicate keys, a BOM, wrong
   types, extra keys, cut lines) and of stored values (any bytes, any type SQLite keeps). Either
   the import succeeds and ``sessions export`` gives back exactly what was imported (byte for byte,
   type for type), or exactly one error line names the file and the first bad line, the exit code
   is 1 (2 for a file that is not UTF-8 text, as documented) and the table is unchanged. The
   oracle is written here from the README's contract, not taken from sessionctl.
3. A full disk (a small tmpfs mounted per test -- 2 MiB, or a few tens where the command needs room
   to succeed once space is freed -- filled up; RLIMIT_FSIZE where mounting is not allowed) under
   the database or the output of every command that writes: one clean line, the documented exit
   code (3: the database could not be used; 1: an output file could not be written), nothing
   half-written, and the command works again once there is room.

In-process readers use raw_sqlite (APSW) only, never the standard library's sqlite3.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from conftest import SESSIONCTL, SESSIONS_MIGRATION, copy_migrations, error_lines, raw_connect
from sessionctl.migrations import apply_migrations, discover_migrations
from sessionctl.targets.sqlite_file import open_sqlite_file

TABLE = "server_sessions"
INDEX = "idx_server_sessions_expires"
STATUSES = ("gathering", "recommending", "selecting", "ordering", "completed")
CORE_COLUMNS = ("user_id", "status", "collected_info", "last_recommendation", "messages",
                "created_at", "updated_at", "expires_at")
JSON_COLUMNS = ("collected_info", "last_recommendation", "messages")
TIME_COLUMNS = ("created_at", "updated_at", "expires_at")
FAR = 4_102_444_800_000  # 2100: live for the whole run
INT64 = (-(2**63), 2**63 - 1)

M004 = "004_locale_and_rows.sql"
M005 = "005_notes.sql"
M004_ROWS = 20_000
M005_ROWS = 20_000
M004_SQL = f"""ALTER TABLE server_sessions ADD COLUMN locale TEXT;
INSERT INTO server_sessions (user_id, status, collected_info, messages, created_at, updated_at, expires_at, locale)
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {M004_ROWS})
SELECT 'm004-' || i, 'gathering', '{{}}', '["' || hex(randomblob(200)) || '"]', i, i, {FAR}, 'ko' FROM n;
"""
M005_SQL = f"""CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
INSERT INTO notes (id, body)
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {M005_ROWS})
SELECT i, hex(randomblob(100)) FROM n;
"""
ALL_MIGRATIONS = [SESSIONS_MIGRATION, M004, M005]
KNOWN_TABLES = {"d1_migrations", "sessionctl_migration_checksums", "sqlite_sequence", TABLE, "notes"}
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.\d+\.[A-Za-z0-9_]{8}$")  # what a killed write leaves


# -- plumbing ---------------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONCTL_")}
    env.update(extra)
    return env


def _run(*args: object, cwd: Path, preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SESSIONCTL), *map(str, args)], cwd=cwd, env=_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, preexec_fn=preexec_fn)


def _ok(result: subprocess.CompletedProcess | Any) -> str:
    """The stdout of a run that must have succeeded (a subprocess or a CliRunner result)."""
    code = getattr(result, "returncode", getattr(result, "exit_code", None))
    assert code == 0, (code, result.stdout, result.stderr)
    assert error_lines(result.stderr) == [], result.stderr
    return result.stdout


def _migrations_with_004_and_005(folder: Path) -> Path:
    (folder / M004).write_text(M004_SQL)
    (folder / M005).write_text(M005_SQL)
    return folder


def _migrated(path: Path, folder: Path | None = None) -> None:
    """Migrate ``path`` through the library (003 only, or every file of ``folder``) and close it."""
    from sessionctl.migrations import bundled_migrations_dir

    db = open_sqlite_file(path, create=True)
    try:
        list(apply_migrations(db, discover_migrations(folder or bundled_migrations_dir())))
    finally:
        db.close()


def _insert(path: Path, rows: list[tuple]) -> None:
    conn = raw_connect(path)
    try:
        with conn:
            conn.executemany(f"INSERT INTO {TABLE} ({', '.join(CORE_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             rows)
    finally:
        conn.close()


def _row(user_id: str, expires_at: int = FAR, size: int = 100, updated_at: int = 2) -> tuple:
    messages = json.dumps([{"role": "user", "content": "서버 추천 " + "x" * size}], ensure_ascii=False,
                          separators=(",", ":"))
    return (user_id, STATUSES[len(user_id) % 5], '{"budget_krw":50000}', None, messages, 1, updated_at, expires_at)


def _copy_db(template: Path, folder: Path, name: str = "s.db") -> Path:
    assert not Path(f"{template}-wal").exists(), "the template is still open somewhere"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, folder / name)
    return folder / name


@dataclass
class Facts:
    integrity: list[tuple]
    objects: dict[str, str]  # name -> type
    ledger: list[str]
    checksums: list[str]
    columns: list[str]
    journal_mode: str

    @property
    def has_table(self) -> bool:
        return self.objects.get(TABLE) == "table"


def _facts(path: Path) -> Facts:
    assert path.exists(), path  # a raw connection would create it
    conn = raw_connect(path)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        objects = {name: kind for kind, name in conn.execute("SELECT type, name FROM sqlite_master").fetchall()}
        ledger = ([n for (n,) in conn.execute("SELECT name FROM d1_migrations ORDER BY id").fetchall()]
                  if "d1_migrations" in objects else [])
        checksums = (sorted(n for (n,) in conn.execute(
            "SELECT name FROM sessionctl_migration_checksums WHERE ledger = 'd1_migrations'").fetchall())
            if "sessionctl_migration_checksums" in objects else [])
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({TABLE})").fetchall()]
        journal_mode = conn.execute("PRAGMA journal_mode").fetchall()[0][0]
        return Facts(integrity, objects, ledger, checksums, columns, journal_mode)
    finally:
        conn.close()


def _count(path: Path, sql: str) -> int:
    conn = raw_connect(path)
    try:
        return conn.execute(sql).fetchall()[0][0]
    finally:
        conn.close()


def _dump(path: Path, where: str = "1") -> list[tuple]:
    """Every row of server_sessions, every column, as (type, value) pairs; text and blobs as their bytes."""
    conn = raw_connect(path)
    try:
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({TABLE})").fetchall()]
        picks = ", ".join(f'typeof("{c}"), CASE WHEN typeof("{c}") IN (\'text\', \'blob\') '
                          f'THEN CAST("{c}" AS BLOB) ELSE "{c}" END' for c in columns)
        flat = conn.execute(f"SELECT {picks} FROM {TABLE} WHERE {where} "
                            "ORDER BY CAST(user_id AS BLOB), rowid").fetchall()
        return [tuple(zip(row[0::2], row[1::2])) for row in flat]
    finally:
        conn.close()


def _reference_export(template: Path, folder: Path, cli) -> str:
    """What ``sessions export`` prints for the template's rows (run on a copy: the template stays closed)."""
    copy = _copy_db(template, folder)
    result = cli("--db", copy, "sessions", "export")
    assert result.exit_code == 0, result.stderr
    return result.stdout


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TEMPORARY.match(p.name))


# -- kill -9 at observable moments ----------------------------------------------------------------------


@dataclass
class Run:
    proc: subprocess.Popen
    cwd: Path
    started: float

    def stdout(self) -> str:
        return (self.cwd / "kill.out").read_text(errors="replace")

    def stderr(self) -> str:
        return (self.cwd / "kill.err").read_text(errors="replace")


@dataclass(frozen=True)
class KillPoint:
    label: str
    reached: Callable[[Run], bool]
    may_finish_first: bool = False  # the moment can come only as the command ends

    def __str__(self) -> str:
        return self.label


def on_stderr(text: str, may_finish_first: bool = False) -> KillPoint:
    return KillPoint(f"stderr says {text!r}", lambda run: text in run.stderr(), may_finish_first)


def on_stdout(text: str, may_finish_first: bool = False) -> KillPoint:
    return KillPoint(f"stdout says {text!r}", lambda run: text in run.stdout(), may_finish_first)


def on_file(pattern: str, min_bytes: int = 0, may_finish_first: bool = False) -> KillPoint:
    def reached(run: Run) -> bool:
        for path in run.cwd.glob(pattern):
            try:
                if path.stat().st_size >= min_bytes:
                    return True
            except FileNotFoundError:
                pass
        return False

    return KillPoint(f"{pattern} at {min_bytes} bytes", reached, may_finish_first)


def after_ms(ms: int) -> KillPoint:
    return KillPoint(f"{ms} ms after start", lambda run: time.monotonic() - run.started >= ms / 1000, True)


def kill_at(point: KillPoint, args: list[object], cwd: Path) -> bool:
    """Start sessionctl in ``cwd``, SIGKILL it when ``point`` is reached; True if it was killed.

    The condition is polled (every half millisecond, with a deadline); the command's stdout is
    unbuffered so that a line it printed can be the moment.
    """
    with open(cwd / "kill.out", "wb") as out, open(cwd / "kill.err", "wb") as err:
        proc = subprocess.Popen([str(SESSIONCTL), *map(str, args)], cwd=cwd, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, env=_env(PYTHONUNBUFFERED="1"))
    run = Run(proc, cwd, time.monotonic())
    deadline = run.started + 90
    try:
        while proc.poll() is None:
            if point.reached(run):
                proc.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline, f"{point} never came: {run.stderr()}"
            time.sleep(0.0005)
    finally:
        if proc.poll() is None:  # a failed assertion above: leave no process behind
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    if proc.returncode == -signal.SIGKILL:
        return True
    assert proc.returncode == 0, (point.label, proc.returncode, run.stderr())
    assert point.may_finish_first, f"the command finished before the kill point {point}"
    return False


def _staging(facts: Facts) -> list[str]:
    """sessionctl's work tables a kill leaves to the next run of the same command: an import's
    staging tables (sessionctl_import_<run>) and a rollback's copy of the table."""
    return sorted(n for n in facts.objects
                  if n.startswith(("sessionctl_import_", "sqlite_autoindex_sessionctl_import_",
                                   "sessionctl_rollback_", "sqlite_autoindex_sessionctl_rollback_")))


def _assert_intact(path: Path, staging_allowed: bool = False) -> Facts:
    facts = _facts(path)
    assert facts.integrity == [("ok",)], facts.integrity
    others = set(facts.objects) - {INDEX, "sqlite_autoindex_server_sessions_1", "sqlite_autoindex_d1_migrations_1",
                                   "sqlite_autoindex_sessionctl_migration_checksums_1"}
    if staging_allowed:
        others -= set(_staging(facts))
    assert others <= KNOWN_TABLES, facts.objects
    # the ledger and the schema agree: 003 recorded exactly when its table and index exist
    assert (SESSIONS_MIGRATION in facts.ledger) == facts.has_table == (INDEX in facts.objects), facts
    assert facts.checksums == sorted(facts.ledger), facts
    return facts


def _assert_ledger_matches_schema(path: Path) -> Facts:
    """Each recorded migration's objects exist, each unrecorded one's do not; checksums beside the ledger."""
    facts = _assert_intact(path)
    ledger = facts.ledger
    assert ledger == ALL_MIGRATIONS[: len(ledger)], ledger
    assert facts.checksums == sorted(ledger), (facts.checksums, ledger)
    assert (SESSIONS_MIGRATION in ledger) == facts.has_table == (INDEX in facts.objects), (ledger, facts.objects)
    assert (M004 in ledger) == ("locale" in facts.columns), (ledger, facts.columns)
    if facts.has_table:
        rows = _count(path, f"SELECT count(*) FROM {TABLE}")
        assert rows == (M004_ROWS if M004 in ledger else 0), (ledger, rows)
    assert (M005 in ledger) == ("notes" in facts.objects), (ledger, facts.objects)
    if "notes" in facts.objects:
        assert _count(path, "SELECT count(*) FROM notes") == M005_ROWS
    return facts


MIGRATE_POINTS = [
    on_stderr("sessionctl: target:"),
    on_file("s.db"),  # the file is created
    on_file("s.db-wal", 8 * 1024),  # 003 (and the ledger) being written or just committed
    on_file("s.db-wal", 1024 * 1024),  # 004's rows spilled into the WAL: mid-transaction
    on_stdout(f"applied {M004}"),  # 005 running
    on_stdout(f"applied {M005}", may_finish_first=True),
]


def test_migrate_killed_at_any_moment_leaves_a_ledger_that_matches_the_schema(tmp_path, cli):
    folder = _migrations_with_004_and_005(copy_migrations(tmp_path))
    states = []
    for i, point in enumerate(MIGRATE_POINTS):
        work = tmp_path / f"k{i}"
        work.mkdir()
        db = work / "s.db"
        killed = kill_at(point, ["--db", db, "--migrations-dir", folder, "migrate"], work)

        if db.exists():
            ledger = _assert_ledger_matches_schema(db).ledger
        else:
            ledger = []
        states.append((str(point), killed, tuple(ledger)))
        if SESSIONS_MIGRATION in ledger:  # verify agrees, before anything repairs the file
            _ok(cli("--db", db, "--migrations-dir", folder, "verify"))

        again = _run("--db", db, "--migrations-dir", folder, "migrate", cwd=work)
        pending = [name for name in ALL_MIGRATIONS if name not in ledger]
        expected = [f"applied {name}" for name in pending] or ["nothing to apply: every migration is applied"]
        assert _ok(again).splitlines() == expected, (point.label, again.stdout)
        facts = _assert_ledger_matches_schema(db)
        assert facts.ledger == ALL_MIGRATIONS
        assert facts.journal_mode == "wal", point.label
        _ok(cli("--db", db, "--migrations-dir", folder, "verify"))

    print(*states, sep="\n")  # where the kills landed (shown with -s or on failure)
    assert sum(killed for _, killed, _ in states) >= len(MIGRATE_POINTS) - 1, states
    assert any(0 < len(ledger) < len(ALL_MIGRATIONS) for _, _, ledger in states), states  # killed between files


IMPORT_ROWS = 3_000
IMPORT_POINTS = [
    on_stderr("sessionctl: target:"),
    on_file("s.db-wal"),  # the database is open
    on_file("s.db-wal", 64 * 1024),  # the transaction spilled: rows written, not committed
    on_file("s.db-wal", 2 * 1024 * 1024),
    on_stdout("imported ", may_finish_first=True),
]


def test_import_killed_at_any_moment_writes_all_rows_or_none(tmp_path, cli):
    template = tmp_path / "template.db"
    _migrated(template)
    _insert(template, [_row(f"pre-{i}") for i in range(5)])
    source = tmp_path / "in.jsonl"
    with open(source, "w", encoding="utf-8") as out:
        for i in range(IMPORT_ROWS):
            user_id, status, info, rec, messages, created, updated, expires = _row(f"imp-{i:05d}", size=1000)
            out.write(json.dumps({"user_id": user_id, "status": status, "collected_info": info,
                                  "last_recommendation": rec, "messages": messages, "created_at": created,
                                  "updated_at": updated, "expires_at": expires}, ensure_ascii=False) + "\n")
    before = _dump(template)
    reference = _copy_db(template, tmp_path / "reference")
    _ok(cli("--db", reference, "sessions", "import", source))
    after = _dump(reference)
    assert len(after) == len(before) + IMPORT_ROWS

    seen = []
    for i, point in enumerate(IMPORT_POINTS):
        db = _copy_db(template, tmp_path / f"k{i}")
        killed = kill_at(point, ["--db", db, "sessions", "import", source], db.parent)
        left_behind = _staging(_assert_intact(db, staging_allowed=True))
        rows = _dump(db)
        assert rows in (before, after), f"{point}: {len(rows) - len(before)} of {IMPORT_ROWS} rows imported"
        state = "none" if rows == before else "all"
        seen.append((str(point), killed, state, left_behind))
        _ok(cli("--db", db, "verify"))  # what a killed import leaves is not part of the schema

        again = _ok(_run("--db", db, "sessions", "import", source, cwd=db.parent))
        assert again == (f"imported {IMPORT_ROWS} of {IMPORT_ROWS} sessions from {source}\n" if state == "none" else
                         f"imported 0 of {IMPORT_ROWS} sessions from {source} ({IMPORT_ROWS} skipped: on-conflict skip)\n")
        assert _dump(db) == after
        assert _staging(_assert_intact(db)) == [], "the next import drops what a killed one left"

    print(*seen, sep="\n")  # where the kills landed (shown with -s or on failure)
    assert {state for _, _, state, _ in seen} == {"none", "all"}, seen  # kills landed before and after the commit
    assert sum(killed for _, killed, _, _ in seen) >= len(IMPORT_POINTS) - 1, seen


EXPIRED, LIVE = 10_000, 300
CLEANUP_POINTS = [
    on_stderr("sessionctl: target:"),
    on_file("s.db-wal", 8 * 1024),  # the first batches committed
    after_ms(150),  # the log is copied back between batches: it stays small, so time marks the middle
    after_ms(500),
    on_stdout("deleted ", may_finish_first=True),
]


def test_cleanup_killed_at_any_moment_removes_only_expired_rows(tmp_path):
    template = tmp_path / "template.db"
    _migrated(template)
    _insert(template, [_row(f"e{i:06d}", expires_at=1_000_000 + i, size=60) for i in range(EXPIRED)]
            + [_row(f"l{i:06d}") for i in range(LIVE)])
    live = _dump(template, f"expires_at = {FAR}")
    expired = _dump(template, f"expires_at < {FAR}")
    assert (len(live), len(expired)) == (LIVE, EXPIRED)

    seen = []
    for i, point in enumerate(CLEANUP_POINTS):
        db = _copy_db(template, tmp_path / f"k{i}")
        killed = kill_at(point, ["--db", db, "sessions", "cleanup", "--batch-size", "25"], db.parent)
        _assert_intact(db)
        assert _dump(db, f"expires_at = {FAR}") == live, point.label
        left = _dump(db, f"expires_at < {FAR}")
        assert set(left) <= set(expired), point.label  # nothing changed, nothing new
        seen.append((str(point), killed, EXPIRED - len(left)))

        again = _ok(_run("--db", db, "sessions", "cleanup", "--batch-size", "25", cwd=db.parent))
        assert again == f"deleted {len(left)} expired sessions\n", point.label
        assert _dump(db) == live

    print(*seen, sep="\n")  # where the kills landed (shown with -s or on failure)
    assert any(0 < removed < EXPIRED for _, _, removed in seen), seen  # killed between batches
    assert sum(killed for _, killed, _ in seen) >= len(CLEANUP_POINTS) - 2, seen


ROLLBACK_ROWS = 6_000
ROLLBACK_POINTS = [
    on_stderr("sessionctl: target:"),
    on_file("backups/.b.jsonl.*"),  # the backup's temporary is created
    on_file("backups/.b.jsonl.*", 512 * 1024),  # ... and half written
    on_file("backups/b.jsonl"),  # the backup is in place, the drop not yet committed
    on_stdout("rolled back", may_finish_first=True),
]


def test_rollback_killed_at_any_moment_does_nothing_or_everything(tmp_path, cli):
    template = tmp_path / "template.db"
    _migrated(template)
    _insert(template, [_row(f"r{i:05d}", size=200) for i in range(ROLLBACK_ROWS)])
    before = _dump(template)
    reference = _reference_export(template, tmp_path / "reference", cli)  # a backup is what export writes
    assert len(reference.splitlines()) == ROLLBACK_ROWS

    seen = []
    for i, point in enumerate(ROLLBACK_POINTS):
        db = _copy_db(template, tmp_path / f"k{i}")
        backups = db.parent / "backups"
        backups.mkdir()
        backup, second = backups / "b.jsonl", backups / "b2.jsonl"
        killed = kill_at(point, ["--db", db, "rollback", "--yes", "--backup", "backups/b.jsonl"], db.parent)

        facts = _assert_intact(db, staging_allowed=True)  # a copy left here is replaced by the next rollback
        if facts.has_table:  # nothing done
            state = "nothing"
            assert SESSIONS_MIGRATION in facts.ledger and SESSIONS_MIGRATION in facts.checksums, facts
            assert INDEX in facts.objects
            assert _dump(db) == before, point.label
        else:  # everything done
            state = "everything"
            assert SESSIONS_MIGRATION not in facts.ledger and SESSIONS_MIGRATION not in facts.checksums, facts
            assert INDEX not in facts.objects
            assert backup.exists(), f"{point}: the table is gone and there is no backup"
        if backup.exists():  # complete, never half
            assert backup.read_text(encoding="utf-8") == reference, f"{point}: the backup is incomplete"
        assert set(os.listdir(backups)) - {"b.jsonl"} == set(_temporaries(backups)), os.listdir(backups)
        seen.append((str(point), killed, state))

        again = _ok(_run("--db", db, "rollback", "--yes", "--backup", "backups/b2.jsonl", cwd=db.parent))
        if state == "nothing":
            assert again.splitlines()[0] == f"backed up {ROLLBACK_ROWS} rows to backups/b2.jsonl", again
            assert second.read_text(encoding="utf-8") == reference
            assert _temporaries(backups) == [], "the next write in the folder removes what the kill left"
        else:
            assert again.startswith("nothing to roll back"), again
            assert not second.exists()
        facts = _assert_intact(db)
        assert not facts.has_table and facts.ledger == [] and facts.checksums == []

        # and the backup restores exactly what was dropped
        _ok(cli("--db", db, "migrate"))
        _ok(cli("--db", db, "sessions", "import", second if state == "nothing" else backup))
        assert _dump(db) == before, point.label

    print(*seen, sep="\n")  # where the kills landed (shown with -s or on failure)
    assert {state for _, _, state in seen} == {"nothing", "everything"}, seen
    assert sum(killed for _, killed, _ in seen) >= len(ROLLBACK_POINTS) - 1, seen


EXPORT_ROWS = 20_000
OLD_EXPORT = '{"user_id": "old", "note": "an earlier, complete export"}\n'
EXPORT_POINTS = [  # (moment, whether an earlier export is already at the output path)
    (on_stderr("sessionctl: target:"), False),
    (on_file("out/.sessions.jsonl.*"), True),
    (on_file("out/.sessions.jsonl.*", 1024 * 1024), True),
    (on_file("out/.sessions.jsonl.*", 4 * 1024 * 1024), False),
    (on_stderr("exported ", may_finish_first=True), False),
]


def test_export_killed_at_any_moment_leaves_the_output_absent_as_it_was_or_complete(tmp_path, cli):
    template = tmp_path / "template.db"
    _migrated(template)
    _insert(template, [_row(f"x{i:05d}", size=300) for i in range(EXPORT_ROWS)])
    reference = _reference_export(template, tmp_path / "reference", cli)
    assert len(reference.splitlines()) == EXPORT_ROWS
    unchanged = _dump(template)

    seen = []
    for i, (point, earlier) in enumerate(EXPORT_POINTS):
        db = _copy_db(template, tmp_path / f"k{i}")
        out = db.parent / "out"
        out.mkdir()
        output = out / "sessions.jsonl"
        if earlier:
            output.write_text(OLD_EXPORT, encoding="utf-8")
        killed = kill_at(point, ["--db", db, "sessions", "export", "--output", "out/sessions.jsonl"], db.parent)

        _assert_intact(db)
        assert _dump(db) == unchanged
        if not output.exists():
            state = "absent"
            assert not earlier, f"{point}: the earlier export was removed"
        else:
            text = output.read_text(encoding="utf-8")
            assert text in ((OLD_EXPORT, reference) if earlier else (reference,)), \
                f"{point}: the output holds {len(text.splitlines())} lines, a half-written file"
            state = "complete" if text == reference else "as it was"
        assert set(os.listdir(out)) - {"sessions.jsonl"} == set(_temporaries(out)), os.listdir(out)
        seen.append((str(point), killed, state))

        again = _run("--db", db, "sessions", "export", "--output", "out/sessions.jsonl", cwd=db.parent)
        assert again.returncode == 0, again.stderr
        assert error_lines(again.stderr) == [f"exported {EXPORT_ROWS} sessions to out/sessions.jsonl"]
        assert output.read_text(encoding="utf-8") == reference
        assert os.listdir(out) == ["sessions.jsonl"], "the next export removes what the kill left"

    print(*seen, sep="\n")  # where the kills landed (shown with -s or on failure)
    states = {state for _, _, state in seen}
    assert "complete" in states and {"absent", "as it was"} & states, seen  # before and after the rename
    assert sum(killed for _, killed, _ in seen) >= len(EXPORT_POINTS) - 1, seen


# -- fuzzing: the oracle, written from the README ------------------------------------------------------


def _stored(text: str) -> bytes:
    """The bytes a JSON Lines string stands for: UTF-8, and \\udc80-\\udcff as the raw byte it escapes."""
    return text.encode("utf-8", "surrogateescape")


def _storable(text: str) -> bool:
    try:
        _stored(text)
    except UnicodeEncodeError:
        return False
    return True


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


def _as_stored(value: Any) -> tuple[str, Any]:
    """A JSON value as (typeof, value) the way the table keeps it (text as bytes)."""
    if value is None:
        return ("null", None)
    if isinstance(value, str):
        return ("text", _stored(value))
    if isinstance(value, int):
        return ("integer", value)
    return ("real", value)


def _line_problem(line: str, extra: tuple[str, ...]) -> tuple[str | None, dict | None]:
    """Why an import line must be refused (None if it must not), and its row."""
    try:
        row = json.loads(line, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        return f"not JSON: {type(exc).__name__}", None
    if not isinstance(row, dict):
        return "not an object", None
    if set(row) - set(CORE_COLUMNS) - set(extra):
        return "unknown key", None
    user_id = row.get("user_id")
    if not isinstance(user_id, str) or not user_id or not _storable(user_id):
        return "user_id", None
    if row.get("status") not in STATUSES or not isinstance(row.get("status"), str):
        return "status", None
    for column in TIME_COLUMNS:
        value = row.get(column)
        if type(value) is not int or not INT64[0] <= value <= INT64[1]:
            return column, None
    for column in JSON_COLUMNS:
        value = row.get(column)
        if not (value is None or (isinstance(value, str) and _storable(value))):
            return column, None
    for column in extra:  # "they take any JSON scalar" -- and it must be storable
        value = row.get(column)
        if isinstance(value, (bool, list, dict)):
            return column, None
        if isinstance(value, str) and not _storable(value):
            return column, None
        if type(value) is int and not INT64[0] <= value <= INT64[1]:
            return f"{column} beyond 64 bits", None
    return None, row


def _expected_import(data: bytes, extra: tuple[str, ...]) -> tuple[str, Any]:
    """("ok", the rows), ("bad", the first bad line's number), ("not-utf8", None), or for a file
    that is not UTF-8 after a bad line ("not-utf8 or bad", that line's number): a streaming
    reader may meet either first."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8")
        complete = before[: max(before.rfind("\n"), before.rfind("\r")) + 1]  # the lines read whole
        outcome, lineno = _expected_import(complete.encode("utf-8"), extra)
        return ("not-utf8 or bad", lineno) if outcome == "bad" else ("not-utf8", None)
    rows, seen = [], {}
    for lineno, line in enumerate(io.StringIO(text, newline=None), 1):  # as a text file reads
        if not line.strip():
            continue
        problem, row = _line_problem(line, extra)
        if problem is None and _stored(row["user_id"]) in seen:
            problem = f"user also on line {seen[_stored(row['user_id'])]}"
        if problem is not None:
            note(f"line {lineno}: {problem}")
            return "bad", lineno
        seen[_stored(row["user_id"])] = lineno
        rows.append(row)
    return "ok", rows


def _model_after(existing: list[tuple], rows: list[dict], policy: str, columns: list[str]) -> tuple[list, int, int]:
    """The table after importing ``rows`` with ``policy``: (rows as _dump gives them, written, skipped)."""
    table = {dict(zip(columns, r))["user_id"][1]: list(r) for r in existing}
    written = skipped = 0
    for row in rows:
        new = [_as_stored(row.get(c)) for c in columns]
        key = new[0][1]
        if key in table:
            old = dict(zip(columns, table[key]))
            if policy == "skip" or (policy == "newer" and not row["updated_at"] > old["updated_at"][1]):
                skipped += 1
                continue
            for c in columns:  # a column the line does not name keeps its value
                if c not in CORE_COLUMNS and c not in row:
                    new[columns.index(c)] = old[c]
        table[key] = new
        written += 1
    return [tuple(table[k]) for k in sorted(table)], written, skipped


def _exported(stdout: str, columns: list[str]) -> list[tuple]:
    rows = []
    assert stdout == "" or stdout.endswith("\n"), stdout[-200:]
    for line in stdout.split("\n")[:-1]:  # JSON Lines: "\n" ends a line (U+2028, U+0085 are text)
        row = json.loads(line, parse_constant=_refuse_constant)
        assert list(row) == columns, row
        rows.append(tuple(_as_stored(row[c]) for c in columns))
    return sorted(rows, key=lambda r: (r[0][1] is not None, r[0][1] or b""))


# -- fuzzing: the inputs ----------------------------------------------------------------------------------

_json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | \
    st.text(max_size=8)
json_values = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
any_text = st.text(max_size=12)  # control characters, NUL, astral planes
byte_text = st.binary(min_size=1, max_size=10).map(lambda b: b.decode("utf-8", "surrogateescape"))
huge_text = st.sampled_from([70_000, 400_000]).map(lambda n: "서버" * (n // 2))
column_text = st.one_of(json_values.map(lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))),
                        any_text, byte_text, huge_text)
user_ids = st.one_of(st.sampled_from(["pre-1", "pre-2", "u1", "u2", "서버"]), any_text, byte_text)
times = st.one_of(st.integers(*INT64), st.sampled_from([0, -1, *INT64]))
wrong_scalars = st.one_of(st.integers(min_value=2**63, max_value=2**80), st.integers(max_value=-(2**63) - 1),
                          st.floats(allow_nan=False), st.booleans(), st.text(max_size=5), st.none(),
                          st.lists(st.integers(), max_size=2))
note_values = st.one_of(st.none(), any_text, byte_text, st.integers(*INT64), st.floats(allow_nan=False),
                        wrong_scalars, json_values)


@st.composite
def rows(draw) -> dict:
    row = {"user_id": draw(user_ids), "status": draw(st.sampled_from(STATUSES)),
           "created_at": draw(times), "updated_at": draw(times), "expires_at": draw(times)}
    for column in JSON_COLUMNS:
        if draw(st.booleans()):
            row[column] = draw(st.one_of(st.none(), column_text))
    if draw(st.booleans()):
        row["note"] = draw(note_values)
    if draw(st.integers(0, 3)) == 0:  # a wrong value somewhere
        column = draw(st.sampled_from(sorted(row) + ["status"]))
        row[column] = draw(st.one_of(wrong_scalars, st.text(max_size=3), json_values))
    if draw(st.integers(0, 9)) == 0:
        del row[draw(st.sampled_from(sorted(row)))]
    return row


def _dumps(value: Any, ascii_only: bool) -> str:
    text = json.dumps(value, ensure_ascii=ascii_only)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: only as escapes
        text = json.dumps(value, ensure_ascii=True)
    return text


@st.composite
def lines(draw) -> bytes:
    """One line of an import file (its bytes), from a row or plain hostile text."""
    kind = draw(st.sampled_from(["row"] * 8 + ["dup", "token", "deep", "control", "bom", "cut", "not-object",
                                               "blank", "bytes", "extra", "trailing"]))
    row = draw(rows())
    ascii_only = draw(st.booleans())
    pairs = [(key, _dumps(value, ascii_only)) for key, value in row.items()]
    if kind == "dup" and pairs:
        at = draw(st.integers(0, len(pairs) - 1))
        other = (pairs[at][0], _dumps(draw(st.one_of(json_values, wrong_scalars)), ascii_only))
        pairs.insert(at + draw(st.integers(0, 1)), other)  # before (the real value wins) or after
    elif kind == "token" and pairs:
        at = draw(st.integers(0, len(pairs) - 1))
        pairs[at] = (pairs[at][0], draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "[NaN]"])))
    elif kind == "deep":
        depth = draw(st.sampled_from([2, 100, 998, 1_000, 5_000, 60_000]))
        nested = draw(st.sampled_from(["[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth]))
        pairs.append((draw(st.sampled_from(["messages", "note", "deep", "user_id"])), nested))
    elif kind == "extra":
        pairs.append((draw(st.sampled_from(["bogus", "User_id", "", "locale"])), _dumps(draw(json_values), True)))
    text = "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in pairs) + "}"
    if kind == "control":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["\x00", "\x01", "\x0b", "\x0c", "\x1b", "\x7f", "\t", "\r",
                                                 "\u0085", "\u2028"])) + text[at:]
    elif kind == "bom":
        text = "\ufeff" + text
    elif kind == "cut":
        text = text[: draw(st.integers(1, max(1, len(text) - 1)))]
    elif kind == "not-object":
        text = draw(st.sampled_from(["[]", "null", '"user_id"', "42", "true", "[{}]"]))
    elif kind == "blank":
        text = draw(st.sampled_from(["", "   ", "\t", "\u3000"]))
    elif kind == "trailing":
        text += draw(st.sampled_from([" x", ", 1", "}", " {}"]))
    data = text.encode("utf-8")
    if kind == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])) \
            + data[at:]
    return data


import_files = st.builds(
    lambda body, newline, final: newline.join(body) + (newline if final else b""),
    st.lists(lines(), min_size=1, max_size=4), st.sampled_from([b"\n", b"\r\n"]), st.booleans())

FUZZ_SETTINGS = dict(deadline=None, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                            HealthCheck.data_too_large, HealthCheck.large_base_example])

PRE_ROWS = [("pre-1", "gathering", "{}", None, "[]", 1, 500, FAR),
            ("pre-2", "completed", '{"k":"서버"}', None, "[]", 1, 10**12, FAR)]


def _fuzz_database(tmp_path: Path) -> tuple[Path, Path]:
    """A migrated database whose table has a later column without a type (it keeps what it is given)."""
    folder = copy_migrations(tmp_path, "fuzz-migrations")
    (folder / "004_note.sql").write_text("ALTER TABLE server_sessions ADD COLUMN note;\n")
    db = tmp_path / "fuzz.db"
    _migrated(db, folder)
    return db, folder


def _reset(db: Path, rows: list[tuple]) -> None:
    conn = raw_connect(db)
    try:
        with conn:
            conn.execute(f"DELETE FROM {TABLE}")
            conn.executemany(f"INSERT INTO {TABLE} ({', '.join(CORE_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    finally:
        conn.close()


def test_fuzzed_import_files_round_trip_or_are_refused_naming_the_first_bad_line(tmp_path, cli):
    db, _ = _fuzz_database(tmp_path)
    columns = [*CORE_COLUMNS, "note"]
    source = "in.jsonl"

    @settings(max_examples=250, **FUZZ_SETTINGS)
    @given(data=import_files, policy=st.sampled_from(["skip", "replace", "newer"]))
    def check(data: bytes, policy: str) -> None:
        _reset(db, PRE_ROWS)
        before = _dump(db)
        (tmp_path / source).write_bytes(data)
        expected, detail = _expected_import(data, ("note",))
        note(f"expected {expected} {detail if expected != 'ok' else ''}")
        result = cli("--db", db, "sessions", "import", "--on-conflict", policy, source)
        errors = error_lines(result.stderr)
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr

        if expected == "ok":
            table, written, skipped = _model_after(before, detail, policy, columns)
            assert result.exit_code == 0, result.stderr
            assert errors == []
            assert result.stdout == (f"imported {written} of {written + skipped} sessions from {source}"
                                     + (f" ({skipped} skipped: on-conflict {policy})" if skipped else "") + "\n")
            assert _dump(db) == table
            exported = cli("--db", db, "sessions", "export")
            assert exported.exit_code == 0, exported.stderr
            assert _exported(exported.stdout, columns) == table  # the round trip
            return

        assert len(errors) == 1, result.stderr
        if expected == "not-utf8 or bad" and result.exit_code == 1:
            expected = "bad"
        if expected.startswith("not-utf8"):
            assert result.exit_code == 2, result.stderr
            assert re.fullmatch(rf"sessionctl: error: cannot read {source}: not UTF-8 text \(.+\); nothing was imported",
                                errors[0]), errors
        else:
            assert result.exit_code == 1, result.stderr
            assert errors[0].startswith(f"sessionctl: error: {source}:{detail}: "), errors
            assert errors[0].endswith("; nothing was imported") or errors[0].endswith(" more characters)"), errors
        assert _dump(db) == before  # nothing written

    check()


# A stored value as (SQL expression, parameter): text from any bytes, integers, reals, NULL, blobs.
_text_bytes = st.binary(max_size=12).map(lambda b: ("CAST(? AS TEXT)", b))
_json_bytes = json_values.map(lambda v: ("CAST(? AS TEXT)", json.dumps(v, ensure_ascii=False).encode()))
_integer = st.integers(*INT64).map(lambda n: ("?", n))
_real = st.floats(allow_nan=False).map(lambda f: ("?", f))
_null = st.just(("?", None))
_blob = st.binary(max_size=4).map(lambda b: ("?", b))
stored_user_ids = st.one_of(*[_text_bytes] * 6, _integer, _real, _null, _blob)
stored_times = st.one_of(*[_integer] * 6, _real, _text_bytes, st.just(("?", "12")))
stored_json = st.one_of(_null, _text_bytes, _json_bytes, st.just(("?", "x" * 70_000)), _integer, _real, _blob)
stored_notes = st.one_of(_null, _text_bytes, _integer, _real, _blob)


@st.composite
def stored_rows(draw) -> list[tuple[str, Any]]:
    values = [draw(stored_user_ids), ("?", draw(st.sampled_from(STATUSES)))]
    values += [draw(stored_json) for _ in JSON_COLUMNS]
    values += [draw(stored_times) for _ in TIME_COLUMNS]
    values.append(draw(stored_notes))
    return values


def test_fuzzed_stored_values_export_faithfully_and_restore_exactly_or_are_refused(tmp_path, cli):
    src, _ = _fuzz_database(tmp_path)
    dst = tmp_path / "restored.db"
    shutil.copyfile(src, dst)
    columns = [*CORE_COLUMNS, "note"]
    insert = f"INSERT OR IGNORE INTO {TABLE} ({', '.join(columns)}) VALUES "

    @settings(max_examples=150, **FUZZ_SETTINGS)
    @given(table=st.lists(stored_rows(), min_size=1, max_size=5))
    def check(table: list[list[tuple[str, Any]]]) -> None:
        _reset(src, [])
        _reset(dst, [])
        conn = raw_connect(src)
        try:
            for values in table:
                conn.execute(insert + "(" + ", ".join(sql for sql, _ in values) + ")", [p for _, p in values])
        finally:
            conn.close()
        stored = _dump(src)
        out = tmp_path / "exported.jsonl"
        out.unlink(missing_ok=True)
        result = cli("--db", src, "sessions", "export", "--output", out.name)
        assert "internal error" not in result.stderr, result.stderr
        if any(kind == "blob" for row in stored for kind, _ in row):
            assert result.exit_code == 1, result.stderr
            (line,) = error_lines(result.stderr)
            assert re.fullmatch(r"sessionctl: error: row .*: column \w+ holds a BLOB, which a JSON Lines file "
                                r"cannot keep as stored text", line), line
            assert not out.exists() and _temporaries(tmp_path) == []
            return
        assert result.exit_code == 0, result.stderr
        data = out.read_bytes()
        # faithful: every stored value, type for type, byte for byte (rows with a NULL user_id in any order)
        assert sorted(map(repr, _exported(data.decode("utf-8"), columns))) == sorted(map(repr, stored))

        expected, detail = _expected_import(data, ("note",))
        note(f"export: {data[:500]!r}; import expected {expected} {detail if expected != 'ok' else ''}")
        restored = cli("--db", dst, "sessions", "import", out.name)
        assert "internal error" not in restored.stderr, restored.stderr
        if expected == "ok":
            assert restored.exit_code == 0, restored.stderr
            assert _dump(dst) == stored
        else:
            assert expected == "bad", expected  # export writes UTF-8 text
            assert restored.exit_code == 1, restored.stderr
            (line,) = error_lines(restored.stderr)
            assert line.startswith(f"sessionctl: error: {out.name}:{detail}: "), line
            assert _dump(dst) == []

    check()


def test_import_refuses_the_same_user_twice_when_the_second_spells_its_bytes_as_escapes(tmp_path, cli):
    """README: import validates "no user twice". "\\udcc3\\udca9" is how a JSON Lines file writes the
    bytes C3 A9 -- the same stored user_id as "é" -- so the second line names the same user."""
    db, _ = _fuzz_database(tmp_path)
    _reset(db, [])
    lines = [{"user_id": "é", "status": "gathering", "created_at": 1, "updated_at": 1, "expires_at": FAR},
             {"user_id": "\udcc3\udca9", "status": "completed", "created_at": 2, "updated_at": 2, "expires_at": FAR}]
    (tmp_path / "twice.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    result = cli("--db", db, "sessions", "import", "--on-conflict", "replace", "twice.jsonl")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    (line,) = error_lines(result.stderr)
    assert line.startswith("sessionctl: error: twice.jsonl:2: user_id "), line
    assert _dump(db) == []


def _later_column_database(tmp_path: Path, column_sql: str) -> tuple[Path, Path]:
    folder = copy_migrations(tmp_path, "later-migrations")
    (folder / "004_later.sql").write_text(f"ALTER TABLE server_sessions ADD COLUMN {column_sql};\n")
    db = tmp_path / "later.db"
    _migrated(db, folder)
    return db, folder


def _one_line(tmp_path: Path, name: str, **columns: Any) -> str:
    row = {"user_id": "tg:1", "status": "gathering", "created_at": 1, "updated_at": 2, "expires_at": FAR}
    row.update(columns)
    (tmp_path / name).write_text(json.dumps(row) + "\n", encoding="utf-8")
    return name


def test_export_keeps_the_columns_later_migrations_added_as_the_rollback_backup_does(tmp_path, cli):
    """README: export writes "raw column values", "the same format as rollback's backup", whose rows
    carry "every column the table has (later migrations' included)"."""
    db, folder = _later_column_database(tmp_path, "locale TEXT")
    _ok(cli("--db", db, "sessions", "import", _one_line(tmp_path, "in.jsonl", locale="ko")))
    exported = _ok(cli("--db", db, "sessions", "export"))
    _ok(cli("--db", db, "--migrations-dir", folder, "rollback", "--yes", "--through-later", "--backup", "b.jsonl"))
    backup = (tmp_path / "b.jsonl").read_text(encoding="utf-8")
    assert json.loads(backup)["locale"] == "ko"
    assert exported == backup, "sessions export dropped a column the table has"


def test_an_integer_beyond_64_bits_for_a_later_column_is_refused_naming_its_line(tmp_path, cli):
    db, _ = _later_column_database(tmp_path, "note")
    result = cli("--db", db, "sessions", "import", _one_line(tmp_path, "big.jsonl", note=2**70))
    assert result.exit_code == 1, result.stderr
    (line,) = error_lines(result.stderr)
    assert line.startswith("sessionctl: error: big.jsonl:1: note "), line
    assert line.endswith("; nothing was imported"), line
    assert _dump(db) == []


@pytest.mark.parametrize("declared", ["note", "note BLOB", "note INTEGER"])
def test_text_that_is_not_utf8_restores_as_the_same_text_in_a_later_column_of_any_type(tmp_path, cli, declared):
    """A JSON Lines string with \\udcXX escapes is TEXT holding those bytes (README: the backup keeps
    bytes that are not UTF-8). Restored as a BLOB instead, the next rollback cannot back it up."""
    db, folder = _later_column_database(tmp_path, declared)
    _ok(cli("--db", db, "sessions", "import", _one_line(tmp_path, "in.jsonl", note="caf\udce9")))
    assert [row[8] for row in _dump(db)] == [("text", b"caf\xe9")]
    _ok(cli("--db", db, "--migrations-dir", folder, "rollback", "--yes", "--through-later", "--backup", "b.jsonl"))


# -- a full disk ----------------------------------------------------------------------------------------------


class SmallDisk:
    """A small tmpfs (2 MiB unless said otherwise) mounted for one test, filled on demand.

    Where mounting is not allowed, the fallback is RLIMIT_FSIZE in the command's process (no
    LD_PRELOAD): every write past ``leave`` bytes (at least 64 KiB, room for SQLite's 32 KiB
    shared-memory file) into any file fails with EFBIG, which SQLite and Python report as they
    report a full disk. Coarser than a full disk -- it limits each file, wherever it is -- but the
    same failure paths.
    """

    def __init__(self, root: Path, size: str = "2m"):
        self.root = root
        root.mkdir()
        try:
            mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(root)],
                                   capture_output=True, text=True)
            self.mounted = mount.returncode == 0
        except OSError:  # no mount(8) here
            self.mounted = False
        self.limit: int | None = None

    def fill(self, leave: int = 0) -> None:
        """Leave about ``leave`` bytes free."""
        if not self.mounted:
            self.limit = max(leave, 64 * 1024)
            return
        filler = self.root / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for chunk in (b"\0" * 65536, b"\0" * 4096, b"\0"):
                try:
                    while True:
                        os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)
        if leave:
            os.truncate(filler, os.path.getsize(filler) - leave)
        assert shutil.disk_usage(self.root).free <= leave + 8192, shutil.disk_usage(self.root)

    def free(self) -> None:
        (self.root / "filler").unlink(missing_ok=True)
        self.limit = None

    def preexec(self) -> Callable[[], None] | None:
        if self.limit is None:
            return None
        limit = self.limit

        def limited() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        return limited

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path, request):
    """The disk: 2 MiB, or the size an indirect parametrization of ``small_disk`` asks for."""
    disk = SmallDisk(tmp_path / "small", getattr(request, "param", "2m"))
    try:
        yield disk
    finally:
        disk.unmount()


FULL_DISK_REASONS = ("No space left on device", "database or disk is full", "disk I/O error", "File too large")


def _assert_one_full_disk_line(result: subprocess.CompletedProcess, code: int, names: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("sessionctl: error: ") and "internal error" not in errors[0], errors
    assert names in errors[0], errors
    assert any(reason in errors[0] for reason in FULL_DISK_REASONS), errors


def _state(db: Path) -> tuple:
    facts = _assert_intact(db)
    return (facts.ledger, facts.checksums, sorted(facts.objects), facts.columns,
            _dump(db) if facts.has_table else None)


@pytest.mark.parametrize("small_disk", ["40m"], indirect=True)  # room for 004 and 005 once freed
@pytest.mark.parametrize("leave", [0, 256 * 1024])
def test_migrate_on_a_full_disk_applies_nothing_half_and_resumes_when_there_is_room(tmp_path, small_disk, cli, leave):
    folder = _migrations_with_004_and_005(copy_migrations(tmp_path))
    fresh = small_disk.root / "fresh.db"
    db = small_disk.root / "s.db"
    _migrated(db)  # 003 applied; 004 and 005 (megabytes of rows) pending
    before = _state(db)
    small_disk.fill(leave)

    result = _run("--db", db, "--migrations-dir", folder, "migrate", cwd=tmp_path, preexec_fn=small_disk.preexec())
    creating = _run("--db", fresh, "--migrations-dir", folder, "migrate", cwd=tmp_path,
                    preexec_fn=small_disk.preexec())
    small_disk.free()

    _assert_one_full_disk_line(result, 3, str(db))
    assert result.stdout == "", "no migration could be applied on a full disk"
    assert _state(db) == before
    _assert_ledger_matches_schema(db)
    _assert_one_full_disk_line(creating, 3, str(fresh))
    if fresh.exists():  # possibly empty (README: migrate then picks it up)
        _assert_ledger_matches_schema(fresh)

    for target in (db, fresh):
        _ok(cli("--db", target, "--migrations-dir", folder, "migrate"))
        assert _assert_ledger_matches_schema(target).ledger == ALL_MIGRATIONS
        _ok(cli("--db", target, "--migrations-dir", folder, "verify"))


def _import_source(path: Path, rows: int) -> Path:
    with open(path, "w", encoding="utf-8") as out:
        for i in range(rows):
            out.write(json.dumps({"user_id": f"imp-{i:05d}", "status": "gathering", "collected_info": "{}",
                                  "messages": json.dumps(["x" * 1000]), "created_at": 1, "updated_at": 2,
                                  "expires_at": FAR}) + "\n")
    return path


@pytest.mark.parametrize("small_disk", ["24m"], indirect=True)  # room for the rows (staged, then merged) once freed
@pytest.mark.parametrize("leave", [0, 256 * 1024])
def test_import_onto_a_full_disk_writes_nothing(tmp_path, small_disk, cli, leave):
    db = small_disk.root / "s.db"
    _migrated(db)
    _insert(db, [_row(f"pre-{i}") for i in range(5)])
    source = _import_source(tmp_path / "in.jsonl", 3_000)
    before = _state(db)
    small_disk.fill(leave)

    result = _run("--db", db, "sessions", "import", source, cwd=tmp_path, preexec_fn=small_disk.preexec())
    small_disk.free()

    _assert_one_full_disk_line(result, 3, str(db))
    assert _state(db) == before
    assert _ok(cli("--db", db, "sessions", "import", source)) == f"imported 3000 of 3000 sessions from {source}\n"


@pytest.mark.parametrize("earlier", [False, True])
@pytest.mark.parametrize("leave", [0, 256 * 1024])
def test_export_onto_a_full_disk_leaves_no_partial_file(tmp_path, small_disk, cli, leave, earlier):
    db = tmp_path / "s.db"
    _migrated(db)
    _insert(db, [_row(f"x{i:05d}", size=300) for i in range(3_000)])  # ~1.3 MB of JSON Lines
    reference = cli("--db", db, "sessions", "export").stdout
    output = small_disk.root / "sessions.jsonl"
    if earlier:
        output.write_text(OLD_EXPORT, encoding="utf-8")
    before = _state(db)
    small_disk.fill(leave)

    result = _run("--db", db, "sessions", "export", "--output", output, cwd=tmp_path,
                  preexec_fn=small_disk.preexec())
    small_disk.free()

    _assert_one_full_disk_line(result, 1, str(output))
    assert _state(db) == before
    if earlier:
        assert output.read_text(encoding="utf-8") == OLD_EXPORT, "the earlier export was damaged"
    else:
        assert not output.exists(), f"a partial file of {output.stat().st_size} bytes was left"
    assert sorted(os.listdir(small_disk.root)) == (["sessions.jsonl"] if earlier else []), \
        os.listdir(small_disk.root)

    again = cli("--db", db, "sessions", "export", "--output", output)
    assert again.exit_code == 0, again.stderr
    assert output.read_text(encoding="utf-8") == reference


@pytest.mark.parametrize("leave", [0, 256 * 1024])
def test_rollback_whose_backup_hits_a_full_disk_drops_nothing(tmp_path, small_disk, cli, leave):
    db = tmp_path / "s.db"
    _migrated(db)
    _insert(db, [_row(f"r{i:05d}", size=300) for i in range(3_000)])
    before = _state(db)
    backup = small_disk.root / "b.jsonl"
    small_disk.fill(leave)

    result = _run("--db", db, "rollback", "--yes", "--backup", backup, cwd=tmp_path, preexec_fn=small_disk.preexec())
    small_disk.free()

    _assert_one_full_disk_line(result, 1, str(backup))
    assert result.stdout == ""
    assert _state(db) == before  # the table, its rows, 003's ledger row and checksum
    assert os.listdir(small_disk.root) == [], "no partial backup, no temporary"

    again = cli("--db", db, "rollback", "--yes", "--backup", backup)
    assert again.exit_code == 0, again.stderr
    assert len(backup.read_text(encoding="utf-8").splitlines()) == 3_000


def test_rollback_of_a_database_on_a_full_disk_drops_nothing(tmp_path, small_disk, cli):
    db = small_disk.root / "s.db"
    _migrated(db)
    _insert(db, [_row(f"r{i:05d}", size=100) for i in range(1_000)])
    before = _state(db)
    backup = tmp_path / "b.jsonl"
    small_disk.fill(0)

    result = _run("--db", db, "rollback", "--yes", "--backup", backup, cwd=tmp_path, preexec_fn=small_disk.preexec())
    small_disk.free()

    if small_disk.mounted or result.returncode == 3:
        _assert_one_full_disk_line(result, 3, str(db))
    else:  # RLIMIT_FSIZE limits the backup (on a roomy disk) as well
        _assert_one_full_disk_line(result, 1, str(backup))
    assert _state(db) == before
    if backup.exists():  # written before the drop failed: then complete
        assert len(backup.read_text(encoding="utf-8").splitlines()) == 1_000
    again = cli("--db", db, "rollback", "--yes", "--backup", tmp_path / "b2.jsonl")
    assert again.exit_code == 0, again.stderr


def _cleanup_disk(small_disk) -> tuple[Path, list, list]:
    db = small_disk.root / "s.db"
    _migrated(db)
    _insert(db, [_row(f"e{i:05d}", expires_at=1_000_000 + i, size=60) for i in range(3_000)]
            + [_row(f"l{i:05d}") for i in range(100)])
    return db, _dump(db, f"expires_at = {FAR}"), _dump(db, f"expires_at < {FAR}")


def test_cleanup_on_a_full_disk_removes_only_expired_rows_and_says_how_far_it_got(tmp_path, small_disk, cli):
    db, live, expired = _cleanup_disk(small_disk)
    small_disk.fill(0)

    result = _run("--db", db, "sessions", "cleanup", "--batch-size", "50", cwd=tmp_path,
                  preexec_fn=small_disk.preexec())
    small_disk.free()

    _assert_one_full_disk_line(result, 3, str(db))
    _assert_intact(db)
    assert _dump(db, f"expires_at = {FAR}") == live
    left = _dump(db, f"expires_at < {FAR}")
    assert set(left) <= set(expired)
    done = len(expired) - len(left)
    if done:
        assert f"(after deleting {done} expired sessions in earlier batches)" in result.stderr, result.stderr
    assert _ok(cli("--db", db, "sessions", "cleanup")) == f"deleted {len(left)} expired sessions\n"
    assert _dump(db) == live


def test_cleanup_on_a_nearly_full_disk_finishes_because_the_log_is_copied_back_between_batches(tmp_path, small_disk):
    # 200 KiB free holds a few batches' log. Checkpointed between batches, the log is reused
    # from its start; checkpointed only inside commits (every ~1,000 pages) it outgrew the disk.
    db, live, _ = _cleanup_disk(small_disk)
    small_disk.fill(200 * 1024)

    result = _run("--db", db, "sessions", "cleanup", "--batch-size", "50", cwd=tmp_path,
                  preexec_fn=small_disk.preexec())
    small_disk.free()

    assert result.returncode == 0, result.stderr
    assert result.stdout == "deleted 3000 expired sessions\n"
    _assert_intact(db)
    assert _dump(db) == live
