"""The composition root: what Dispatch is made of, built once, and the order it runs in.

:func:`serve` is what ``python -m dispatch`` runs inside ``trio.run``, in the manner of
hypercorn's ``worker_serve``:

1. lock the spool directory (one process per spool) and open it, repairing what a crash left;
2. :func:`assemble` builds every long-lived object once — the store, stats, tracer, relay set,
   delivery attempt, metrics registry — and the components that use them, each handed exactly
   the objects it needs;
3. the :class:`~dispatch.supervisor.Supervisor` starts the components in dependency order
   (SPEC §1) and stops them in reverse: storage (everything records into it), the database
   figures, delivery, the retention purger, the SMTP listener, the HTTP API, the dashboard
   port, the control socket, the monitoring server.

A component the supervisor restarts after a crash runs again with the same objects, so whoever
talks to it (the control socket's ``send-test``, ``/health``, ``/metrics``) sees the new run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import trio

from dispatch import __version__
from dispatch.api.app import ApiSources
from dispatch.api.service import HttpApi
from dispatch.config import Settings, redacted_toml
from dispatch.config.advice import config_warnings
from dispatch.config.live import LiveSettings, ReloadResult
from dispatch.config.render import redact_url_credentials
from dispatch.control.commands import spool_flush
from dispatch.control.server import ControlServer, Operations
from dispatch.dashboard import DashboardSources, register_dashboard
from dispatch.delivery.attempt import DeliveryAttempt, DeliveryPlan
from dispatch.delivery.bounces import Bounces
from dispatch.delivery.routing import Router
from dispatch.delivery.schedule import RetrySchedule
from dispatch.delivery.service import Delivery
from dispatch.delivery.suppression import DeliverySuppression
from dispatch.intake.door import IntakeDoor
from dispatch.intake.service import SmtpIntake
from dispatch.lifecycle import Component, Shutdown, freeze_start_up_objects
from dispatch.logs import bind, log_context
from dispatch.monitoring.delivery_health import DeliverySources
from dispatch.monitoring.file_figures import FileFigures
from dispatch.monitoring.flags import CommandLineFlag
from dispatch.monitoring.health import HealthSources
from dispatch.monitoring.metrics import DatabaseFigures, MetricsCollector, build_registry, render
from dispatch.monitoring.profiling import MemoryTracing
from dispatch.monitoring.queue_history import QueueHistory
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.traces import Tracer
from dispatch.monitoring.vars import ProcessInfo
from dispatch.relays.dkim_sign import DkimSigner
from dispatch.relays.registry import RelaySet
from dispatch.retention import Retention
from dispatch.security.api_keys import ApiKeyVerifier
from dispatch.security.certs import certificate_file
from dispatch.security.dkim_keys import DkimKeyError
from dispatch.spool import Spool
from dispatch.spool.captured import captured_copies
from dispatch.spool.layout import SpoolLayout
from dispatch.spool.lock import SpoolLock
from dispatch.spool.sweep import SpoolSweeper
from dispatch.storage import MessageEvent, Store, audit, open_store
from dispatch.supervisor import ComponentStartError, Supervisor, describe
from dispatch.systemd.activation import ActivationError, InheritedSocket, take_listen_fds
from dispatch.systemd.notify import SystemdNotifier, reload_status
from dispatch.web.debug import DebugSources
from dispatch.web.ops import OpsSources
from dispatch.web.ops_servers import AllowList, OpsServers
from dispatch.webhooks import WebhookSender, outbox_directory

log = logging.getLogger("dispatch")


@attrs.frozen
class Parts:
    """The long-lived objects of one Dispatch process, built once by :func:`assemble`."""

    settings: LiveSettings
    spool: Spool
    store: Store
    stats: Stats
    tracer: Tracer
    relays: RelaySet
    attempt: DeliveryAttempt
    intake: SmtpIntake
    delivery: Delivery
    figures: DatabaseFigures
    files: FileFigures  # free disk and certificate expiry, for /metrics
    webhooks: WebhookSender  # the "webhooks" component; hears delivery's events
    started_at: float
    flags: tuple[CommandLineFlag, ...] = ()  # the command line's, for /debug/flags
    # /debug/memory's bounded tracing, one for both servers; owned by the "figures" component
    memory: MemoryTracing = attrs.Factory(MemoryTracing)
    started: trio.Event = attrs.Factory(trio.Event)  # set once every component has started
    stopping: trio.Event = attrs.Factory(trio.Event)  # set when the stop begins (live streams)
    queue_history: QueueHistory = attrs.Factory(QueueHistory)  # sampled by "figures"


def assemble(
    settings: LiveSettings,
    spool: Spool,
    inherited: Sequence[InheritedSocket] = (),
    flags: Sequence[CommandLineFlag] = (),
) -> tuple[Parts, list[Component]]:
    """Build the shared objects, then the components, in start order. Does no I/O but
    reading (or, at first start, writing) the node id in ``data_dir/node-id``.
    ``inherited``: SMTP sockets passed by systemd, served instead of ``listener.ports``."""
    parts = attrs.evolve(build_parts(settings, spool, inherited), flags=tuple(flags))
    return parts, build_components(parts)


def build_parts(
    settings: LiveSettings, spool: Spool, inherited: Sequence[InheritedSocket]
) -> Parts:
    """The long-lived objects, each built once."""
    current = settings.current
    try:
        store = open_store(
            current.database.url,
            current.data_dir,
            node_id=current.database.node_id,
            pool_size=current.database.pool_size,
            statement_timeout=current.database.statement_timeout_seconds,
        )
    except (ValueError, OSError) as exc:
        raise ComponentStartError("storage", str(exc)) from exc
    stats, tracer = Stats(), Tracer()
    try:
        signer = DkimSigner.load(current.dkim, stats)
    except DkimKeyError as exc:
        raise ComponentStartError("delivery", str(exc)) from exc
    relays = RelaySet(
        lambda: settings.current, spool, audit=store.log.audit, signer=signer, stats=stats
    )

    def plan() -> DeliveryPlan:
        now = settings.current
        return DeliveryPlan(
            router=Router(now.routes, now.default_relay),
            schedule=RetrySchedule(now.spool.retry_delays_seconds, now.spool.max_retries),
            relay=relays.get,
        )

    webhooks = WebhookSender(
        lambda: settings.current.webhooks, outbox_directory(current.data_dir), stats
    )

    def record(event: MessageEvent) -> None:
        store.log.record(event)  # the message log, and
        webhooks.record(event)  # the receivers: both only queue, neither waits

    attempt = DeliveryAttempt(
        spool,
        plan,
        record,
        stats,
        tracer,
        bounces=Bounces(spool, lambda: settings.current, stats, record, bounced=webhooks.bounced),
        suppression=DeliverySuppression(
            store.suppressions, lambda: settings.current.suppression, stats
        ),
    )
    return Parts(
        settings=settings,
        spool=spool,
        store=store,
        stats=stats,
        tracer=tracer,
        relays=relays,
        attempt=attempt,
        intake=SmtpIntake(
            settings,
            spool,
            stats,
            tracer,
            store.log.record,
            store.log.audit,
            inherited=inherited,
            suppressions=store.suppressions,
        ),
        delivery=Delivery(settings, spool, attempt, relays),
        figures=DatabaseFigures(),
        files=FileFigures(Path(current.spool.directory), lambda: [certificate_file(current)]),
        started_at=time.monotonic(),
        webhooks=webhooks,
    )


def build_components(parts: Parts) -> list[Component]:
    """Every component, handed the parts it uses, in start order."""
    settings, spool, store = parts.settings, parts.spool, parts.store
    verifier = ApiKeyVerifier(store.api_keys, audit.ApiKeyAudit(store.log.audit))
    if store.key_changes is not None:  # other nodes' creations and revocations (PostgreSQL)
        store.key_changes.subscribe(verifier.forget)
    retention = Retention(
        lambda: settings.current.retention, store, SpoolSweeper(spool), parts.stats
    )
    api = ApiSources(
        settings=lambda: settings.current.api,
        door=IntakeDoor("api", spool, parts.stats, store.log.record),
        spool=spool,
        verifier=verifier,
        queries=store.queries,
        stats=parts.stats,
        tracer=parts.tracer,
        audit=store.log.audit,
    )
    servers = OpsServers(
        settings,
        ops=partial(ops_sources, parts),
        debug=lambda _own: debug_sources(parts, parts.memory),  # one tracemalloc owner
        dashboard=partial(
            register_dashboard, sources=dashboard_sources(parts, verifier, retention)
        ),
    )
    control = ControlServer(
        Path(settings.current.data_dir),
        Operations(
            spool,
            lambda: settings.current,
            parts.attempt,
            audit=store.log.audit,
            webhooks=parts.stats.webhook_activity,
        ),
    )
    components = [
        Component("storage", store.run),
        Component("figures", partial(refresh_figures, parts)),
        Component("webhooks", parts.webhooks.run),
        Component("delivery", parts.delivery.run),
        Component("retention", retention.run),
        Component("smtp", parts.intake.run),
        Component("api", HttpApi(settings, api).run),
        Component("webui", servers.run_dashboard),
        Component("control", control.run),
    ]
    if settings.current.monitoring.address:
        components.append(Component("monitoring", servers.run_monitoring))
    return components


def ops_sources(parts: Parts, allowed: AllowList) -> OpsSources:
    """What ``/health`` and ``/metrics`` read, behind the allow-list ``allowed``."""
    metrics = build_registry(
        MetricsCollector(
            stats=parts.stats,
            spool_counts=parts.spool.counts,
            relays=parts.relays.all,
            database_reachable=lambda: parts.store.log.database_reachable,
            figures=parts.figures,
            suspensions=parts.relays.suspensions,
            next_due_time=parts.spool.next_due_time,
            files=parts.files,
        )
    )
    return OpsSources(
        health=health_sources(parts),
        allowed_cidrs=allowed,
        metrics=lambda accept: render(metrics, accept),
        stats=parts.stats,
    )


def health_sources(parts: Parts) -> HealthSources:
    """What ``/health`` reads (and the dashboard's health summary)."""
    current = parts.settings.current
    return HealthSources(
        settings=lambda: parts.settings.current.health,
        database_url=current.database.url,
        spool_directory=Path(current.spool.directory),
        spool_counts=parts.spool.counts,
        smtp_ports=parts.intake.configured_and_listening,
        started_at=parts.started_at,
        delivery=DeliverySources(parts.attempt.outcomes, parts.relays.suspensions, parts.spool),
        startup_done=parts.started.is_set,
        tracer=parts.tracer,
    )


def dashboard_sources(
    parts: Parts, verifier: ApiKeyVerifier | None = None, retention: Retention | None = None
) -> DashboardSources:
    """What the dashboard's pages read and act on (built once: its login throttle outlives a
    restart of the "webui" component); ``verifier`` and ``retention`` are the API's and the
    retention component's own objects."""
    return DashboardSources(
        settings=parts.settings,
        store=parts.store,
        spool=parts.spool,
        stats=parts.stats,
        tracer=parts.tracer,
        relays=parts.relays,
        attempt=parts.attempt,
        intake=parts.intake,
        figures=parts.figures,
        health=health_sources(parts),
        audit=parts.store.log.audit,
        verifier=verifier,
        retention=retention,
        debug=debug_sources(parts, parts.memory),
        queue_history=parts.queue_history,
        stopping=parts.stopping,
        flush=lambda relay, state, who: spool_flush(
            parts.spool, parts.settings.current, relay, state, who=who
        ),
    )


def debug_sources(parts: Parts, memory: MemoryTracing) -> DebugSources:
    """What the ``/debug`` pages read (on either server); ``memory``: ``parts.memory``."""
    return DebugSources(
        info=ProcessInfo.current(),
        tracer=parts.tracer,
        stats=parts.stats,
        redacted_config=lambda: redacted_toml(parts.settings.current),
        spool_entries=parts.spool.entries,
        spool_counts=parts.spool.counts,
        relays=parts.relays.all,
        memory=memory,
        flags=parts.flags,
        captured=partial(captured_copies, SpoolLayout(parts.spool.directory).captured),
        router=lambda: Router(parts.settings.current.routes, parts.settings.current.default_relay),
        relays_today=parts.figures.relay_counts_today,
        webhook_urls=lambda: [
            redact_url_credentials(hook.url) for hook in parts.settings.current.webhooks
        ],
        intake_processes=lambda: parts.settings.current.listener.processes,
    )


async def refresh_figures(
    parts: Parts, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]
) -> None:
    """The "figures" component: the database figures /metrics shows, refreshed every 5 s,
    and the disk and certificate figures, every 15 s, off the event loop until the stop
    request. Also owns /debug/memory's tracing (stopped when its time is up, or here) and
    samples the spool's depth every minute for the dashboard's queue chart."""
    task_status.started()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(parts.figures.refresh_forever, parts.store.queries)
        nursery.start_soon(parts.files.refresh_forever)
        nursery.start_soon(parts.memory.run)
        nursery.start_soon(parts.queue_history.sample_forever, parts.spool.counts)
        await shutdown.requested.wait()
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_spool(directory: Path) -> AsyncIterator[Spool]:
    """Lock the spool directory, open it (recovery, then the index), unlock on exit.

    The lock is held while Dispatch runs (one process per spool); a kill drops it with the
    process. Failures are the "spool" component's start failures (exit 1 with the reason).
    """
    with log_context(component="spool"):
        try:
            lock = await trio.to_thread.run_sync(SpoolLock.acquire, directory)
        except Exception as exc:
            raise ComponentStartError("spool", describe(exc)) from exc
        try:
            spool = await Spool.open(directory)
        except Exception as exc:
            lock.release()
            raise ComponentStartError("spool", describe(exc)) from exc
    try:
        yield spool
    finally:
        lock.release()


