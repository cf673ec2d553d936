"""`.ci/run` runs the README's test command verbatim, so CI tests what a new user runs."""
from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def readme_commands(text: str) -> list[str]:
    """The lines of the README's first fenced code block: its set-up commands."""
    match = re.search(r"^```\w*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    assert match, "README.md has no fenced code block with the set-up commands"
    return [line.strip() for line in match.group(1).splitlines() if line.strip()]


def ci_command_lines(text: str) -> list[str]:
    """.ci/run's non-comment lines, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_the_readme_test_command_verbatim():
    commands = readme_commands((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    test_commands = [line for line in commands if "pytest" in line]
    assert len(test_commands) == 1, f"expected one test command among the README's set-up commands: {commands}"
    ci_lines = ci_command_lines((REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    assert ci_lines[-1] == test_commands[0], (
        f".ci/run ends with {ci_lines[-1]!r}, the README's test command is {test_commands[0]!r}; "
        f"make .ci/run's last line the README's command, character for character")
