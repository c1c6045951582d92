"""The ops app: ``/health`` and ``/metrics`` on the dashboard port (SPEC §9), and the same
app with the ``/debug/`` pages on the monitoring server (SPEC §10). ``/health/live`` and
``/health/ready`` are the orchestrators' probes (200, or 503 with the reason).

Every request first passes the source-address allow-list (live): ``webui.allowed_cidrs`` on
the dashboard port, ``monitoring.allowed_cidrs`` (loopback by default) on the monitoring
server. Outside it the answer is ``403``, the peer's IP is logged and the refusal counted.
No login is needed for ``/health`` and ``/metrics`` (probes and scrapers), and nothing they
return identifies a person. The ``/debug/`` pages are only mounted on the monitoring server.

The monitoring server speaks plain HTTP and shows configuration and internals, so it also
checks the ``Host`` header (:func:`host_is_address`): a page on another site that rebinds its
own DNS name to 127.0.0.1 makes the operator's browser send ``Host: that-name``, which gets
``421`` instead of the page. Scrapers and people address the server by IP or ``localhost``.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any

import attrs
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from dispatch.config.types import Cidr
from dispatch.monitoring.health import HealthSources, check_health, check_readiness, liveness
from dispatch.monitoring.stats import CounterMap, Stats
from dispatch.security.allowlist import is_allowed

log = logging.getLogger("dispatch.web")


@attrs.frozen
class OpsSources:
    """What the ops app reads; owned by the daemon.

    ``allowed_key`` names the allow-list in messages; ``denied`` picks the counter of
    refusals from ``stats`` (dashboard port: ``webui_denied``; monitoring server:
    ``monitoring_denied``); ``check_host`` turns on the ``Host`` check of the monitoring
    server.
    """

    health: HealthSources
    allowed_cidrs: Callable[[], tuple[Cidr, ...]]
    metrics: Callable[[str], tuple[bytes, str]]  # Accept header → (body, content type)
    stats: Stats | None = None  # counts refusals (dispatch_webui_denied_requests_total)
    allowed_key: str = "webui.allowed_cidrs"
    denied: Callable[[Stats], CounterMap] = attrs.field(default=lambda stats: stats.webui_denied)
    check_host: bool = False


def host_is_address(host: str) -> bool:
    """Whether a ``Host`` header names the server by address: an IPv4 literal, ``[IPv6]``, or
    ``localhost``, each with an optional port. Names that DNS could rebind are refused."""
    name, port = host, ""
    if host.startswith("["):
        name, bracket, port = host[1:].partition("]")
        if not bracket:
            return False
        if port:
            if not port.startswith(":"):
                return False
            port = port[1:]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return False
    else:
        name, _, port = host.partition(":")
        if name.lower() != "localhost":
            try:
                ipaddress.IPv4Address(name)
            except ValueError:
                return False
    return port == "" or (port.isdecimal() and port.isascii() and 0 < int(port) < 65536)


def create_ops_app(
    sources: OpsSources,
    *,
    name: str = "dispatch-ops",
    register_debug: Callable[[QuartTrio], None] | None = None,
) -> QuartTrio:
    # No static folder: Quart would otherwise serve ./static of the working directory.
    app = QuartTrio(name, static_folder=None)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep SPEC §9 field order

    def refuse(reason: str, status: int, detail: str) -> Response:
        if sources.stats is not None:
            sources.denied(sources.stats).add(reason)
        response = jsonify(error="forbidden" if status == 403 else "misdirected", detail=detail)
        response.status_code = status
        return response

    @app.before_request
    async def allow_list() -> Response | None:
        peer = request.remote_addr or ""
        key = sources.allowed_key
        if not is_allowed(peer, sources.allowed_cidrs()):
            log.warning("denied %s %s from %s: not in %s", request.method, request.path, peer, key)
            return refuse("allowlist", 403, f"{peer} is not in {key}; ask the operator to add it")
        host = request.headers.get("Host")
        # No Host at all is HTTP/1.0 from a tool: browsers, the rebinding risk, always send it.
        if sources.check_host and host is not None and not host_is_address(host):
            log.warning(
                "denied %s %s from %s: Host %s is not an address",
                request.method,
                request.path,
                peer,
                host,
            )
            return refuse(
                "host",
                421,
                f"this server answers only requests addressed to it by IP address or "
                f"localhost (e.g. http://127.0.0.1:PORT/), not by the name {host[:100]!r}: "
                "a name could be a DNS-rebinding page in your browser",
            )
        return None

    @app.get("/health")
    async def health() -> tuple[Response, int]:
        status, document = await check_health(sources.health)
        return jsonify(document), 503 if status == "critical" else 200

    @app.get("/health/live")
    async def health_live() -> tuple[Response, int]:
        return jsonify(liveness(sources.health)), 200

    @app.get("/health/ready")
    async def health_ready() -> tuple[Response, int]:
        ready, document = await check_readiness(sources.health)
        return jsonify(document), 200 if ready else 503

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
