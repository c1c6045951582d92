"""The ops app: ``/health`` and ``/metrics`` on the dashboard port (SPEC §9), and the same
app with the ``/debug/`` pages on the monitoring server (SPEC §10).

Every request first passes the source-address allow-list (``webui.allowed_cidrs``, live):
outside it the answer is ``403`` and the peer's IP is logged. No login is needed for
``/health`` and ``/metrics`` (probes and scrapers), and nothing they return identifies a
person. The ``/debug/`` pages are only mounted on the monitoring server, which is off by
default and meant for loopback; on the dashboard port they will sit behind the admin login.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from dispatch.config.types import Cidr
from dispatch.monitoring.health import HealthSources, check_health
from dispatch.monitoring.stats import Stats
from dispatch.security.allowlist import is_allowed

log = logging.getLogger("dispatch.web")


@attrs.frozen
class OpsSources:
    """What the ops app reads; owned by the daemon."""

    health: HealthSources
    allowed_cidrs: Callable[[], tuple[Cidr, ...]]
    metrics: Callable[[str], tuple[bytes, str]]  # Accept header → (body, content type)
    stats: Stats | None = None  # counts refusals (dispatch_webui_denied_requests_total)


def create_ops_app(
    sources: OpsSources,
    *,
    name: str = "dispatch-ops",
    register_debug: Callable[[QuartTrio], None] | None = None,
) -> QuartTrio:
    app = QuartTrio(name)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep SPEC §9 field order

    @app.before_request
    async def allow_list() -> Response | None:
        peer = request.remote_addr or ""
        if is_allowed(peer, sources.allowed_cidrs()):
            return None
        log.warning(
            "denied %s %s from %s: not in webui.allowed_cidrs", request.method, request.path, peer
        )
        if sources.stats is not None:
            sources.stats.webui_denied.add("allowlist")
        response = jsonify(
            error="forbidden",
            detail=f"{peer} is not in webui.allowed_cidrs; ask the operator to add it",
        )
        response.status_code = 403
        return response

    @app.get("/health")
    async def health() -> tuple[Response, int]:
        status, document = await check_health(sources.health)
        return jsonify(document), 503 if status == "critical" else 200

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = sources.metrics(request.headers.get("Accept", ""))
        return Response(body, content_type=content_type)

    @app.errorhandler(500)
    async def server_error(error: Any) -> tuple[Response, int]:
        # Quart 0.23 no longer logs tracebacks of 500s itself (pallets/quart#479).
        original = getattr(error, "original_exception", None) or error
        log.error("request %s %s failed", request.method, request.path, exc_info=original)
        return jsonify(error="internal error", detail="see the server log"), 500

    if register_debug is not None:
        register_debug(app)
    return app
