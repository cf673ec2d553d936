"""The one place where errors become what the user reads: one line `gpt2 COMMAND: error: ...`, exit code 2.

Errors raised on bad input (UserError and the standard ones in USER_ERRORS) carry a message that names the
problem and the fix, so it is printed without a traceback; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import sys


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


# What main() reports in one line (exit code 2); a DDP process other than rank 0 exits with 2 on them quietly.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, KeyError, OSError)
USER_ERROR_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException]):
    """Inside the block, errors of these kinds (a failed download, a NaN loss, ...) are the user's to fix:
    raised again as UserError, so they print as one line."""
    try:
        yield
    except kinds as error:
        raise UserError(str(error)) from error


def error_message(error: BaseException) -> str:
    """The text of a user error (a KeyError's str() would add quotes around its message)."""
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error)


def run_command(args) -> int:
    """args.func(args), with Ctrl-C and user errors reported in one line on stderr."""
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except USER_ERRORS as error:
        print(f"gpt2 {args.command}: error: {error_message(error)}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
