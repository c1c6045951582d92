"""``/debug/profile`` and ``/debug/memory``: a sampling CPU profile and the top allocations.

CPU: :func:`cpu_profile` arms a ``SIGPROF`` interval timer (``ITIMER_PROF``: it ticks with
the process's CPU time, so idle waiting is never sampled) for N seconds; the Python-level
handler runs on the Trio thread between two bytecodes and records the frame it interrupted,
which is the stack of whichever task was running. The event loop goes on serving everything
else meanwhile. Two approaches that failed here: pyinstrument only ever saw the scheduler's
``epoll.poll`` frame under load, and a sampling *thread* barely got the GIL while the Trio
thread was busy (it re-takes the GIL at every I/O check), so its samples clustered in the
I/O waits. CPU burnt by worker threads (disk, database, password hashing) is charged to
whatever the Trio thread runs when the tick is delivered. Output: an HTML page with the
functions that take the most samples (self and inclusive) and the hottest stacks, or
speedscope's JSON ("sampled" profile) for https://www.speedscope.app.

Memory: :class:`MemoryTracing` owns :mod:`tracemalloc` for the monitoring server. Tracing
costs memory and speed (300 messages took 2.3 s instead of 1.3 s with it on), so it is off
until an operator asks for ``/debug/memory``, and then on for a bounded time only
(:data:`MEMORY_TRACE_SECONDS` by default, ``?seconds=`` up to :data:`MAX_MEMORY_TRACE_SECONDS`):
the owner task stops it when the time is up, and when the monitoring server stops. Only
allocations made after it started are seen: the page says so, and when tracing will stop.
:func:`memory_top` renders the top allocations; :func:`memory_stop` turns tracing off.
"""

from __future__ import annotations

import html
import json
import linecache
import signal
import time
import tracemalloc
from collections import Counter
from types import FrameType
from typing import Any, Final, Literal

import trio

ProfileFormat = Literal["html", "speedscope"]

MIN_SECONDS: Final = 1.0
MAX_SECONDS: Final = 60.0
"""A profile lasts 1 to 60 s: shorter has too few samples, longer is an unreadable page and a
browser request that proxies time out."""

SAMPLE_INTERVAL: Final = 0.005
"""Seconds between samples: 200 a second is plenty to rank functions and cheap for the loop."""

MAX_DEPTH: Final = 80  # frames kept per sample, innermost first

CONTENT_TYPES: Final[dict[str, str]] = {
    "html": "text/html; charset=utf-8",
    "speedscope": "application/json",
}

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

Frame = tuple[str, str, int]  # function, file, first line
Stack = tuple[Frame, ...]  # outermost first


def _stack(frame: FrameType | None) -> Stack:
    frames: list[Frame] = []
    while frame is not None and len(frames) < MAX_DEPTH:
        code = frame.f_code
        frames.append((code.co_qualname, code.co_filename, code.co_firstlineno))
        frame = frame.f_back
    frames.reverse()
    return tuple(frames)


class _Sampler:
    """Owns the samples and, while running, the ``SIGPROF`` handler and timer (the previous
    handler is restored by :meth:`stop`). Must be started and stopped on the main thread."""

    def __init__(self) -> None:
        self.samples: Counter[Stack] = Counter()
        self._previous: Any = None

    def _tick(self, signum: int, frame: FrameType | None) -> None:
        self.samples[_stack(frame)] += 1

    def start(self) -> None:
        self._previous = signal.signal(signal.SIGPROF, self._tick)
        signal.setitimer(signal.ITIMER_PROF, SAMPLE_INTERVAL, SAMPLE_INTERVAL)

    def stop(self) -> Counter[Stack]:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, self._previous)
        return self.samples


def clamp_seconds(seconds: float) -> float:
    """``seconds`` limited to :data:`MIN_SECONDS`..:data:`MAX_SECONDS` (NaN → the minimum)."""
    if not seconds >= MIN_SECONDS:
        return MIN_SECONDS
    return min(seconds, MAX_SECONDS)


