"""The two ops servers: the dashboard port (HTTPS) and the monitoring server (plain HTTP).

Both serve the ops app of :mod:`dispatch.web.ops` (``/health``, ``/metrics``); the monitoring
server adds the ``/debug`` pages; the dashboard port adds the dashboard, which the web room does
not import: the composition root hands :class:`OpsServers` a ``dashboard`` callable that adds
its routes to the app (``dispatch.dashboard.register_dashboard``). Each is a component built by
the composition root (:mod:`dispatch.daemon`) from the shared parts: ready once bound, serving
until the stop request, then closing its connections (see :func:`dispatch.web.server.serve_app`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio
from quart_trio import QuartTrio

from dispatch.config.live import LiveSettings
from dispatch.config.types import Cidr
from dispatch.lifecycle import Shutdown
from dispatch.monitoring.profiling import MemoryTracing
from dispatch.security.certs import ensure_certificate
from dispatch.web.debug import DebugSources, register_debug
from dispatch.web.ops import OpsSources, create_ops_app
from dispatch.web.server import bind_spec, hypercorn_config, serve_app

log = logging.getLogger("dispatch")

AllowList = Callable[[], tuple[Cidr, ...]]


@attrs.frozen
class OpsServers:
    """What both servers show: ``ops(allowed)`` is the ops app's sources behind an allow-list;
    ``dashboard(app)`` adds the dashboard to the dashboard port's app (None: that port serves
    the ops paths only)."""

    settings: LiveSettings
    ops: Callable[[AllowList], OpsSources]
    debug: Callable[[MemoryTracing], DebugSources]
    dashboard: Callable[[QuartTrio], None] | None = None

    async def run_dashboard(
        self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """The dashboard port (``webui.port``, HTTPS only): /health and /metrics, and the
        dashboard's pages."""
        files = await trio.to_thread.run_sync(ensure_certificate, self.settings.current)
        webui = self.settings.current.webui
        binds = [bind_spec(address, webui.port) for address in webui.bind_address]
        config = hypercorn_config(binds, certfile=files.cert_file, keyfile=files.key_file)
        app = create_ops_app(self.ops(lambda: self.settings.current.webui.allowed_cidrs))
        if self.dashboard is not None:
            self.dashboard(app)
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve_app, app, config, shutdown)
            what = "dashboard, health, metrics" if self.dashboard else "health, metrics"
            log.info("dashboard port (%s) on %s", what, ", ".join(bound))
            task_status.started()

    async def run_monitoring(
        self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """The monitoring server on ``monitoring.address`` (plain HTTP, meant for loopback):
        ``/debug/…`` and ``/metrics``, behind ``monitoring.allowed_cidrs`` and the ``Host``
        check. Also owns the task that stops ``/debug/memory``'s tracing when its time is up."""
        memory = MemoryTracing()
        debug = self.debug(memory)
        sources = attrs.evolve(
            self.ops(lambda: self.settings.current.monitoring.allowed_cidrs),
            allowed_key="monitoring.allowed_cidrs",
            denied=lambda stats: stats.monitoring_denied,
            check_host=True,
        )
        app = create_ops_app(
            sources, name="dispatch-monitoring", register_debug=lambda a: register_debug(a, debug)
        )
        config = hypercorn_config([self.settings.current.monitoring.address])
        async with trio.open_nursery() as tracing:
            tracing.start_soon(memory.run)
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(serve_app, app, config, shutdown)
                log.info("monitoring server on %s", ", ".join(bound))
                task_status.started()
            tracing.cancel_scope.cancel()  # the server has stopped: so does memory tracing
