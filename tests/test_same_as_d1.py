"""`sessionctl migrate` does exactly what `wrangler d1 migrations apply --local` does.

The method is differential. Each folder of tests/d1_corpus/ is one case: a set of migration
files, nothing else. For each case the test builds two identical wrangler projects (the bot's
wrangler.toml, the case's files copied byte for byte into migrations/), runs the pinned real
wrangler in one and sessionctl in its twin, and compares what the two left behind. wrangler
runs D1's own engine (workerd's SQLite, driven by miniflare), so what it does is the reference:
no expected result is written down anywhere, and a case is only ever right by agreeing.

Compared, on the two local D1 files (opened read-only with the standard library), leaving out
D1's own ``_cf_*`` tables and sessionctl's ``sessionctl_migration_checksums``:

- the schema: ``type, name, tbl_name, sql`` of every sqlite_master entry, the ``sql`` text byte
  for byte (so a comment kept, a BOM kept or a line ending changed shows);
- every table's rows in rowid order, each value with its ``typeof`` (the ledger's applied_at,
  a clock reading, is left out);
- the ledger: the ``d1_migrations`` names in id order;
- the files each tool left in its project outside .wrangler/ (an ATTACH can create one);
- the outcome: both exit zero or both non-zero, the same file named as the failing one, and
  D1's message appearing in sessionctl's one ``sessionctl: error:`` line (no traceback). The
  message compared is D1's with its wrapping taken off (``D1_ERROR:``, `` at offset N``, the
  ``: SQLITE_<CODE> (extended: ...)`` suffix) and cut to its first line and first sentence:
  for SQLite's own errors that is SQLite's text (``FOREIGN KEY constraint failed``,
  ``near "CREAT": syntax error``, ``not authorized``); where D1 or wrangler word the refusal
  themselves, it is their first sentence.

A case fails with every difference listed at once, followed by both tools' output.

The corpus probes, folder by folder, what a migration tool can get wrong against D1: how the
files are found and ordered (numbers with and without leading zeros, signs, no number, spaces,
a quote, a hidden file, an upper-case .SQL, empty and comment-only files); how a file becomes
statements (comments holding ``;``, strings holding ``--``, ``/*`` and ``;``, trigger bodies,
CASE ... END, CRLF, a BOM, a missing last ``;``, bracketed names); how transactions in a file
are treated (a .dump wrapper, COMMIT, ROLLBACK, SAVEPOINT, two transactions, lower case); and
what D1's engine allows and enforces (foreign keys and cascades through a table rebuild,
PRAGMAs, newer SQLite functions, refused functions, ATTACH, a syntax error mid-file).

The cases run a few at a time in the background (each a project pair of its own), one wrangler
call per case, sessionctl beside it; the test of a case waits for its own.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from wrangler_tools import BOT_TOML, DB_NAME, STATE_DIR, require_wrangler, wrangler_env

pytestmark = pytest.mark.wrangler

CORPUS = Path(__file__).resolve().parent / "d1_corpus"
CASES = sorted(path.name for path in CORPUS.iterdir() if path.is_dir() and not path.name.startswith("."))

SESSIONCTL = Path(sys.executable).parent / "sessionctl"
WORKER_JS = "export default { async fetch() { return new Response('ok'); } };\n"
LEDGER = "d1_migrations"
CHECKSUM_TABLE = "sessionctl_migration_checksums"
TIMEOUT_S = 120  # per tool and case; wrangler needs ~2-5 s
WORKERS = 3  # cases in flight at once: wrangler waits on workerd's start-up much of the time
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # wrangler colours its errors even into a pipe


# -- the two projects -------------------------------------------------------------------------


def make_project(root: Path, case: str) -> Path:
    """A wrangler project holding the case's migration files, byte for byte."""
    (root / "src").mkdir(parents=True)
    (root / "src" / "index.js").write_text(WORKER_JS)
    (root / "wrangler.toml").write_text(BOT_TOML, encoding="utf-8")
    migrations = root / "migrations"
    migrations.mkdir()
    for path in (CORPUS / case).iterdir():
        shutil.copyfile(path, migrations / path.name)
    return root


