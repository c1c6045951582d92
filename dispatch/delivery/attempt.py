"""One delivery attempt of one claimed message: route, hand to relays, settle the outcome.

The outcome decides where the message goes next (SPEC §6):

- every recipient has a final result and none failed → removed from the spool, ``delivered``;
- every recipient has a final result, some failed permanently → ``failed/``;
- some recipients failed transiently → back to ``incoming/`` due after the retry delay
  (``retried``), or to ``failed/`` once ``spool.max_retries`` retries are used up.

Recipients delivered (or permanently refused) in an attempt are recorded in the envelope, so
a retry only tries the rest. A route naming several relays tries the next one for the
recipients the previous one refused transiently (failover).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import attrs
import trio

from dispatch.delivery.bounces import Bounces, Settled
from dispatch.delivery.routing import RouteDecision, Router
from dispatch.delivery.schedule import RetrySchedule
from dispatch.delivery.suppression import DeliverySuppression
from dispatch.monitoring.delivery_health import RelayOutcomes
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.traces import Trace, Tracer, message_title
from dispatch.relays.base import DeliveryRequest, DeliveryResult, Relay
from dispatch.relays.registry import RelayUnavailable
from dispatch.spool import Deferral, Envelope, RecipientResult, Spool, SpoolFullError
from dispatch.spool.envelope import ResultStatus
from dispatch.storage.records import EventKind, MessageEvent

log = logging.getLogger("dispatch.delivery")

MAX_ERROR_TEXT: Final = 2000  # last_error kept in the envelope: enough to read, bounded


@attrs.define
class ForcedAttempt:
    """An operator's request (``send-test``) to send one message through one relay."""

    relay: str
    result: DeliveryResult | None = None
    settled: trio.Event = attrs.Factory(trio.Event)  # set once the attempt has been settled


@attrs.frozen
class DeliveryPlan:
    """The configuration one attempt runs with (a snapshot: reloads apply to later ones)."""

    router: Router
    schedule: RetrySchedule
    relay: Callable[[str], Relay]


def _needs_smtputf8(envelope: Envelope) -> bool:
    return not envelope.mail_from.isascii() or not all(r.isascii() for r in envelope.recipients)


