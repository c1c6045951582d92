"""A CPU profile of Dispatch's Trio thread, taken from ``/debug/profile``, and its summary.

The monitoring server runs pyinstrument on the Trio thread for N seconds and returns the
speedscope JSON (an "evented" profile: open and close events per frame). From it this
module computes each function's self time (time at the top of the stack) and total time, and
groups self time by area of the code, so the report can say which functions take the time.
Work in worker threads (fsync, SQLite) is not sampled; it appears only as the Trio thread
being idle, which is why the report gives per-thread CPU next to the profile.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.procs import LOOPBACK

IDLE_MARKERS = ("_io_epoll.py", "selectors.py")
"""Frames where the Trio thread waits for I/O: their self time is idle time."""

ENTRY_FRAMES = ("dispatch/__main__.py", "dispatch/cli/", "dispatch/supervisor.py")
"""Frames every sample passes through: their total time is the whole profile."""

AREAS: tuple[tuple[str, str], ...] = (
    ("/dispatch/smtp/", "dispatch.smtp (protocol)"),
    ("/dispatch/intake/", "dispatch.intake (sessions)"),
    ("/dispatch/spool/", "dispatch.spool"),
    ("/dispatch/delivery/", "dispatch.delivery"),
    ("/dispatch/relays/", "dispatch.relays"),
    ("/dispatch/storage/", "dispatch.storage"),
    ("/dispatch/monitoring/", "dispatch.monitoring"),
    ("/dispatch/", "dispatch (other)"),
    ("/trio/_socket.py", "socket calls (trio._socket)"),
    ("/trio/_threads.py", "thread hops (trio.to_thread)"),
    ("/trio/_core/_thread_cache.py", "thread hops (trio.to_thread)"),
    ("/trio/", "trio (scheduler, streams, cancel scopes)"),
    ("/logging/", "stdlib logging"),
    ("/ssl.py", "stdlib ssl"),
    ("/hypercorn/", "hypercorn"),
    ("/quart", "quart"),
    ("/h11/", "h11"),
    ("/attr", "attrs"),
    ("/json/", "stdlib json"),
)


@dataclass
class FrameTime:
    function: str
    where: str  # module path (shortened) and line
    self_seconds: float = 0.0
    total_seconds: float = 0.0


@dataclass
class ProfileSummary:
    seconds: float
    idle_seconds: float
    functions: list[FrameTime] = field(default_factory=list)
    areas: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def busy_seconds(self) -> float:
        return max(0.0, self.seconds - self.idle_seconds)

    def top_self(self, count: int = 12) -> list[FrameTime]:
        busy = [f for f in self.functions if not _is_idle(f.where)]
        return sorted(busy, key=lambda f: f.self_seconds, reverse=True)[:count]

    def top_dispatch_total(self, count: int = 16) -> list[FrameTime]:
        ours = [
            f
            for f in self.functions
            if f.where.startswith("dispatch/") and not f.where.startswith(ENTRY_FRAMES)
        ]
        return sorted(ours, key=lambda f: f.total_seconds, reverse=True)[:count]


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3.13/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _is_idle(where: str) -> bool:
    return any(marker in where for marker in IDLE_MARKERS)


def _area(path: str) -> str:
    for marker, name in AREAS:
        if marker in path:
            return name
    return "other (stdlib, libraries)"


def fetch_profile(monitoring_port: int, seconds: float) -> dict[str, Any]:
    """GET the speedscope profile of the next ``seconds`` seconds."""
    url = f"http://{LOOPBACK}:{monitoring_port}/debug/profile"
    response = httpx.get(
        url, params={"seconds": seconds, "format": "speedscope"}, timeout=seconds + 60
    )
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def summarise(document: dict[str, Any]) -> ProfileSummary:
    """Self and total time per function, idle time, and self time per area of the code."""
    frames = document["shared"]["frames"]
    profile = document["profiles"][0]
    times: dict[int, FrameTime] = {}
    for index, frame in enumerate(frames):
        path = frame.get("file") or ""
        times[index] = FrameTime(
            function=frame.get("name") or "?", where=f"{_short(path)}:{frame.get('line') or 0}"
        )
    if profile.get("type") == "sampled":
        _add_samples(profile, times)
    else:
        _add_events(profile, times)
    total = float(profile["endValue"]) - float(profile["startValue"])
    functions = [t for t in times.values() if t.self_seconds > 0 or t.total_seconds > 0]
    idle = sum(f.self_seconds for f in functions if _is_idle(f.where))
    areas: dict[str, float] = defaultdict(float)
    for index, frame in enumerate(frames):
        where = times[index].where
        if not _is_idle(where):
            areas[_area(frame.get("file") or "")] += times[index].self_seconds
    return ProfileSummary(seconds=total, idle_seconds=idle, functions=functions, areas=dict(areas))


def _add_samples(profile: dict[str, Any], times: dict[int, FrameTime]) -> None:
    """A "sampled" profile: one stack (outermost first) and its weight in seconds per sample."""
    for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
        if not stack:
            continue
        times[stack[-1]].self_seconds += weight
        for index in set(stack):
            times[index].total_seconds += weight


def _add_events(profile: dict[str, Any], times: dict[int, FrameTime]) -> None:
    """An "evented" profile: open and close events per frame, with times."""
    stack: list[tuple[int, float, float]] = []  # frame, opened at, time spent in children
    on_stack: dict[int, int] = defaultdict(int)
    for event in profile["events"]:
        index, at = event["frame"], float(event["at"])
        if event["type"] == "O":
            stack.append((index, at, 0.0))
            on_stack[index] += 1
            continue
        opened_index, opened_at, children = stack.pop()
        on_stack[opened_index] -= 1
        duration = at - opened_at
        times[opened_index].self_seconds += duration - children
        if on_stack[opened_index] == 0:  # recursion: count the outermost call only
            times[opened_index].total_seconds += duration
        if stack:
            parent, parent_at, parent_children = stack[-1]
            stack[-1] = (parent, parent_at, parent_children + duration)


def profile_dispatch(monitoring_port: int, seconds: float) -> ProfileSummary:
    """Fetch and summarise; a failure becomes a summary that carries the error."""
    try:
        return summarise(fetch_profile(monitoring_port, seconds))
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
        return ProfileSummary(seconds=0.0, idle_seconds=0.0, error=f"{type(exc).__name__}: {exc}")