@dataclass
class Run:
    tool: str
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return f"--- {self.tool} exited {self.returncode}\n[stdout]\n{self.stdout}\n[stderr]\n{self.stderr}"


def run_both(wrangler_bin: Path, wrangler_env: dict[str, str], sessionctl_env: dict[str, str],
             theirs: Path, ours: Path) -> tuple[Run, Run]:
    """wrangler in one project and sessionctl in the other, at the same time."""
    pipes = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True, encoding="utf-8", errors="surrogateescape")
    started = [
        ("wrangler d1 migrations apply --local",
         subprocess.Popen([str(wrangler_bin), "d1", "migrations", "apply", DB_NAME, "--local"],
                          cwd=theirs, env=wrangler_env, **pipes)),
        ("sessionctl migrate",
         subprocess.Popen([str(SESSIONCTL), "migrate"], cwd=ours, env=sessionctl_env, **pipes)),
    ]
    runs = []
    for tool, proc in started:
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            stderr += f"\n(killed after {TIMEOUT_S} s)"
        runs.append(Run(tool, proc.returncode, ANSI.sub("", stdout), ANSI.sub("", stderr)))
    return runs[0], runs[1]


# -- what a run left behind -------------------------------------------------------------------


@dataclass
class Snapshot:
    file: str | None  # the local D1 file's name (the Durable Object's hex id); None: no file
    schema: list[tuple] = field(default_factory=list)  # (type, name, tbl_name, sql)
    rows: dict[str, list[tuple]] = field(default_factory=dict)  # table -> rows of (typeof, value)
    ledger: list[str] = field(default_factory=list)
    project_files: list[str] = field(default_factory=list)  # outside .wrangler/


def ignored(table: str) -> bool:
    return table.startswith("_cf_") or table == CHECKSUM_TABLE