async def serve(
    settings: Settings, config_path: Path | None, flags: Sequence[CommandLineFlag] = ()
) -> None:
    """Run Dispatch until it is stopped by a signal. Raises ``ComponentStartError``.
    ``flags``: the command line's, as the CLI parsed them (shown on ``/debug/flags``)."""
    bind(component="dispatch")
    if config_path is None:
        log.info("Dispatch %s starting: no configuration file: built-in defaults", __version__)
    else:
        log.info("Dispatch %s starting with configuration file %s", __version__, config_path)
    for problem in config_warnings(settings):
        log.warning("configuration: %s", problem)
    # systemd (contrib/dispatch.service): both read here, before any child process starts.
    notifier = SystemdNotifier.from_environment()
    try:
        inherited = take_listen_fds()
    except ActivationError as exc:
        raise ComponentStartError("smtp", str(exc)) from exc
    notifier.start_watchdog()
    live = LiveSettings(settings, config_path)
    config_file = str(config_path) if config_path else None
    async with open_spool(Path(settings.spool.directory)) as spool:
        parts, components = assemble(live, spool, inherited, flags)

        record_audit = parts.store.log.audit

        def ready() -> None:
            freeze_start_up_objects()
            parts.started.set()  # /health/ready
            record_audit(audit.daemon_started(__version__, config_file, os.getpid()))
            ports = parts.intake.ports.listening if parts.intake.ports else ()
            notifier.ready(f"accepting mail on SMTP port(s) {', '.join(map(str, ports))}")

        def stopping() -> None:
            parts.stopping.set()  # the dashboard's live streams end now
            record_audit(audit.daemon_stopping(__version__, os.getpid()))
            notifier.stopping("stopping: finishing the work in hand")

        def reloaded(result: ReloadResult) -> None:
            record_audit(audit.config_reload(result, actor="SIGHUP"))
            notifier.reloaded(reload_status(result))

        await Supervisor(
            components,
            live,
            on_ready=ready,
            on_stop=stopping,
            on_reloading=notifier.reloading,
            on_reload=reloaded,
        ).run()
