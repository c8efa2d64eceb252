"""The README's examples are the real thing."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_quotes_the_agent_example_file_verbatim():
    example = (REPO_ROOT / "examples" / "agent_example.py").read_text(encoding="utf-8")
    assert f"```python\n{example}```" in README


def test_the_agent_example_prints_what_the_readme_shows(run_sessionctl, tmp_path):
    assert run_sessionctl("--db", tmp_path / "demo.db", "migrate").returncode == 0
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "agent_example.py"), str(tmp_path / "demo.db")],
        capture_output=True, text=True, check=True,
    )
    shown = re.search(r"\$ python examples/agent_example.py demo/sessions.db\n(.*?)```", README, re.S).group(1)
    assert result.stdout == shown


def test_readme_shows_both_set_up_commands():
    assert "make demo" in README and "make test" in README
