"""``/debug/profile`` and ``/debug/memory``: a sampling CPU profile and the top allocations.

CPU: :func:`cpu_profile` samples every thread of the process for N seconds with a
:class:`~dispatch.monitoring.sampling.ThreadSampler` (the Trio thread by ``SIGPROF``, the
others from a sampler thread; each sample weighted by its thread's CPU time, so idle waiting
is never counted and commits, SQLite and TLS work in worker threads are charged to those
threads). The event loop goes on serving everything else meanwhile. The forms
(:mod:`~dispatch.monitoring.profile_formats`): an HTML page, speedscope's JSON, pprof's
gzipped ``profile.proto``. One profile at a time, 1 to 60 seconds.

Memory: :class:`MemoryTracing` owns :mod:`tracemalloc` for the monitoring server. Tracing
costs memory and speed (300 messages took 2.3 s instead of 1.3 s with it on), so it is off
until an operator asks for ``/debug/memory``, and then on for a bounded time only
(:data:`MEMORY_TRACE_SECONDS` by default, ``?seconds=`` up to :data:`MAX_MEMORY_TRACE_SECONDS`):
the owner task stops it when the time is up, and when the monitoring server stops. Only
allocations made after it started are seen: the page says so, and when tracing will stop.
:func:`memory_top` renders the top allocations; :func:`memory_stop` turns tracing off.
"""

from __future__ import annotations

import linecache
import time
import tracemalloc
from typing import Final

import trio

from dispatch.monitoring.profile_formats import CONTENT_TYPES, ProfileFormat, render
from dispatch.monitoring.sampling import ThreadSampler

__all__ = ["CONTENT_TYPES", "ProfileFormat"]

MIN_SECONDS: Final = 1.0
MAX_SECONDS: Final = 60.0
"""A profile lasts 1 to 60 s: shorter has too few samples, longer is an unreadable page and a
browser request that proxies time out."""

MEMORY_FRAMES: Final = 1
"""Frames tracemalloc stores per allocation: one (the allocating line) keeps tracing cheap."""

MEMORY_TRACE_SECONDS: Final = 300.0
"""How long one ``/debug/memory`` request leaves tracing on: long enough to watch a load test
grow, short enough that a forgotten browser tab does not slow the daemon for good."""
MAX_MEMORY_TRACE_SECONDS: Final = 3600.0
MIN_MEMORY_TRACE_SECONDS: Final = 1.0


class ProfilerBusyError(Exception):
    """A CPU profile is already being taken; one at a time keeps the cost predictable."""


_cpu_profile_running = False


def clamp_seconds(seconds: float) -> float:
    """``seconds`` limited to :data:`MIN_SECONDS`..:data:`MAX_SECONDS` (NaN → the minimum)."""
    if not seconds >= MIN_SECONDS:
        return MIN_SECONDS
    return min(seconds, MAX_SECONDS)


async def cpu_profile(seconds: float, fmt: ProfileFormat = "html") -> tuple[bytes, str]:
    """Sample every thread for ``seconds`` (clamped to 1..60); return body and content type.

    Must run on the Trio thread. Raises :class:`ProfilerBusyError` if a profile is already
    running, ``ValueError`` for an unknown format. Cancellation stops the sampler (its
    thread and timer) and propagates; a render under way is abandoned.
    """
    global _cpu_profile_running
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"profile format must be 'html', 'speedscope' or 'pprof', not {fmt!r}")
    if _cpu_profile_running:
        raise ProfilerBusyError("a CPU profile is already running; try again when it is done")
    _cpu_profile_running = True
    sampler = ThreadSampler()
    sampler.start()
    try:
        await trio.sleep(clamp_seconds(seconds))
    finally:
        profile = sampler.stop()
        _cpu_profile_running = False
    # Rendering a full profile (20,000 stacks) takes seconds of CPU: in a worker thread the
    # event loop keeps its turns at the GIL meanwhile. Nothing to clean up if abandoned.
    body = await trio.to_thread.run_sync(render, profile, fmt, abandon_on_cancel=True)
    return body, CONTENT_TYPES[fmt]