class DeliveryAttempt:
    """Runs attempts for the delivery workers. Owns nothing; the spool owns the message."""

    def __init__(
        self,
        spool: Spool,
        plan: Callable[[], DeliveryPlan],
        record: Callable[[MessageEvent], None],
        stats: Stats,
        tracer: Tracer,
        outcomes: RelayOutcomes | None = None,
        *,
        bounces: Bounces | None = None,
        suppression: DeliverySuppression | None = None,
    ) -> None:
        """``outcomes`` hears how each relay's answer went (``/health``'s delivery check);
        ``bounces`` writes the DSNs an attempt calls for (``delivery/bounces.py``);
        ``suppression`` skips suppressed recipients and learns from hard bounces."""
        self._bounces = bounces
        self._suppression = suppression
        self._tracer = tracer
        self._spool = spool
        self._plan = plan
        self._record = record
        self._stats = stats
        self.outcomes = outcomes if outcomes is not None else RelayOutcomes()
        self._forced: dict[str, ForcedAttempt] = {}  # message id → request; in memory only

    def force(self, message_id: str, relay: str) -> ForcedAttempt:
        """Send the next attempt of ``message_id`` through ``relay``, ignoring the routes."""
        forced = self._forced[message_id] = ForcedAttempt(relay)
        return forced

    async def run(self, envelope: Envelope) -> None:
        """Deliver a claimed message and move it on. On cancellation the claim is released
        (shielded) with whatever results are final already, so nothing is sent twice to a
        recipient that was delivered before the cancel."""
        results: dict[str, RecipientResult] = {}
        deferrals: dict[str, Deferral] = {}  # recipients left for a retry, and why
        forced = self._forced.pop(envelope.id, None)
        title = message_title(envelope.id, envelope.mail_from, envelope.recipients)
        message = self._tracer.message_trace(envelope.id, title)
        attempt = envelope.attempts + 1
        trace = message.child("delivery.attempt", f"{envelope.id} attempt {attempt}")
        trace.event(f"{len(envelope.pending_recipients)} recipient(s) pending")
        try:
            try:
                errors = await self._deliver(
                    envelope, self._plan(), (results, deferrals), forced, trace
                )
            except BaseException:
                trace.error("attempt cut short; claim released")
                message.event(f"attempt {attempt} cut short; the message waits")
                with trio.CancelScope(shield=True):
                    merged = {**envelope.recipient_results, **results}
                    await self._move_on(
                        self._spool.release, attrs.evolve(envelope, recipient_results=merged)
                    )
                raise
            await self._settle(envelope, results, errors, deferrals, message)
            if errors:
                trace.error("; ".join(errors)[:MAX_ERROR_TEXT])
        finally:
            trace.finish()
            if forced is not None:
                forced.settled.set()

    async def _deliver(
        self,
        envelope: Envelope,
        plan: DeliveryPlan,
        outcomes: tuple[dict[str, RecipientResult], dict[str, Deferral]],
        forced: ForcedAttempt | None,
        trace: Trace,
    ) -> list[str]:
        """Try every pending recipient once (with failover); return the transient errors.

        Fills ``outcomes``: the final results, and for each recipient left for a retry the
        transient outcome of the last relay tried (what ``/debug/queue`` shows)."""
        results, transient = outcomes  # transient: why its last relay could not take it
        pending = envelope.pending_recipients
        if self._suppression is not None:
            skipped = await self._suppression.skip(pending)
            if skipped:
                results.update(skipped)
                pending = tuple(r for r in pending if r not in skipped)
                for recipient, refused in skipped.items():
                    trace.error(refused.response)
                    self._record(
                        self._event(envelope, "failed", [recipient], response=refused.response)
                    )
                if not pending:
                    return []
        groups = plan.router.split(envelope.mail_from, pending)
        if forced is not None:
            decision = RouteDecision((forced.relay,), None, None, forced=True)
            groups = {decision: pending}
        for decision, recipients in groups.items():
            remaining = recipients
            for relay_name in decision.relays:
                try:
                    relay = plan.relay(relay_name)
                except (RelayUnavailable, ValueError) as exc:
                    log.error("cannot deliver through %s: %s", relay_name, exc)
                    self._stats.relay_deliveries.add(f"{relay_name}:transient", len(remaining))
                    why = Deferral(str(exc), relay_name, decision.label, time.time())
                    transient.update(dict.fromkeys(remaining, why))
                    continue
                request = DeliveryRequest(
                    message_id=envelope.id,
                    mail_from=envelope.mail_from,
                    recipients=remaining,
                    message_path=self._spool.message_path(envelope.id),
                    size=envelope.size,
                    content=self._spool.claimed_content(envelope.id),
                    smtputf8=_needs_smtputf8(envelope),
                    mail_dsn=envelope.mail_dsn,
                    recipient_dsn={
                        r: envelope.recipient_dsn[r]
                        for r in remaining
                        if r in envelope.recipient_dsn
                    },
                    trace=trace,
                )
                started = trio.current_time()
                result = await self._hand_over(relay, request)
                duration = trio.current_time() - started
                self._collect(envelope, decision, relay, result, duration, results)
                for outcome in result.outcomes:
                    (trace.error if outcome.outcome == "permanent" else trace.event)(
                        f"{relay.name} ({decision.label}) {outcome.outcome} in "
                        f"{duration * 1000:.0f} ms: {outcome.response}"
                    )
                if forced is not None:
                    forced.result = result
                at = time.time()
                for outcome in result.outcomes:
                    if outcome.outcome == "transient":
                        transient[outcome.recipient] = Deferral(
                            outcome.response, relay.name, decision.label, at
                        )
                    else:
                        transient.pop(outcome.recipient, None)
                remaining = tuple(r for r in remaining if r in transient)
                if not remaining:
                    break
        return [f"{recipient}: {why.response}" for recipient, why in transient.items()]

    async def _hand_over(self, relay: Relay, request: DeliveryRequest) -> DeliveryResult:
        try:
            return await relay.deliver(request)
        except Exception:
            log.exception("relay %s failed unexpectedly", relay.name)
            return DeliveryResult.all(
                request, "transient", f"relay {relay.name}: internal error (see the log)"
            )

    def _collect(
        self,
        envelope: Envelope,
        decision: RouteDecision,
        relay: Relay,
        result: DeliveryResult,
        duration: float,
        results: dict[str, RecipientResult],
    ) -> None:
        """Record final results, log and count what one relay did with its recipients."""
        now = time.time()
        by_outcome: dict[str, list[str]] = {"delivered": [], "permanent": [], "transient": []}
        for outcome in result.outcomes:
            by_outcome[outcome.outcome].append(outcome.recipient)
            if outcome.outcome != "transient":
                status: ResultStatus = "delivered" if outcome.outcome == "delivered" else "failed"
                results[outcome.recipient] = RecipientResult(
                    status,
                    outcome.response,
                    relay.name,
                    now,
                    route=decision.label,
                    remote_mta=result.remote_mta,
                    dsn_passed=result.dsn_passed,
                )
        self._stats.relay_attempt_seconds.observe(relay.name, duration)
        self.outcomes.record(
            relay.name,
            envelope.id,
            [o.outcome for o in result.outcomes],
            next((o.response for o in result.outcomes if o.outcome == "transient"), ""),
        )
        for kind, recipients in by_outcome.items():
            if not recipients:
                continue
            self._stats.delivery_attempts.add(f"{relay.kind}:{kind}")
            self._stats.relay_deliveries.add(f"{relay.name}:{kind}", len(recipients))
            response = next(o.response for o in result.outcomes if o.recipient == recipients[0])
            if kind != "transient":
                self._record(
                    self._event(
                        envelope,
                        "delivered" if kind == "delivered" else "failed",
                        recipients,
                        relay=relay.name,
                        route=decision.label,
                        duration=duration,
                        response=response,
                        remote_id=result.remote_id,
                    )
                )
            log.info(
                "%s via %s (%s) for %d recipient(s) in %.0f ms: %s",
                kind,
                relay.name,
                decision.label,
                len(recipients),
                duration * 1000,
                response,
            )
        if by_outcome["delivered"]:
            self._stats.delivery_latency_seconds.observe(max(0.0, now - envelope.received_at))

    async def _settle(
        self,
        envelope: Envelope,
        results: dict[str, RecipientResult],
        errors: list[str],
        deferrals: dict[str, Deferral],
        message: Trace,
    ) -> None:
        """Move the message on (see the module docstring); ``message`` (its trace) is told
        what became of it, and finished once nothing is left to try."""
        schedule = self._plan().schedule
        if self._suppression is not None:
            await self._suppression.learn(envelope.id, results)
        delivered_now = [r for r, x in results.items() if x.status == "delivered"]
        left = [r for r in envelope.pending_recipients if r not in results]
        all_results = {**envelope.recipient_results, **results}
        any_failed = any(r.status == "failed" for r in all_results.values())
        error = "; ".join(errors)[:MAX_ERROR_TEXT] or None
        attempts = envelope.attempts + 1
        if not left:
            if any_failed:
                failed = envelope.after_attempt(
                    next_attempt_at=0.0, error=error or "permanently refused", results=results
                )
                failed = await self._notify(failed, "failed", delivered_now)
                await self._move_on(self._spool.mark_failed, failed)
                log.warning("%s failed: some recipients were refused permanently", envelope.id)
                refused = (
                    f"{r}: {x.response}" for r, x in all_results.items() if x.status == "failed"
                )
                message.error("failed: refused permanently: " + "; ".join(refused))
            else:
                done = envelope.after_attempt(next_attempt_at=0.0, error=None, results=results)
                await self._notify(done, "delivered", delivered_now)
                await self._spool.remove(envelope.id)
                message.event("delivered to every recipient")
            message.finish()
            return
        if schedule.exhausted(attempts):
            failed = envelope.after_attempt(
                next_attempt_at=0.0,
                error=f"retries exhausted: {error}",
                results=results,
                deferrals=deferrals,
            )
            failed = await self._notify(failed, "failed", delivered_now)
            await self._move_on(self._spool.mark_failed, failed)
            self._record_by_relay(envelope, "failed", left, deferrals, "retries exhausted: ")
            log.warning("%s failed after %d attempts: %s", envelope.id, attempts, error)
            message.error(f"failed after {attempts} attempts: {error}")
            message.finish()
            return
        delay = schedule.delay(attempts)
        settled_at = time.time()  # the schedule's base, and the time of the retried rows
        retry = envelope.after_attempt(
            next_attempt_at=settled_at + delay, error=error, results=results, deferrals=deferrals
        )
        retry = await self._notify(retry, "retried", delivered_now)
        await self._move_on(self._spool.release, retry)
        self._record_by_relay(envelope, "retried", left, deferrals, at=settled_at)
        log.info("%s: %d recipient(s) retried in %.0f s", envelope.id, len(left), delay)
        message.event(f"{len(left)} recipient(s) retried in {delay:.0f} s: {error}")

    async def _notify(self, envelope: Envelope, settled: Settled, delivered: list[str]) -> Envelope:
        """Spool the DSN this outcome calls for (``delivery/bounces.py``) before the message
        moves on; the envelope to write."""
        if self._bounces is None:
            return envelope
        try:
            return await self._bounces.settled(envelope, settled, delivered)
        except Exception:  # a notice must never keep a message from moving on
            log.exception("%s: the delivery status notification failed", envelope.id)
            return envelope

    def _record_by_relay(
        self,
        envelope: Envelope,
        event: EventKind,
        left: list[str],
        deferrals: Mapping[str, Deferral],
        prefix: str = "",
        at: float | None = None,
    ) -> None:
        """Log ``event`` for the recipients ``left``: one row per relay and route that
        deferred them last, with those recipients' replies, so the per-relay figures count
        the relay that failed them. ``at``: the event's time (default now): a retry's is the
        moment its next attempt was scheduled from, not the later end of the spool write."""
        groups: dict[tuple[str | None, str | None], list[str]] = {}
        for recipient in left:
            why = deferrals.get(recipient)
            key = (why.relay, why.route) if why is not None else (None, None)
            groups.setdefault(key, []).append(recipient)
        for (relay, route), recipients in groups.items():
            replies = "; ".join(
                f"{r}: {deferrals[r].response}" for r in recipients if r in deferrals
            )
            response = (prefix + (replies or "not handed to any relay"))[:MAX_ERROR_TEXT]
            self._record(
                self._event(
                    envelope, event, recipients, relay=relay, route=route, response=response, at=at
                )
            )

    @staticmethod
    async def _move_on(move: Callable[..., Awaitable[None]], envelope: Envelope) -> None:
        """Release or fail a claimed message; on a full disk without writing its envelope.

        The move itself is a rename and needs no space; only rewriting the envelope does.
        A message left claimed would wait for a restart, and with it the space its delivery
        would free: intake, refused for a full disk, would not recover.
        """
        try:
            await move(envelope)
        except SpoolFullError:
            log.warning("%s: the spool's disk is full; this attempt is kept in memory", envelope.id)
            await move(envelope, rewrite=False)

    @staticmethod
    def _event(
        envelope: Envelope,
        event: EventKind,
        recipients: list[str] | tuple[str, ...],
        *,
        relay: str | None = None,
        route: str | None = None,
        duration: float | None = None,
        response: str = "",
        remote_id: str | None = None,
        at: float | None = None,
    ) -> MessageEvent:
        return MessageEvent(
            message_id=envelope.id,
            event=event,
            at=time.time() if at is None else at,
            source=None if envelope.source == "bounce" else envelope.source,  # the log's are
            sender=envelope.mail_from,  # smtp and api; a DSN is told by its "bounce" tag
            recipients=tuple(recipients),
            size=envelope.size,
            tags=envelope.tags,
            relay=relay,
            route=route,
            attempt=envelope.attempts + 1,
            duration_ms=None if duration is None else duration * 1000,
            response=response,
            remote_id=remote_id,
        )