async def cpu_profile(seconds: float, fmt: ProfileFormat = "html") -> tuple[bytes, str]:
    """Sample the Trio thread for ``seconds`` (clamped to 1..60); return body and content type.

    Raises :class:`ProfilerBusyError` if a profile is already running, ``ValueError`` for an
    unknown format. Cancellation stops the sampler and propagates; nothing is rendered.
    """
    global _cpu_profile_running
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"profile format must be 'html' or 'speedscope', not {fmt!r}")
    if _cpu_profile_running:
        raise ProfilerBusyError("a CPU profile is already running; try again when it is done")
    _cpu_profile_running = True
    duration = clamp_seconds(seconds)
    sampler = _Sampler()
    started = time.time()
    sampler.start()
    try:
        await trio.sleep(duration)
    finally:
        samples = sampler.stop()
        _cpu_profile_running = False
    if fmt == "speedscope":
        return _speedscope(samples, duration).encode(), CONTENT_TYPES[fmt]
    return _html(samples, duration, started).encode(), CONTENT_TYPES[fmt]


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/dispatch/", "/lib/python3"):
        if marker in path:
            return path[path.index(marker) + 1 :]
    return path


def _label(frame: Frame) -> str:
    return f"{frame[0]} ({_short(frame[1])}:{frame[2]})"


def _html(samples: Counter[Stack], duration: float, started: float) -> str:
    total = sum(samples.values()) or 1
    own: Counter[Frame] = Counter()
    inclusive: Counter[Frame] = Counter()
    for stack, count in samples.items():
        if stack:
            own[stack[-1]] += count
        for frame in set(stack):
            inclusive[frame] += count

    def rows(counter: Counter[Frame], limit: int) -> str:
        return "".join(
            f"<tr><td>{count / total * 100:5.1f}%</td><td>{count}</td>"
            f"<td><code>{html.escape(_label(frame))}</code></td></tr>"
            for frame, count in counter.most_common(limit)
        )

    stacks = "".join(
        f"<li>{count / total * 100:.1f}% — <code>"
        + html.escape(" → ".join(frame[0] for frame in stack[-12:]))
        + "</code></li>"
        for stack, count in samples.most_common(25)
    )
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started))
    return (
        "<!doctype html><meta charset=utf-8><title>CPU profile</title>"
        "<style>body{font-family:sans-serif}td{padding:0 .6em}</style>"
        f"<h1>CPU profile of the Trio thread</h1><p>{when}Z, {duration:.1f} s, "
        f"{sum(samples.values())} samples, one per {SAMPLE_INTERVAL * 1000:.0f} ms of CPU. "
        "Percentages are of samples: CPU time spent in a function (self) or below it "
        "(inclusive); idle time is not sampled.</p>"
        f"<h2>Self</h2><table><tr><th>%</th><th>samples</th><th>function</th></tr>"
        f"{rows(own, 40)}</table>"
        f"<h2>Inclusive</h2><table><tr><th>%</th><th>samples</th><th>function</th></tr>"
        f"{rows(inclusive, 60)}</table><h2>Hottest stacks (innermost last)</h2><ol>{stacks}</ol>"
    )


def _speedscope(samples: Counter[Stack], duration: float) -> str:
    index: dict[Frame, int] = {}
    frames: list[dict[str, object]] = []
    stacks: list[list[int]] = []
    weights: list[float] = []
    for stack, count in samples.items():
        ids = []
        for frame in stack:
            if frame not in index:
                index[frame] = len(frames)
                frames.append({"name": frame[0], "file": frame[1], "line": frame[2]})
            ids.append(index[frame])
        stacks.append(ids)
        weights.append(count * SAMPLE_INTERVAL)
    document = {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "exporter": "dispatch",
        "name": "Dispatch CPU profile",
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": "Trio thread",
                "unit": "seconds",
                "startValue": 0,
                "endValue": duration,
                "samples": stacks,
                "weights": weights,
            }
        ],
    }
    return json.dumps(document)


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
