"""The Overview (``/``): today's figures, the spool, the relays, health, two 24-hour charts,
and the newest messages, kept current without a reload.

Routes:

- ``GET /``: the page, rendered from one :class:`~dispatch.dashboard.overview_feed.Snapshot`;
- ``GET /overview/events``: Server-Sent Events (``text/event-stream``). An ``overview``
  event carries ``{"values": {data-live key: text}, "latest": [rows]}`` when anything changed
  (checked every :data:`TICK_SECONDS`), a comment line keeps a quiet stream alive, and a
  ``stopping`` event ends it when the daemon stops. ``overview.js`` applies them;
- ``GET /overview/charts``: the two charts alone (HTML), which the script fetches again every
  minute.

The event stream's task is the request's own. It ends by itself after
:data:`STREAM_SECONDS` — before the server's read timeout (``dispatch/web/server.py``) would
drop a connection whose browser sends nothing — and the browser's ``EventSource``
reconnects after the ``retry`` delay it was given. It also ends at once when the daemon
begins to stop (``sources.stopping``), so an open Overview never holds the dashboard port's
shutdown for its grace period. A browser that goes away cancels it like any request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Final

import trio
from quart import Blueprint, Response

from dispatch.dashboard import formats
from dispatch.dashboard.overview_charts import Charts, build_charts
from dispatch.dashboard.overview_feed import OverviewFeed, Snapshot, relay_state_text
from dispatch.dashboard.render import render_page
from dispatch.dashboard.sources import DashboardSources
from dispatch.dashboard.statuses import STATUS_LABELS
from dispatch.web.server import READ_TIMEOUT_SECONDS

TICK_SECONDS: Final = 2.0
STREAM_SECONDS: Final = READ_TIMEOUT_SECONDS - 5.0
KEEPALIVE_SECONDS: Final = 10.0
RECONNECT_MILLISECONDS: Final = 1000

EVENT_LABELS: Final = {
    "received": "Received",
    "delivered": "Delivered",
    "failed": "Failed",
    "retried": "Retried",
    "denied": "Denied",
}
EVENT_HINTS: Final = {
    "received": "messages accepted (SMTP and API)",
    "delivered": "handed to a relay for good",
    "failed": "refused permanently or out of retries",
    "retried": "deferred, to be tried again",
    "denied": "connections refused by an allow-list",
}


def sse(event: str, data: str) -> bytes:
    """One Server-Sent Event; ``data`` is one line (JSON without newlines)."""
    return f"event: {event}\ndata: {data}\n\n".encode()


def live_payload(snapshot: Snapshot) -> str:
    return json.dumps(
        {"values": snapshot.live_values(), "latest": snapshot.latest_rows()},
        separators=(",", ":"),
    )


async def event_stream(
    feed: OverviewFeed, stopping: trio.Event, *, seconds: float = STREAM_SECONDS
) -> AsyncIterator[bytes]:
    """The Overview's events for one browser, for ``seconds`` or until ``stopping``."""
    yield f"retry: {RECONNECT_MILLISECONDS}\n\n".encode()
    deadline = trio.current_time() + seconds
    last_payload = ""
    last_write = trio.current_time()
    while not stopping.is_set():
        payload = live_payload(await feed.snapshot())
        if payload != last_payload:
            yield sse("overview", payload)
            last_payload, last_write = payload, trio.current_time()
        elif trio.current_time() - last_write >= KEEPALIVE_SECONDS:
            yield b": still here\n\n"
            last_write = trio.current_time()
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            return
        with trio.move_on_after(min(TICK_SECONDS, remaining)):
            await stopping.wait()
    yield sse("stopping", json.dumps("Dispatch is stopping; live updates have ended."))


def register(bp: Blueprint, sources: DashboardSources) -> None:
    feed = OverviewFeed(sources)

    async def charts() -> Charts:
        return await build_charts(sources)

    def context(snapshot: Snapshot, drawn: Charts) -> dict[str, Any]:
        return {
            "snapshot": snapshot,
            "values": snapshot.live_values(),
            "charts": drawn,
            "events": EVENT_LABELS,
            "hints": EVENT_HINTS,
            "statuses": STATUS_LABELS,
            "relay_state": relay_state_text,
            "fmt": formats,
        }

    @bp.get("/")
    async def overview() -> Response:
        snapshot = await feed.snapshot()
        return await render_page(
            "dashboard/overview.html",
            title="Overview",
            active="overview",
            **context(snapshot, await charts()),
        )

    @bp.get("/overview/charts")
    async def overview_charts() -> Response:
        return await render_page(
            "dashboard/overview_charts.html", title="Charts", charts=await charts(), fmt=formats
        )

    @bp.get("/overview/events")
    async def overview_events() -> Response:
        response = Response(event_stream(feed, sources.stopping), mimetype="text/event-stream")
        response.timeout = None  # the stream ends itself (STREAM_SECONDS)
        response.headers["X-Accel-Buffering"] = "no"  # a proxy must pass events at once
        return response
