"""Wiring: which components the daemon runs, in which order, sharing which objects.

:func:`serve` is what ``python -m dispatch`` runs inside ``trio.run``. Components start in
dependency order (SPEC §1): the spool first (everything else reads or writes it), then the
listeners that accept mail into it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from dispatch import __version__
from dispatch.config import Settings
from dispatch.config.live import LiveSettings
from dispatch.logs import bind
from dispatch.spool import Spool
from dispatch.supervisor import Component, Shutdown, Supervisor

log = logging.getLogger("dispatch")


class Runtime:
    """The objects components share. Owned by :func:`serve`; filled in as components start."""

    def __init__(self, settings: LiveSettings) -> None:
        self.settings = settings
        self._spool: Spool | None = None

    @property
    def spool(self) -> Spool:
        if self._spool is None:
            raise RuntimeError("the spool component has not started yet")
        return self._spool

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


def build_components(runtime: Runtime) -> list[Component]:
    return [Component("spool", runtime.run_spool)]


async def serve(settings: Settings, config_path: Path | None) -> None:
    """Run Dispatch until it is stopped by a signal. Raises ``ComponentStartError``."""
    bind(component="dispatch")
    log.info("Dispatch %s starting with %s", __version__, config_path or "built-in defaults")
    runtime = Runtime(LiveSettings(settings, config_path))
    await Supervisor(build_components(runtime), runtime.settings).run()
