"""The one user-facing error: UserError, and the command-line ending that prints it as one line.

A UserError says what value is wrong and how to fix it, in one line. It is raised for bad
configuration, missing or damaged files, failed downloads and pickles that would run code.
The command lines (train.py, sample.py, export.py) print it as `error: ...` and exit with 2;
from Python it is an ordinary exception (a ValueError).
"""

from __future__ import annotations

import contextlib
import sys

EXIT_USER_ERROR = 2  # the exit status of a command line stopped by a UserError


class UserError(ValueError):
    """A bad value or file. The message names the value (as a config key where there is one) and the fix."""


@contextlib.contextmanager
def exit_on_user_error():
    """Around a command line's work: a UserError prints `error: <message>` on stderr and exits with 2.

    Usable as `with exit_on_user_error(): ...` or as a decorator.
    """
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def check_keys(given, known, prefix: str, what: str, sort: bool = True) -> None:
    """`<prefix>.<key> is not <what>: use one of <known>` for the first unknown key of `given` (UserError)."""
    known = list(known)
    unknown = sorted(set(given) - set(known))
    if unknown:
        names = sorted(known) if sort else known
        raise UserError(f"{prefix}.{unknown[0]} is not {what}: use one of {', '.join(names) or 'none'}")


def one_line(text: str, limit: int = 200) -> str:
    """text with its whitespace folded into one line, cut to `limit` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
