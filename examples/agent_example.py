"""How the bot's agent code uses sessionctl's repository module (run by `make demo`).

    python examples/agent_example.py sessions.db
"""

import sys

from sessionctl.repository import (
    SESSION_TTL_MS,
    ServerSession,
    SessionStatus,
    cleanup_expired_sessions,
    delete_server_session,
    get_server_session,
    now_ms,
    save_server_session,
)
from sessionctl.targets import open_sqlite_file

db = open_sqlite_file(sys.argv[1] if len(sys.argv) > 1 else "sessions.db")

# A user sends "서버 추천" (server recommendation): start a consultation.
session = get_server_session(db, "tg:1001") or ServerSession()
session.messages.append({"role": "user", "content": "서버 추천"})
session.collected_info["budget_krw"] = 50000
save_server_session(db, "tg:1001", session)

# The agent recommends; the session moves on and its expiry slides forward.
session = get_server_session(db, "tg:1001")
session.status = SessionStatus.RECOMMENDING
session.last_recommendation = {"plan": "vps-2c-4g", "region": "서울", "monthly_krw": 42000}
session.messages.append({"role": "assistant", "content": "vps-2c-4g (서울) 추천드립니다."})
save_server_session(db, "tg:1001", session)

# The cron job removes expired sessions and says how many.
print("cleanup removed", cleanup_expired_sessions(db), "expired sessions")

# Two more users at other steps, and one whose session expired an hour ago.
save_server_session(db, "tg:1002", ServerSession(status=SessionStatus.SELECTING,
                    collected_info={"os": "ubuntu-24.04"}, messages=[{"role": "user", "content": "2번이요"}]))
save_server_session(db, "tg:1003", ServerSession(status="ordering", collected_info={"plan": "vps-4c-8g"}))
save_server_session(db, "tg:0999", ServerSession(status="completed"), now=now_ms() - 2 * SESSION_TTL_MS)

for user_id in ("tg:1001", "tg:1002", "tg:1003", "tg:0999"):
    found = get_server_session(db, user_id)
    print(f"{user_id}: " + (f"{found.status}, {len(found.messages)} messages" if found else "no live session (expired)"))

# cancel_consultation: delete the session (False: there was none).
print("cancelled tg:1004:", delete_server_session(db, "tg:1004"))
