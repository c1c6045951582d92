"""The ``/debug/`` pages (SPEC §10), as routes added to an ops app.

Mounted on the monitoring server (``monitoring.address``: off by default, plain HTTP, meant
for loopback). The pages read in-memory state only, except ``profile`` (which samples the
process for the requested seconds) and ``memory`` (which turns tracemalloc on for a bounded
time, see :class:`~dispatch.monitoring.profiling.MemoryTracing`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Literal

import attrs
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from dispatch.monitoring import pages
from dispatch.monitoring.profiling import (
    MEMORY_TRACE_SECONDS,
    MemoryTracing,
    ProfilerBusyError,
    cpu_profile,
)
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.tasks import task_tree_text
from dispatch.monitoring.traces import Tracer
from dispatch.monitoring.vars import ProcessInfo, RelayCounters, debug_vars
from dispatch.spool import SpoolCounts, SpoolEntry
from dispatch.web.debug_traces import register_trace_pages


@attrs.frozen
class DebugSources:
    info: ProcessInfo
    tracer: Tracer
    stats: Stats
    redacted_config: Callable[[], str]
    spool_entries: Callable[[], Iterable[SpoolEntry]]
    spool_counts: Callable[[], SpoolCounts]
    relays: Callable[[], Iterable[RelayCounters]]
    memory: MemoryTracing = attrs.field(factory=MemoryTracing)  # its owner task: the caller's
    flags: tuple[str, ...] = attrs.field(factory=lambda: tuple(sys.argv))


def _html(body: str, status: int = 200) -> Response:
    return Response(body, status=status, content_type="text/html; charset=utf-8")


def register_debug(app: QuartTrio, sources: DebugSources) -> None:
    @app.get("/debug/")
    async def index() -> Response:
        return _html(
            pages.index_page(sources.info, trace_memory_bytes=sources.tracer.memory_estimate())
        )

    @app.get("/debug/config")
    async def config() -> Response:
        return _html(pages.config_page(sources.redacted_config(), sources.flags))

    @app.get("/debug/vars")
    async def variables() -> Response:
        return jsonify(
            debug_vars(
                sources.stats,
                sources.info,
                spool_counts=sources.spool_counts(),
                relays=sources.relays(),
            )
        )

    register_trace_pages(app, sources.tracer)

    @app.get("/debug/queue")
    async def queue() -> Response:
        return _html(pages.queue_page(sources.spool_entries()))

    @app.get("/debug/tasks")
    async def tasks() -> Response:
        return _html(pages.tasks_page(task_tree_text()))

    @app.get("/debug/profile")
    async def profile() -> Response:
        try:
            seconds = float(request.args.get("seconds", "5"))
        except ValueError:
            return _html(pages.memory_page("seconds must be a number, e.g. ?seconds=5"), 400)
        fmt: Literal["html", "speedscope"] = (
            "speedscope" if request.args.get("format") == "speedscope" else "html"
        )
        try:
            body, content_type = await cpu_profile(seconds, fmt)
        except ProfilerBusyError as exc:
            return _html(pages.memory_page(str(exc)), 409)
        return Response(body, content_type=content_type)

    @app.get("/debug/memory")
    async def memory() -> Response:
        try:
            seconds = float(request.args.get("seconds", str(MEMORY_TRACE_SECONDS)))
        except ValueError:
            return _html(pages.memory_page("seconds must be a number, e.g. ?seconds=300"), 400)
        return _html(pages.memory_page(sources.memory.page(seconds)))
