"""`gpt2`: the project's one command line.

Each subcommand lives in its own module under gpt2cli/commands and exposes
`register(subparsers)`, which adds its parser and sets `func=<callable(args) -> int>`.
Modules import heavy libraries (torch, matplotlib) inside their functions, so
`gpt2 --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from gpt2cli.errors import run_command

# Order here is the order in `gpt2 --help`.
COMMAND_MODULES = [
    "gpt2cli.commands.demo",
    "gpt2cli.commands.data",
    "gpt2cli.commands.finetune",
    "gpt2cli.commands.evaluate",
    "gpt2cli.commands.evaluate_lm",
    "gpt2cli.commands.generate",
    "gpt2cli.commands.tokenize",
    "gpt2cli.commands.train",
    "gpt2cli.commands.bench",
    "gpt2cli.commands.classify",
    "gpt2cli.commands.weights",
    "gpt2cli.commands.parity",
    "gpt2cli.commands.notebooks",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt2",
        description="GPT-2 written twice (NumPy with hand-written gradients, PyTorch), proven equal.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
