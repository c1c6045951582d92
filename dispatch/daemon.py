"""Wiring: which components the daemon runs, in which order, sharing which objects.

:func:`serve` is what ``python -m dispatch`` runs inside ``trio.run``. Components start in
dependency order (SPEC §1): the spool first (everything else reads or writes it), then the
SMTP listener that accepts mail into it.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import trio

from dispatch import __version__
from dispatch.config import Settings
from dispatch.config.live import LiveSettings
from dispatch.config.settings import ListenerSettings
from dispatch.intake.listener import SmtpListener
from dispatch.intake.session import IntakeContext
from dispatch.logs import bind
from dispatch.monitoring.stats import Stats
from dispatch.security.certs import ensure_certificate, server_context
from dispatch.security.throttle import FailureThrottle
from dispatch.spool import Spool
from dispatch.supervisor import Component, Shutdown, Supervisor

log = logging.getLogger("dispatch")


class Runtime:
    """The objects components share. Owned by :func:`serve`; filled in as components start."""

    def __init__(self, settings: LiveSettings) -> None:
        self.settings = settings
        self.stats = Stats()
        self.auth_throttle = FailureThrottle()
        self._spool: Spool | None = None
        self._tls: ssl.SSLContext | None = None
        self.smtp: SmtpListener | None = None

    @property
    def spool(self) -> Spool:
        if self._spool is None:
            raise RuntimeError("the spool component has not started yet")
        return self._spool

    def listener_settings(self) -> ListenerSettings:
        return self.settings.current.listener

    async def run_spool(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        """Open the spool: recover what a crash left behind, then index it (one scan).

        Ready once the index is loaded. Holds the spool until the stop request; claims that
        are unfinished then are returned to ``incoming/`` by the next start's recovery.
        """
        directory = Path(self.settings.current.spool.directory)
        self._spool = await Spool.open(directory)
        counts = self._spool.counts()
        log.info("spool %s: %d incoming, %d failed", directory, counts.incoming, counts.failed)
        task_status.started()
        await shutdown.requested.wait()

    async def run_smtp(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        """The SMTP listener (see :mod:`dispatch.intake.listener`); ready once bound."""
        if self._tls is None:
            files = await trio.to_thread.run_sync(ensure_certificate, self.settings.current)
            self._tls = server_context(files)
        current = self.settings.current.listener
        context = IntakeContext(
            settings=self.listener_settings,
            spool=self.spool,
            stats=self.stats,
            auth_throttle=self.auth_throttle,
            tls=self._tls,
        )
        self.smtp = SmtpListener(context, current.ports, current.bind_address)
        await self.smtp.run(shutdown, task_status=task_status)


def build_components(runtime: Runtime) -> list[Component]:
    return [
        Component("spool", runtime.run_spool),
        Component("smtp", runtime.run_smtp),
    ]


async def serve(settings: Settings, config_path: Path | None) -> None:
    """Run Dispatch until it is stopped by a signal. Raises ``ComponentStartError``."""
    bind(component="dispatch")
    log.info("Dispatch %s starting with %s", __version__, config_path or "built-in defaults")
    runtime = Runtime(LiveSettings(settings, config_path))
    await Supervisor(build_components(runtime), runtime.settings).run()
