"""Reading a new password at the command line: ``hash-password`` and ``set-admin-password``.

On a terminal the password is asked twice without echo; otherwise (or with ``--stdin``) the
first line of stdin is read. Either way it needs :data:`MIN_PASSWORD_LENGTH` characters.
"""

from __future__ import annotations

import getpass
import sys
from typing import Final

MIN_PASSWORD_LENGTH: Final = 12
EXIT_FAILED: Final = 1
EXIT_INVALID: Final = 2
EXIT_INTERRUPTED: Final = 130  # what a shell reports for a command ended by Ctrl-C


def _read_password(from_stdin: bool) -> str | None:
    """The password typed twice at the terminal, or stdin's first line; None if they differ.

    Raises EOFError when stdin ends first (Ctrl-D at the prompt, or an empty stdin).
    """
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")
    password = getpass.getpass("Password: ")
    return password if getpass.getpass("Again: ") == password else None


def read_new_password(from_stdin: bool, *, nothing_done: str) -> str | int:
    """A new password (at least :data:`MIN_PASSWORD_LENGTH` characters), or the exit code
    after one line on stderr that ends with ``nothing_done`` ("nothing hashed")."""
    try:
        password = _read_password(from_stdin)
    except (EOFError, KeyboardInterrupt) as exc:
        # At a prompt the cursor still stands after "Password: ": end that line first.
        start = "" if from_stdin else "\n"
        if isinstance(exc, KeyboardInterrupt):
            print(f"{start}dispatch: interrupted; {nothing_done}", file=sys.stderr)
            return EXIT_INTERRUPTED
        source = "on stdin" if from_stdin else "given"
        print(f"{start}dispatch: no password {source}; {nothing_done}", file=sys.stderr)
        return EXIT_FAILED
    if password is None:
        print(f"dispatch: the two passwords differ; {nothing_done}", file=sys.stderr)
        return EXIT_INVALID
    if len(password) < MIN_PASSWORD_LENGTH:
        print(
            f"dispatch: the password has {len(password)} characters; use at least "
            f"{MIN_PASSWORD_LENGTH}",
            file=sys.stderr,
        )
        return EXIT_INVALID
    return password
