"""Logging: human-readable lines by default, one JSON object per line with ``--log-format json``.

Every line carries the context of the task that wrote it (``component``, ``session``,
``message`` …). The context lives in a :class:`contextvars.ContextVar`; Trio runs each task
in a copy of its parent's context, so :func:`bind` at the top of a task labels everything
that task and its children log, and nothing else.
"""

from __future__ import annotations

import contextvars
import json
import logging
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
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-11-21T06:00:00.123Z INFO  smtp [session=s1] message``."""

    def format(self, record: logging.LogRecord) -> str:
        context: Mapping[str, str] = getattr(record, "dispatch_context", {})
        tags = " ".join(f"{k}={v}" for k, v in context.items() if k != "component")
        component = context.get("component", record.name.removeprefix("dispatch."))
        line = f"{_timestamp(record)} {record.levelname:<7} {component}"
        line += f" [{tags}] " if tags else " "
        line += record.getMessage()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, context, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "dispatch_context", {}))
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
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
