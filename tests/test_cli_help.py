"""Every `gpt2 ... --help`: each option with a default states it, once (issue 19: "(default: ...) (default:
None)" twice in `gpt2 demo`, defaults missing on generate's --backend and several classify and demo options)."""
from __future__ import annotations

import argparse

import pytest

from gpt2cli.main import build_parser


def options_of(parser, name="gpt2"):
    """(command name, parser, action) for every option of every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from options_of(subparser, f"{name} {sub}")
        elif action.option_strings and action.help != argparse.SUPPRESS and \
                not isinstance(action, (argparse._HelpAction, argparse._StoreConstAction)):
            yield name, parser, action


def help_text(parser, action) -> str:
    """The help line as --help prints it (the parser's formatter, %(default)s expanded)."""
    formatter = parser._get_formatter()
    return formatter._expand_help(action) if action.help else ""


OPTIONS = list(options_of(build_parser()))


@pytest.mark.parametrize("name, parser, action", OPTIONS, ids=[f"{n} {a.option_strings[0]}" for n, _, a in OPTIONS])
def test_each_default_is_stated_once(name, parser, action):
    text = help_text(parser, action).lower()
    assert text.count("default") <= 1, f"{name} {action.option_strings[0]}: {text}"
    if action.default not in (None, False, argparse.SUPPRESS):
        assert "default" in text, f"{name} {action.option_strings[0]} (default {action.default!r}) does not say so"


def test_the_check_sees_the_commands_named_in_the_issue():
    names = {(name, action.option_strings[0]) for name, _, action in OPTIONS}
    assert {("gpt2 generate", "--backend"), ("gpt2 demo", "--batch-size"), ("gpt2 classify", "--backend"),
            ("gpt2 train", "--threads")} <= names
