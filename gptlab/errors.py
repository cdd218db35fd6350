"""User-facing errors.

A `UserError` is bad input the user can fix: the CLI prints its message as one line, with no
traceback, and exits with status 2. Its message names the problem and the fix.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input from the user; the message says what is wrong and what to do."""

    exit_code = 2


def one_line(text: object) -> str:
    """A message folded onto one line (an error's text may hold newlines)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def run_script(main: Callable[[], int | None], prog: str) -> int:
    """The exit status of a script's `main` (the benchmarks), answering bad input as the CLI does:
    a `UserError` is one line on stderr and status 2, never a traceback; ^C is one line and 130."""
    try:
        return int(main() or 0)
    except UserError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
