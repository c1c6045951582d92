"""The ``/debug/`` pages (SPEC §10), as routes added to an ops app.

Mounted on the monitoring server (``monitoring.address``: off by default, plain HTTP, meant
for loopback). The pages read in-memory state only, except ``profile`` (which samples the
process for the requested seconds), ``memory`` (which turns tracemalloc on for a bounded
time, see :class:`~dispatch.monitoring.profiling.MemoryTracing`), ``queue?state=captured``
(which lists the Local inbox) and ``vars`` (which reads a few ``/proc`` files of this
process). Every ``queue`` page is built in a worker thread from a snapshot of the index.

The index answers at ``/``, ``/debug`` and ``/debug/`` alike (200, no redirect); its links
are relative to where it was asked for, so each leads under ``/debug/``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Final, cast

import attrs
import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from dispatch.monitoring import pages, queue_page, webhook_page
from dispatch.monitoring.flags import CommandLineFlag, command_line, flags_page, flags_text
from dispatch.monitoring.profiling import (
    CONTENT_TYPES,
    MEMORY_TRACE_SECONDS,
    MemoryTracing,
    ProfileFormat,
    ProfilerBusyError,
    cpu_profile,
)
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.tasks import task_tree_text
from dispatch.monitoring.threads import threads_text
from dispatch.monitoring.traces import Tracer
from dispatch.monitoring.vars import ProcessInfo, RelayCounters, debug_vars
from dispatch.spool import SpoolCounts, SpoolEntry
from dispatch.spool.captured import CapturedListing
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
    flags: tuple[CommandLineFlag, ...] = ()  # described by the CLI (dispatch.cli)
    command_line: tuple[str, ...] = attrs.field(factory=command_line)
    captured: Callable[[int], Awaitable[CapturedListing]] | None = None  # the Local inbox
    router: Callable[[], queue_page.RouteLookup] | None = None  # the current routes
    # {relay: {"delivered": n, "failed": n}} today, the figures /metrics' gauges show
    relays_today: Callable[[], Mapping[str, Mapping[str, int]]] | None = None
    # the configured [[webhooks]] URLs (their calls are in stats.webhook_activity)
    webhook_urls: Callable[[], Sequence[str]] = tuple
    # listener.processes: above 1 the SMTP sessions run in worker processes, untraced
    intake_processes: Callable[[], int] = lambda: 1


def _html(body: str, status: int = 200) -> Response:
    return Response(body, status=status, content_type="text/html; charset=utf-8")


def _text(body: str, status: int = 200) -> Response:
    return Response(body, status=status, content_type="text/plain; charset=utf-8")


INDEX_PATHS: Final = ("/", "/debug", "/debug/")


def register_debug(
    app: QuartTrio, sources: DebugSources, *, index_paths: Sequence[str] = INDEX_PATHS
) -> None:
    """Add the pages to ``app``; the index answers at ``index_paths`` (the dashboard port,
    whose ``/`` is the Overview, passes ``("/debug", "/debug/")``)."""

    async def index() -> Response:
        base = "" if request.path == "/debug/" else "debug/"
        memory = sources.tracer.memory_estimate()
        return _html(pages.index_page(sources.info, trace_memory_bytes=memory, base=base))

    for path in index_paths:
        app.add_url_rule(path, "debug_index", index, methods=["GET"], strict_slashes=False)

    @app.get("/debug/config")
    async def config() -> Response:
        return _html(pages.config_page(sources.redacted_config(), sources.command_line))

    @app.get("/debug/flags")
    async def flags() -> Response:
        if request.args.get("format") == "text":
            return _text(flags_text(sources.flags, sources.command_line))
        return _html(flags_page(sources.flags, sources.command_line))

    @app.get("/debug/vars")
    async def variables() -> Response:
        return jsonify(
            debug_vars(
                sources.stats,
                sources.info,
                spool_counts=sources.spool_counts(),
                relays=sources.relays(),
                relays_today=sources.relays_today() if sources.relays_today else None,
            )
        )

    register_trace_pages(app, sources.tracer, sources.intake_processes)

    @app.get("/debug/webhooks")
    async def webhooks() -> Response:
        activity, urls = sources.stats.webhook_activity, sources.webhook_urls()
        if request.args.get("format") == "text":
            return _text(webhook_page.webhooks_text(activity, urls))
        return _html(webhook_page.webhooks_page(activity, urls))

    @app.get("/debug/queue")
    async def queue() -> Response:
        return await _queue(sources)

    @app.get("/debug/tasks")
    async def tasks() -> Response:
        return _html(pages.tasks_page(task_tree_text()))

    @app.get("/debug/threads")
    async def threads() -> Response:
        text = threads_text()
        if request.args.get("format") == "text":
            return Response(text, content_type="text/plain; charset=utf-8")
        return _html(pages.threads_page(text))

    @app.get("/debug/profile")
    async def profile() -> Response:
        try:
            seconds = float(request.args.get("seconds", "5"))
        except ValueError:
            return _html(pages.profile_error_page("seconds must be a number, e.g. ?seconds=5"), 400)
        fmt = request.args.get("format", "html")
        if fmt not in CONTENT_TYPES:
            known = ", ".join(CONTENT_TYPES)
            return _html(pages.profile_error_page(f"format must be one of {known}"), 400)
        try:
            body, content_type = await cpu_profile(seconds, cast(ProfileFormat, fmt))
        except ProfilerBusyError as exc:
            return _html(pages.profile_error_page(str(exc)), 409)
        response = Response(body, content_type=content_type)
        if fmt == "pprof":  # `curl -OJ` and browsers save it under the name pprof expects
            response.headers["Content-Disposition"] = 'attachment; filename="profile.pb.gz"'
        return response

    @app.get("/debug/memory")
    async def memory() -> Response:
        try:
            seconds = float(request.args.get("seconds", str(MEMORY_TRACE_SECONDS)))
        except ValueError:
            return _html(pages.memory_page("seconds must be a number, e.g. ?seconds=300"), 400)
        return _html(pages.memory_page(sources.memory.page(seconds)))


async def _queue(sources: DebugSources) -> Response:
    """``/debug/queue[?state=…][&format=text][&limit=N]``; a bad parameter is a 400 that
    says what the page accepts."""
    as_text = request.args.get("format") == "text"
    state = request.args.get("state") or None
    problem = None
    if state is not None and state not in queue_page.QUEUE_STATES:
        problem = f"state must be one of {', '.join(queue_page.QUEUE_STATES)}, not {state!r}"
    limit_text = request.args.get("limit", str(queue_page.DEFAULT_LIMIT))
    limit = int(limit_text) if limit_text.isdecimal() and limit_text.isascii() else 0
    if not 1 <= limit <= queue_page.MAX_LIMIT:
        problem = f"limit must be a number of messages from 1 to {queue_page.MAX_LIMIT}"
    if problem is not None:
        if as_text:
            return _text(problem + "\n", 400)
        return _html(queue_page.error_page("Spool queue", problem), 400)
    counts = sources.spool_counts()
    captured = None
    if state == "captured" and sources.captured is not None:
        captured = await sources.captured(limit)
    entries = () if state == "captured" else tuple(sources.spool_entries())  # a snapshot
    render = partial(
        queue_page.render,
        entries,
        captured=captured,
        router=sources.router() if sources.router is not None else None,
        counts=counts,
        state=state,
        limit=limit,
        as_text=as_text,
    )
    body = await trio.to_thread.run_sync(render)
    return _text(body) if as_text else _html(body)
