"""make bench: sessionctl against its peers, each result a ratio with a goal, in one run.

At full scale writes bench/results.md (the machine line, the table, what missed its goal)
and copies the table into README.md between the ``bench:begin``/``bench:end`` markers.

Sizes (env): BENCH_BIG (1,000,000 sessions; cleanup works on twice that, half expired),
BENCH_SMALL (10,000), BENCH_IMPORT (200,000); BENCH_SCALE multiplies them (develop with
BENCH_SCALE=0.02). BENCH_RUNS: runs of each whole process (default 20, best kept).
BENCH_WRANGLER: wrangler's path, for the wrangler comparison.

The tables are written as the bot writes them: JSON columns as JSON.stringify stores them,
Korean text, five statuses, saves spread over two hours (the expired half saved 2 h to
1 h ago, the live half in the last 50 min, so exactly half stay expired for 10 min).
Each is built once with one bulk insert; cleanup works on copies of its table, which is
the big table twice over (one INSERT ... SELECT).
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import apsw

from sessionctl import __version__
from sessionctl.migrations import apply_migrations, bundled_migrations_dir, discover_migrations
from sessionctl.repository import (
    SESSION_TTL_MS,
    ServerSession,
    cleanup_expired_sessions,
    get_server_session,
    now_ms,
    save_server_session,
)
from sessionctl.targets import open_sqlite_file
from sessionctl.targets.wrangler import D1Database, local_state_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
ZERO_ID = "00000000-0000-0000-0000-000000000000"

SCALE = float(os.environ.get("BENCH_SCALE", "1"))
BIG = int(int(os.environ.get("BENCH_BIG", "1000000")) * SCALE)
SMALL = int(int(os.environ.get("BENCH_SMALL", "10000")) * SCALE)
IMPORT_ROWS = int(int(os.environ.get("BENCH_IMPORT", "200000")) * SCALE)
CLEANUP_ROWS = 2 * BIG  # the big table twice over: half of it expired
RUNS = int(os.environ.get("BENCH_RUNS", "20"))  # 10 left start-up ratios 0.2 apart run to run
FULL = SCALE == 1 and BIG == 1_000_000
MINUTE_MS = 60_000


# -- the data: rows as the bot writes them -------------------------------------------------

REGIONS = ["서울", "부산", "대구", "인천", "광주", "대전"]
PURPOSES = ["쇼핑몰 운영", "개인 블로그", "게임 서버", "사내 메신저", "데이터 분석", "웹 서비스 운영"]
USER_SAYS = [
    "안녕하세요, 서버 추천 부탁드려요",
    "월 5만원 이하로 쇼핑몰 운영하려고 합니다",
    "트래픽은 하루 방문자 천 명 정도예요",
    "2번으로 할게요",
    "백업도 포함되나요?",
    "윈도우 서버도 가능한가요?",
]
BOT_SAYS = [
    "예산과 용도를 알려주시면 맞춤 서버를 추천해 드릴게요.",
    "서울 리전의 2코어 4GB VPS를 추천드립니다. 월 42,000원입니다.",
    "자동 백업은 하루 한 번, 7일간 보관됩니다.",
    "주문을 진행할까요? 결제 링크를 보내드릴게요.",
]
STATUSES = ["gathering", "recommending", "selecting", "ordering", "completed"]


def _stringify(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))  # as JSON.stringify writes it


def _variants(rng: random.Random, count: int = 256) -> list[tuple[str, str, str | None, str]]:
    """(status, collected_info, last_recommendation, messages) as stored text: a pool to draw from."""
    pool = []
    for n in range(count):
        status = STATUSES[n % 5]
        info = {"budget_krw": rng.choice([30000, 50000, 80000, 150000]), "region": rng.choice(REGIONS),
                "purpose": rng.choice(PURPOSES)}
        if n % 3:
            info["os"] = rng.choice(["ubuntu-24.04", "rocky-9", "windows-2022"])
        recommendation = None if status == "gathering" else {
            "plan": rng.choice(["vps-1c-2g", "vps-2c-4g", "vps-4c-8g"]), "region": info["region"],
            "monthly_krw": rng.choice([22000, 42000, 78000]), "reason": f"{info['purpose']}에 적합한 사양입니다",
        }
        messages = []
        for turn in range(1 + n % 6):
            messages.append({"role": "user", "content": rng.choice(USER_SAYS)} if turn % 2 == 0
                            else {"role": "assistant", "content": rng.choice(BOT_SAYS)})
        pool.append((status, _stringify(info), None if recommendation is None else _stringify(recommendation),
                     _stringify(messages)))
    return pool


def session_rows(count: int, now: int, prefix: str = "tg:", seed: int = 3):
    """``count`` rows in the order the bot first saved them (so rowids follow time, user ids do not):
    half expired (last saved 2 h to 1 h ago), half live (last saved in the last 50 minutes)."""
    rng = random.Random(seed)
    pool = _variants(rng)
    expired = count // 2
    saves = []
    for i in range(count):
        if i < expired:
            updated = now - 2 * SESSION_TTL_MS + rng.randrange(SESSION_TTL_MS)
        else:
            updated = now - 50 * MINUTE_MS + rng.randrange(50 * MINUTE_MS)
        saves.append((updated - rng.randrange(20 * MINUTE_MS), updated))
    saves.sort()
    ids = list(range(count))
    rng.shuffle(ids)  # Telegram ids arrive in no order
    for user, (created, updated) in zip(ids, saves):
        status, info, recommendation, messages = pool[rng.randrange(len(pool))]
        yield (f"{prefix}{user:08d}", status, info, recommendation, messages, created, updated,
               updated + SESSION_TTL_MS)


def live_user(path: Path) -> str:
    """A user id whose session stays live for the whole run (among the last 5% saved)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT user_id FROM server_sessions ORDER BY expires_at DESC "
                            "LIMIT 1 OFFSET (SELECT count(*) / 20 FROM server_sessions)").fetchone()[0]
    finally:
        conn.close()


