"""`gpt2 finetune`: the finetuning pipelines, one action each, one module each in this package.

    gpt2 finetune classify ...    SMS spam classification (gpt2cli/commands/finetune/classify.py)
    gpt2 finetune instruct ...    instruction finetuning (gpt2cli/commands/finetune/instruct.py)

Each action module exposes `register(actions)`, which adds its parser to the `finetune` subparsers and
sets `func=<callable(args) -> int>`, like the top-level commands in gpt2cli/main.py.
"""
from __future__ import annotations

from gpt2cli.commands.finetune import classify, instruct

# Order here is the order in `gpt2 finetune --help`.
FINETUNE_ACTIONS = [classify, instruct]


def register(subparsers):
    parser = subparsers.add_parser("finetune", help="finetune a GPT (spam classification, instructions)")
    actions = parser.add_subparsers(dest="finetune_command", metavar="TASK")
    actions.required = True
    for action in FINETUNE_ACTIONS:
        action.register(actions)
