"""What the --remote tests share: a wrangler project pointing at a test server, running the
installed console script against it, and reading its one-line errors.

The servers are tests/d1_worker (D1's own engine under `wrangler dev`, for everything it can
produce) and tests/d1_server.py (a Python double, for what it cannot: 403, 429 with
retry-after, 7429 after execution, 5xx, dropped connections, slow answers).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import MIGRATIONS_DIR, SESSIONCTL, SESSIONS_MIGRATION
from d1_worker_server import fresh_d1  # noqa: F401  (a fixture the remote fixtures use)

SECRET = "tok-SECRET-4242"  # printable, no quote or backslash: the worker's .dev.vars holds it
WRONG_TOKEN = "tok-WRONG-7777"
TARGET_PREFIX = "sessionctl: target: remote D1 telegram-conversations"
MINUTE = 60_000


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback servers must be reached directly, whatever *_proxy the machine sets."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


def write_project(folder: Path, database_id: str, *, extra_toml: str = "",
                  migrations: dict[str, str] | None = None) -> Path:
    """A wrangler project: wrangler.toml with the bot's D1 binding, migrations/ with 003 (+ extras)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wrangler.toml").write_text(
        f'name = "telegram-bot"\nmain = "src/index.js"\ncompatibility_date = "2025-01-01"\n{extra_toml}\n'
        "[[d1_databases]]\n"
        'binding = "DB"\n'
        'database_name = "telegram-conversations"\n'
        f'database_id = "{database_id}"\n',
        encoding="utf-8",
    )
    (folder / "migrations").mkdir(exist_ok=True)
    (folder / "migrations" / SESSIONS_MIGRATION).write_bytes((MIGRATIONS_DIR / SESSIONS_MIGRATION).read_bytes())
    for name, sql in (migrations or {}).items():
        (folder / "migrations" / name).write_text(sql, encoding="utf-8")
    return folder


def remote_env(base_url: str, token: str, account_id: str,
               overrides: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment of a --remote run: the CLOUDFLARE_* variables wrangler reads, no proxies."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SESSIONCTL_", "CLOUDFLARE_")) and not k.lower().endswith("_proxy")}
    env.update(CLOUDFLARE_API_BASE_URL=base_url, CLOUDFLARE_API_TOKEN=token, CLOUDFLARE_ACCOUNT_ID=account_id)
    for name, value in (overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_remote(cwd: Path, env: dict[str, str], *args: str, remote: bool = True,
               timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SESSIONCTL), *(["--remote"] if remote else []), *map(str, args)],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.splitlines()[0].startswith(TARGET_PREFIX), result.stderr
    assert "Traceback" not in result.stderr
    return result


def one_error(result: subprocess.CompletedProcess, code: int) -> str:
    """The run exited ``code`` with exactly one `sessionctl: error:` line and no traceback; return it."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("sessionctl: target:")]
    assert len(lines) == 1 and lines[0].startswith("sessionctl: error: "), result.stderr
    return lines[0]


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/client/v4"


def assert_no_secret(runs: list[subprocess.CompletedProcess], folder: Path, *texts: str,
                     secrets: tuple[str, ...] = (SECRET, WRONG_TOKEN)) -> None:
    """No secret in any run's output, in any file under ``folder``, nor in ``texts``."""
    for secret in secrets:
        for result in runs:
            assert secret not in result.stdout, f"{secret} in stdout of {result.args}"
            assert secret not in result.stderr, f"{secret} in stderr of {result.args}"
        for path in folder.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), f"{secret} written to {path}"
        for text in texts:
            assert secret not in text


def sample_rows(now: int) -> list[dict]:
    """Three raw rows: two live, one expired an hour ago (Korean text in the JSON columns)."""
    return [
        {"user_id": "tg:1001", "status": "recommending", "collected_info": '{"budget_krw":50000}',
         "last_recommendation": '{"plan":"vps-2c-4g","region":"서울","monthly_krw":42000}',
         "messages": '[{"role":"user","content":"서버 추천"},{"role":"assistant","content":"추천합니다"}]',
         "created_at": now - 10 * MINUTE, "updated_at": now - MINUTE, "expires_at": now + 59 * MINUTE},
        {"user_id": "tg:1002", "status": "selecting", "collected_info": "{}", "last_recommendation": None,
         "messages": "[]", "created_at": now - 5 * MINUTE, "updated_at": now - 2 * MINUTE,
         "expires_at": now + 30 * MINUTE},
        {"user_id": "tg:0999", "status": "completed", "collected_info": "{}", "last_recommendation": None,
         "messages": "[]", "created_at": now - 180 * MINUTE, "updated_at": now - 120 * MINUTE,
         "expires_at": now - 60 * MINUTE},
    ]


# -- sessionctl --remote against D1 itself: the fixtures the remote modules share --------------
# A module imports them by name (pytest finds fixtures in the module's namespace):
#     from remote_cli import d1, d1_worker, fresh_d1, project, remote, runs


@pytest.fixture(scope="module")
def d1_worker(tmp_path_factory: pytest.TempPathFactory):
    """The module's worker, accepting SECRET as its token (fresh_d1 empties it for each test)."""
    from d1_worker_server import running_d1_worker
    from wrangler_tools import require_wrangler

    with running_d1_worker(require_wrangler(), tmp_path_factory.mktemp("d1-worker"), token=SECRET) as worker:
        yield worker


@pytest.fixture
def d1(fresh_d1):
    return fresh_d1


@pytest.fixture
def project(tmp_path: Path, d1) -> Path:
    return write_project(tmp_path / "bot", d1.database_id)


@pytest.fixture
def runs() -> list[subprocess.CompletedProcess]:
    return []


@pytest.fixture
def remote(project: Path, d1, runs: list):
    """Run `sessionctl --remote ARGS` in the project against the worker.

    ``env`` overrides variables (None removes one); ``remote=False`` leaves out --remote.
    """

    def run(*args: str, env: dict[str, str | None] | None = None, cwd: Path | None = None,
            remote: bool = True) -> subprocess.CompletedProcess:
        result = run_remote(cwd or project, remote_env(d1.base_url, d1.token, d1.account_id, env), *args,
                            remote=remote)
        runs.append(result)
        return result

    return run


@pytest.fixture(autouse=True)
def token_never_leaks(request: pytest.FixtureRequest, tmp_path: Path):
    """After every test (autouse where imported): no secret in any run's output, in any file,
    or in what the worker recorded."""
    yield
    worker = request.node.funcargs.get("d1")
    recorded = json.dumps(worker.stats(), ensure_ascii=False) if worker is not None else ""
    assert_no_secret(request.node.funcargs.get("runs") or [], tmp_path, recorded)