def migrated(path: Path) -> None:
    db = open_sqlite_file(path, create=True)
    list(apply_migrations(db, discover_migrations(bundled_migrations_dir())))
    db.close()


@contextmanager
def bulk_loading(path: Path, source: Path | None = None) -> Iterator[sqlite3.Connection]:
    """A migrated file at ``path``, open for one fast bulk insert into server_sessions (``source``
    attached as ``src``). Its indexes are dropped first and re-created from their own CREATE
    statements afterwards (one sort instead of a million random inserts): the schema ends as
    migrate built it, in WAL mode."""
    migrated(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    if source is not None:
        conn.execute("ATTACH ? AS src", (str(source),))
    indexes = conn.execute(
        "SELECT name, sql FROM main.sqlite_master WHERE type='index' AND tbl_name='server_sessions' "
        "AND sql IS NOT NULL").fetchall()
    conn.execute("BEGIN")
    for name, _ in indexes:
        conn.execute(f'DROP INDEX main."{name}"')
    yield conn
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute("COMMIT")
    if source is not None:
        conn.execute("DETACH src")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def build_table(path: Path, count: int, now: int) -> float:
    """A migrated file holding ``count`` sessions, by one bulk insert; returns seconds taken."""
    start = time.perf_counter()
    with bulk_loading(path) as conn:
        conn.executemany("INSERT INTO server_sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", session_rows(count, now))
    return time.perf_counter() - start


def build_doubled(source: Path, path: Path, shift_ms: int) -> float:
    """``source``'s sessions twice over (the copy under other user ids), every time moved on by
    ``shift_ms`` so the windows hold as of now, in save order: one INSERT ... SELECT."""
    start = time.perf_counter()
    times = "created_at + :shift AS c, updated_at + :shift AS u, expires_at + :shift AS e"
    with bulk_loading(path, source) as conn:
        conn.execute(
            f"INSERT INTO main.server_sessions SELECT * FROM ("
            f" SELECT user_id, status, collected_info, last_recommendation, messages, {times} FROM src.server_sessions"
            f" UNION ALL SELECT 'tg:9' || substr(user_id, 4), status, collected_info, last_recommendation, messages, {times}"
            f" FROM src.server_sessions) ORDER BY c",
            {"shift": shift_ms},
        )
    return time.perf_counter() - start


def write_import_file(path: Path, count: int, now: int) -> None:
    """JSON Lines as `sessions export` writes them, user ids that are new to the target."""
    with open(path, "w", encoding="utf-8") as out:
        for values in session_rows(count, now, prefix="imp:", seed=7):
            out.write(json.dumps(dict(zip(COLUMNS, values)), ensure_ascii=False) + "\n")


COLUMNS = ("user_id", "status", "collected_info", "last_recommendation", "messages",
           "created_at", "updated_at", "expires_at")


def copy_db(source: Path, target: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, target)


# -- measuring -----------------------------------------------------------------------------


TIME = shutil.which("time", path="/usr/bin:/bin")


def run_once(argv: list[str], *, env: dict, cwd: Path | None = None, stdout=subprocess.DEVNULL,
             rss: bool = False) -> tuple[float, int | None]:
    """(wall seconds, peak RSS in KB or None) of one whole process.

    Peak RSS comes from /usr/bin/time, not from wait4(): Linux carries a process's peak RSS
    across exec, so a child spawned straight from this (large) process would report ours.
    """
    rss_file = None
    if rss and TIME:
        rss_file = tempfile.NamedTemporaryFile(prefix="bench-rss-", delete=False)
        argv = [TIME, "-f", "%M", "-o", rss_file.name, *argv]
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, env=env, cwd=cwd)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-500:]}")
    peak = None
    if rss_file is not None:
        peak = int(Path(rss_file.name).read_text().split()[-1])
        os.unlink(rss_file.name)
    return elapsed, peak


