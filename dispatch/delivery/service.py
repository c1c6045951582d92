"""The delivery component: the scanner and its workers, and the relay clients they use.

:class:`Delivery` is built once by the composition root with the shared
:class:`~dispatch.delivery.attempt.DeliveryAttempt` and
:class:`~dispatch.relays.registry.RelaySet`, so a restart after a crash drives the same attempt
object the control socket's ``send-test`` waits on. Each start builds the relays (configuration
problems are logged then), runs ``spool.worker_count`` workers until the stop request, and
closes the clients of configurations a reload retired. Stopping: the scanner stops claiming,
workers finish what they hold, and every relay's pooled connections close (shielded, also on
cancellation).
"""

from __future__ import annotations

import trio

from dispatch.config.live import LiveSettings
from dispatch.delivery.attempt import DeliveryAttempt
from dispatch.delivery.scanner import DeliveryScanner
from dispatch.lifecycle import Shutdown
from dispatch.relays.registry import RelaySet
from dispatch.spool import Spool


class Delivery:
    """See the module docstring. :attr:`scanner`: the current start's (None before)."""

    def __init__(
        self, settings: LiveSettings, spool: Spool, attempt: DeliveryAttempt, relays: RelaySet
    ) -> None:
        self._settings = settings
        self._spool = spool
        self._attempt = attempt
        self._relays = relays
        self.scanner: DeliveryScanner | None = None

    async def run(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        self._relays.all()  # build now, so configuration problems are logged at start
        workers = self._settings.current.spool.worker_count
        self.scanner = DeliveryScanner(self._spool, self._attempt, workers)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._close_retired_relays)
                await self.scanner.run(shutdown, task_status=task_status)  # returns drained
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._relays.aclose()

    async def _close_retired_relays(self) -> None:
        while True:
            await self._settings.wait_changed()
            self._relays.all()
            await self._relays.close_retired()
