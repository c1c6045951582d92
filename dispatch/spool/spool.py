"""The spool: the durable truth about every accepted message, and its lifecycle operations.

Owns the spool directory (nothing else writes into it but retention, which removes old copies
from ``captured/``: ``sweep.py``), the in-memory index and a thread limiter for its file work.

Every operation that changes the disk does all its file work in one thread hop that is
never cancelled (``thread_hop.py``: a cancelled caller gets :class:`trio.Cancelled` at its
next checkpoint, after the change is complete), and updates the index on the Trio thread
only after the hop returned. While an operation on a message is in flight the id is *busy*:
other operations on it raise :class:`MessageBusyError` instead of racing it on disk. One
exception: inside :meth:`Spool.batched_removals`, a delivered message leaves the index first
and its files follow in a batch (``removals.py``); losing that batch to a crash means a
second delivery.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Final

import attrs
import trio

from dispatch.spool.envelope import Envelope
from dispatch.spool.errors import (
    MessageBusyError,
    UnknownMessageError,
    WrongStateError,
    translate_os_error,
)
from dispatch.spool.ids import is_valid_id, new_id
from dispatch.spool.index import SpoolCounts, SpoolEntry, SpoolIndex
from dispatch.spool.layout import EML, MessageState, SpoolLayout
from dispatch.spool.recovery import (
    RecoveryReport,
    incoming_ids,
    read_incoming_envelopes,
    recover,
)
from dispatch.spool.removals import RemovalQueue
from dispatch.spool.thread_hop import run_to_completion
from dispatch.spool.transitions import (
    capture_message,
    claim_messages,
    move_message,
    remove_message,
    return_claims,
)
from dispatch.spool.writer import SPILL_THRESHOLD, IncomingMessage

logger = logging.getLogger("dispatch.spool")

# Threads doing spool file work at once. Commits spend most of their time in fsync, which
# the disk can overlap; 16 keeps the disk busy without letting the spool take every thread
# of Trio's default limiter (40) away from the rest of the daemon.
DEFAULT_MAX_THREADS: Final = 16

UNANNOUNCED_SETTLE: Final = 5.0
"""Seconds an unknown envelope in ``incoming/`` must stay unannounced to be adopted."""

INCOMING: Final = MessageState.INCOMING
PROCESSING: Final = MessageState.PROCESSING
FAILED: Final = MessageState.FAILED


class Spool:
    """The spool directory, its index, and every operation that changes a message's state.

    Start with ``await Spool.open(directory)``, which repairs crash leftovers and loads the
    index. There is nothing to close: the spool keeps no file open between operations, and
    its one background task, the removal of delivered messages' files, runs only inside
    :meth:`batched_removals`. At shutdown, after the delivery workers have stopped, call
    :meth:`release_all_claims` — or don't: the next start-up returns claims too.

    Cancellation never interrupts a change half-way: each operation's thread hop is
    shielded, so a cancelled caller sees :class:`trio.Cancelled` at its next checkpoint with
    the change made on disk and in the index. Only the Trio thread may call its methods.
    """

    def __init__(
        self,
        layout: SpoolLayout,
        index: SpoolIndex,
        report: RecoveryReport,
        *,
        limiter: trio.CapacityLimiter,
        spill_threshold: int,
    ) -> None:
        """Use :meth:`open`; the constructor only assembles already-recovered parts."""
        self._layout = layout
        self._index = index
        self._limiter = limiter
        self._spill_threshold = spill_threshold
        self._busy: set[str] = set()
        self._rescued: set[str] = set()  # see adopt_unannounced
        self._due_changed = trio.Event()
        self._removals: RemovalQueue | None = None  # see batched_removals
        self._unremoved: tuple[str, ...] = ()  # queued when the last block was cancelled
        self._contents: dict[str, bytes] = {}  # see claimed_content
        self.recovery_report: Final = report

    @classmethod
    async def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        limiter: trio.CapacityLimiter | None = None,
        spill_threshold: int = SPILL_THRESHOLD,
    ) -> Spool:
        """Create, repair and index the spool at ``directory`` (see ``recovery.py``).

        ``limiter`` bounds the threads doing spool file work (default: a private one of
        :data:`DEFAULT_MAX_THREADS`). ``spill_threshold`` is the in-memory buffer of each
        incoming message (default :data:`SPILL_THRESHOLD`).

        Raises :class:`SpoolWriteError` if the directory cannot be created or repaired.
        Cancellation waits for the scan thread to finish (the repairs are never half-done).
        """
        layout = SpoolLayout(Path(directory))
        with trio.CancelScope(shield=True):
            try:
                entries, report = await trio.to_thread.run_sync(partial(recover, layout))
            except OSError as exc:
                raise translate_os_error(exc, f"open the spool at {directory}") from exc
        index = SpoolIndex()
        index.load(entries)
        log = logger.warning if report.repaired_anything else logger.info
        log("spool %s opened: %s", layout.root, report.summary())
        if limiter is None:
            limiter = trio.CapacityLimiter(DEFAULT_MAX_THREADS)
        return cls(layout, index, report, limiter=limiter, spill_threshold=spill_threshold)

    @property
    def directory(self) -> Path:
        return self._layout.root

    # -- intake ------------------------------------------------------------------------

    def begin(self) -> IncomingMessage:
        """Start receiving a new message; see :class:`IncomingMessage` (use ``async with``)."""
        return IncomingMessage(
            self._layout,
            new_id(),
            limiter=self._limiter,
            on_commit=self._committed,
            spill_threshold=self._spill_threshold,
        )

    def _committed(self, envelope: Envelope, _encoded: bytes = b"") -> None:
        self._index.put(SpoolEntry(INCOMING, envelope))
        self._notify_due()

    # -- messages committed by intake worker processes ----------------------------------
    #
    # A worker process writes into incoming/ itself (a SpoolEntrance) and announces each
    # commit over its link. A worker that dies may have committed a message it never
    # announced: adopt_unannounced finds those on disk. The two paths must not both index a
    # message (it could be delivered, removed, then indexed again), hence ``_rescued``.

    def adopt(self, envelope: Envelope) -> None:
        """Index a message a worker process committed to ``incoming/`` and announced."""
        if envelope.id in self._rescued:
            self._rescued.discard(envelope.id)  # found on disk first; indexed then
            return
        self._committed(envelope)

    async def adopt_unannounced(self, settle_seconds: float = UNANNOUNCED_SETTLE) -> int:
        """Index messages in ``incoming/`` that no worker announced; return how many.

        Called after a worker process ended. A message another (live) worker has just
        committed is announced within milliseconds, so only ids that are unknown in two
        listings ``settle_seconds`` apart are read from disk and indexed.
        """
        unknown = await self._unknown_incoming()
        if unknown:
            await trio.sleep(settle_seconds)
            unknown = await self._unknown_incoming(among=set(unknown))
        if not unknown:
            return 0
        work = partial(read_incoming_envelopes, self._layout, unknown)
        loaded = await self._run(work, "read envelopes")
        queued = 0
        for envelope in loaded:
            if envelope.id not in self._index and envelope.id not in self._busy:
                self._rescued.add(envelope.id)
                self._committed(envelope)
                queued += 1
                logger.warning("spool: %s, committed by a worker that ended, queued", envelope.id)
        return queued

    async def _unknown_incoming(self, among: set[str] | None = None) -> list[str]:
        ids = await self._run(partial(incoming_ids, self._layout), "list incoming/")
        return [
            i
            for i in ids
            if i not in self._index and i not in self._busy and (among is None or i in among)
        ]

    # -- queries (in memory, never touch the disk) -----------------------------------------

    def get(self, message_id: str) -> SpoolEntry:
        """Return a message's state and envelope; :class:`UnknownMessageError` if absent."""
        entry = self._index.get(message_id) if is_valid_id(message_id) else None
        if entry is None:
            raise UnknownMessageError(message_id)
        return entry

    def entries(self, state: MessageState | None = None) -> Iterator[SpoolEntry]:
        """Iterate over a snapshot of all messages, or those in ``state``, in no order."""
        return self._index.entries(state)

    def counts(self) -> SpoolCounts:
        return self._index.counts()

    def message_path(self, message_id: str) -> Path:
        """Path of the message's body. Stable while the caller holds the claim on it."""
        return Path(self._layout.path(self.get(message_id).state, message_id, EML))

    def next_due_time(self) -> float | None:
        """Earliest ``next_attempt_at`` among incoming messages not yet handed out."""
        return self._index.next_due_time()

    async def wait_until_due(self) -> None:
        """Sleep until some incoming message is due; return at once if one is already.

        Wakes early whenever a message enters ``incoming/`` (commit, release, retry), so a
        scanner loop of ``wait_until_due`` + :meth:`claim_due` never polls.
        """
        while True:
            due_at = self._index.next_due_time()
            now = time.time()
            if due_at is not None and due_at <= now:
                await trio.lowlevel.checkpoint()
                return
            timeout = math.inf if due_at is None else due_at - now
            with trio.move_on_after(timeout):
                await self._due_changed.wait()

    def _notify_due(self) -> None:
        self._due_changed.set()
        self._due_changed = trio.Event()

    # -- delivery ----------------------------------------------------------------------

    async def claim(self, message_id: str) -> Envelope:
        """Move an incoming message to ``processing/`` for one delivery attempt.

        Not fsynced: if a crash loses the claim, start-up would have returned it anyway.
        """
        entry = self._reserve(message_id, "claim", INCOMING)
        try:
            work = partial(move_message, self._layout, message_id, INCOMING, PROCESSING)
            await self._run(partial(work, durable=False), f"claim message {message_id}")
            self._index.put(SpoolEntry(PROCESSING, entry.envelope))
        finally:
            self._unreserve(message_id)
        return entry.envelope

    async def claim_due(
        self, limit: int, *, now: float | None = None, read_bytes: int = 0
    ) -> list[Envelope]:
        """Claim up to ``limit`` due messages, earliest first, in one thread hop.

        A message whose claim fails is logged and stays incoming; an empty list means
        nothing is due (see :meth:`wait_until_due`). Messages of at most ``read_bytes`` are
        also read in that hop: :meth:`claimed_content` has their bytes until the claim ends.
        """
        now = time.time() if now is None else now
        batch = [e for e in self._index.pop_due(now, limit) if e.id not in self._busy]
        if not batch:
            await trio.lowlevel.checkpoint()
            return []
        self._busy.update(e.id for e in batch)
        try:
            read = {e.id: read_bytes for e in batch if e.envelope.size <= read_bytes}
            work = partial(claim_messages, self._layout, [e.id for e in batch], read=read)
            errors, contents = await self._run(work, "claim messages")
            self._contents.update(contents)
            for entry in batch:
                error = errors.get(entry.id)
                if error is None:
                    self._index.put(SpoolEntry(PROCESSING, entry.envelope))
                elif isinstance(error, FileNotFoundError):
                    # Its files were removed behind the spool's back; start-up sorts out
                    # whatever is left. Forgetting it avoids retrying it in a tight loop.
                    logger.error("spool: %s vanished from incoming/ (%s)", entry.id, error)
                    self._index.discard(entry.id)
                else:
                    logger.error("spool: could not claim %s: %s", entry.id, error)
        finally:
            for entry in batch:
                self._unreserve(entry.id)
        return [e.envelope for e in batch if e.id not in errors]

    def claimed_content(self, message_id: str) -> bytes | None:
        """The bytes of a claimed message as :meth:`claim_due` read them, or None (not read:
        too large, unreadable, or not claimed). Kept until the claim ends, so memory is
        bounded by the claims in flight times ``read_bytes``."""
        return self._contents.get(message_id)

    async def release(self, envelope: Envelope, *, rewrite: bool = True) -> None:
        """Return a claimed message to ``incoming/`` with its updated envelope (a retry).

        ``envelope`` is the claimed one after :meth:`Envelope.after_attempt`; only the
        delivery fields may differ (else :class:`ValueError`).

        ``rewrite=False`` only renames: the disk keeps the envelope it had and the index takes
        ``envelope``. It needs no free space, so a full disk (where ``rewrite=True`` raises
        :class:`SpoolFullError`) cannot strand a claimed message; a restart forgets the
        delivery bookkeeping of the attempts made that way, nothing else.
        """
        await self._move_claimed(envelope, INCOMING, "release", rewrite=rewrite)
        self._notify_due()

    async def mark_failed(self, envelope: Envelope, *, rewrite: bool = True) -> None:
        """Move a claimed message to ``failed/`` with its final envelope (``rewrite``: see
        :meth:`release`)."""
        await self._move_claimed(envelope, FAILED, "mark as failed", rewrite=rewrite)

    async def remove(self, message_id: str) -> None:
        """Delete a claimed message after it was delivered (envelope first; see transitions).

        Inside :meth:`batched_removals` the message leaves the index at once and its files
        go with the next batch (a crash before then delivers it again: ``removals.py``);
        outside, its files are unlinked and the directory fsynced before this returns.
        """
        removals = self._removals
        if removals is None:
            await self._remove(message_id, "remove", (PROCESSING,))
            return
        self._reserve(message_id, "remove", PROCESSING)
        self._index.discard(message_id)
        self._contents.pop(message_id, None)
        self._busy.discard(message_id)
        removals.put(message_id)
        await trio.lowlevel.checkpoint()

    @contextlib.asynccontextmanager
    async def batched_removals(self) -> AsyncIterator[RemovalQueue]:
        """Run the task that unlinks delivered messages in batches (``removals.py``) for the
        duration of the block; the delivery component wraps its workers in it.

        Leaving the block normally waits until every queued removal is unlinked (shielded
        hops); leaving it by cancellation or an error leaves the queued files in
        ``processing/``: the next block (a restarted delivery component) unlinks them, else
        the next start-up delivers them again. One block at a time.
        """
        if self._removals is not None:
            raise RuntimeError("batched_removals is already active")
        queue = RemovalQueue(self._layout, self._limiter)
        for message_id in self._unremoved:
            queue.put(message_id)
        try:
            async with queue.running():
                self._removals = queue
                try:
                    yield queue
                finally:
                    self._removals = None  # from here on, remove() unlinks at once
        finally:
            self._unremoved = queue.pending

    async def release_all_claims(self) -> int:
        """Return every claimed message to ``incoming/`` unchanged; return how many.

        Call after the delivery workers have stopped; a claim in flight is skipped.
        """
        ids = [e.id for e in self._index.entries(PROCESSING) if e.id not in self._busy]
        self._busy.update(ids)
        try:
            work = partial(return_claims, self._layout, ids)
            returned = await self._run(work, "return claimed messages")
            for message_id in returned:
                entry = self._index.get(message_id)
                assert entry is not None
                self._index.put(SpoolEntry(INCOMING, entry.envelope))
                self._contents.pop(message_id, None)
        finally:
            for message_id in ids:
                self._unreserve(message_id)
        if returned:
            self._notify_due()
        return len(returned)

    # -- operator actions ----------------------------------------------------------------

    async def retry_failed(self, message_id: str, *, now: float | None = None) -> Envelope:
        """Move a failed message back to ``incoming/``, due now, with attempts reset.

        Recipients already delivered stay delivered; permanently failed ones are tried again.
        """
        entry = self._reserve(message_id, "retry", FAILED)
        old = entry.envelope
        envelope = attrs.evolve(
            old,
            attempts=0,
            next_attempt_at=time.time() if now is None else now,
            last_error=None,
            recipient_results={
                rcpt: result
                for rcpt, result in old.recipient_results.items()
                if result.status == "delivered"
            },
        )
        try:
            work = partial(
                move_message,
                self._layout,
                message_id,
                FAILED,
                INCOMING,
                envelope=envelope.to_json(),
            )
            await self._run(work, f"retry message {message_id}")
            self._index.put(SpoolEntry(INCOMING, envelope))
        finally:
            self._unreserve(message_id)
        self._notify_due()
        return envelope

    def make_due(self, message_id: str, *, now: float | None = None) -> bool:
        """Make a waiting incoming message due at ``now`` (an operator's flush).

        Returns True if its time moved; False if it is not incoming, is due already, or is
        busy (being claimed or changed right now). Attempts are kept: the retry count and
        delays go on from where they were.

        In memory only, like :meth:`release` with ``rewrite=False``: the envelope on disk
        keeps its ``next_attempt_at``, so a restart before the attempt forgets the flush and
        the message waits for its old time (nothing else is lost); the attempt that follows
        writes its envelope as usual. That makes a flush of thousands of messages cost no
        disk work at all.
        """
        entry = self._index.get(message_id)
        now = time.time() if now is None else now
        if (
            entry is None
            or entry.state is not INCOMING
            or message_id in self._busy
            or entry.envelope.next_attempt_at <= now
        ):
            return False
        self._index.put(SpoolEntry(INCOMING, attrs.evolve(entry.envelope, next_attempt_at=now)))
        self._notify_due()
        return True

    async def delete(self, message_id: str) -> None:
        """Delete an incoming or failed message for good (a claimed one cannot be deleted)."""
        await self._remove(message_id, "delete", (INCOMING, FAILED))

    async def capture(self, message_id: str) -> Path:
        """Copy a message into ``captured/`` (the Local inbox); return the body's path there."""
        entry = self._reserve(message_id, "capture", *MessageState)
        try:
            work = partial(
                capture_message, self._layout, message_id, entry.state, entry.envelope.to_json()
            )
            return await self._run(work, f"capture message {message_id}")
        finally:
            self._unreserve(message_id)

    # -- helpers -----------------------------------------------------------------------

    async def _move_claimed(
        self, envelope: Envelope, dst: MessageState, action: str, *, rewrite: bool
    ) -> None:
        entry = self._reserve(envelope.id, action, PROCESSING)
        try:
            if not entry.envelope.same_message(envelope):
                raise ValueError(f"{action} {envelope.id}: only delivery fields may change")
            work = partial(
                move_message,
                self._layout,
                envelope.id,
                PROCESSING,
                dst,
                envelope=envelope.to_json() if rewrite else None,
            )
            await self._run(work, f"{action} message {envelope.id}")
            self._index.put(SpoolEntry(dst, envelope))
            self._contents.pop(envelope.id, None)
        finally:
            self._unreserve(envelope.id)

    async def _remove(self, message_id: str, action: str, states: tuple[MessageState, ...]) -> None:
        entry = self._reserve(message_id, action, *states)
        try:
            work = partial(remove_message, self._layout, message_id, entry.state)
            await self._run(work, f"{action} message {message_id}")
            self._index.discard(message_id)
            self._contents.pop(message_id, None)
        finally:
            self._unreserve(message_id)

    def _reserve(self, message_id: str, action: str, *states: MessageState) -> SpoolEntry:
        entry = self.get(message_id)
        if message_id in self._busy:
            raise MessageBusyError(message_id)
        if entry.state not in states:
            needed = " or ".join(states)
            raise WrongStateError(message_id, entry.state, action, needed)
        self._busy.add(message_id)
        return entry

    def _unreserve(self, message_id: str) -> None:
        self._busy.discard(message_id)
        # A message the scanner skipped because it was busy, and that is still incoming,
        # must not drop out of the due-queue.
        entry = self._index.get(message_id)
        if entry is not None and entry.state is INCOMING:
            self._index.requeue(entry)

    async def _run[T](self, work: Callable[[], T], action: str) -> T:
        try:
            return await run_to_completion(work, self._limiter)
        except OSError as exc:
            raise translate_os_error(exc, action) from exc
