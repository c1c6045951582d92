"""Removal of delivered messages' files in batches: one thread hop and one fsync per batch.

Theory of operation
-------------------
A delivered message leaves the spool's index at once (:meth:`Spool.remove`): from then on it
is gone for every reader — ``/debug/queue``, the API, operator commands, the scanner. Its
files in ``processing/`` are queued here, and one task unlinks whatever has queued up in a
single thread hop (envelope first, then body, per message: see ``transitions.py``) followed
by a single fsync of ``processing/``. Removals that arrive while a hop runs wait for the next
one, so under load each hop takes many messages and the per-message cost of a hop (waking a
worker thread, then the Trio thread) and of a directory fsync is shared.

What a crash does: a removal still queued does not survive a crash, and one unlinked but
not yet fsynced does not survive a power cut. Start-up recovery then finds the message whole in
``processing/`` and returns it to ``incoming/`` (SPEC §5), so it is **delivered again — a
duplicate, never a loss**. That is the same outcome as a crash between the relay's reply and
the removal, which the spool always allowed. A crash between a message's two unlinks leaves
a body without an envelope, which recovery sets aside in ``orphaned/``, as before.

Ownership, start and stop: :meth:`RemovalQueue.run` is the task; :meth:`RemovalQueue.running`
runs it for a block, which :meth:`Spool.batched_removals` opens for the delivery workers'
lifetime. :meth:`RemovalQueue.close` asks it to stop:
it then unlinks what is still queued (the hop is shielded) and returns. On cancellation it
stops at once and **leaves the queued files in** ``processing/``: the next start-up delivers
them again (above). A hop already running is shielded and always completes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from functools import partial

import trio

from dispatch.spool.layout import MessageState, SpoolLayout
from dispatch.spool.thread_hop import run_to_completion
from dispatch.spool.transitions import remove_messages

logger = logging.getLogger("dispatch.spool")


class RemovalQueue:
    """Ids of delivered messages whose files still have to go, and the task unlinking them."""

    def __init__(self, layout: SpoolLayout, limiter: trio.CapacityLimiter) -> None:
        self._layout = layout
        self._limiter = limiter
        self._pending: list[str] = []
        self._wake = trio.Event()
        self._closing = False
        self.batches = 0  # hops made, for tests and curiosity
        self.removed = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run :meth:`run` for the duration of the block; leaving the block normally drains
        the queue, leaving it by an exception (a cancellation) does not (module docstring)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.run, name="spool removals")
            try:
                yield
            finally:
                self.close()

    @property
    def pending(self) -> tuple[str, ...]:
        """Ids queued and not yet unlinked (their files are still in ``processing/``)."""
        return tuple(self._pending)

    def put(self, message_id: str) -> None:
        """Queue the files of a delivered message in ``processing/``; never blocks."""
        self._pending.append(message_id)
        self._wake.set()

    def close(self) -> None:
        """Ask :meth:`run` to unlink what is queued and return."""
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        """Unlink queued removals batch by batch until :meth:`close` (see the module
        docstring for cancellation)."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._pending:
                batch, self._pending = self._pending, []
                await self._unlink(batch)
            if self._closing:
                return

    async def _unlink(self, batch: list[str]) -> None:
        work = partial(remove_messages, self._layout, batch, MessageState.PROCESSING)
        failed = await run_to_completion(work, self._limiter)
        for message_id, exc in failed.items():
            logger.error(
                "spool: %s was delivered but its files in processing/ could not be removed "
                "(%s); the next start-up will deliver it again unless they are removed",
                message_id,
                exc,
            )
        self.batches += 1
        self.removed += len(batch) - len(failed)
