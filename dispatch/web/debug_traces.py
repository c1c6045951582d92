"""The ``/debug/traces`` route (SPEC §10): the families, one list, one trace's timeline.

Reads the :class:`~dispatch.monitoring.traces.Tracer` only (in memory, no I/O). An ``id`` that
no ring holds any more (or never did) is a ``404`` page titled for traces.
"""

from __future__ import annotations

from collections.abc import Callable

from quart import Response, request
from quart_trio import QuartTrio

from dispatch.monitoring import trace_pages
from dispatch.monitoring.traces import Tracer


def _html(body: str, status: int = 200) -> Response:
    return Response(body, status=status, content_type="text/html; charset=utf-8")


def register_trace_pages(
    app: QuartTrio, tracer: Tracer, intake_processes: Callable[[], int] = lambda: 1
) -> None:
    """Add ``GET /debug/traces`` to ``app``; ``intake_processes``: ``listener.processes``
    (above 1, the SMTP sessions run in worker processes that keep no traces)."""

    @app.get("/debug/traces")
    async def traces() -> Response:
        trace_id = request.args.get("id")
        if trace_id is not None:
            trace = tracer.find(trace_id)
            if trace is None:
                return _html(trace_pages.trace_not_found_page(trace_id), 404)
            return _html(trace_pages.trace_page(trace))
        family = request.args.get("family")
        show = request.args.get("show")
        page = trace_pages.traces_page(
            tracer, family=family, show=show, intake_processes=intake_processes()
        )
        return _html(page)