def quote_id(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def snapshot(project: Path) -> Snapshot:
    project_files = sorted(str(p.relative_to(project)) for p in project.rglob("*")
                           if p.is_file() and p.relative_to(project).parts[0] != ".wrangler")
    files = sorted(p for p in (project / STATE_DIR).glob("*.sqlite") if p.name != "metadata.sqlite")
    if not files:
        return Snapshot(file=None, project_files=project_files)
    assert len(files) == 1, f"more than one local D1 file in {project}: {files}"
    conn = sqlite3.connect(f"file:{quote(str(files[0]))}?mode=ro", uri=True)
    conn.text_factory = lambda data: data.decode("utf-8", "surrogateescape")
    try:
        schema = [entry for entry in conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
            if not ignored(entry[2])]
        rows = {name: table_rows(conn, name) for kind, name, _, _ in schema if kind == "table"}
        ledger = ([name for (name,) in conn.execute(f"SELECT name FROM {LEDGER} ORDER BY id")]
                  if LEDGER in rows else [])
    finally:
        conn.close()
    return Snapshot(files[0].name, schema, rows, ledger, project_files)


def table_rows(conn: sqlite3.Connection, table: str) -> list[tuple]:
    """Every row as ((typeof, value), ...), in rowid order (all columns for WITHOUT ROWID)."""
    columns = [column[1] for column in conn.execute(f"PRAGMA table_info({quote_id(table)})")]
    if table == LEDGER:
        columns.remove("applied_at")
    typed = ", ".join(f"typeof({quote_id(c)}), {quote_id(c)}" for c in columns)
    try:
        conn.execute(f"SELECT rowid FROM {quote_id(table)} LIMIT 0")
        order = "rowid"
    except sqlite3.OperationalError:
        order = ", ".join(quote_id(c) for c in columns)
    return [tuple(zip(row[::2], row[1::2]))
            for row in conn.execute(f"SELECT {typed} FROM {quote_id(table)} ORDER BY {order}")]


# -- what a run said ----------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    failed_file: str | None
    message: str | None  # the error as the tool printed it


def wrangler_outcome(run: Run) -> Outcome:
    """wrangler marks the failing file ❌ in its table and prints ``✘ [ERROR] <message>``."""
    marked = re.findall(r"│ (.+?) +│ ❌", run.stdout)
    errors = [error for error in re.findall(r"✘ \[ERROR\] (.*?)(?=\n\n|\n✘|\Z)", run.stderr, flags=re.S)
              if not error.startswith("Migration ")]  # "Migration X failed with the following errors:"
    return Outcome(run.returncode == 0, marked[-1] if marked else None,
                   errors[-1].strip() if errors else None)


def sessionctl_outcome(run: Run, names: list[str]) -> Outcome:
    """sessionctl prints one ``sessionctl: error: ...`` line naming the failing file."""
    lines = [line for line in run.stderr.splitlines() if line.startswith("sessionctl: error: ")]
    message = lines[-1].removeprefix("sessionctl: error: ") if lines else None
    named = [name for name in names if message and name in message]
    return Outcome(run.returncode == 0, max(named, key=len) if named else None, message)


def core_message(message: str) -> str:
    """D1's message without its wrapping: first line, first sentence, no codes or offsets."""
    core = message.strip().splitlines()[0]
    core = re.sub(r"^(D1_ERROR|Error): ", "", core)
    core = re.sub(r"^Wrangler (?=could not process)", "", core)  # sessionctl speaks for itself
    core = re.sub(r": SQLITE_[A-Z_]+( \(extended: SQLITE_[A-Z_]+\))?$", "", core)
    core = re.sub(r" at offset \d+$", "", core)
    return core.split(". ")[0].rstrip(".")


# -- the comparison -------------------------------------------------------------------------------


def differences(d1: Snapshot, ours: Snapshot, d1_said: Outcome, we_said: Outcome,
                sessionctl_stderr: str) -> list[str]:
    """Every way sessionctl's run differs from D1's, each as a short paragraph."""
    found = []

    def compare(what: str, expected: object, actual: object) -> None:
        if expected != actual:
            found.append(f"{what}:\n  D1 (wrangler): {expected!r}\n  sessionctl:    {actual!r}")

    compare("exit status (True = zero)", d1_said.ok, we_said.ok)
    compare("local D1 file", d1.file, ours.file)
    d1_schema = {entry[:2]: entry for entry in d1.schema}
    our_schema = {entry[:2]: entry for entry in ours.schema}
    for key in sorted(d1_schema.keys() | our_schema.keys()):
        compare(f"sqlite_master {key[0]} {key[1]} (type, name, tbl_name, sql)",
                d1_schema.get(key), our_schema.get(key))
    for table in sorted(d1.rows.keys() & ours.rows.keys()):
        compare(f"rows of {table} ((typeof, value) per column)", d1.rows[table], ours.rows[table])
    compare(f"{LEDGER} names in id order", d1.ledger, ours.ledger)
    compare("files in the project outside .wrangler/", d1.project_files, ours.project_files)
    compare("failing file", d1_said.failed_file, we_said.failed_file)

    if not d1_said.ok:
        if d1_said.message is None:
            found.append("harness: wrangler failed without a ✘ [ERROR] message")
        elif we_said.message is None or core_message(d1_said.message) not in we_said.message:
            found.append(f"error message:\n  D1 (wrangler): {core_message(d1_said.message)!r}\n"
                         f"  sessionctl:    {we_said.message!r}")
    error_lines = [line for line in sessionctl_stderr.splitlines() if line.startswith("sessionctl: error: ")]
    if "Traceback" in sessionctl_stderr or len(error_lines) != (0 if we_said.ok else 1):
        found.append("sessionctl's stderr: expected no traceback and exactly "
                     f"{0 if we_said.ok else 1} `sessionctl: error:` line")
    return found


# -- running the corpus ---------------------------------------------------------------------------


@dataclass
class CaseRun:
    """One case run by both tools: what each printed, what each left."""
    wrangler: Run
    sessionctl: Run
    d1: Snapshot
    ours: Snapshot


def run_case(case: str, folder: Path, wrangler_bin: Path, wrangler_env: dict[str, str],
             sessionctl_env: dict[str, str]) -> CaseRun:
    theirs = make_project(folder / "wrangler", case)
    ours = make_project(folder / "sessionctl", case)
    wrangler_env = {**wrangler_env, "WRANGLER_LOG_PATH": str(folder / "wrangler-logs")}
    wrangler_run, sessionctl_run = run_both(wrangler_bin, wrangler_env, sessionctl_env, theirs, ours)
    return CaseRun(wrangler_run, sessionctl_run, snapshot(theirs), snapshot(ours))


@pytest.fixture(scope="module")
def case_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Every selected case, started at once on a few workers: ``case_runs(case)`` waits for one."""
    wrangler_bin = require_wrangler()
    # The environments are read here, once: the autouse fixture edits os.environ test by test.
    base_wrangler_env = wrangler_env(tmp_path_factory.mktemp("wrangler-logs"))
    sessionctl_env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONCTL_")}
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    futures: dict[str, Future] = {}

    def start(case: str) -> None:
        futures[case] = pool.submit(run_case, case, tmp_path_factory.mktemp(case), wrangler_bin,
                                    base_wrangler_env, sessionctl_env)

    this_file = Path(__file__).resolve()
    for item in request.session.items:  # in the order the tests will ask for them
        callspec = getattr(item, "callspec", None)
        if callspec and "case" in callspec.params and item.path.resolve() == this_file:
            start(callspec.params["case"])

    def result(case: str) -> CaseRun:
        if case not in futures:
            start(case)
        return futures[case].result(timeout=4 * TIMEOUT_S)

    yield result
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("case", CASES)
def test_sessionctl_migrate_leaves_what_wrangler_leaves(case, case_runs):
    run = case_runs(case)
    names = [path.name for path in (CORPUS / case).iterdir()]
    d1_said, we_said = wrangler_outcome(run.wrangler), sessionctl_outcome(run.sessionctl, names)
    if d1_said.ok == (d1_said.failed_file is not None):
        pytest.fail("harness: wrangler's exit status and its ❌ mark disagree\n" + run.wrangler.describe())

    found = differences(run.d1, run.ours, d1_said, we_said, run.sessionctl.stderr)
    assert not found, (f"{case}: sessionctl differs from D1\n\n" + "\n\n".join(found)
                       + "\n\n" + run.wrangler.describe() + "\n" + run.sessionctl.describe())


# -- the corpus itself -------------------------------------------------------------------------


def test_the_corpus_bytes_are_as_written():
    """An editor or a checkout that rewrites line endings or drops the BOM would void cases."""
    crlf = (CORPUS / "crlf_line_endings" / "0001_crlf.sql").read_bytes()
    assert b"\r\n" in crlf and b"\n" not in crlf.replace(b"\r\n", b"")
    assert (CORPUS / "utf8_bom" / "0001_bom.sql").read_bytes().startswith(b"\xef\xbb\xbf")
    assert (CORPUS / "empty_file" / "0001_empty.sql").read_bytes() == b""
    assert (CORPUS / "hidden_file" / ".x.sql").is_file()
    assert (CORPUS / "uppercase_extension" / "0002_b.SQL").is_file()
    assert not (CORPUS / "no_trailing_semicolon" / "0001_create.sql").read_bytes().rstrip().endswith(b";")
    assert all(any((CORPUS / case).iterdir()) for case in CASES)
