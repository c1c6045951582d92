"""The message log writer: records in, database rows out, never in anybody's way (SPEC §5, §7).

Theory of operation
-------------------
Intake, delivery and the web apps call :meth:`MessageLog.record` / :meth:`MessageLog.audit`.
Both are synchronous: they append to an in-memory queue and wake the writer, nothing more,
so the database is never on the acceptance or delivery path and can never slow it down.

One writer task (:meth:`MessageLog.run`, a supervisor component) owns the queue's far end,
the journal and the database writes. Each turn of its loop:

1. If the journal holds records and the database may be tried, replay the journal into
   the database in chunks of :data:`BATCH_SIZE`, then delete it (``journal.py``).
2. Take up to :data:`BATCH_SIZE` records from the head of the queue and write them in one
   transaction in one thread hop, counters included (``log_batch.py``). If that write took
   :data:`LINGER_FROM` records or more (they arrive faster than they are written), let
   records gather for :data:`LINGER` seconds (cut short by a full batch or a stop request),
   so that under load a transaction carries many rows instead of the few that arrived
   during the last write; lighter traffic is written as it comes.
3. If the database failed, or is backing off, append the batch to the journal instead
   (flushed and fsynced) so that it survives a restart.

Records leave the queue only after the database committed them or the journal fsynced
them; if both fail (the disk is full too) they stay in memory and both are tried again
after the back-off. Records in the queue are lost only if the process dies before either
took them. Every record carries a unique ``event_id`` and every insert ignores an id it
already has, so a record written twice (a replay interrupted by a crash) appears once.

After a failure the database is tried again after :data:`RETRY_FIRST` seconds, doubling up to
:data:`RETRY_MAX`; the first success resets the back-off. :attr:`database_reachable`,
:attr:`last_error` and :attr:`pending` report all this to ``/health`` and ``/metrics``
(plain attributes: reading them costs nothing).

Starting and stopping: :meth:`run` counts the journal left by an earlier run, calls
``task_status.started()`` (it never waits for the database), opens the database (an empty
batch, which applies the schema; retried with back-off while it fails, so that
:attr:`database_reachable` is true without traffic), and works until
``shutdown.requested`` is set. Then it writes what is queued — to the database, or to the
journal if the database fails — and returns; a leftover journal is replayed by the next
run. If it is cancelled instead, it makes one shielded attempt of at most
:data:`SAVE_ON_CANCEL_TIMEOUT` seconds to journal the queue before the cancellation goes on.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import time
from functools import partial
from pathlib import Path
from typing import Final, Protocol

import trio

from dispatch.storage.database import Database, DatabaseUnavailableError
from dispatch.storage.journal import Journal
from dispatch.storage.log_batch import minute_of, write_batch
from dispatch.storage.records import AuditEntry, LogRecord, MessageEvent
from dispatch.storage.schema import MINUTE_COUNTERS_KEPT

log = logging.getLogger("dispatch.storage")

# One transaction per 500 rows amortises the commit (and, in the journal, the fsync) under
# load while one hop stays in the milliseconds, so queries never wait long behind it.
BATCH_SIZE: Final = 500
# A lock held by a checkpoint clears in well under a second; a dead server or a full disk
# does not, and is then tried every 5 s at most, which keeps its log quiet.
RETRY_FIRST: Final = 0.05
RETRY_MAX: Final = 5.0
SAVE_ON_CANCEL_TIMEOUT: Final = 2.0
# After a write of at least LINGER_FROM rows (records arrived faster than they were written:
# sustained traffic) the writer lets records gather this long (seconds) before the next
# one, so under load one transaction carries many rows: at 1,000 msgs/s the main process's
# CPU for the log fell from 0.31-0.38 to 0.16-0.23 ms per message and SQLite's page writes
# from 7.4 to 2.4 per message (docs/intake-cpu.md, round 3). Lighter traffic is written
# at once, as before; a full batch or a stop request ends the wait early.
LINGER: Final = 0.05
LINGER_FROM: Final = 4


class StopRequest(Protocol):
    """What the writer watches to stop (the supervisor's ``Shutdown`` is one)."""

    @property
    def requested(self) -> trio.Event: ...


class MessageLog:
    """The queue of log records on their way to the database, and the task that writes them.

    Owns the queue and the journal file; uses (does not own) ``database``. :meth:`record`
    and :meth:`audit` may be called at any time from the Trio thread, before, during or
    after :meth:`run`.
    """

    def __init__(
        self,
        database: Database,
        journal_path: Path,
        *,
        batch_size: int = BATCH_SIZE,
        node_id: str | None = None,
    ):
        self._database = database
        self.node_id = node_id
        """The id written on every row (see ``dispatch/storage/nodes.py``); None: no id."""
        self._journal = Journal(journal_path)
        self._batch_size = batch_size
        self._queue: collections.deque[LogRecord] = collections.deque()
        self._wakeup = trio.Event()
        self._wake_on_record = True  # False while the writer sleeps through a back-off
        self._lingering = False  # True while records gather after a write (LINGER)
        self._last_rows = 0  # records the last write took (database or journal)
        self._idle = trio.Event()  # set while nothing is pending and the writer has run
        self._stopping = False
        self._journal_rows = 0
        self._replay_needed = False
        self._replay_offset = 0
        self._retry_at = -math.inf
        self._backoff = RETRY_FIRST
        self._pruned_minute = -1
        self.database_reachable = False
        """Whether the last write to the database succeeded (False until one has).

        The writer opens the database as soon as it runs, and while this is False it tries
        again after each back-off even with nothing to write; while it is True, an outage
        is noticed by the next write.
        """
        self.last_error: str | None = None
        """Why the database (and, if it failed too, the journal) could not be written."""
        self.written_total = 0
        """Rows the database accepted (a replayed row it already had is not counted)."""
        self.journaled_total = 0
        """Records written to the journal because the database could not take them."""

    @property
    def journal_path(self) -> Path:
        return self._journal.path

    @property
    def pending(self) -> int:
        """Records not yet in the database: queued in memory plus waiting in the journal."""
        return len(self._queue) + self._journal_rows

    def record(self, event: MessageEvent) -> None:
        """Queue ``event`` for the database. Never blocks, never raises, never waits."""
        self._enqueue(event)

    def audit(self, entry: AuditEntry) -> None:
        """Queue ``entry`` for the audit log. Never blocks, never raises, never waits."""
        self._enqueue(entry)

    async def wait_until_written(self) -> None:
        """Return once nothing is pending (every record so far is in the database)."""
        while not self._idle.is_set():
            await self._idle.wait()

    async def run(
        self,
        shutdown: StopRequest,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The writer task; see the module docstring for how it starts and stops."""
        try:
            self._journal_rows = await trio.to_thread.run_sync(self._journal.count)
        except OSError as exc:  # replay will try again, and say so
            log.error("cannot read the log journal %s: %s", self._journal.path, exc)
            self._journal_rows = 0
            self._replay_needed = True
        else:
            self._replay_needed = self._journal_rows > 0
        self._replay_offset = 0
        self._stopping = False
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_when_requested, shutdown)
                await self._write_until_stopped()
                nursery.cancel_scope.cancel()
        finally:
            if self._queue:
                await self._save_queue_on_cancel()

    def _enqueue(self, record: LogRecord) -> None:
        self._queue.append(record)
        if self._idle.is_set():
            self._idle = trio.Event()
        if self._wake_on_record or (self._lingering and len(self._queue) >= self._batch_size):
            self._wakeup.set()

    async def _stop_when_requested(self, shutdown: StopRequest) -> None:
        await shutdown.requested.wait()
        self._stopping = True
        self._wakeup.set()

    async def _write_until_stopped(self) -> None:
        while True:
            progressed = await self._step()
            if self.pending == 0:
                self._idle.set()
            if self._stopping and not self._queue:
                return
            if progressed:
                await self._linger()
                continue
            # Nothing could be done now: sleep until records arrive (if the queue is empty),
            # the back-off ends (if anything waits for the database) or a stop is requested.
            waiting = bool(self._queue) or self._replay_needed or not self.database_reachable
            self._wake_on_record = not self._queue
            with trio.move_on_at(self._retry_at if waiting else math.inf):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            self._wake_on_record = True

    async def _linger(self) -> None:
        """After a write of :data:`LINGER_FROM` rows or more, let records gather for
        :data:`LINGER` seconds, unless a batch is full or we stop."""
        if self._last_rows < LINGER_FROM or self._stopping or len(self._queue) >= self._batch_size:
            await trio.lowlevel.checkpoint()
            return
        self._lingering, self._wake_on_record = True, False
        self._wakeup = trio.Event()  # set by records that came during the write
        with trio.move_on_after(LINGER):
            await self._wakeup.wait()
        self._wakeup = trio.Event()
        self._lingering, self._wake_on_record = False, True

    async def _step(self) -> bool:
        """One turn of the loop; return whether any record moved."""
        progressed = False
        self._last_rows = 0
        if self._replay_needed and not self._stopping and self._may_try_database():
            progressed = await self._replay_journal()
        if not self._queue:
            if not self.database_reachable and not self._stopping and self._may_try_database():
                # Nothing to write, but /health wants to know: an empty batch opens the
                # database (applying the schema) and says whether it is back.
                await self._write([])
            return progressed
        batch = list(itertools.islice(self._queue, self._batch_size))
        self._last_rows = len(batch)
        if self._may_try_database() and await self._write(batch):
            self._pop(len(batch))
            return True
        if await self._append_to_journal(batch):
            self._pop(len(batch))
            return True
        return progressed

    async def _write(self, records: list[LogRecord]) -> bool:
        work = partial(
            write_batch,
            records=records,
            prune_minutes_before=self._minute_to_prune(),
            node=self.node_id,
        )
        try:
            self.written_total += await self._database.write(work)
        except DatabaseUnavailableError as exc:
            self._database_failed(str(exc))
            return False
        self._database_succeeded()
        return True

    async def _replay_journal(self) -> bool:
        """Replay the journal from where the last replay stopped; return whether rows moved."""
        moved = False
        while True:
            try:
                chunk = await trio.to_thread.run_sync(
                    self._journal.read, self._replay_offset, self._batch_size
                )
            except OSError as exc:
                log.error("cannot read the log journal %s: %s", self._journal.path, exc)
                self._back_off()
                return moved
            if chunk.records and not await self._write(list(chunk.records)):
                return moved
            moved = moved or bool(chunk.records)
            self._replay_offset = chunk.next_offset
            self._journal_rows = max(0, self._journal_rows - len(chunk.records) - chunk.skipped)
            if chunk.at_end:
                break
        try:
            await trio.to_thread.run_sync(self._journal.remove)
        except OSError as exc:  # replayed anyway; the next replay finds the rows present
            log.error("cannot remove the replayed log journal %s: %s", self._journal.path, exc)
            self._back_off()
            return moved
        log.info("log journal replayed into the database; removed %s", self._journal.path)
        self._replay_needed = False
        self._replay_offset = 0
        self._journal_rows = 0
        return True

    async def _append_to_journal(self, records: list[LogRecord]) -> bool:
        try:
            await trio.to_thread.run_sync(self._journal.append, records)
        except OSError as exc:
            database = self.last_error or "database backing off"
            self.last_error = f"{database}; journal {self._journal.path}: {exc}"
            log.error(
                "cannot journal %d log records, keeping them in memory: %s", len(records), exc
            )
            return False
        self._journal_rows += len(records)
        self.journaled_total += len(records)
        self._replay_needed = True
        return True

    async def _save_queue_on_cancel(self) -> None:
        records = list(self._queue)
        with trio.CancelScope(shield=True), trio.move_on_after(SAVE_ON_CANCEL_TIMEOUT):
            try:
                await trio.to_thread.run_sync(self._journal.append, records, abandon_on_cancel=True)
            except OSError as exc:
                log.error("%d log records lost: cannot journal them: %s", len(records), exc)
                return
            self._pop(len(records))
            self._journal_rows += len(records)
            self._replay_needed = True
            return
        log.error("%d log records lost: the journal did not answer in time", len(records))

    def _pop(self, count: int) -> None:
        for _ in range(count):
            self._queue.popleft()

    def _may_try_database(self) -> bool:
        return trio.current_time() >= self._retry_at

    def _minute_to_prune(self) -> int | None:
        minute = minute_of(time.time())
        if minute == self._pruned_minute:
            return None
        self._pruned_minute = minute
        return minute - MINUTE_COUNTERS_KEPT

    def _database_failed(self, reason: str) -> None:
        if self.database_reachable or self.last_error is None:
            log.warning("database unreachable, journaling the log: %s", reason)
        self.database_reachable = False
        self.last_error = reason
        self._back_off()

    def _back_off(self) -> None:
        self._retry_at = trio.current_time() + self._backoff
        self._backoff = min(self._backoff * 2, RETRY_MAX)

    def _database_succeeded(self) -> None:
        if not self.database_reachable and self.last_error is not None:
            log.info("database reachable again")
        self.database_reachable = True
        self.last_error = None
        self._retry_at = -math.inf
        self._backoff = RETRY_FIRST