@dataclass
class Timing:
    best: float
    median: float

    @property
    def ms(self) -> str:
        return f"{self.best * 1000:.0f} ms (median {self.median * 1000:.0f})"


def whole_processes(commands: dict[str, list[str]], *, env: dict, runs: int = RUNS,
                    cwd: Path | None = None) -> dict[str, Timing]:
    """Best and median of ``runs`` runs of each command, after one discarded warm-up run each
    (warm page cache and bytecode). The commands take turns, run by run, so a burst of load
    from elsewhere on the machine falls on all of them alike."""
    for argv in commands.values():
        run_once(argv, env=env, cwd=cwd)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            times[name].append(run_once(argv, env=env, cwd=cwd)[0])
    return {name: Timing(min(t), statistics.median(t)) for name, t in times.items()}


def per_call_us(fns: dict[str, object], calls: int, rounds: int) -> dict[str, float]:
    """For each function: the median over ``rounds`` of the mean time of one call in a round of
    ``calls`` calls, in µs. The functions take turns, round by round."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


class Writer:
    """bench/bot_writer.py in its own process, saving beside an operation."""

    def __init__(self, db: Path, work: Path, name: str, env: dict, interval: float = 0.01):
        self.out = work / f"writer-{name}.json"
        self.stop = work / f"writer-{name}.stop"
        self.stop.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "bot_writer.py"), str(db), str(self.out), str(self.stop), str(interval)],
            stdout=subprocess.PIPE, env=env, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"bot_writer did not start: {line!r}")

    def finish(self, window: tuple[float, float] | None = None) -> dict:
        """Stop the writer; stats of the saves that overlapped ``window`` (monotonic seconds), or all."""
        self.stop.touch()
        self.proc.wait(timeout=30)
        data = json.loads(self.out.read_text())
        picked = [
            (latency, failed)
            for start, latency, failed in zip(data["starts"], data["latencies"], data["failed"])
            if window is None or (start <= window[1] and start + latency >= window[0])
        ]
        latencies = sorted(latency * 1000 for latency, _ in picked)
        return {
            "saves": len(picked),
            "errors": sum(1 for _, failed in picked if failed),
            "error_kinds": data["errors"],
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "max": latencies[-1] if latencies else float("nan"),
        }


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]  # nearest-rank


def with_writer(db: Path, work: Path, name: str, env: dict, operation) -> tuple[float, dict]:
    """Run ``operation()`` with a bot-like writer beside it: (operation seconds, writer stats in the window)."""
    writer = Writer(db, work, name, env)
    time.sleep(0.3)  # the writer is in its loop
    start = time.monotonic()
    operation()
    end = time.monotonic()
    return end - start, writer.finish((start, end))


# -- the machine and its other load -----------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def busy_cpu_seconds() -> float | None:
    """CPU seconds every process on the machine has used since boot (from /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(f) for f in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    self_, children = os.times()[0:2], os.times()[2:4]
    return sum(self_) + sum(children)


def sqlite3_cli_version() -> str | None:
    cli = shutil.which("sqlite3")
    if cli is None:
        return None
    return subprocess.run([cli, "--version"], capture_output=True, text=True).stdout.split()[0]


def source_state() -> str:
    """The commit measured, and whether src/ held uncommitted changes when the run ended."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return ""
    changed = git("status", "--porcelain", "--", "src")
    return f"sessionctl at {commit}" + (" with uncommitted changes in src/" if changed else "")


def tool_versions() -> str:
    sqlite_utils = subprocess.run([str(BIN / "sqlite-utils"), "--version"], capture_output=True, text=True).stdout.strip()
    return sqlite_utils.replace(", version ", " ")


# -- results -----------------------------------------------------------------------------------


@dataclass
class Line:
    what: str
    measured: str
    goal: str = ""
    met: bool | None = None  # None: shown for context, no goal
    value: float | None = None

    @property
    def verdict(self) -> str:
        return "" if self.met is None else ("met" if self.met else "**MISSED**")


def ratio_line(what: str, ours: float, theirs: float, goal: float, detail: str) -> Line:
    ratio = ours / theirs
    return Line(what, f"**{ratio:.2f}** ({detail})", f"≤ {goal:g}", ratio <= goal, ratio)


def main() -> None:
    wall_start = time.perf_counter()
    busy_start, own_start = busy_cpu_seconds(), own_cpu_seconds()
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="sessionctl-bench-"))
    lines: list[Line] = []
    notes: list[str] = []
    # Bytecode cached for every Python tool alike, as a pip install leaves it. This machine
    # sets PYTHONDONTWRITEBYTECODE=1 and sessionctl is an editable install, so without a
    # cache every sessionctl run would recompile its own modules (measured below, for context).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    env.pop("SESSIONCTL_DB", None)
    sc, su = str(BIN / "sessionctl"), str(BIN / "sqlite-utils")
    sqlite3_cli = shutil.which("sqlite3")
    try:
        now = now_ms()
        big, small, cleanup_base = work / "big.db", work / "small.db", work / "cleanup-base.db"
        build_small = build_table(small, SMALL, now)
        build_big = build_table(big, BIG, now)
        log(f"built {SMALL:,} rows in {build_small:.1f} s, {BIG:,} rows in {build_big:.1f} s")
        notes.append(f"Building the {BIG:,}-session table (one bulk insert, index built after) took {build_big:.1f} s.")
        user_big, user_small = live_user(big), live_user(small)

        # -- start-up and small reads, whole processes --------------------------------------------
        timed = whole_processes({
            "tables": [su, "tables", str(big)],
            "version": [sc, "--version"],
            "show_big": [sc, "--db", str(big), "sessions", "show", user_big],
            "show_small": [sc, "--db", str(small), "sessions", "show", user_small],
            "list_big": [sc, "--db", str(big), "sessions", "list"],
            "list_small": [sc, "--db", str(small), "sessions", "list"],
            "verify": [sc, "--db", str(big), "verify"],
            "floor": [sys.executable, "-c", "pass"],
        }, env=env)
        tables, version, verify, floor = timed["tables"], timed["version"], timed["verify"], timed["floor"]
        show_big, show_small, list_big, list_small = (timed[k] for k in ("show_big", "show_small", "list_big", "list_small"))
        cold_env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        cold_env.pop("PYTHONPYCACHEPREFIX", None)
        cold_version = whole_processes({"v": [sc, "--version"]}, env=cold_env, runs=max(3, RUNS // 2))["v"]
        peer = f"sqlite-utils tables {tables.ms}"
        lines.append(ratio_line("`sessions show` / `sqlite-utils tables`, whole process", show_big.best, tables.best,
                                0.9, f"{show_big.ms} / {peer}"))
        lines.append(ratio_line("`--version` / `sqlite-utils tables`", version.best, tables.best, 0.7,
                                f"{version.ms} / {peer}"))
        lines.append(ratio_line("`verify` / `sqlite-utils tables`", verify.best, tables.best, 1.0,
                                f"{verify.ms} / {peer}"))
        lines.append(ratio_line(f"`sessions list` on {BIG:,} / on {SMALL:,} rows", list_big.best, list_small.best,
                                1.2, f"{list_big.ms} / {list_small.ms}"))
        lines.append(ratio_line(f"`sessions show` on {BIG:,} / on {SMALL:,} rows", show_big.best, show_small.best,
                                1.2, f"{show_big.ms} / {show_small.ms}"))
        lines.append(Line("`python -c pass` (the floor under every Python tool)", floor.ms))
        lines.append(Line("`--version` without a bytecode cache (this machine's PYTHONDONTWRITEBYTECODE=1)",
                          cold_version.ms))
        log("start-up done")

        # -- the agent's read, in process ------------------------------------------------------
        calls, rounds = (2000, 30) if FULL else (500, 10)
        db = open_sqlite_file(big)
        assert get_server_session(db, user_big) is not None
        get_sql = f"SELECT {', '.join(COLUMNS)} FROM server_sessions WHERE user_id = ? AND expires_at > ?"
        plain = sqlite3.connect(big)

        def plain_get():
            row = plain.execute(get_sql, (user_big, time.time_ns() // 1_000_000)).fetchone()
            return row and [json.loads(v) if v is not None else None for v in row[2:5]]

        plain_apsw = apsw.Connection(str(big))

        def apsw_get():
            for row in plain_apsw.execute(get_sql, (user_big, time.time_ns() // 1_000_000)):
                return [json.loads(v) if v is not None else None for v in row[2:5]]

        per_call = per_call_us({"ours": lambda: get_server_session(db, user_big), "plain": plain_get,
                                "apsw": apsw_get}, calls, rounds)
        ours_us, plain_us, apsw_us = per_call["ours"], per_call["plain"], per_call["apsw"]
        lines.append(ratio_line("`get_server_session` / stdlib sqlite3 query + json.loads, same row, per call",
                                ours_us, plain_us, 1.3,
                                f"{ours_us:.1f} µs / {plain_us:.1f} µs, median of {rounds} rounds of {calls:,} calls"))
        lines.append(Line("the same query + json.loads on a plain APSW connection (sessionctl's engine)",
                          f"{apsw_us:.1f} µs"))
        plain.close()
        plain_apsw.close()
        start = time.perf_counter()
        for i in range(500):
            save_server_session(db, f"bench:{i}", ServerSession(messages=[{"role": "user", "content": "서버 추천"}]))
        lines.append(Line("`save_server_session` alone (one upsert, its own durable txn)",
                          f"{(time.perf_counter() - start) / 500 * 1000:.2f} ms per save"))
        db.execute("DELETE FROM server_sessions WHERE user_id >= 'bench:' AND user_id < 'bench;'")
        db.close()
        log("in-process done")

        # -- export -----------------------------------------------------------------------------
        export_runs = 2
        out = work / "export.jsonl"
        if sqlite3_cli:
            peer_name = f"`sqlite3 -json` ({sqlite3_cli_version()})"
            peer_argv = [sqlite3_cli, "-json", str(big), "SELECT * FROM server_sessions ORDER BY user_id"]
        else:  # the closest equivalent: the stdlib's sqlite3 writing one JSON array
            peer_name = "stdlib sqlite3 + json.dumps (no sqlite3 CLI here)"
            script = ("import sqlite3,json,sys;c=sqlite3.connect(sys.argv[1]);cur=c.execute('SELECT * FROM server_sessions ORDER BY user_id');"
                      "n=[d[0] for d in cur.description];w=sys.stdout.write;w('[');"
                      "[w((',' if i else '')+json.dumps(dict(zip(n,r)),ensure_ascii=False)) for i,r in enumerate(cur)];w(']')")
            peer_argv = [sys.executable, "-c", script, str(big)]
        ours, theirs = [], []
        for _ in range(export_runs):  # taking turns, as above
            ours.append(run_once([sc, "--db", str(big), "sessions", "export", "-o", str(out)], env=env, rss=True))
            with open(work / "peer.json", "wb") as sink:
                theirs.append(run_once(peer_argv, env=env, stdout=sink, rss=True))
        assert sum(1 for _ in open(out, encoding="utf-8")) == BIG
        export_s, peer_s = min(t for t, _ in ours), min(t for t, _ in theirs)
        lines.append(ratio_line(f"`sessions export` of {BIG:,} rows / {peer_name}", export_s, peer_s, 3,
                                f"{export_s:.2f} s / {peer_s:.2f} s, best of {export_runs}"))
        if TIME:
            export_rss, peer_rss = max(r for _, r in ours) / 1024, max(r for _, r in theirs) / 1024
            lines.append(Line(f"`sessions export` of {BIG:,} rows: peak RSS", f"**{export_rss:.0f} MB** "
                              f"(the peer: {peer_rss:.0f} MB)", "≤ 100 MB", export_rss <= 100, export_rss))
        else:
            notes.append("/usr/bin/time not found: export's peak RSS was not measured.")
        with open(work / "su.jsonl", "wb") as sink:
            su_s, su_rss = run_once([su, "rows", str(big), "server_sessions", "--nl"], env=env, stdout=sink, rss=True)
        lines.append(Line(f"`sqlite-utils rows --nl` of {BIG:,} rows (one run)",
                          f"{su_s:.2f} s" + (f", {su_rss / 1024:.0f} MB peak RSS" if su_rss else "")
                          + f" (sessionctl export {su_s / export_s:.2f}x faster)"))
        (work / "peer.json").unlink()
        (work / "su.jsonl").unlink()
        log("export done")

        # -- wrangler (when installed): the same rows in a wrangler project's local D1 state ----
        wrangler = Path(os.environ.get("BENCH_WRANGLER", ROOT / ".cache/wrangler/node_modules/.bin/wrangler"))
        if wrangler.exists():
            project = work / "project"
            state = local_state_file(D1Database("DB", "telegram-conversations", ZERO_ID, None,
                                                project / "migrations", "d1_migrations",
                                                project / "wrangler.toml", None))
            state.parent.mkdir(parents=True)
            shutil.copyfile(small, state)
            (project / "wrangler.toml").write_text(
                'name = "bench"\ncompatibility_date = "2025-01-01"\n\n[[d1_databases]]\n'
                f'binding = "DB"\ndatabase_name = "telegram-conversations"\ndatabase_id = "{ZERO_ID}"\n'
            )
            wenv = dict(env, CI="true", WRANGLER_SEND_METRICS="false", WRANGLER_HIDE_BANNER="true",
                        CLOUDFLARE_CF_FETCH_ENABLED="false")
            sql = "SELECT * FROM server_sessions WHERE expires_at > 0 ORDER BY expires_at LIMIT 50"
            pair = whole_processes({
                "wrangler": [str(wrangler), "d1", "execute", "DB", "--local", "--json", "--command", sql],
                "ours": [sc, "sessions", "list", "--limit", "50", "--format", "json"],
            }, runs=min(RUNS, 5), env=wenv, cwd=project)
            w, ours_w = pair["wrangler"], pair["ours"]
            lines.append(Line(f"`sessions list --format json` / `wrangler d1 execute --local --json`, 50 rows of "
                              f"{SMALL:,} in a wrangler project", f"{ours_w.best / w.best:.2f} ({ours_w.ms} / {w.ms})"))
        else:
            notes.append(f"wrangler not found at {wrangler}: its comparison was skipped.")

        # -- import with a bot-like writer beside it --------------------------------------------
        import_file = work / "import.jsonl"
        write_import_file(import_file, IMPORT_ROWS, now)
        import_db = work / "import.db"
        copy_db(small, import_db)
        alone = Writer(import_db, work, "alone", env)
        time.sleep(2 if FULL else 1)
        baseline = alone.finish()
        lines.append(Line("the bot-like writer alone: save latency p50 / p99",
                          f"{baseline['p50']:.1f} ms / {baseline['p99']:.1f} ms ({baseline['saves']} saves)"))
        import_s, during_import = with_writer(import_db, work, "import", env, lambda: run_once(
            [sc, "--db", str(import_db), "sessions", "import", str(import_file)], env=env))
        lines.append(Line(f"a bot-like writer during `sessions import` of {IMPORT_ROWS:,} rows: errors, p99 save",
                          f"**{during_import['errors']} errors, p99 {during_import['p99']:.0f} ms** (max "
                          f"{during_import['max']:.0f} ms, {during_import['saves']} saves; import took {import_s:.2f} s)",
                          "0 errors, p99 ≤ 1 s", during_import["errors"] == 0 and during_import["p99"] <= 1000))
        if during_import["error_kinds"]:
            notes.append("writer errors during import: " + "; ".join(
                f"{n}x {kind}" for kind, n in during_import["error_kinds"].items()))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{import_db}{suffix}").unlink(missing_ok=True)
        import_file.unlink()
        log("import done")

        # -- cleanup: 1M expired among 2M ------------------------------------------------------
        build_cleanup = build_doubled(big, cleanup_base, now_ms() - now)
        log(f"built {CLEANUP_ROWS:,} rows in {build_cleanup:.1f} s")
        notes.append(f"The {CLEANUP_ROWS:,}-session cleanup table (the big one twice over, times moved to now, "
                     f"one INSERT ... SELECT) took {build_cleanup:.1f} s; each cleanup run works on a fresh copy.")
        expired = CLEANUP_ROWS // 2
        target = work / "cleanup.db"

        def remaining(path: Path) -> int:
            conn = sqlite3.connect(path)
            try:
                return conn.execute("SELECT count(*) FROM server_sessions WHERE user_id < 'tg;'").fetchone()[0]
            finally:
                conn.close()

        copy_db(cleanup_base, target)
        ours_s, _ = run_once([sc, "--db", str(target), "sessions", "cleanup"], env=env)
        assert remaining(target) == CLEANUP_ROWS - expired, "cleanup deleted the wrong rows"
        copy_db(cleanup_base, target)
        raw = ("import apsw,sys,time;c=apsw.Connection(sys.argv[1]);c.set_busy_timeout(5000);"
               "c.execute('DELETE FROM server_sessions WHERE expires_at <= ?',(time.time_ns()//1000000,))")
        raw_s, _ = run_once([sys.executable, "-c", raw, str(target)], env=env)
        assert remaining(target) == CLEANUP_ROWS - expired, "the raw DELETE deleted the wrong rows"
        lines.append(ratio_line(f"`sessions cleanup` of {expired:,} expired among {CLEANUP_ROWS:,} / one raw DELETE",
                                ours_s, raw_s, 1.5, f"{ours_s:.2f} s / {raw_s:.2f} s, whole processes, one run each"))

        # The write transactions themselves, from inside: each batch's DELETE, which is its own
        # transaction (BEGIN IMMEDIATE ... COMMIT in one execute), timed around that call.
        copy_db(cleanup_base, target)
        db = open_sqlite_file(target)
        batches: list[float] = []
        execute = db.execute

        def timed_execute(sql, params=()):
            started = time.perf_counter()
            try:
                return execute(sql, params)
            finally:
                batches.append((time.perf_counter() - started) * 1000)

        db.execute = timed_execute
        cleanup_expired_sessions(db)
        db.close()
        longest = max(batches)
        lines.append(Line(f"cleanup's write transactions ({len(batches):,} batches of 500 rows, each its own "
                          "transaction), timed in process: longest",
                          f"**{longest:.0f} ms** (median {statistics.median(batches):.1f} ms, p99 "
                          f"{percentile(sorted(batches), 99):.1f} ms)", "≤ 50 ms", longest <= 50, longest))

        copy_db(cleanup_base, target)
        cleanup_s, beside = with_writer(target, work, "cleanup", env, lambda: run_once(
            [sc, "--db", str(target), "sessions", "cleanup"], env=env))
        lines.append(Line("a writer beside `sessions cleanup`: its longest save (lock wait, its own "
                          "transaction and its own fsync, on the disk cleanup is writing)", f"{beside['max']:.0f} ms"))
        lines.append(Line("a bot-like writer beside `sessions cleanup`: p99 save, errors",
                          f"**p99 {beside['p99']:.0f} ms, {beside['errors']} errors** (p50 {beside['p50']:.1f} ms, "
                          f"{beside['saves']} saves; cleanup took {cleanup_s:.2f} s)",
                          "p99 ≤ 100 ms, 0 errors", beside["p99"] <= 100 and beside["errors"] == 0))
        if beside["error_kinds"]:
            notes.append("writer errors during cleanup: " + "; ".join(
                f"{n}x {kind}" for kind, n in beside["error_kinds"].items()))
        log("cleanup done")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    wall = time.perf_counter() - wall_start
    busy_end, own_end = busy_cpu_seconds(), own_cpu_seconds()
    other = None if busy_start is None else (busy_end - busy_start) - (own_end - own_start)
    report(lines, notes, wall, other, load_start, os.getloadavg())


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def report(lines: list[Line], notes: list[str], wall: float, other_cpu: float | None, load_start, load_end) -> None:
    cores = os.cpu_count()
    machine = (f"{cpu_model()}, {cores} cores, Python {platform.python_version()}, "
               f"sessionctl {__version__} on SQLite {apsw.sqlite_lib_version()} (APSW {apsw.apsw_version()}), "
               f"stdlib sqlite3 on SQLite {sqlite3.sqlite_version}, {tool_versions()}"
               + (f", sqlite3 CLI {sqlite3_cli_version()}" if shutil.which("sqlite3") else ""))
    state = source_state()
    if state:
        machine += f"; {state}"
    other_line = ""
    if other_cpu is not None:
        other_line = (f"Other processes used {max(other_cpu, 0):.0f} CPU-seconds during the {wall:.0f} s run "
                      f"(≈ {max(other_cpu, 0) / wall:.2f} of {cores} cores); load average {load_start[0]:.2f} at the "
                      f"start, {load_end[0]:.2f} at the end.")
    table = ["| what | measured | goal | |", "|---|---|---|---|"]
    table += [f"| {l.what} | {l.measured} | {l.goal} | {l.verdict} |" for l in lines]
    missed = [l for l in lines if l.met is False]
    scale = "" if FULL else f" **Development scale (BENCH_SCALE={SCALE:g}): not the published numbers.**"
    run = f"`make bench`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {wall:.0f} s in all.{scale}"
    text = "\n".join([
        "# sessionctl benchmarks",
        "",
        run,
        "",
        f"Machine: {machine}.",
        "",
        other_line,
        "",
        "Ratios are sessionctl / its peer: lower is better. Whole processes: the best of "
        f"{RUNS} runs after a discarded warm-up (warm page cache, bytecode cached for every tool), the "
        "median beside it. In-process calls: the median of rounds of many calls. Tables: "
        f"{SMALL:,} and {BIG:,} sessions written as the bot writes them (JSON columns with Korean text, "
        "saves spread over two hours, half of them expired). The bot-like writer is "
        "bench/bot_writer.py: its own process, `save_server_session` through the repository about "
        "every 10 ms, each save's latency and error recorded; only saves overlapping the operation count.",
        "",
        *table,
        "",
        *(f"- {n}" for n in notes),
        "",
        ("Missed: " + "; ".join(l.what for l in missed) + ". README.md \"Benchmarks\" says why and what would close each."
         if missed else "Every goal met."),
        "",
    ])
    if FULL:  # a development-scale run only prints: the published file stays as measured
        (HERE / "results.md").write_text(text, encoding="utf-8")
    print(text)
    for l in missed:
        print(f"bench: goal missed: {l.what}: {l.measured} (goal {l.goal})", file=sys.stderr)
    if FULL:
        update_readme("\n".join([run, "", f"Machine: {machine}.", "", other_line, "", *table]))


def update_readme(block: str) -> None:
    """Copy the table into README.md between its bench markers (nothing else is touched)."""
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(r"(<!-- bench:begin[^\n]*-->\n)(?:.*?\n)?(<!-- bench:end -->)", re.S)
    if not pattern.search(text):
        log("README.md has no bench markers; the table is in bench/results.md only")
        return
    readme.write_text(pattern.sub(lambda m: m.group(1) + block + "\n" + m.group(2), text, count=1), encoding="utf-8")


if __name__ == "__main__":
    main()
