"""The ``delivery`` check of ``/health``: is mail leaving? Computed in memory, never blocking.

Three findings make the check, and with it ``/health``, ``degraded``:

- **a relay is suspended**: its upstream timed out, and deliveries through it fail fast until
  a trial connection works (:mod:`dispatch.relays.suspension`);
- **a relay is failing**: its latest attempt failed, none succeeded within the last
  :data:`FAILING_WINDOW_SECONDS`, and a message from those failed attempts still waits in
  the spool. An attempt *succeeded* when the upstream decided on at least one recipient
  (delivered, or refused permanently: the upstream answered); it *failed* when every
  recipient was left for a retry (a refused connection, a timeout, a 4xx to all of them).
  The window is anchored at the last success, not at the last attempt, so a relay that is
  down stays failing between retries hours apart, and a flaky one that still gets mail
  through now and then does not flap;
- **the queue is behind**: the oldest due message (the incoming message whose attempt time
  came first and that no delivery worker has taken yet) has waited longer than
  ``health.queue_age_warning_seconds``: delivery is not keeping up, or is stuck. For a new
  message that is its age; for a retried one, the time since its retry came due.

The attempt outcomes come from :class:`RelayOutcomes`, which the delivery attempt feeds
(``dispatch.delivery.attempt``); suspensions from the relay set; the oldest due time from
the spool's in-memory index (O(1) amortised). No database, no directory listing, no thread.

Texts shown here are operational: an upstream's reply could quote a recipient, so anything
shaped like an address is replaced before it is kept (``/health`` identifies no person).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal

import attrs

from dispatch.spool import MessageState, Spool, UnknownMessageError

FAILING_WINDOW_SECONDS: Final = 300.0
""""The last few minutes": a relay with no success for this long, whose latest attempt failed
while mail waits, is failing. Long enough that a flaky relay getting some mail through is
not, short enough that an operator hears of a dead one within a scrape interval or two."""

MAX_WAITING_IDS: Final = 64
"""Messages of failed attempts remembered per relay (bounded memory); any one still queued
is enough to say mail waits for the relay."""

MAX_DETAIL: Final = 300  # characters of an error text kept: enough to read the cause
_ADDRESS: Final = re.compile(r"<?[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+>?")

RelayState = Literal["ok", "failing", "suspended"]


def without_addresses(text: str) -> str:
    """``text`` with anything shaped like a mail address replaced, and bounded in length."""
    return _ADDRESS.sub("<address>", text)[:MAX_DETAIL]


@attrs.define
class RelayRecord:
    """How one relay's recent attempts went; times are ``time.monotonic()``."""

    last_attempt_at: float | None = None
    last_success_at: float | None = None
    last_error: str = ""
    failed_attempts: int = 0  # since the last success
    waiting: deque[str] = attrs.Factory(lambda: deque(maxlen=MAX_WAITING_IDS))


class RelayOutcomes:
    """Per relay name, the outcome of its recent attempts: fed by the delivery attempt after
    each relay's answer, read by ``/health``.

    Owns one small :class:`RelayRecord` per relay name (the ids of at most
    :data:`MAX_WAITING_IDS` messages each). Plain state on the Trio thread, no task: it
    neither starts nor stops, and recording never blocks or raises.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._relays: dict[str, RelayRecord] = {}

    def record(self, relay: str, message_id: str, outcomes: Iterable[str], detail: str) -> None:
        """One attempt of ``message_id`` through ``relay`` ended with these per-recipient
        ``outcomes`` (``delivered``, ``permanent``, ``transient``); ``detail`` says why
        when none was decided (the reply or connection error)."""
        now = self._clock()
        record = self._relays.setdefault(relay, RelayRecord())
        record.last_attempt_at = now
        if any(outcome != "transient" for outcome in outcomes):
            record.last_success_at = now
            record.failed_attempts = 0
            record.waiting.clear()
            return
        record.failed_attempts += 1
        record.last_error = without_addresses(detail)
        if message_id not in record.waiting:
            record.waiting.append(message_id)

    def get(self, relay: str) -> RelayRecord | None:
        return self._relays.get(relay)

    def forget_others(self, relays: Iterable[str]) -> None:
        """Drop the records of relays no longer configured (a reload removed them)."""
        keep = set(relays)
        for name in [name for name in self._relays if name not in keep]:
            del self._relays[name]


@attrs.frozen
class DeliverySources:
    """What the delivery check reads: the attempt outcomes, the relays' suspensions (every
    configured relay by name → why it is suspended, or None), and the spool's index."""

    outcomes: RelayOutcomes
    suspensions: Callable[[], Mapping[str, str | None]]
    spool: Spool
    clock: Callable[[], float] = time.monotonic


