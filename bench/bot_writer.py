"""A bot-like writer for bench.py: saves sessions through sessionctl's repository, as the agent does.

    python bench/bot_writer.py DB RESULT_JSON STOP_FILE [INTERVAL_S]

Opens DB the way the agent does (``open_sqlite_file``, default 5 s busy timeout), then loops:
one ``save_server_session`` (one upsert, its own durable transaction), then a pause of
INTERVAL_S (default 0.01: about 100 saves a second, far busier than the real bot, so a
short operation beside it still yields hundreds of samples). Each save's start
(``time.monotonic()``, the same clock in every process on Linux), latency and error go
to RESULT_JSON when STOP_FILE appears. Prints "ready" once the first save is done.
"""

from __future__ import annotations

import json
import os
import sys
import time

from sessionctl.repository import ServerSession, save_server_session
from sessionctl.targets import open_sqlite_file

TURNS = [
    {"role": "user", "content": "안녕하세요, 서버 추천 부탁드려요"},
    {"role": "assistant", "content": "예산과 용도를 알려주시면 맞춤 서버를 추천해 드릴게요."},
    {"role": "user", "content": "월 5만원 이하로 쇼핑몰 운영하려고 합니다"},
    {"role": "assistant", "content": "서울 리전의 2코어 4GB VPS를 추천드립니다. 월 42,000원입니다."},
    {"role": "user", "content": "2번으로 할게요"},
]


def main() -> None:
    db_path, out_path, stop_path = sys.argv[1:4]
    interval = float(sys.argv[4]) if len(sys.argv) > 4 else 0.01
    db = open_sqlite_file(db_path)
    starts: list[float] = []
    latencies: list[float] = []
    failed: list[bool] = []
    errors: dict[str, int] = {}
    i = 0
    while not os.path.exists(stop_path):
        user = f"bot:{i % 500:04d}"
        session = ServerSession(
            status=("gathering", "recommending", "selecting", "ordering", "completed")[i % 5],
            collected_info={"budget_krw": 50000, "region": "서울", "purpose": "쇼핑몰 운영"},
            last_recommendation={"plan": "vps-2c-4g", "region": "서울", "monthly_krw": 42000} if i % 5 else None,
            messages=TURNS[: 1 + i % len(TURNS)],
        )
        start = time.monotonic()
        ok = True
        try:
            save_server_session(db, user, session)
        except Exception as exc:  # every failure is a data point, not a crash
            ok = False
            key = f"{type(exc).__name__}: {exc}"[:160]
            errors[key] = errors.get(key, 0) + 1
        latencies.append(time.monotonic() - start)
        starts.append(start)
        failed.append(not ok)
        if i == 0:
            print("ready", flush=True)
        i += 1
        time.sleep(interval)
    db.close()
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump({"starts": starts, "latencies": latencies, "failed": failed, "errors": errors}, out)


if __name__ == "__main__":
    main()
