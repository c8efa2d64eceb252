"""What the wrangler tests share: the pinned binary, its offline environment, the bot's project."""

from __future__ import annotations

import json
import os
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
