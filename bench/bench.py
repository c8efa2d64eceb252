"""make bench: start-up and throughput of sessionctl, beside sqlite-utils (and wrangler when installed).

Prints a Markdown table (paste into README "Benchmarks"). Sized for a 2-core machine:
a few minutes in all. Times are the best (start-up) or median of repeated runs.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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

ZERO_ID = "00000000-0000-0000-0000-000000000000"

BIN = Path(sys.executable).parent
ROWS = int(os.environ.get("BENCH_ROWS", "200000"))
RUNS = int(os.environ.get("BENCH_RUNS", "15"))


def best_ms(argv: list[str], runs: int = RUNS, env: dict | None = None, cwd: Path | None = None) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env, cwd=cwd)
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


def median_s(fn, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def seed(path: Path, rows: int, expired: int = 0) -> None:
    db = open_sqlite_file(path, create=True)
    list(apply_migrations(db, discover_migrations(bundled_migrations_dir())))
    db.close()
    now = now_ms()
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO server_sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    f"tg:{i:07d}",
                    "gathering",
                    '{"budget_krw":50000,"region":"서울"}',
                    None,
                    '[{"role":"user","content":"서버 추천"}]',
                    updated - 60_000,
                    updated,
                    updated + SESSION_TTL_MS,
                )
                for i in range(rows)
                # Saves spread over the last hour (live rows) or the hour before (expired ones),
                # as the bot writes them: no two share a millisecond.
                for updated in [now - (2 * SESSION_TTL_MS if i < expired else SESSION_TTL_MS) + 1 + i * (SESSION_TTL_MS - 1) // rows]
            ),
        )
    conn.close()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="sessionctl-bench-"))
    results: list[tuple[str, str, str]] = []
    try:
        db_path = work / "sessions.db"
        seed(db_path, ROWS)
        env = dict(os.environ, SESSIONCTL_DB=str(db_path))
        sc = str(BIN / "sessionctl")
        su = str(BIN / "sqlite-utils")

        # -- start-up: the same small job through each tool --------------------------
        base = best_ms([sys.executable, "-c", "pass"])
        results.append(("python -c pass (floor)", f"{base:.0f} ms", ""))
        version = best_ms([sc, "--version"], env=env)
        results.append(("sessionctl --version", f"{version:.0f} ms", ""))
        ours = best_ms([sc, "sessions", "list", "--limit", "50", "--format", "json"], env=env)
        theirs = best_ms([su, "query", str(db_path),
                          "select * from server_sessions where expires_at > 0 order by expires_at limit 50"])
        results.append(("list 50 sessions: sessionctl", f"{ours:.0f} ms", ""))
        results.append(("list 50 sessions: sqlite-utils query", f"{theirs:.0f} ms", f"sessionctl {theirs / ours:.2f}x faster"))
        ours = best_ms([sc, "status", "--format", "json"], env=env)
        results.append(("status", f"{ours:.0f} ms", ""))
        ours = best_ms([sc, "verify", "--format", "json"], env=env)
        results.append(("verify", f"{ours:.0f} ms", ""))
        wrangler = Path(os.environ.get("BENCH_WRANGLER", ".cache/wrangler/node_modules/.bin/wrangler")).absolute()
        if wrangler.exists():
            # The same rows in a wrangler project's local D1 state: both tools read one file.
            project = work / "project"
            state = local_state_file(D1Database("DB", "telegram-conversations", ZERO_ID, None,
                                                project / "migrations", "d1_migrations",
                                                project / "wrangler.toml", None))
            state.parent.mkdir(parents=True)
            shutil.copy(db_path, state)
            (project / "wrangler.toml").write_text(
                'name = "bench"\ncompatibility_date = "2025-01-01"\n\n[[d1_databases]]\n'
                f'binding = "DB"\ndatabase_name = "telegram-conversations"\ndatabase_id = "{ZERO_ID}"\n'
            )
            wenv = dict(os.environ, CI="true", WRANGLER_SEND_METRICS="false", WRANGLER_HIDE_BANNER="true",
                        CLOUDFLARE_CF_FETCH_ENABLED="false")
            wenv.pop("SESSIONCTL_DB", None)
            sql = "SELECT * FROM server_sessions WHERE expires_at > 0 ORDER BY expires_at LIMIT 50"
            w = best_ms([str(wrangler), "d1", "execute", "DB", "--local", "--json", "--command", sql],
                        runs=5, env=wenv, cwd=project)
            ours = best_ms([sc, "sessions", "list", "--limit", "50", "--format", "json"], env=wenv, cwd=project)
            results.append(("list 50 sessions in a wrangler project: sessionctl", f"{ours:.0f} ms", ""))
            results.append(("list 50 sessions: wrangler d1 execute --local --json", f"{w:.0f} ms",
                            f"sessionctl {w / ours:.1f}x faster"))

        # -- throughput through the repository ------------------------------------
        db = open_sqlite_file(db_path)
        n = 2000
        start = time.perf_counter()
        for i in range(n):
            save_server_session(db, f"bench:{i}", ServerSession(messages=[{"role": "user", "content": "서버 추천"}]))
        saves = n / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(n):
            get_server_session(db, f"bench:{i}")
        gets = n / (time.perf_counter() - start)
        results.append(("save_server_session (one upsert, own txn)", f"{saves:,.0f} /s", ""))
        results.append(("get_server_session (one query)", f"{gets:,.0f} /s", ""))
        db.close()

        # -- export: sessionctl vs sqlite-utils, same rows to a file ------------------
        out = work / "export.jsonl"
        ours = median_s(lambda: subprocess.run([sc, "sessions", "export", "-o", str(out)], env=env, check=True,
                                               stderr=subprocess.DEVNULL))
        theirs = median_s(lambda: subprocess.run(
            f"{su} rows {db_path} server_sessions --nl > {work / 'su.jsonl'}", shell=True, check=True))
        results.append((f"export {ROWS:,} rows: sessionctl sessions export", f"{ours:.2f} s", ""))
        results.append((f"export {ROWS:,} rows: sqlite-utils rows --nl", f"{theirs:.2f} s", f"sessionctl {theirs / ours:.2f}x faster"))

        # -- import into an empty table -------------------------------------------
        def fresh_import() -> None:
            target = work / "import.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{target}{suffix}").unlink(missing_ok=True)
            subprocess.run([sc, "--db", str(target), "migrate"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run([sc, "--db", str(target), "sessions", "import", str(out)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results.append((f"import {ROWS:,} rows (validate + one txn)", f"{median_s(fresh_import):.2f} s", ""))

        # -- cleanup of expired rows in batches ------------------------------------
        def fresh_cleanup() -> float:
            target = work / "cleanup.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{target}{suffix}").unlink(missing_ok=True)
            seed(target, ROWS, expired=ROWS // 2)
            start = time.perf_counter()
            db = open_sqlite_file(target)
            deleted = cleanup_expired_sessions(db, batch_size=500)
            assert deleted == ROWS // 2
            db.close()
            return time.perf_counter() - start
        cleanup = statistics.median(fresh_cleanup() for _ in range(3))
        results.append((f"cleanup {ROWS // 2:,} expired of {ROWS:,} (batches of 500)", f"{cleanup:.2f} s",
                        f"{ROWS // 2 / cleanup:,.0f} rows/s"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"| what ({ROWS:,} rows in the table) | result | note |")
    print("|---|---|---|")
    for what, value, note in results:
        print(f"| {what} | {value} | {note} |")


if __name__ == "__main__":
    main()
