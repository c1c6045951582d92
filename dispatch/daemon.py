"""Wiring: which components the daemon runs, in which order, sharing which objects.

:func:`serve` is what ``python -m dispatch`` runs inside ``trio.run``. Components start in
dependency order (SPEC §1) and stop in reverse: storage (everything records into it), the
spool (everything reads or writes it), delivery, the SMTP listener, the control socket.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import attrs
import trio

from dispatch import __version__
from dispatch.api.app import ApiSources, build_api
from dispatch.config import Settings, redacted_toml
from dispatch.config.advice import config_warnings
from dispatch.config.live import LiveSettings
from dispatch.config.settings import ListenerSettings
from dispatch.config.types import Cidr
from dispatch.control.server import ControlServer, Operations
from dispatch.delivery.attempt import DeliveryAttempt, DeliveryPlan
from dispatch.delivery.routing import Router
from dispatch.delivery.scanner import DeliveryScanner
from dispatch.delivery.schedule import RetrySchedule
from dispatch.intake.listener import SmtpListener
from dispatch.intake.ports import bind_smtp_ports
from dispatch.intake.processes import IntakeWorkers
from dispatch.intake.session import IntakeContext
from dispatch.lifecycle import Component, Shutdown
from dispatch.logs import bind
from dispatch.monitoring.health import HealthSources
from dispatch.monitoring.metrics import DatabaseFigures, MetricsCollector, build_registry, render
from dispatch.monitoring.profiling import MemoryTracing
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.traces import Tracer
from dispatch.monitoring.vars import ProcessInfo
from dispatch.relays.registry import RelaySet
from dispatch.security.api_keys import ApiKeyVerifier
from dispatch.security.certs import ensure_certificate, server_context
from dispatch.security.passwords import share_among
from dispatch.security.throttle import FailureThrottle
from dispatch.spool import Spool
from dispatch.spool.lock import SpoolLock
from dispatch.storage import Store, open_store
from dispatch.supervisor import Supervisor
from dispatch.web.debug import DebugSources, register_debug
from dispatch.web.ops import OpsSources, create_ops_app
from dispatch.web.server import bind_spec, hypercorn_config, serve_app

log = logging.getLogger("dispatch")


class Runtime:
    """The objects components share. Owned by :func:`serve`; filled in as components start."""

    def __init__(self, settings: LiveSettings) -> None:
        self.settings = settings
        self.stats = Stats()
        self.tracer = Tracer()
        self.started_at = time.monotonic()
        self.info = ProcessInfo.current()
        self.figures = DatabaseFigures()
        self.metrics = build_registry(
            MetricsCollector(
                stats=self.stats,
                spool_counts=lambda: self.spool.counts(),
                relays=lambda: self.relays.all() if self.relays is not None else [],
                database_reachable=lambda: self.store.log.database_reachable,
                figures=self.figures,
            )
        )
        self.auth_throttle = FailureThrottle()
        self._store: Store | None = None
        self._spool: Spool | None = None
        self._tls: ssl.SSLContext | None = None
        self.smtp: SmtpListener | None = None
        self.delivery: DeliveryScanner | None = None
        self.relays: RelaySet | None = None
        self.attempt: DeliveryAttempt | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the storage component has not started yet")
        return self._store

    async def run_storage(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        """The message-log writer (see :mod:`dispatch.storage`); ready without the database."""
        if self._store is None:
            current = self.settings.current
            self._store = open_store(current.database.url, current.data_dir)
        await self._store.run(shutdown, task_status=task_status)

    @property
    def spool(self) -> Spool:
        if self._spool is None:
            raise RuntimeError("the spool component has not started yet")
        return self._spool

    def listener_settings(self) -> ListenerSettings:
        return self.settings.current.listener

    async def run_spool(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        """Lock and open the spool: recover what a crash left, then index it (one scan).

        Ready once the index is loaded. Holds the lock (one process per spool) until the
        stop request; a kill drops the lock with the process.
        """
        directory = Path(self.settings.current.spool.directory)
        lock = await trio.to_thread.run_sync(SpoolLock.acquire, directory)
        try:
            if self._spool is None:
                self._spool = await Spool.open(directory)
            counts = self._spool.counts()
            log.info("spool %s: %d incoming, %d failed", directory, counts.incoming, counts.failed)
            task_status.started()
            await shutdown.requested.wait()
        finally:
            lock.release()

    async def run_smtp(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        """The SMTP listener (see :mod:`dispatch.intake.listener`); ready once bound."""
        if self._tls is None:
            files = await trio.to_thread.run_sync(ensure_certificate, self.settings.current)
            self._tls = server_context(files)
        current = self.settings.current.listener
        share_among(current.processes)  # password checks: each intake process its share
        context = IntakeContext(
            settings=self.listener_settings,
            spool=self.spool,
            stats=self.stats,
            auth_throttle=self.auth_throttle,
            tls=self._tls,
            record=self.store.log.record,
            tracer=self.tracer,
        )
        listeners, ports = await bind_smtp_ports(
            current.ports, current.bind_address, current.tls_ports
        )
        self.smtp = SmtpListener(context, ports, processes=current.processes)
        workers = IntakeWorkers(
            current.processes - 1,
            settings=lambda: self.settings.current,
            spool=self.spool,
            stats=self.stats,
            record=self.store.log.record,
        )
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(workers.run, listeners, shutdown)
                await self.smtp.serve(listeners, shutdown, task_status=task_status)
        finally:
            for listener in listeners:
                await listener.aclose()

    def _plan(self) -> DeliveryPlan:
        current = self.settings.current
        assert self.relays is not None
        return DeliveryPlan(
            router=Router(current.routes, current.default_relay),
            schedule=RetrySchedule(current.spool.retry_delays_seconds, current.spool.max_retries),
            relay=self.relays.get,
        )

    async def run_delivery(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        """Scanner and workers (see :mod:`dispatch.delivery.scanner`); closes relay pools."""
        self.relays = RelaySet(lambda: self.settings.current, self.spool)
        self.relays.all()  # build now, so configuration problems are logged at start
        attempt = self.attempt = DeliveryAttempt(
            self.spool, self._plan, self.store.log.record, self.stats, self.tracer
        )
        self.delivery = DeliveryScanner(
            self.spool, attempt, self.settings.current.spool.worker_count
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._close_retired_relays)
                await self.delivery.run(shutdown, task_status=task_status)  # returns drained
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.relays.aclose()

    async def _close_retired_relays(self) -> None:
        assert self.relays is not None
        while True:
            await self.settings.wait_changed()
            self.relays.all()
            await self.relays.close_retired()

    def _health_sources(self) -> HealthSources:
        def smtp_ports() -> tuple[tuple[int, ...], tuple[int, ...]]:
            listener = self.settings.current.listener
            configured = (*listener.ports, *listener.tls_ports)  # implicit-TLS ports too
            ports = self.smtp.ports if self.smtp is not None else None
            return configured, ports.listening if ports is not None else ()

        current = self.settings.current
        return HealthSources(
            settings=lambda: self.settings.current.health,
            database_url=current.database.url,
            spool_directory=Path(current.spool.directory),
            spool_counts=self.spool.counts,
            smtp_ports=smtp_ports,
            started_at=self.started_at,
            tracer=self.tracer,
        )

    async def run_webui(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        """The dashboard-port app (HTTPS only): /health and /metrics; ready once bound."""
        files = await trio.to_thread.run_sync(ensure_certificate, self.settings.current)
        webui = self.settings.current.webui
        binds = [bind_spec(address, webui.port) for address in webui.bind_address]
        config = hypercorn_config(binds, certfile=files.cert_file, keyfile=files.key_file)
        app = create_ops_app(self._ops_sources(lambda: self.settings.current.webui.allowed_cidrs))
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve_app, app, config, shutdown)
            log.info("dashboard on %s", ", ".join(bound))
            task_status.started()

    def _ops_sources(self, allowed: Callable[[], tuple[Cidr, ...]]) -> OpsSources:
        return OpsSources(
            health=self._health_sources(),
            allowed_cidrs=allowed,
            metrics=lambda accept: render(self.metrics, accept),
            stats=self.stats,
        )

    async def run_monitoring(
        self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """The monitoring server on ``monitoring.address`` (plain HTTP, meant for loopback):
        ``/debug/…`` and ``/metrics``, behind ``monitoring.allowed_cidrs`` and the ``Host``
        check. Also owns the task that stops ``/debug/memory``'s tracing when its time is up."""
        address = self.settings.current.monitoring.address
        memory = MemoryTracing()
        debug = DebugSources(
            info=self.info,
            tracer=self.tracer,
            stats=self.stats,
            redacted_config=lambda: redacted_toml(self.settings.current),
            spool_entries=lambda: self.spool.entries(),
            spool_counts=lambda: self.spool.counts(),
            relays=lambda: self.relays.all() if self.relays is not None else [],
            memory=memory,
        )
        sources = attrs.evolve(
            self._ops_sources(lambda: self.settings.current.monitoring.allowed_cidrs),
            allowed_key="monitoring.allowed_cidrs",
            denied=lambda stats: stats.monitoring_denied,
            check_host=True,
        )
        app = create_ops_app(
            sources,
            name="dispatch-monitoring",
            register_debug=lambda app: register_debug(app, debug),
        )
        config = hypercorn_config([address])
        async with trio.open_nursery() as tracing:
            tracing.start_soon(memory.run)
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(serve_app, app, config, shutdown)
                log.info("monitoring server on %s", ", ".join(bound))
                task_status.started()
            tracing.cancel_scope.cancel()  # the server has stopped: so does memory tracing

    async def run_figures(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        """Refresh the database figures /metrics shows, off the event loop, every 5 s."""
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.figures.refresh_forever, self.store.queries)
            await shutdown.requested.wait()
            nursery.cancel_scope.cancel()

    async def run_api(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        """The HTTP ingestion API on ``api.port`` (HTTP) and ``api.tls_port`` (HTTPS).

        Ready once bound. ``api.enabled`` is read per request (``503`` when off), so the ports
        stay bound and turning the API back on needs no restart. The key verifier's
        ``last_used_at`` writer runs beside it.
        """
        current = self.settings.current.api
        if not (current.http_enabled or current.tls_enabled):
            log.info("HTTP API: neither api.http_enabled nor api.tls_enabled; not listening")
            task_status.started()
            await shutdown.requested.wait()
            return
        verifier = ApiKeyVerifier(self.store.api_keys, self.store.log.audit)
        sources = ApiSources(
            settings=lambda: self.settings.current.api,
            server_name=lambda: self.settings.current.listener.server_name,
            spool=self.spool,
            verifier=verifier,
            queries=self.store.queries,
            record=self.store.log.record,
            stats=self.stats,
            tracer=self.tracer,
        )
        app = build_api(sources)
        plain = [bind_spec(a, current.port) for a in current.bind_address]
        secure = [bind_spec(a, current.tls_port) for a in current.bind_address]
        if current.tls_enabled:
            files = await trio.to_thread.run_sync(ensure_certificate, self.settings.current)
            config = hypercorn_config(secure, certfile=files.cert_file, keyfile=files.key_file)
            config.insecure_bind = plain if current.http_enabled else []
        else:
            config = hypercorn_config(plain)
        async with trio.open_nursery() as nursery:
            await nursery.start(verifier.run, shutdown)
            serve = partial(
                serve_app,
                request_timeout=lambda: self.settings.current.api.request_timeout_seconds,
                request_timeout_setting="api.request_timeout_seconds",
            )
            bound = await nursery.start(serve, app, config, shutdown)
            log.info("HTTP API on %s", ", ".join(bound))
            task_status.started()

    async def run_control(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        ops = Operations(self.spool, lambda: self.settings.current, self.attempt)
        server = ControlServer(Path(self.settings.current.data_dir), ops)
        await server.run(shutdown, task_status=task_status)


def build_components(runtime: Runtime) -> list[Component]:
    components = [
        Component("storage", runtime.run_storage),
        Component("spool", runtime.run_spool),
        Component("figures", runtime.run_figures),
        Component("delivery", runtime.run_delivery),
        Component("smtp", runtime.run_smtp),
        Component("api", runtime.run_api),
        Component("webui", runtime.run_webui),
        Component("control", runtime.run_control),
    ]
    if runtime.settings.current.monitoring.address:
        components.append(Component("monitoring", runtime.run_monitoring))
    return components


async def serve(settings: Settings, config_path: Path | None) -> None:
    """Run Dispatch until it is stopped by a signal. Raises ``ComponentStartError``."""
    bind(component="dispatch")
    log.info("Dispatch %s starting with %s", __version__, config_path or "built-in defaults")
    for problem in config_warnings(settings):
        log.warning("configuration: %s", problem)
    runtime = Runtime(LiveSettings(settings, config_path))
    await Supervisor(build_components(runtime), runtime.settings).run()
