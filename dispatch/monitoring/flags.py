"""``/debug/flags``: every command-line flag of the running daemon, with its value and default.

chasquid's ``/debug/flags`` lists its flags as ``--name=value``; this page does the same and
says, for each, whether it was given, what applies when it is not (the default), and what the
process runs with (the effective value: for ``--config``, the file that was found).

The command line parser lives in :mod:`dispatch.cli`, above everything else; it describes the
flags (``dispatch.cli.describe_flags``) and the composition root hands them here, so nothing
below the command line imports it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Final

import attrs

from dispatch.logs import printable
from dispatch.monitoring.pages import _e, _page

NOT_GIVEN: Final = "(not given)"


@attrs.frozen
class CommandLineFlag:
    """One flag: as given (None: not on the command line), its default, the value in use."""

    name: str  # "--config"
    given: str | None
    default: str
    effective: str
    help: str = ""


def flags_text(flags: Sequence[CommandLineFlag], command_line: Sequence[str]) -> str:
    """``?format=text``: ``--name=effective`` lines (chasquid's form), then, after ``#``, the
    given value and the default; the command line first."""
    lines = [f"# command line: {printable(' '.join(command_line))}"]
    width = max((len(flag.name) + 1 + len(flag.effective) for flag in flags), default=0)
    for flag in flags:
        pair = printable(f"{flag.name}={flag.effective}")
        given = NOT_GIVEN if flag.given is None else f"given {flag.given}"
        lines.append(f"{pair.ljust(width)}  # {printable(given)}; default: {flag.default}")
    return "\n".join(lines) + "\n"


def flags_page(flags: Sequence[CommandLineFlag], command_line: Sequence[str]) -> str:
    """The HTML form: a table of the flags, and the command line as the kernel has it."""
    head = "<tr><th>flag</th><th>value in use</th><th>given</th><th>default</th><th>help</th></tr>"
    rows = "".join(
        f"<tr><td><code>{_e(flag.name)}</code></td><td>{_e(flag.effective)}</td>"
        f"<td>{_e(NOT_GIVEN if flag.given is None else flag.given)}</td>"
        f"<td>{_e(flag.default)}</td><td>{_e(flag.help)}</td></tr>"
        for flag in flags
    )
    table = f"<table>{head}{rows}</table>" if flags else "<p>No flags were described.</p>"
    return _page(
        "Command-line flags",
        f"{table}\n<h2>Command line</h2><pre>{_e(' '.join(command_line))}</pre>\n"
        '<p><a href="flags?format=text">as text</a></p>',
    )


def command_line() -> tuple[str, ...]:
    """The interpreter's command line (``python -m dispatch --config …``), as ``ps`` shows it."""
    return tuple(sys.orig_argv)
