"""The relay lane: where a delivery attempt's relay dialogue runs — a worker process, or here.

Theory of operation
-------------------
With ``listener.processes`` > 1 the intake worker processes have spare CPU while the main
process, which runs every delivery, sits at one core. The lane moves the CPU-heavy part of an
attempt — reading the spooled message, DKIM signing, the SMTP client dialogue with the
upstream — into the workers, and nothing else: the main process keeps sole ownership of the
spool's state (claims, index, settling: remove, release, fail), the message log, bounces,
suppression, webhooks, ``/health``'s relay outcomes, the per-relay counters and the traces.
:class:`~dispatch.delivery.attempt.DeliveryAttempt` calls :meth:`RelayLane.deliver` where it
used to call the relay; the result is the same :class:`~dispatch.relays.base.DeliveryResult`,
settled the same way.

Which relays: only ``smtp`` relays (smarthosts) go to a worker. They stay here:

- ``local``: its copies go into ``captured/``, which the main process's spool owns;
- ``mx``: its MTA-STS cache and per-domain security levels are files under ``data_dir``
  written by one owner (a level must never go down because two processes raced);
- the provider relays (``postmark``, ``mailgun``, ``ses``): HTTP clients whose cost is
  waiting, not CPU, and whose ``Retry-After`` holds live in the relay object here.

A request goes to the linked worker with the fewest hand-overs in flight (ties: the one used
least recently), through its link (``Deliver`` → ``Handed``, ``intake/link_delivery.py``).
It runs here as before when no worker is linked (``processes = 1``, every worker restarting,
the stop under way), when the relay is suspended here (the fail-fast answer costs nothing),
and for the kinds above. ``max_inflight`` stays a bound across processes: the lane holds the
relay's tokens here while a worker converses. A rate limit's token is taken here too.

What comes back is applied here: the relay's ``inflight``/``delivered``/``failed`` counters
(``/metrics``), its suspension (mirrored from the worker's relay, which detected it; the audit
rows are written here), and the ``relay.dialogue`` traces, replayed as children of the
attempt's trace so ``/debug/traces`` shows the upstream dialogue as when it ran here.

Failure semantics
-----------------
- A worker that exits, or whose link breaks, while a hand-over is in flight: the attempt gets
  a transient result ("the worker process delivering it exited") and the message is retried
  on schedule. Delivery stays at-least-once and nothing is lost: the message never left the
  spool, which only the main process settles. If the upstream had already accepted the data
  when the worker died, the retry delivers it a second time — the same duplicate SPEC §6
  accepts when the main process dies after a ``250`` and before the removal.
- An attempt cancelled here (the stop's grace ran out): the lane sends ``Cancel`` for its
  token; the worker cancels the relay call, which drops the connection without completing
  the message, and the claim is released here as for any cancelled attempt.
- A ``Handed`` for a token nobody waits for any more (cancelled meanwhile) is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import trio

from dispatch.relays.base import DeliveryRequest, DeliveryResult, Relay
from dispatch.relays.ratelimit import RateLimitedRelay
from dispatch.relays.smarthost import SmtpRelayClient, count_outcomes

log = logging.getLogger("dispatch.delivery")


class DialogueRecord(Protocol):
    """One ``relay.dialogue`` trace as a worker kept it."""

    @property
    def title(self) -> str: ...
    @property
    def duration(self) -> float: ...
    @property
    def events(self) -> tuple[tuple[float, str, bool], ...]: ...


class Handback(Protocol):
    """What a worker answers for one hand-over."""

    @property
    def result(self) -> DeliveryResult: ...
    @property
    def dialogues(self) -> Sequence[DialogueRecord]: ...
    @property
    def suspended(self) -> str | None: ...


class DeliveryWorker(Protocol):
    """A linked worker process that runs relay dialogues (``intake/processes.py``)."""

    @property
    def number(self) -> int: ...
    @property
    def in_flight(self) -> int: ...

    async def deliver(self, relay: str, request: DeliveryRequest) -> Handback | None:
        """Run ``request`` through the worker's relay ``relay``; None if the worker exited
        (or its link broke) before answering. Cancellation cancels it in the worker too."""
        ...


class RelayLane:
    """See the module docstring. Lives in the main process's Trio thread."""

    def __init__(self) -> None:
        self._workers: list[DeliveryWorker] = []
        self._limiters: dict[tuple[str, int], trio.CapacityLimiter] = {}
        self.handed = 0  # hand-overs answered by a worker (tests, /debug)

    def attach(self, worker: DeliveryWorker) -> None:
        """``worker`` is linked and ready: it takes hand-overs from now on."""
        self._workers.append(worker)

    def detach(self, worker: DeliveryWorker) -> None:
        """``worker`` is stopping or gone: no new hand-overs (those in flight end by
        themselves, answered or with the worker's exit)."""
        if worker in self._workers:
            self._workers.remove(worker)

    async def deliver(self, relay: Relay, request: DeliveryRequest) -> DeliveryResult:
        """``relay``'s answer to ``request``, from a worker process or from here."""
        inner = relay.relay if isinstance(relay, RateLimitedRelay) else relay
        if (
            not self._workers
            or not isinstance(inner, SmtpRelayClient)
            or inner.suspension.why_blocked() is not None
        ):
            return await relay.deliver(request)
        if isinstance(relay, RateLimitedRelay):
            await relay.bucket.take()
        worker = min(self._workers, key=lambda w: w.in_flight)
        self._workers.remove(worker)  # to the back: ties go to the one used least recently
        self._workers.append(worker)
        key = (inner.name, inner.settings.max_inflight)
        limiter = self._limiters.setdefault(key, trio.CapacityLimiter(key[1]))
        async with limiter:
            inner.inflight += 1
            try:
                handback = await worker.deliver(inner.name, request)
            finally:
                inner.inflight -= 1
        if handback is None:
            log.warning(
                "%s: intake worker %d exited while delivering it through %s; it is retried",
                request.message_id,
                worker.number,
                inner.name,
            )
            result = DeliveryResult.all(
                request,
                "transient",
                f"relay {inner.name}: the worker process delivering it exited",
            )
        else:
            self.handed += 1
            result = handback.result
            self._replay(request, handback.dialogues)
            inner.suspension.mirror(handback.suspended)
        delivered, failed = count_outcomes(result)
        inner.delivered += delivered
        inner.failed += failed
        return result

    @staticmethod
    def _replay(request: DeliveryRequest, dialogues: Sequence[DialogueRecord]) -> None:
        if request.trace is None:
            return
        for dialogue in dialogues:
            child = request.trace.child("relay.dialogue", dialogue.title, note="started (worker)")
            child.replay(dialogue.events, dialogue.duration)
