"""The SMTP intake component: binds the ports, runs the listener and the worker processes.

:class:`SmtpIntake` is built once by the composition root (:mod:`dispatch.daemon`) from the
shared parts; each start (the first, and every restart after a crash) loads the TLS
certificate if it has not yet, binds ``listener.ports`` and ``listener.tls_ports`` (or, under
socket activation, serves the sockets systemd passed: :mod:`dispatch.intake.inherited`) and
serves until the stop request. With ``listener.processes = 1`` the main process's own
listener takes every session. With N > 1 the main process takes none: it starts N intake
worker processes on the same sockets and they take them all, so the main event loop is left
to supervision, delivery, the API and ``/health`` (sessions beside those made ``/health``
answers wait behind them: docs/intake-cpu.md, round 2). Ready once the ports are bound and
every worker is ready. Stopping: the listener answers ``421`` and drains its sessions, the
workers drain theirs, then the sockets close. On cancellation the sockets close too; the
spool is the truth for what was accepted.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence

import trio

from dispatch.config.live import LiveSettings
from dispatch.intake import records
from dispatch.intake.inherited import inherited_smtp_listeners
from dispatch.intake.listener import SmtpListener
from dispatch.intake.ports import ListeningPorts, bind_smtp_ports
from dispatch.intake.processes import IntakeWorkers
from dispatch.intake.session import IntakeContext
from dispatch.intake.suppression import RecipientGate
from dispatch.lifecycle import Shutdown
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.traces import Tracer
from dispatch.security.certs import ensure_certificate, server_context
from dispatch.security.passwords import share_among
from dispatch.security.throttle import FailureThrottle
from dispatch.spool import Spool
from dispatch.storage.records import AuditEntry, MessageEvent
from dispatch.storage.suppression import Suppression, SuppressionList
from dispatch.systemd.activation import InheritedSocket


class SmtpIntake:
    """See the module docstring. :attr:`ports`: what the current start bound (for /health)."""

    def __init__(
        self,
        settings: LiveSettings,
        spool: Spool,
        stats: Stats,
        tracer: Tracer,
        record: Callable[[MessageEvent], None],
        audit: Callable[[AuditEntry], None],
        *,
        inherited: Sequence[InheritedSocket] = (),
        suppressions: SuppressionList | None = None,
    ) -> None:
        """``suppressions``: the list whose entries the sessions refuse at RCPT in
        ``suppression.mode = "intake"`` (here, and pushed to the worker processes)."""
        self._settings = settings
        self._spool = spool
        self._stats = stats
        self._tracer = tracer
        self._record = record
        self._audit = audit
        self._inherited = tuple(inherited)  # socket activation: used instead of binding
        self._suppressions = suppressions
        self._auth_throttle = FailureThrottle()  # kept across restarts: so are the counts
        self._tls: ssl.SSLContext | None = None
        self.ports: ListeningPorts | None = None

    def _refusing_at_intake(self) -> bool:
        settings = self._settings.current.suppression
        return settings.enabled and settings.mode == "intake"

    async def _refused_at_intake(self) -> tuple[Suppression, ...]:
        """What the worker processes' sessions refuse at RCPT: none unless in intake mode."""
        if self._suppressions is None or not self._refusing_at_intake():
            return ()
        return await self._suppressions.snapshot()

    def configured_and_listening(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The ports ``/health`` compares: configured (implicit-TLS included) and bound."""
        listener = self._settings.current.listener
        listening = self.ports.listening if self.ports is not None else ()
        return (*listener.ports, *listener.tls_ports), listening

    def _session_context(self) -> IntakeContext:
        """What the main process's own sessions use (``listener.processes = 1`` only)."""
        return IntakeContext(
            settings=lambda: self._settings.current.listener,
            spool=self._spool,
            stats=self._stats,
            auth_throttle=self._auth_throttle,
            tls=self._tls,
            record=self._record,
            received=lambda envelope, subject: self._record(
                records.received(envelope, subject=subject)
            ),
            tracer=self._tracer,
            audit=self._audit,
            refuse_recipient=None
            if self._suppressions is None
            else RecipientGate(self._suppressions.check, self._refusing_at_intake, self._stats),
        )

    async def run(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        if self._tls is None:
            files = await trio.to_thread.run_sync(ensure_certificate, self._settings.current)
            self._tls = server_context(files)
        current = self._settings.current.listener
        share_among(current.processes)  # password checks: each intake process its share
        if self._inherited:
            listeners, self.ports = inherited_smtp_listeners(
                self._inherited, current.ports, current.tls_ports
            )
        else:
            listeners, self.ports = await bind_smtp_ports(
                current.ports, current.bind_address, current.tls_ports
            )
        workers = IntakeWorkers(
            current.processes if current.processes > 1 else 0,
            settings=lambda: self._settings.current,
            wait_changed=self._settings.wait_changed,
            spool=self._spool,
            stats=self._stats,
            record=self._record,
            audit=self._audit,
            suppressions=None if self._suppressions is None else self._refused_at_intake,
        )
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(workers.run, listeners, shutdown)
                if current.processes == 1:
                    listener = SmtpListener(self._session_context(), self.ports, processes=1)
                    await listener.serve(listeners, shutdown, task_status=task_status)
                else:
                    await _leave_to_workers(listeners, shutdown, task_status)
        finally:
            self.ports = None  # closed: /health and /health/ready must not report them bound
            for socket_listener in listeners:
                await socket_listener.aclose()


async def _leave_to_workers(
    listeners: list[trio.SocketListener], shutdown: Shutdown, task_status: trio.TaskStatus[None]
) -> None:
    """With N > 1 processes: accept nothing here, so the main event loop is left to
    supervision, delivery, the API and ``/health``; the N workers take every session.

    The main process keeps its copies of the sockets open while it runs (a worker started
    again after a crash inherits them) and closes them at the stop request, as a listener
    would, so no connection waits in a backlog nobody accepts from while the workers drain.
    """
    task_status.started()
    await shutdown.requested.wait()
    for listener in listeners:
        await listener.aclose()
