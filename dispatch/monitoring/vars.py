"""``/debug/vars``: every exported variable as JSON, named as chasquid names its expvars.

Each counter of :class:`~dispatch.monitoring.stats.Stats` appears under its own name
(``dispatch/smtpIn/commandCount``): a :class:`Counter` as an int, a :class:`CounterMap` as
``{key: int}``, a :class:`Histogram` as ``{"count", "sum", "buckets": {le: cumulative}}``.
Process facts, spool counts, relay counters and the last retention run
(``dispatch/retention/lastRun``) are added under ``dispatch/…`` names too, and what the
kernel and the interpreter say of the process (:mod:`dispatch.monitoring.process`):
``dispatch/cmdline``, ``dispatch/process`` (memory, descriptors, threads, CPU time),
``dispatch/gc`` and ``dispatch/python``.

One source per figure, shared with ``/metrics``: ``dispatch/relays/delivered``, ``failed``
(refused permanently) and ``deferred`` (refused for now) are the recipients each relay took,
counted by :func:`~dispatch.monitoring.stats.relay_outcomes` — the reading that
``dispatch_relay_deliveries_total{relay,outcome}`` makes of the same counter;
``dispatch/relays/deliveredToday`` and ``failedToday`` are the database figures of the
``dispatch_relay_delivered_today`` / ``dispatch_relay_failed_today`` gauges. What a relay
client counts of its own attempts is not shown: it starts over at each reload and counts
attempts, not recipients.

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
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

import attrs

import dispatch
from dispatch.monitoring.process import gc_figures, process_figures, python_facts
from dispatch.monitoring.stats import (
    Counter,
    CounterMap,
    Histogram,
    HistogramMap,
    RetentionRun,
    Stats,
    relay_outcomes,
)
from dispatch.spool.index import SpoolCounts

type JsonValue = int | float | str | bool | dict[str, JsonValue] | list[JsonValue] | None


class RelayCounters(Protocol):
    """What ``/debug/vars`` reads of a configured relay: its name and deliveries in progress
    (its outcomes come from :class:`Stats`, see the module docstring)."""

    @property
    def name(self) -> str: ...

    @property
    def inflight(self) -> int: ...


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
    relays_today: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[str, JsonValue]:
    """The ``/debug/vars`` document, sorted by name. Reads memory and ``/proc/self`` only.

    ``relays_today``: ``{relay: {"delivered": n, "failed": n}}`` from the database figures
    (``DatabaseFigures.relay_counts_today``), as ``/metrics`` shows them."""
    result: dict[str, JsonValue] = {var.name: _export(var) for var in stats.all()}
    by_name = {relay.name: relay for relay in relays}
    result.update(_relay_vars(stats, by_name, relays_today or {}))
    result.update(_process_vars())
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
            "dispatch/retention/lastRun": _retention_run(stats.retention_last_run),
            "dispatch/webhooks/outboxDepth": stats.webhook_activity.outbox_depth,
        }
    )
    return dict(sorted(result.items()))


def _relay_vars(
    stats: Stats, relays: Mapping[str, RelayCounters], today: Mapping[str, Mapping[str, int]]
) -> dict[str, JsonValue]:
    """Per relay: recipients by outcome since start, and today's database figures. Every
    configured relay has a value (0 until it has one); a relay removed by a reload keeps its
    figures, as on ``/metrics``."""
    outcomes = relay_outcomes(stats)
    since_start = sorted(relays.keys() | outcomes.keys())
    on_day = sorted(relays.keys() | today.keys())

    def count(name: str, outcome: str) -> JsonValue:
        return outcomes.get(name, {}).get(outcome, 0)

    return {
        "dispatch/relays/delivered": {name: count(name, "delivered") for name in since_start},
        "dispatch/relays/failed": {name: count(name, "permanent") for name in since_start},
        "dispatch/relays/deferred": {name: count(name, "transient") for name in since_start},
        "dispatch/relays/deliveredToday": {
            name: today.get(name, {}).get("delivered", 0) for name in on_day
        },
        "dispatch/relays/failedToday": {
            name: today.get(name, {}).get("failed", 0) for name in on_day
        },
    }


def _process_vars() -> dict[str, JsonValue]:
    """The command line, the process's figures, the garbage collector, the interpreter."""
    proc, collector = process_figures(), gc_figures()
    return {
        "dispatch/cmdline": list(sys.orig_argv),
        "dispatch/process": {
            "pid": proc.pid,
            "residentBytes": proc.rss_bytes,
            "residentPeakBytes": proc.peak_rss_bytes,
            "virtualBytes": proc.virtual_bytes,
            "openFds": proc.open_fds,
            "maxFds": proc.max_fds,
            "threads": proc.threads,
            "pythonThreads": proc.python_threads,
            "cpuUserSeconds": round(proc.cpu_user_seconds, 3),
            "cpuSystemSeconds": round(proc.cpu_system_seconds, 3),
        },
        "dispatch/gc": {
            "collections": list(collector.collections),
            "collected": list(collector.collected),
            "uncollectable": list(collector.uncollectable),
            "pending": list(collector.pending),
            "thresholds": list(collector.thresholds),
            "frozen": collector.frozen,
            "enabled": collector.enabled,
        },
        "dispatch/python": dict(python_facts()),
    }


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
