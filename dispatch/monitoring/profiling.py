"""``/debug/profile`` and ``/debug/memory``: a sampling CPU profile and the top allocations.

CPU: :func:`cpu_profile` runs pyinstrument's sampling profiler on the Trio thread for N
seconds while the event loop goes on serving everything else. pyinstrument samples the stack
of the thread that started it, whichever task is running there, so the profile shows where
the whole daemon spends its Trio-thread time. ``async_mode="disabled"`` is what makes that
true: in the other modes pyinstrument follows only the *calling* task's async context and
books the time other tasks run as ``[await]`` in the caller — the caller here just sleeps, so
the profile would be empty. Work in worker threads (``trio.to_thread``: disk, database,
password hashing) is not sampled; it shows as the waiting task's time at most.

Memory: :func:`memory_top` uses :mod:`tracemalloc`, started on demand by the first call
(tracing costs memory and some speed, so it is off until an operator asks). Only allocations
made after it started are seen: the first page says so; reload it later to see what grew.
:func:`memory_stop` turns tracing off again.
"""

from __future__ import annotations

import linecache
import tracemalloc
from typing import Final, Literal

import trio
from pyinstrument import Profiler
from pyinstrument.renderers import HTMLRenderer, SpeedscopeRenderer

ProfileFormat = Literal["html", "speedscope"]

MIN_SECONDS: Final = 1.0
MAX_SECONDS: Final = 60.0
"""A profile lasts 1 to 60 s: shorter has too few samples, longer is an unreadable page and a
browser request that proxies time out."""

SAMPLE_INTERVAL: Final = 0.001
"""Seconds between samples for short profiles: 1 ms gives a readable profile of a second."""

MAX_SAMPLES: Final = 10_000
"""Longer profiles sample less often so that one never exceeds this many samples: rendering
costs about 10 ms per 1,000 samples here and runs on the Trio thread (see cpu_profile)."""

CONTENT_TYPES: Final[dict[str, str]] = {
    "html": "text/html; charset=utf-8",
    "speedscope": "application/json",
}

MEMORY_FRAMES: Final = 1
"""Frames tracemalloc stores per allocation: one (the allocating line) keeps tracing cheap."""


class ProfilerBusyError(Exception):
    """A CPU profile is already being taken; pyinstrument samples one profiler per thread."""


_cpu_profile_running = False


def clamp_seconds(seconds: float) -> float:
    """``seconds`` limited to :data:`MIN_SECONDS`..:data:`MAX_SECONDS` (NaN → the minimum)."""
    if not seconds >= MIN_SECONDS:
        return MIN_SECONDS
    return min(seconds, MAX_SECONDS)


async def cpu_profile(seconds: float, fmt: ProfileFormat = "html") -> tuple[bytes, str]:
    """Sample the Trio thread for ``seconds`` (clamped to 1..60); return body and content type.

    Samples every :data:`SAMPLE_INTERVAL` s, or less often for long profiles (at most
    :data:`MAX_SAMPLES` samples).

    ``fmt`` is ``"html"`` (pyinstrument's interactive page) or ``"speedscope"`` (JSON for
    https://www.speedscope.app). Raises :class:`ProfilerBusyError` if a profile is already
    running, ``ValueError`` for another format. Cancellation stops the profiler and
    propagates; nothing is rendered.
    """
    global _cpu_profile_running
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"profile format must be 'html' or 'speedscope', not {fmt!r}")
    if _cpu_profile_running:
        raise ProfilerBusyError("a CPU profile is already running; try again when it is done")
    _cpu_profile_running = True
    try:
        duration = clamp_seconds(seconds)
        interval = max(SAMPLE_INTERVAL, duration / MAX_SAMPLES)
        profiler = Profiler(interval=interval, async_mode="disabled")
        profiler.start()
        try:
            await trio.sleep(duration)
        finally:
            session = profiler.stop()
    finally:
        _cpu_profile_running = False
    renderer = HTMLRenderer() if fmt == "html" else SpeedscopeRenderer()
    # Rendered on the Trio thread, deliberately: at most MAX_SAMPLES samples is a stall of
    # about 0.1 s. A worker thread would not help: measured here (CPython 3.13), a pure-Python
    # thread gets almost no GIL time while the Trio thread is busy (it releases and retakes
    # the GIL at every I/O check, which resets the waiter's switch request), and a busy Trio
    # thread is exactly when one takes a profile: a 0.1 s render took 25 s that way.
    text = renderer.render(session)
    return text.encode("utf-8"), CONTENT_TYPES[fmt]


def memory_top(limit: int = 30) -> str:
    """The ``limit`` source lines holding the most traced memory, as text.

    Starts tracemalloc if it is not running (and says so). Synchronous and in memory; a
    snapshot of a large heap takes some milliseconds.
    """
    limit = max(1, min(limit, 1000))
    lines: list[str] = []
    if not tracemalloc.is_tracing():
        tracemalloc.start(MEMORY_FRAMES)
        lines += [
            "tracemalloc was not running: started it now.",
            "Only allocations made from now on are traced; reload this page later to see",
            "what the daemon allocates. It stays on (with some cost) until stopped.",
            "",
        ]
    snapshot = tracemalloc.take_snapshot().filter_traces(
        (
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, linecache.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
            tracemalloc.Filter(False, "<unknown>"),
        )
    )
    current, peak = tracemalloc.get_traced_memory()
    stats = snapshot.statistics("lineno")
    lines.append(
        f"traced now {_kib(current)}, peak {_kib(peak)}, "
        f"{len(stats)} allocating lines; top {min(limit, len(stats))}:"
    )
    lines.append("")
    for rank, stat in enumerate(stats[:limit], 1):
        frame = stat.traceback[0]
        lines.append(
            f"{rank:4}. {_kib(stat.size):>12} in {stat.count:8} blocks  "
            f"{frame.filename}:{frame.lineno}"
        )
    rest = stats[limit:]
    if rest:
        lines.append(f"      {_kib(sum(s.size for s in rest)):>12} in {len(rest)} other lines")
    return "\n".join(lines) + "\n"


def memory_stop() -> bool:
    """Stop tracemalloc (freeing its traces); return whether it was running."""
    if not tracemalloc.is_tracing():
        return False
    tracemalloc.stop()
    return True


def _kib(size: int) -> str:
    return f"{size / 1024:,.1f} KiB"
