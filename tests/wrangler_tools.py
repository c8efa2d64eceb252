"""What the wrangler tests share: the pinned binary, its offline environment, the bot's project,
and `wrangler dev` on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Read at import time: the conftest's autouse fixture deletes every SESSIONCTL_* variable.
WRANGLER_ENV_VAR = "SESSIONCTL_TEST_WRANGLER"
WRANGLER_PATH = os.environ.get(WRANGLER_ENV_VAR)
PINNED_VERSION = json.loads((REPO_ROOT / "tests" / "wrangler" / "package.json").read_text())["devDependencies"]["wrangler"]

DB_NAME = "telegram-conversations"
ZERO_ID = "00000000-0000-0000-0000-000000000000"
STATE_DIR = Path(".wrangler/state/v3/d1/miniflare-D1DatabaseObject")  # below the config's folder
D1_SUBDIR = Path("v3/d1/miniflare-D1DatabaseObject")  # below a --persist-to folder

BOT_TOML = f"""\
name = "telegram-bot"
main = "src/index.js"
compatibility_date = "2024-09-23"

[[d1_databases]]
binding = "DB"
database_name = "{DB_NAME}"
database_id = "{ZERO_ID}"
"""


def require_wrangler() -> Path:
    """The pinned wrangler, or a test FAILURE saying how to get it (never a skip)."""
    if not WRANGLER_PATH:
        pytest.fail(
            f"{WRANGLER_ENV_VAR} is not set: these tests need the real wrangler. "
            "Run `make test`, which installs wrangler with npm ci (tests/wrangler/package-lock.json) "
            "into .cache/wrangler and sets it; or `make wrangler` and set "
            f"{WRANGLER_ENV_VAR}=$PWD/.cache/wrangler/node_modules/.bin/wrangler",
            pytrace=False,
        )
    path = Path(WRANGLER_PATH)
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"{WRANGLER_ENV_VAR}={WRANGLER_PATH} is not an executable file: run `make wrangler`",
                    pytrace=False)
    package = path.resolve().parents[1] / "package.json"  # .bin/wrangler -> wrangler/bin/wrangler.js
    if package.is_file():
        version = json.loads(package.read_text())["version"]
        if version != PINNED_VERSION:
            pytest.fail(f"{path} is wrangler {version}, the tests pin {PINNED_VERSION}: run `make wrangler`",
                        pytrace=False)
    return path


def wrangler_env(logs: Path) -> dict[str, str]:
    """wrangler offline and quiet: without the banner and cf.json switches it tries the network."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SESSIONCTL_", "WRANGLER_", "CLOUDFLARE_", "FORCE_COLOR"))}
    env.update(CI="true", WRANGLER_SEND_METRICS="false", WRANGLER_HIDE_BANNER="true",
               CLOUDFLARE_CF_FETCH_ENABLED="false", WRANGLER_LOG_PATH=str(logs))
    return env


# -- wrangler dev on loopback ------------------------------------------------------------------

READY_WITHIN_S = 60  # bounds on waiting, never asserted as speed
STOP_WITHIN_S = 10
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def wrangler_dev(binary: Path, project: Path, logs: Path, *, ready_path: str = "/",
                 extra: Sequence[str] = ()) -> Iterator[str]:
    """`wrangler dev --local` of ``project`` on loopback (``extra``: more of its options); yields
    its URL (``http://127.0.0.1:PORT``) once GET ``ready_path`` answers 200. Its output goes to
    ``logs``/wrangler-dev.out, quoted in any failure.

    It runs in its own process group, and the whole group (wrangler, esbuild, workerd) is ended
    afterwards: ending wrangler alone leaves workerd running. A server that died while the
    caller used it fails the test.
    """
    port, inspector = free_port(), free_port()
    output = logs / "wrangler-dev.out"
    url = f"http://127.0.0.1:{port}"
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            [str(binary), "dev", "--local", "--ip", "127.0.0.1", "--port", str(port),
             "--inspector-ip", "127.0.0.1", "--inspector-port", str(inspector), *extra,
             "--show-interactive-dev-session=false"],
            cwd=project, env=wrangler_env(logs), stdin=subprocess.DEVNULL, stdout=sink,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_until_ready(proc, url + ready_path, output)
        yield url
        if proc.poll() is not None:
            pytest.fail("wrangler dev died while the test ran:\n" + output.read_text(errors="replace"))
    finally:
        _end_group(proc)


def _wait_until_ready(proc: subprocess.Popen, url: str, output: Path) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"wrangler dev exited {proc.returncode} before answering:\n"
                        + output.read_text(errors="replace"))
        try:
            with LOOPBACK.open(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"wrangler dev did not answer {url} within {READY_WITHIN_S} s:\n"
                        + output.read_text(errors="replace"))
        time.sleep(0.1)


def _end_group(proc: subprocess.Popen) -> None:
    """SIGTERM the whole group, then SIGKILL whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; nothing else of its group (workerd) may outlive it
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return
