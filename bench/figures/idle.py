"""Figure: idle SMTP sessions held open, and the resident memory each one costs.

Dispatch alone, with ``listener.max_connections`` and ``max_connections_per_ip`` raised above
the count (every connection comes from one address), a long
``connection_timeout_seconds`` (so the sessions are not timed out while we count) and the
open-file limit raised for it and for the client (:func:`bench.idle.raise_fd_limit`). Then
``tracemalloc`` (``/debug/memory``) shows which lines of code hold the memory of a smaller
batch of sessions.
"""

from __future__ import annotations

import html
import resource
from pathlib import Path

import httpx
import trio

from bench.figures.common import Context, settle, started
from bench.idle import BATCH, IdleRun, hold_idle
from bench.peers.base import Peer, RelayMode, Server
from bench.peers.dispatch_daemon import DispatchOptions, DispatchServer, start_dispatch
from bench.procs import LOOPBACK, Launcher, free_port
from bench.results import DISPATCH, Absolute, Figure
from bench.smtp_client import SmtpConnection

TRACED_SESSIONS = 1000
GOAL_KIB_PER_SESSION = 20
MEMORY_LINES = 8


def measure(ctx: Context) -> Figure:
    plan = ctx.plan
    count = plan.idle_connections
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    method = (
        f"Open {count:,} SMTP connections to Dispatch ({BATCH} at a time), each reading its 220 "
        "banner and then staying silent; resident memory (VmRSS) of the Dispatch process is "
        "read before (after 20 warm-up sessions), with all open, and after they closed. "
        f"Memory per connection = (RSS open - RSS idle) / open. max_connections = "
        f"max_connections_per_ip = {count + 100:,} (every connection comes from 127.0.0.1), "
        f"connection_timeout_seconds = 600, open-file limit {limit:,}. "
        f"N = {plan.idle_rounds}."
    )
    figure = Figure("idle", "Idle sessions and memory per connection", method)
    options = DispatchOptions(
        max_connections=count + 100,
        max_connections_per_ip=count + 100,
        connection_timeout_seconds=600,
    )

    def start(launcher: Launcher, directory: Path, mode: RelayMode, port: int) -> Server:
        return start_dispatch(launcher, directory, mode, port, options)

    peer = next(p for p in ctx.peers if p.name == DISPATCH)
    idle_peer = Peer(name=DISPATCH, tool=peer.tool, start=start)
    with started(ctx, [idle_peer], RelayMode.HELD, lambda _: free_port(), "idle") as (
        servers,
        missing,
    ):
        figure.not_measured += missing
        dispatch = next((s for s in servers if isinstance(s, DispatchServer)), None)
        if dispatch is None:
            return figure
        for number in range(plan.idle_rounds):
            ctx.say(f"  idle sessions round {number + 1}: {count:,} connections")
            run = trio.run(hold_idle, dispatch.port, dispatch.child.pid, count)
            _record(figure, run)
            settle()
        kept = figure.series(DISPATCH, "RSS after closing", "MiB")
        idle_rss = figure.series(DISPATCH, "RSS idle", "MiB")
        if kept.values and idle_rss.values:
            figure.limits.append(
                f"after the sessions closed the process kept {kept.median - idle_rss.median:.0f}"
                " MiB more than before they opened: memory of a burst of sessions is not all"
                " given back to the system"
            )
        _goal(figure)
        ctx.say(f"  tracemalloc over {TRACED_SESSIONS} sessions")
        figure.limits += _traced(dispatch)
    return figure


def _record(figure: Figure, run: IdleRun) -> None:
    figure.series(DISPATCH, "sessions held", "sessions").values.append(run.opened)
    figure.series(DISPATCH, "memory per connection", "KiB").values.append(
        run.bytes_per_connection / 1024
    )
    figure.series(DISPATCH, "RSS idle", "MiB").values.append(run.rss_idle / 2**20)
    figure.series(DISPATCH, "RSS with all open", "MiB").values.append(run.rss_open / 2**20)
    figure.series(DISPATCH, "RSS after closing", "MiB").values.append(run.rss_after / 2**20)
    figure.series(DISPATCH, "time to open all", "s").values.append(run.open_seconds)
    if run.failed:
        figure.notes.append(
            f"{run.failed} of {run.wanted} connections failed (first: {run.first_error})."
        )
    if not figure.absolutes:
        per_metric = figure.peer_series[DISPATCH]
        for metric in (
            "sessions held",
            "memory per connection",
            "RSS idle",
            "RSS with all open",
            "RSS after closing",
            "time to open all",
        ):
            figure.absolutes.append(Absolute(metric, per_metric[metric]))


def _goal(figure: Figure) -> None:
    """Say whether memory per idle session is under the goal (issue 19)."""
    for absolute in figure.absolutes:
        if absolute.metric == "memory per connection" and absolute.series.values:
            met = absolute.series.median < GOAL_KIB_PER_SESSION
            absolute.note = f"goal: under {GOAL_KIB_PER_SESSION} KiB — " + (
                "met" if met else "**not met**"
            )


def _traced(dispatch: DispatchServer) -> list[str]:
    """Top allocating lines while :data:`TRACED_SESSIONS` sessions are open."""
    url = f"http://{LOOPBACK}:{dispatch.monitoring_port}/debug/memory"
    try:
        httpx.get(url, timeout=30).raise_for_status()  # starts tracemalloc
        page = trio.run(_open_and_read, dispatch.port, url)
    except httpx.HTTPError as exc:
        return [f"tracemalloc not available: {exc}"]
    lines = [line.strip() for line in page.splitlines() if line.strip()[:1].isdigit()]
    top = [line for line in lines if " blocks " in line][:MEMORY_LINES]
    if not top:
        return ["tracemalloc page had no allocation lines"]
    return [
        f"tracemalloc, top lines holding memory with {TRACED_SESSIONS} sessions open "
        "(allocations since tracing started): " + "; ".join(f"`{_clean(line)}`" for line in top)
    ]


async def _open_and_read(port: int, url: str) -> str:
    held = [await SmtpConnection.open(port, ehlo=False) for _ in range(TRACED_SESSIONS)]
    try:
        await trio.sleep(1.0)
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.get(url)
        return html.unescape(response.text)
    finally:
        for connection in held:
            await connection.aclose()


def _clean(line: str) -> str:
    # "   1.      123.4 KiB in       56 blocks  /path/to/file.py:12"
    head, _, location = line.partition(" blocks ")
    size = " ".join(head.split()[1:3])
    location = location.strip()
    for marker in ("/site-packages/", "/lib/python3.13/", "/work/main/"):
        if marker in location:
            location = location.split(marker, 1)[1]
    return f"{size} {location}"
