"""The control protocol's requests, sans I/O: one line of bytes in, a checked request out.

A request is one JSON object on one line::

    {"command": "spool.show", "args": {"id": "spl_…"}}

:func:`parse_line` turns the bytes a client sent into a :class:`Request`, and
:func:`check_request` does the same for an already-decoded value (the CLI runs commands in
its own process without a socket). Anything else — empty, not UTF-8, not JSON, nested too
deep, not an object, an unknown command, an unknown argument or one of the wrong type —
raises :class:`BadRequestError` whose message names the problem and what to send instead.
Nothing here raises anything else, whatever the input (a hypothesis test fuzzes it).
"""

from __future__ import annotations

import json
from typing import Any, Final

import attrs

MAX_REQUEST_BYTES: Final = 65_536
"""Longest request line. The largest real request (send-test with two addresses) is a few
hundred bytes; the bound keeps a client that never sends a newline from costing memory."""

MAX_SHOWN_CHARS: Final = 80  # of a client's value quoted back in an error message

MAX_LIST_LIMIT: Final = 100_000

# Each command's arguments: name -> (accepted JSON types, required).
_STR: Final = (str,)
COMMANDS: Final[dict[str, dict[str, tuple[tuple[type, ...], bool]]]] = {
    "spool.list": {"state": (_STR, False), "limit": ((int,), False)},
    "spool.show": {"id": (_STR, True)},
    "spool.retry": {"id": (_STR, True)},
    "spool.flush": {"relay": (_STR, False), "state": (_STR, False)},
    "spool.delete": {"id": (_STR, True)},
    "send-test": {"relay": (_STR, True), "to": (_STR, True), "from": (_STR, False)},
    "webhooks.recent": {"limit": ((int,), False)},
}

_TYPE_NAMES: Final = {str: "a string", int: "an integer"}
_SHAPE: Final = 'send one JSON object on one line: {"command": "spool.list", "args": {}}'


class BadRequestError(Exception):
    """The request cannot be run; the message says why and what to send instead."""


@attrs.frozen
class Request:
    """A checked request: a known command and arguments of the right names and types."""

    command: str
    args: dict[str, Any]


def shown(value: object) -> str:
    """``repr(value)``, cut short: errors quote what the client sent without echoing 64 KiB."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 1] + "…"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def parse_line(line: bytes) -> Request:
    """Decode and check one request line (without its newline)."""
    if not line.strip():
        raise BadRequestError(f"empty request; {_SHAPE}")
    try:
        value = json.loads(line)
    except RecursionError:
        raise BadRequestError(f"the request is nested too deeply; {_SHAPE}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise BadRequestError(f"the request is not JSON ({exc}); {_SHAPE}") from None
    return check_request(value)


def check_request(value: object) -> Request:
    """Check a decoded request: a known command, known arguments of the right types."""
    if not isinstance(value, dict):
        raise BadRequestError(f"the request is {_json_type(value)}, not an object; {_SHAPE}")
    unknown_keys = sorted(set(value) - {"command", "args"}, key=str)
    if unknown_keys:
        raise BadRequestError(
            f"unknown key {shown(unknown_keys[0])} in the request; only command and args"
        )
    command = value.get("command")
    if not isinstance(command, str):
        raise BadRequestError(f"command must be a string, not {_json_type(command)}; {_SHAPE}")
    spec = COMMANDS.get(command)
    if spec is None:
        raise BadRequestError(f"unknown command {shown(command)}; known: {', '.join(COMMANDS)}")
    args = value.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise BadRequestError(f"args must be an object, not {_json_type(args)}")
    for name in args:
        if name not in spec:
            known = ", ".join(spec) or "none"
            raise BadRequestError(f"unknown argument {shown(name)} for {command}; known: {known}")
    for name, (types, required) in spec.items():
        if name not in args:
            if required:
                raise BadRequestError(f"{command} needs the argument {name!r}")
            continue
        given = args[name]
        if isinstance(given, bool) or not isinstance(given, types):
            wanted = " or ".join(_TYPE_NAMES[t] for t in types)
            raise BadRequestError(
                f"argument {name!r} of {command} must be {wanted}, not {_json_type(given)}"
            )
    limit = args.get("limit")
    if limit is not None and not 1 <= limit <= MAX_LIST_LIMIT:
        raise BadRequestError(f"limit must be between 1 and {MAX_LIST_LIMIT}, not {limit}")
    return Request(command, dict(args))


def encode_answer(answer: dict[str, Any]) -> bytes:
    """One answer line. Non-ASCII is escaped, so the line is plain ASCII whatever it holds."""
    return json.dumps(answer).encode("ascii") + b"\n"