class MemoryTracing:
    """Owns tracemalloc while the monitoring server runs: on for a bounded time per request.

    :meth:`page` (a ``/debug/memory`` request) starts tracing if it is off and sets when it
    will stop; :meth:`run` is the owner task (started by the monitoring component) that
    stops it at that time, and in any case when it is cancelled or returns. Tracing that
    was on before (``PYTHONTRACEMALLOC``) is not ours: it is shown, never stopped.
    """

    def __init__(self) -> None:
        self._stop_at: float | None = None  # trio clock; None while we are not tracing
        self._started_wall = 0.0
        self._wake = trio.Event()

    @property
    def tracing(self) -> bool:
        """Whether tracing started by :meth:`page` is on now."""
        return self._stop_at is not None and tracemalloc.is_tracing()

    def page(self, seconds: float = MEMORY_TRACE_SECONDS, limit: int = 30) -> str:
        """The text of ``/debug/memory``; starts bounded tracing if it is off.

        Must run on the Trio thread (it reads the Trio clock). A request while tracing is on
        shows the top allocations and does not extend the time.
        """
        lines: list[str] = []
        if self._stop_at is None and tracemalloc.is_tracing():
            lines += [
                "tracemalloc was started outside Dispatch (PYTHONTRACEMALLOC?); it stays on.",
                "",
            ]
        elif self._stop_at is None or not tracemalloc.is_tracing():
            duration = min(max(seconds, MIN_MEMORY_TRACE_SECONDS), MAX_MEMORY_TRACE_SECONDS)
            if not duration >= MIN_MEMORY_TRACE_SECONDS:  # NaN
                duration = MEMORY_TRACE_SECONDS
            tracemalloc.start(MEMORY_FRAMES)
            self._stop_at = trio.current_time() + duration
            self._started_wall = time.time()
            self._wake.set()
            lines += [
                f"tracemalloc was not running: started it now, for {duration:g} s.",
                "Only allocations made from now on are traced; reload this page later to see",
                "what the daemon allocates.",
            ]
        if self._stop_at is not None:
            left = max(0.0, self._stop_at - trio.current_time())
            when = time.strftime("%H:%M:%S", time.gmtime(time.time() + left))
            lines += [
                f"Tracing stops by itself at {when}Z (in {left:.0f} s); after that this page",
                "starts it again. Add ?seconds=N to trace for N seconds "
                f"({MIN_MEMORY_TRACE_SECONDS:g} to {MAX_MEMORY_TRACE_SECONDS:g}).",
                "",
            ]
        return "\n".join(lines) + memory_top(limit)

    def stop(self) -> None:
        """Stop tracing if we started it (idempotent)."""
        if self._stop_at is not None:
            self._stop_at = None
            memory_stop()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The owner task: sleeps until tracing is started, then until its time is up."""
        task_status.started()
        try:
            while True:
                if self._stop_at is None:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                await trio.sleep_until(self._stop_at)
                if self._stop_at is not None and trio.current_time() >= self._stop_at:
                    self.stop()
        finally:
            self.stop()


def memory_top(limit: int = 30) -> str:
    """The ``limit`` source lines holding the most traced memory, as text.

    Starts tracemalloc if it is not running (without a bound: the monitoring server uses
    :class:`MemoryTracing`). Synchronous and in memory; a snapshot of a large heap takes
    some milliseconds.
    """
    limit = max(1, min(limit, 1000))
    lines: list[str] = []
    if not tracemalloc.is_tracing():
        tracemalloc.start(MEMORY_FRAMES)
        lines += [
            "tracemalloc was not running: started it now.",
            "Only allocations made from now on are traced; reload this page later to see",
            "what the daemon allocates.",
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
