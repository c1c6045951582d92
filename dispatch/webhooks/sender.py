"""The "webhooks" component: tells receivers what became of each message (docs/webhooks.md).

Theory of operation
-------------------
Delivery hands every message-log event to :meth:`WebhookSender.record` (the composition root
puts it beside ``MessageLog.record`` on the ``DeliveryAttempt``'s ``record`` seam), and each
failure notice (DSN) that delivery's bounces queue to :meth:`WebhookSender.bounced` (the
``bounced`` event, which has no message-log row). For an event some ``[[webhooks]]`` entry
listens to, either builds the JSON body once, appends one owed call per receiver to the outbox
(``outbox.py``: one ``write(2)``, no fsync, no waiting) and wakes the sender. Neither blocks
delivery, neither raises.

The sender task (:meth:`WebhookSender.run`) owns the calls' far end. Each turn it writes what
a failed write kept in memory, fsyncs the outbox (a worker thread), rewrites it when settled
lines make up most of it, then starts the due calls of each receiver — oldest first, at most
``max_concurrency`` at once per receiver — each in its own task (``calls.post``, httpx):

- answered 2xx → settled (``sent``);
- anything else (an error status, a timeout after ``timeout_seconds``, a refused connection)
  → tried again after ``retry_first_seconds``, doubling up to ``retry_max_seconds``, until
  ``give_up_after_seconds`` after the event: then settled as ``gave up``, logged as a
  warning and counted (``dispatch/webhooks/failed``).

A receiver removed from the configuration (a reload) has its owed calls dropped, with a
warning. Every call ends in ``Stats.webhook_activity`` (recent calls) and the counters.

Starting and stopping: the first :meth:`run` reads the outbox left by the last process (a
worker thread) and rewrites it without its settled lines, then calls
``task_status.started()``. On the stop request no call starts; calls in flight get
:data:`STOP_GRACE_SECONDS` to finish and are then cancelled: they stay owed and are made again
by the next run (at least once). The outbox is fsynced (shielded) on the way out. A run
restarted after a crash goes on with the calls in memory.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import trio

from dispatch.config.render import redact_url_credentials
from dispatch.config.settings import WebhookSettings
from dispatch.lifecycle import Shutdown
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.webhook_activity import CallResult, WebhookCall
from dispatch.storage.records import MessageEvent
from dispatch.webhooks import payload
from dispatch.webhooks.calls import Client, Clients, post
from dispatch.webhooks.outbox import Outbox, OwedCall, new_call_id, read_owed, write_compacted

log = logging.getLogger("dispatch.webhooks")

OUTBOX_DIRECTORY: Final = "webhooks"
STOP_GRACE_SECONDS: Final = 2.0
"""Calls in flight at a stop get this long to be answered; the rest are made next run."""
SYNC_TIMEOUT_ON_STOP: Final = 2.0


def outbox_directory(data_dir: str | Path) -> Path:
    return Path(data_dir) / OUTBOX_DIRECTORY


def retry_delay(hook: WebhookSettings, attempts: int) -> float:
    """Seconds before the next call after ``attempts`` failed ones: doubling from
    ``retry_first_seconds`` up to ``retry_max_seconds``."""
    return float(min(hook.retry_first_seconds * 2 ** min(attempts - 1, 62), hook.retry_max_seconds))


class WebhookSender:
    """See the module docstring. Owns the outbox and the HTTP client of its runs."""

    def __init__(
        self,
        webhooks: Callable[[], Sequence[WebhookSettings]],
        directory: Path,
        stats: Stats,
        *,
        node: str | None = None,
    ) -> None:
        """``webhooks``: the current ``[[webhooks]]`` (read at every event and every turn,
        so a reload applies at once); ``directory``: where the outbox lives."""
        self._webhooks = webhooks
        self._stats = stats
        self._activity = stats.webhook_activity
        self._node = node or socket.gethostname()
        self.outbox = Outbox(directory)
        self._due: defaultdict[str, list[tuple[float, int, str]]] = defaultdict(list)
        self._sequence = 0
        self._in_flight: defaultdict[str, int] = defaultdict(int)
        self._wakeup = trio.Event()

    # -- the delivery path --------------------------------------------------------------

    def record(self, event: MessageEvent) -> None:
        """Owe a call to every receiver listening to ``event``. Never blocks, never raises."""
        try:
            self._record(event)
        except Exception:
            log.exception("could not queue the webhook calls of event %s", event.event_id)

    def bounced(self, failure: MessageEvent, dsn_id: str) -> None:
        """Owe a ``bounced`` call to every receiver listening to it: a failure notice (DSN)
        with spool id ``dsn_id`` was queued about ``failure`` (the original message, the
        failed recipients, the diagnostic; see ``payload.bounce_payload``). Called by
        delivery's bounces through the composition root. Never blocks, never raises."""
        try:
            self._owe(
                payload.BOUNCED,
                failure,
                lambda: payload.bounce_payload(failure, dsn_id, self._node),
            )
        except Exception:
            log.exception("could not queue the bounced calls of message %s", failure.message_id)

    def _record(self, event: MessageEvent) -> None:
        kind = payload.event_type(event)
        if kind is None:
            return
        self._owe(kind, event, lambda: payload.payload(event, kind, self._node))

    def _owe(
        self, kind: str, event: MessageEvent, document: Callable[[], dict[str, object]]
    ) -> None:
        """Append one call per receiver listening to ``kind`` (the body made only then)."""
        hooks = [hook for hook in self._webhooks() if kind in hook.events]
        if not hooks:
            return
        body = payload.body_of(document())
        calls = [
            OwedCall(
                call_id=new_call_id(),
                event_id=event.event_id,
                url=hook.url,
                event=kind,
                message_id=event.message_id,
                created=event.at,
                body=body,
            )
            for hook in hooks
        ]
        errors = self.outbox.write_errors
        self.outbox.add(calls)
        self._stats.webhook_outbox_errors.add(self.outbox.write_errors - errors)
        self._stats.webhook_queued.add(len(calls))
        for call in calls:
            self._schedule(call)
        self._changed()

    # -- the component ------------------------------------------------------------------

    async def run(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        """The sender task; see the module docstring for how it starts and stops."""
        if not self.outbox.loaded:
            await self._load()
        self._rebuild_schedule()
        task_status.started()
        try:
            async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as calls:
                await self._send_until_stopped(shutdown, Clients(stack), calls)
                with trio.move_on_after(STOP_GRACE_SECONDS):
                    while any(self._in_flight.values()):
                        await self._wakeup.wait()
                        self._wakeup = trio.Event()
                calls.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(SYNC_TIMEOUT_ON_STOP):
                await self._sync()

    async def _load(self) -> None:
        contents = await trio.to_thread.run_sync(read_owed, self.outbox.path)
        self.outbox.merge(contents)
        if contents.lines:
            log.info(
                "webhook outbox %s: %d call(s) owed from the last run%s",
                self.outbox.path,
                len(contents.owed),
                f", {contents.skipped} unreadable line(s) skipped" if contents.skipped else "",
            )
            await self._compact()
        self._changed()

    async def _send_until_stopped(
        self, shutdown: Shutdown, clients: Clients, calls: trio.Nursery
    ) -> None:
        calls.start_soon(self._wake_on_stop, shutdown)
        while not shutdown.requested.is_set():
            await self._sync()
            if self.outbox.wants_compaction:
                await self._compact()
            await clients.prepare(self._webhooks())
            next_due = self._start_due(clients, calls)
            with trio.move_on_at(_trio_time(next_due)):
                await self._wakeup.wait()
            self._wakeup = trio.Event()

    async def _wake_on_stop(self, shutdown: Shutdown) -> None:
        await shutdown.requested.wait()
        self._wakeup.set()

    def _start_due(self, clients: Clients, calls: trio.Nursery) -> float:
        """Start every due call a receiver has room for; return when the next one is due."""
        hooks = {hook.url: hook for hook in self._webhooks()}
        now = time.time()
        next_due = math.inf
        for url in list(self._due):
            hook = hooks.get(url)
            if hook is None:
                self._drop_receiver(url)
                continue
            heap = self._due[url]
            while heap and self._in_flight[url] < hook.max_concurrency:
                due_at, _, call_id = heap[0]
                call = self.outbox.owed.get(call_id)
                if call is None or call.in_flight or call.next_at != due_at:
                    heapq.heappop(heap)  # settled, or rescheduled: a stale entry
                    continue
                if due_at > now:
                    break
                heapq.heappop(heap)
                call.in_flight = True
                self._in_flight[url] += 1
                calls.start_soon(self._call, clients.get(hook.ca_file), hook, call)
            if heap and self._in_flight[url] < hook.max_concurrency:
                next_due = min(next_due, heap[0][0])
            if not heap:
                del self._due[url]
        return next_due

    async def _call(self, client: Client, hook: WebhookSettings, call: OwedCall) -> None:
        """One POST of ``call`` to ``hook``; settles or reschedules it. If cancelled (the
        stop), the call stays owed and due."""
        settled = False
        try:
            call.attempts += 1
            started = trio.current_time()
            status, error = await post(client, hook, call)
            duration_ms = (trio.current_time() - started) * 1000
            self._settle(hook, call, status, error, duration_ms)
            settled = True
        finally:
            call.in_flight = False
            self._in_flight[hook.url] -= 1
            if not settled and call.call_id in self.outbox.owed:
                call.next_at = 0.0
                self._schedule(call)
            self._wakeup.set()

    def _settle(
        self,
        hook: WebhookSettings,
        call: OwedCall,
        status: int | None,
        error: str | None,
        duration_ms: float,
    ) -> None:
        now = time.time()
        next_in: float | None = None
        result: CallResult
        if status is not None and 200 <= status < 300:
            result = "sent"
            self.outbox.done(call.call_id, "sent")
            self._stats.webhook_sent.add()
            log.debug(
                "webhook %s: %s %s answered %d", _shown(hook.url), call.event, call.event_id, status
            )
        else:
            error = error or f"HTTP {status}"
            deadline = call.created + hook.give_up_after_seconds
            if now >= deadline:
                result = "gave up"
                self.outbox.done(call.call_id, "gave up")
                self._stats.webhook_failed.add()
                log.warning(
                    "webhook %s: gave up on %s event %s of message %s after %d attempt(s) "
                    "over %.0f s (give_up_after_seconds): %s",
                    _shown(hook.url),
                    call.event,
                    call.event_id,
                    call.message_id,
                    call.attempts,
                    now - call.created,
                    error,
                )
            else:
                result = "retry"
                next_in = min(retry_delay(hook, call.attempts), deadline - now)
                call.next_at = now + next_in
                self._schedule(call)
                self._stats.webhook_retried.add()
                # The first failure of a call is worth a line; the rest of an outage is in
                # the recent calls and the counters, not one log line per retry per event.
                log.log(
                    logging.INFO if call.attempts == 1 else logging.DEBUG,
                    "webhook %s: %s event %s: %s; attempt %d, next in %.1f s",
                    _shown(hook.url),
                    call.event,
                    call.event_id,
                    error,
                    call.attempts,
                    next_in,
                )
        self._activity.add(
            WebhookCall(
                at=now,
                url=_shown(hook.url),
                event=call.event,
                event_id=call.event_id,
                message_id=call.message_id,
                attempt=call.attempts,
                status=status,
                error=error if result != "sent" else None,
                duration_ms=round(duration_ms, 3),
                result=result,
                next_attempt_in=None if next_in is None else round(next_in, 3),
            )
        )
        self._changed()

    def _drop_receiver(self, url: str) -> None:
        """``url`` is no longer configured: its owed calls are dropped."""
        dropped = [c for c in self.outbox.owed.values() if c.url == url and not c.in_flight]
        for call in dropped:
            self.outbox.done(call.call_id, "dropped")
        if not any(c.url == url for c in self.outbox.owed.values()):
            self._due.pop(url, None)
        if dropped:
            self._stats.webhook_failed.add(len(dropped))
            log.warning(
                "webhook %s is no longer configured: %d owed call(s) dropped",
                _shown(url),
                len(dropped),
            )
        self._changed()

    # -- the schedule, the file ---------------------------------------------------------

    def _schedule(self, call: OwedCall) -> None:
        self._sequence += 1
        heapq.heappush(self._due[call.url], (call.next_at, self._sequence, call.call_id))

    def _rebuild_schedule(self) -> None:
        self._due.clear()
        for call in self.outbox.owed.values():
            if not call.in_flight:
                self._schedule(call)

    def _changed(self) -> None:
        owed = self.outbox.owed
        self._activity.outbox_depth = len(owed)
        # Calls are kept in the order they were owed: the first is the oldest.
        self._activity.oldest_pending_at = next(iter(owed.values())).created if owed else None
        self._wakeup.set()

    async def _sync(self) -> None:
        errors = self.outbox.write_errors
        self.outbox.flush()
        self._stats.webhook_outbox_errors.add(self.outbox.write_errors - errors)
        if not self.outbox.dirty:
            return
        try:
            await trio.to_thread.run_sync(self.outbox.sync)
        except OSError as exc:
            self._stats.webhook_outbox_errors.add()
            log.error("cannot fsync the webhook outbox %s: %s", self.outbox.path, exc)

    async def _compact(self) -> None:
        data = self.outbox.begin_compaction()
        replaced = False
        try:
            await trio.to_thread.run_sync(write_compacted, self.outbox.path, data)
            replaced = True
        except OSError as exc:
            self._stats.webhook_outbox_errors.add()
            log.error("cannot rewrite the webhook outbox %s: %s", self.outbox.path, exc)
        finally:
            self.outbox.end_compaction(replaced)


def _shown(url: str) -> str:
    """``url`` as logs and pages show it: a password in it (``https://user:pw@…``) redacted."""
    return redact_url_credentials(url)


def _trio_time(unix_time: float) -> float:
    """The Trio clock's reading at Unix time ``unix_time`` (inf stays inf)."""
    if math.isinf(unix_time):
        return unix_time
    return trio.current_time() + max(0.0, unix_time - time.time())
