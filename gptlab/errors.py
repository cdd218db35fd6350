"""User-facing errors.

A `UserError` is bad input the user can fix: the CLI prints its message as one line, with no
traceback, and exits with status 2. Its message names the problem and the fix.
"""


class UserError(Exception):
    """Bad input from the user; the message says what is wrong and what to do."""

    exit_code = 2
