"""``/debug/vars``: every exported variable as JSON, named as chasquid names its expvars.

Each counter of :class:`~dispatch.monitoring.stats.Stats` appears under its own name
(``dispatch/smtpIn/commandCount``): a :class:`Counter` as an int, a :class:`CounterMap` as
``{key: int}``, a :class:`Histogram` as ``{"count", "sum", "buckets": {le: cumulative}}``.
Process facts, spool counts, relay counters and the last retention run
(``dispatch/retention/lastRun``) are added under ``dispatch/…`` names too.

Build date: a Python package has no link time, so ``dispatch/sourceDateStr`` and
``dispatch/sourceDateTimestamp`` are the newest modification time of the package's ``.py``
files — when the source last changed in a checkout or editable install, when it was
unpacked for an installed wheel. ``SOURCE_DATE_EPOCH`` (the reproducible-builds variable),
if set in the environment when the daemon starts, wins; packagers can pin it that way.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import attrs

import dispatch
from dispatch.monitoring.stats import (
    Counter,
    CounterMap,
    Histogram,
    HistogramMap,
    RetentionRun,
    Stats,
)
from dispatch.spool.index import SpoolCounts

type JsonValue = int | float | str | bool | dict[str, JsonValue] | list[JsonValue] | None


class RelayCounters(Protocol):
    """What ``/debug/vars`` reads of a relay: its counters since the process started."""

    @property
    def name(self) -> str: ...

    @property
    def inflight(self) -> int: ...

    @property
    def delivered(self) -> int: ...

    @property
    def failed(self) -> int: ...


@functools.cache
def source_date() -> float:
    """The build date as Unix time (see the module docstring). Computed once, then cached."""
    pinned = os.environ.get("SOURCE_DATE_EPOCH", "")
    if pinned.isdigit():
        return float(pinned)
    package = Path(dispatch.__file__).parent
    return max((path.stat().st_mtime for path in package.rglob("*.py")), default=0.0)


@attrs.frozen
class ProcessInfo:
    """Facts about this process for ``/debug/`` and ``/debug/vars``; made once at start-up."""

    version: str
    python: str
    hostname: str
    started_at: float  # wall clock, for display
    started_monotonic: float  # for the uptime, immune to clock steps
    source_date: float

    @classmethod
    def current(cls) -> ProcessInfo:
        """This process, started now (call it when the daemon starts)."""
        return cls(
            version=dispatch.__version__,
            python=platform.python_version(),
            hostname=socket.gethostname(),
            started_at=time.time(),
            started_monotonic=time.monotonic(),
            source_date=source_date(),
        )

    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic


def format_time(at: float) -> str:
    """Unix time as ``2026-11-03 14:05:09 +0000`` (UTC, the form chasquid's build date uses)."""
    return time.strftime("%Y-%m-%d %H:%M:%S +0000", time.gmtime(at))


def debug_vars(
    stats: Stats,
    info: ProcessInfo,
    *,
    spool_counts: SpoolCounts,
    relays: Iterable[RelayCounters],
) -> dict[str, JsonValue]:
    """The ``/debug/vars`` document, sorted by name. Reads memory only."""
    result: dict[str, JsonValue] = {var.name: _export(var) for var in stats.all()}
    by_name = {relay.name: relay for relay in relays}
    result.update(
        {
            "dispatch/version": info.version,
            "dispatch/pythonVersion": info.python,
            "dispatch/sourceDateStr": format_time(info.source_date),
            "dispatch/sourceDateTimestamp": int(info.source_date),
            "dispatch/startTime": format_time(info.started_at),
            "dispatch/startTimestamp": int(info.started_at),
            "dispatch/uptimeSeconds": round(info.uptime(), 3),
            "dispatch/spool/files": {
                "incoming": spool_counts.incoming,
                "processing": spool_counts.processing,
                "failed": spool_counts.failed,
            },
            "dispatch/spool/retrying": spool_counts.retrying,
            "dispatch/spool/bytes": spool_counts.total_bytes,
            "dispatch/relays/inflight": {name: r.inflight for name, r in sorted(by_name.items())},
            "dispatch/relays/delivered": {name: r.delivered for name, r in sorted(by_name.items())},
            "dispatch/relays/failed": {name: r.failed for name, r in sorted(by_name.items())},
            "dispatch/retention/lastRun": _retention_run(stats.retention_last_run),
        }
    )
    return dict(sorted(result.items()))


def _retention_run(run: RetentionRun | None) -> JsonValue:
    """The last retention run (None before the first): when, how long, what it removed and
    what it could not do."""
    if run is None:
        return None
    return {
        "startTime": format_time(run.started_at),
        "startTimestamp": int(run.started_at),
        "durationSeconds": round(run.duration_seconds, 3),
        "result": "ok" if run.ok else "failed",
        "removed": dict(run.removed),
        "errors": list(run.errors),
    }


def _export(var: Counter | CounterMap | Histogram | HistogramMap) -> JsonValue:
    if isinstance(var, Counter):
        return var.value
    if isinstance(var, CounterMap):
        return dict(sorted(var.values.items()))
    if isinstance(var, HistogramMap):
        return {key: _export(histogram) for key, histogram in sorted(var.values.items())}
    buckets: dict[str, JsonValue] = {
        "+Inf" if bound == float("inf") else repr(float(bound)): count
        for bound, count in var.cumulative()
    }
    return {"count": var.count, "sum": var.sum, "buckets": buckets}
