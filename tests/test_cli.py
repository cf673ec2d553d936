"""The installed `gpt2` console script, run as a user runs it."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

SUBCOMMANDS = ["demo", "data", "finetune", "evaluate", "evaluate-lm", "generate", "tokenize", "train", "bench",
               "classify", "weights", "parity", "notebooks"]


def gpt2_script() -> str:
    """The `gpt2` entry point of the Python running the tests: its scripts folder first (a virtual
    environment that is not activated is not on PATH), else whatever PATH finds."""
    beside = Path(sysconfig.get_path("scripts")) / ("gpt2.exe" if sys.platform == "win32" else "gpt2")
    found = str(beside) if beside.is_file() else shutil.which("gpt2")
    if found is None:
        pytest.fail(f"no `gpt2` console script in {beside.parent} or on PATH. Fix: install the project "
                    f"with `{sys.executable} -m pip install -e .`")
    return found


def listed_subcommands(help_text: str) -> list[str]:
    """The command names of argparse's `COMMAND` section: the first word of each line indented by four (words
    may hold a hyphen: evaluate-lm)."""
    return re.findall(r"^    ([\w-]+)", help_text, flags=re.MULTILINE)


def test_help_lists_every_subcommand():
    result = subprocess.run([gpt2_script(), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: gpt2 ")
    assert listed_subcommands(result.stdout) == SUBCOMMANDS, result.stdout


def test_unknown_subcommand_names_the_choices():
    result = subprocess.run([gpt2_script(), "pretrain"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "invalid choice: 'pretrain'" in result.stderr and "'train'" in result.stderr
