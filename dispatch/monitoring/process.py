"""What the kernel and the interpreter say about this process: memory, descriptors, threads,
CPU time, garbage collection (``/debug/vars``; chasquid's expvar shows ``memstats`` and
``cmdline`` the same way).

On Linux the figures come from ``/proc/self`` — the same files prometheus_client's process
collector reads for ``process_resident_memory_bytes`` and ``process_open_fds``, so the two
pages agree. Reading them costs a few microseconds (``/proc`` files are generated in memory,
they never wait for a disk), cheap enough for the event loop on a page request. Elsewhere,
what ``/proc`` would have said is None, except the peak RSS, which ``getrusage`` gives.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import sys
import threading
from pathlib import Path
from typing import Final

import attrs

_PROC: Final = Path("/proc/self")
_STATUS_FIELDS: Final = {"VmRSS": "rss", "VmHWM": "peak_rss", "VmSize": "vms", "Threads": "threads"}


@attrs.frozen
class ProcessFigures:
    """One reading of the process's figures (bytes, counts, seconds); None: not available."""

    pid: int
    rss_bytes: int | None
    peak_rss_bytes: int | None
    virtual_bytes: int | None
    open_fds: int | None
    max_fds: int | None  # the soft RLIMIT_NOFILE
    threads: int | None  # OS threads, Trio's and every worker thread
    python_threads: int  # threading.active_count(): threads Python knows of
    cpu_user_seconds: float
    cpu_system_seconds: float


@attrs.frozen
class GcFigures:
    """The cyclic garbage collector, per generation (0, 1, 2): collections run, objects
    collected and found uncollectable since start, objects tracked now (``pending``, what
    triggers the next collection) and the thresholds; ``frozen`` counts ``gc.freeze()``d ones."""

    collections: tuple[int, ...]
    collected: tuple[int, ...]
    uncollectable: tuple[int, ...]
    pending: tuple[int, ...]
    thresholds: tuple[int, ...]
    frozen: int
    enabled: bool


def _status() -> dict[str, int]:
    """``/proc/self/status``'s memory and thread lines (``kB`` turned into bytes)."""
    found: dict[str, int] = {}
    try:
        text = (_PROC / "status").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        key, _, value = line.partition(":")
        name = _STATUS_FIELDS.get(key)
        if name is not None:
            number, _, unit = value.strip().partition(" ")
            found[name] = int(number) * (1024 if unit == "kB" else 1)
    return found


def _open_fds() -> int | None:
    try:
        return len(os.listdir(_PROC / "fd"))  # the listing's own descriptor counts too
    except OSError:
        return None


def _peak_rss_from_rusage() -> int:
    # ru_maxrss is in KiB on Linux and the BSDs, in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def process_figures() -> ProcessFigures:
    """Read the figures now."""
    status = _status()
    soft_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    times = os.times()
    return ProcessFigures(
        pid=os.getpid(),
        rss_bytes=status.get("rss"),
        peak_rss_bytes=status.get("peak_rss") or _peak_rss_from_rusage(),
        virtual_bytes=status.get("vms"),
        open_fds=_open_fds(),
        max_fds=None if soft_limit == resource.RLIM_INFINITY else soft_limit,
        threads=status.get("threads"),
        python_threads=threading.active_count(),
        cpu_user_seconds=times.user,
        cpu_system_seconds=times.system,
    )


def gc_figures() -> GcFigures:
    """Read the collector's figures now."""
    stats = gc.get_stats()
    return GcFigures(
        collections=tuple(generation["collections"] for generation in stats),
        collected=tuple(generation["collected"] for generation in stats),
        uncollectable=tuple(generation["uncollectable"] for generation in stats),
        pending=gc.get_count(),
        thresholds=gc.get_threshold(),
        frozen=gc.get_freeze_count(),
        enabled=gc.isenabled(),
    )


def python_facts() -> dict[str, str]:
    """The interpreter: ``sys.version`` in full, the implementation, the executable."""
    return {
        "version": sys.version,
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
    }
