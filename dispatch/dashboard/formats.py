"""How the operator pages print times and sizes (handed to templates as ``fmt``).

Times are printed in UTC, ISO 8601 (``2026-12-03 08:00:00Z``), inside
``<time datetime=… data-local>`` elements that ``dashboard.js`` shows in the browser's own
zone; :func:`iso` gives the attribute, :func:`utc` the text.
"""

from __future__ import annotations

import time
from typing import Final

_UNITS: Final = ("bytes", "KiB", "MiB", "GiB", "TiB")


def iso(at: float | None) -> str:
    """``2026-12-03T08:00:00Z`` (the ``datetime`` attribute); "" for None."""
    return "" if at is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def utc(at: float | None) -> str:
    """``2026-12-03 08:00:00Z``; "never" for None."""
    return "never" if at is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))


def size(count: int | None) -> str:
    """``1.5 MiB``; bytes as a plain number below 1 KiB."""
    if count is None:
        return "unknown"
    value = float(count)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def ago(at: float | None, now: float | None = None) -> str:
    """``42 s ago``, ``3 min ago``, ``5 h ago``, ``2 d ago``; "never" for None."""
    if at is None:
        return "never"
    seconds = int(max(0.0, (time.time() if now is None else now) - at))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"