def _queued(spool: Spool, message_id: str) -> bool:
    """Whether a message still waits for delivery (incoming or being attempted)."""
    try:
        return spool.get(message_id).state is not MessageState.FAILED
    except UnknownMessageError:
        return False


def _ago(now: float, at: float | None) -> float | None:
    return None if at is None else round(max(0.0, now - at), 3)


def relay_report(
    name: str, suspended: str | None, record: RelayRecord | None, now: float, spool: Spool
) -> dict[str, Any]:
    """One relay's entry in the check: its state, why, and the facts behind it."""
    waiting = False
    if record is not None:
        while record.waiting and not _queued(spool, record.waiting[0]):
            record.waiting.popleft()  # delivered, failed or deleted since: no longer waits
        waiting = bool(record.waiting)
    state: RelayState = "ok"
    reason = None
    if suspended is not None:
        state, reason = "suspended", f"relay {name} is suspended: {without_addresses(suspended)}"
    elif (
        record is not None
        and waiting
        and record.failed_attempts
        and (
            record.last_success_at is None or now - record.last_success_at > FAILING_WINDOW_SECONDS
        )
    ):
        since = (
            "since start-up"
            if record.last_success_at is None
            else (f"for {now - record.last_success_at:.0f} s")
        )
        state = "failing"
        reason = (
            f"relay {name}: no attempt succeeded {since} ({record.failed_attempts} failed) "
            f"while mail waits for it; last error: {record.last_error}"
        )
    return {
        "state": state,
        "reason": reason,
        "lastAttemptSecondsAgo": _ago(now, record.last_attempt_at if record else None),
        "lastSuccessSecondsAgo": _ago(now, record.last_success_at if record else None),
        "failedAttempts": record.failed_attempts if record else 0,
        "mailWaiting": waiting,
    }


@attrs.frozen
class DeliveryCheck:
    """The check's finding: ``reasons`` empty means ``ok``."""

    reasons: tuple[str, ...]
    relays: dict[str, dict[str, Any]]
    oldest_due_seconds: float | None
    warning_seconds: float
    duration_ms: float

    @property
    def degraded(self) -> bool:
        return bool(self.reasons)

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": "degraded" if self.reasons else "ok",
            "durationMs": round(self.duration_ms, 2),
        }
        if self.reasons:
            data["error"] = "; ".join(self.reasons)
        data["relays"] = self.relays
        data["oldestDueSeconds"] = self.oldest_due_seconds
        data["queueAgeWarningSeconds"] = self.warning_seconds
        return data


def check_delivery(sources: DeliverySources, warning_seconds: float) -> DeliveryCheck:
    """Evaluate the delivery check now (see the module docstring); O(relays) plus the pruning
    of messages that no longer wait."""
    started = time.perf_counter()
    now = sources.clock()
    suspensions = sources.suspensions()
    sources.outcomes.forget_others(suspensions)
    relays = {
        name: relay_report(name, why, sources.outcomes.get(name), now, sources.spool)
        for name, why in suspensions.items()
    }
    reasons = [entry["reason"] for entry in relays.values() if entry["reason"]]
    oldest: float | None = None
    due_at = sources.spool.next_due_time()  # wall-clock time, like the envelopes
    wall = time.time()
    if due_at is not None and due_at <= wall:
        oldest = round(wall - due_at, 3)
        if oldest > warning_seconds:
            reasons.append(
                f"the oldest due message has waited {oldest:.0f} s for a delivery worker, "
                f"over health.queue_age_warning_seconds ({warning_seconds:g} s)"
            )
    duration = (time.perf_counter() - started) * 1000
    return DeliveryCheck(tuple(reasons), relays, oldest, warning_seconds, duration)
