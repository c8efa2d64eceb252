"""Whether a process still exists: temporaries named with a process id are removed only when
the process that wrote them is gone (it will never finish or remove them)."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by someone else
        return True
    return True
