"""Logging: human-readable lines by default, one JSON object per line with ``--log-format json``.

Every line carries the context of the task that wrote it (``component``, ``session``,
``peer``, ``worker``, ``message_id`` …). The context lives in a
:class:`contextvars.ContextVar`; Trio runs each task in a copy of its parent's context, so
:func:`bind` at the top of a task labels everything that task and its children log, and
nothing else.

Log lines carry values a peer chose (request paths, verbs, EHLO names, header values, file
names). :func:`printable` is the one place such text is made safe: both formatters pass every
message and context value through it, and so do traces (:mod:`dispatch.monitoring.traces`),
so a peer can neither start a forged line (CR, LF, U+2028) nor send escape sequences to an
operator's terminal, whatever call site logged the value.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Final, Literal, TextIO

LogFormat = Literal["text", "json"]

_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})
_context: Final[contextvars.ContextVar[Mapping[str, str]]] = contextvars.ContextVar(
    "dispatch_log_context", default=_EMPTY
)


# C0 controls (CR, LF, NUL, ESC, TAB …), DEL, C1 controls (0x9b is a one-byte CSI on some
# terminals), the Unicode line and paragraph separators, and the bidirectional overrides and
# isolates (which can make a line read differently from what it holds).
_UNPRINTABLE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED: Final = {"\r": "\\r", "\n": "\\n", "\t": "\\t", "\0": "\\0"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    r"""``text`` with every control, line-breaking and bidi character written as an escape.

    A carriage return becomes ``\r`` (a backslash, then ``r``), ESC ``\x1b``: visible, on
    one line.
    Text without such characters is returned as it is (the common case costs one search).
    """
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(_escape, text)


def bind(**fields: str) -> None:
    """Add ``fields`` to the log context of the current task (and tasks it starts later)."""
    _context.set({**_context.get(), **fields})


@contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Add ``fields`` to the log context for the duration of a ``with`` block."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> Mapping[str, str]:
    return _context.get()


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.dispatch_context = _context.get()
        return True


def _timestamp(record: logging.LogRecord) -> str:
    return f"{_utc_second(int(record.created))}.{int(record.msecs):03d}Z"


@functools.lru_cache(maxsize=4)
def _utc_second(seconds: int) -> str:
    """``2026-11-21T06:00:00``; a busy relay logs many lines in each second."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


class TextFormatter(logging.Formatter):
    """``2026-11-21T06:00:00.123Z INFO  smtp [session=s1] message``.

    With ``journal=True`` (stderr is systemd's journal, see :func:`stderr_is_journal`) the
    line starts with its syslog priority, ``<6>INFO  smtp …``, instead of a timestamp: the
    journal keeps its own, and shows the priority (``journalctl -p warning``).
    """

    def __init__(self, *, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        context: Mapping[str, str] = getattr(record, "dispatch_context", {})
        tags = " ".join(f"{k}={printable(v)}" for k, v in context.items() if k != "component")
        component = printable(context.get("component", record.name.removeprefix("dispatch.")))
        start = f"<{_priority(record.levelno)}>" if self.journal else f"{_timestamp(record)} "
        line = f"{start}{record.levelname:<7} {component}"
        line += f" [{tags}] " if tags else " "
        line += printable(record.getMessage())
        if record.exc_info:
            # Indented, so that not even an exception message with a line break in it can
            # start a line that looks like a log line of its own.
            trace = self.formatException(record.exc_info).split("\n")
            line += "".join("\n  " + printable(part) for part in trace)
        return line


def _priority(level: int) -> int:
    """The syslog priority of a logging level (RFC 5424 §6.2.1: 3 error … 7 debug)."""
    if level >= logging.ERROR:
        return 3
    if level >= logging.WARNING:
        return 4
    return 6 if level >= logging.INFO else 7


def stderr_is_journal() -> bool:
    """Whether stderr is the stream systemd connected to its journal (``JOURNAL_STREAM`` holds
    its ``device:inode``; a redirected stderr of a child of a service does not match)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        status = os.fstat(sys.stderr.fileno())
        return (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (ValueError, OSError):
        return False


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message`` (the text), the
    task's context (``component``, ``session``, ``peer``, ``message_id`` …) and ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": printable(record.getMessage()),
        }
        context: Mapping[str, str] = getattr(record, "dispatch_context", {})
        entry.update((k, printable(v)) for k, v in context.items() if k not in entry)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


_options: tuple[LogFormat, str] = ("text", "INFO")


def logging_options() -> tuple[LogFormat, str]:
    """The format and level given to :func:`configure_logging` (an intake worker process
    is started with the same)."""
    return _options


def configure_logging(
    log_format: LogFormat = "text", level: str = "INFO", stream: TextIO | None = None
) -> None:
    """Send the ``dispatch`` loggers (and hypercorn's) to ``stream`` (default stderr)."""
    global _options
    _options = (log_format, level)
    # A busy relay logs a line per message it queues: leave out of each record what neither
    # formatter shows — the caller's frame, the thread, process and task names (the logging
    # HOWTO, "Optimization"); in an intake worker that is most of the line's cost
    # (docs/intake-cpu.md, round 11). For the whole process: `stack_info=True` shows nothing.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined]  # Python 3.12+
    handler = logging.StreamHandler(stream or sys.stderr)
    journal = stream is None and stderr_is_journal()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else TextFormatter(journal=journal)
    )
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
