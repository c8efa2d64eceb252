"""Temporaries named with their writer's process id are removed only when that process is gone
(it will never finish or remove them): backups', exports' and KV values'."""

from __future__ import annotations

import os
import re
from pathlib import Path


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: Path, pattern: re.Pattern[str]) -> None:
    """Remove the files in ``folder`` whose whole name matches ``pattern`` (with a ``pid`` group)
    and whose writer is gone: what killed runs left half-written."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match is None or process_alive(int(match.group("pid"))):
            continue
        try:
            os.unlink(folder / name)
        except OSError:
            pass
