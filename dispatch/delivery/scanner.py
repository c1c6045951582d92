"""The delivery component: the spool scanner feeding ``spool.worker_count`` workers.

Theory of operation: the scanner waits until the spool's in-memory index says a message is
due (no directory listing, no polling), claims up to ``worker_count`` due messages in one
thread hop (renames to ``processing/``; a message of at most one read block is also read
there, so the relay sends it without a thread hop of its own) and hands them to the workers
one by one through an unbuffered channel; it claims again only once its hand is empty. So at
most ``worker_count`` claimed messages wait for a worker, besides the ones being delivered,
and their read bytes bound the memory: 2 * ``worker_count`` * 64 KiB. Each worker runs one
:class:`~dispatch.delivery.attempt.DeliveryAttempt` at a time. Claiming in batches matters:
a thread hop costs milliseconds of scheduling on a loaded machine, far more than the renames.
One claim per hop capped delivery at ~75 messages/s on two cores, and claiming only for the
idle workers still made ~1.8 messages per hop, since workers fall idle one at a time
(docs/delivery-throughput.md).

Delivered messages leave the spool's index at once; their files are unlinked in batches by
the spool's removal task (``spool/removals.py``), which runs as long as the workers do: one
thread hop and one directory fsync for every removal that queued up meanwhile, instead of one
of each per message.

Stopping: on ``shutdown.requested`` the scanner stops claiming (messages it had claimed but
not handed over are released at once) and closes the channel; workers finish the attempt in
hand and return; then the removals still queued are unlinked. If the supervisor's grace
period runs out first, the cancelled attempts release their claims (shielded), queued
removals stay undone, and anything a hard kill leaves in ``processing/`` — including a
delivered message whose removal was still queued, which is then delivered again — is
returned to ``incoming/`` by the next start-up.
"""

from __future__ import annotations

import logging

import trio

from dispatch.delivery.attempt import DeliveryAttempt
from dispatch.lifecycle import Shutdown
from dispatch.logs import log_context
from dispatch.relays.smtp_transaction import MESSAGE_BLOCK_BYTES
from dispatch.spool import Envelope, Spool

log = logging.getLogger("dispatch.delivery")


class DeliveryScanner:
    """Owns the workers and the channel between them (see the module docstring)."""

    def __init__(self, spool: Spool, attempt: DeliveryAttempt, worker_count: int) -> None:
        self._spool = spool
        self._attempt = attempt
        self.worker_count = worker_count
        self.busy_workers = 0

    async def run(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        send, receive = trio.open_memory_channel[Envelope](0)
        # Outside the workers: once they have returned, what they removed is unlinked.
        async with self._spool.batched_removals(), trio.open_nursery() as workers:
            async with receive:
                for number in range(self.worker_count):
                    workers.start_soon(
                        self._work, receive.clone(), name=f"delivery worker {number}"
                    )
            task_status.started()
            async with send:
                await self._scan(send, shutdown)

    async def _scan(self, send: trio.MemorySendChannel[Envelope], shutdown: Shutdown) -> None:
        """Claim due messages and hand them to workers until the stop request cancels it.

        One cancel scope for the whole loop rather than a race per message: the stop request
        cancels the scan wherever it waits. A claim is a shielded hop, so a cancel never
        interrupts one; a message claimed but not yet taken by a worker is released.
        """
        claimed: list[Envelope] = []  # claimed, not yet taken by a worker
        async with trio.open_nursery() as nursery:

            async def stop_when_requested() -> None:
                await shutdown.requested.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_when_requested)
            try:
                while True:
                    await self._spool.wait_until_due()
                    claimed = await self._spool.claim_due(
                        limit=self.worker_count, read_bytes=MESSAGE_BLOCK_BYTES
                    )
                    while claimed:
                        await send.send(claimed[0])
                        del claimed[0]
            finally:
                if claimed:  # no worker took them before the stop
                    with trio.CancelScope(shield=True):
                        for envelope in claimed:
                            await self._spool.release(envelope)

    async def _work(self, receive: trio.MemoryReceiveChannel[Envelope]) -> None:
        async with receive:
            async for envelope in receive:
                self.busy_workers += 1
                try:
                    with log_context(message_id=envelope.id):
                        await self._attempt.run(envelope)
                except Exception:
                    log.exception("delivery of %s failed unexpectedly", envelope.id)
                    await self._release_after_error(envelope)
                finally:
                    self.busy_workers -= 1

    async def _release_after_error(self, envelope: Envelope) -> None:
        try:
            await self._spool.release(envelope)
        except Exception:
            log.exception("%s stays in processing/ until the next start", envelope.id)
