"""The delivery check's rules (dispatch/monitoring/delivery_health.py) over a real spool.

The clock of the attempt record is the test's, so "the last few minutes" is checked at its
edges without waiting for them; the spool is a real one on disk, its index the real source
of "mail waits" and of the oldest due message. The end-to-end scenarios (a relay down, a
queue behind, over HTTPS) are in tests/web/test_health_delivery.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import attrs

from dispatch.monitoring.delivery_health import (
    FAILING_WINDOW_SECONDS,
    DeliverySources,
    RelayOutcomes,
    check_delivery,
    without_addresses,
)
from dispatch.spool import Spool
from dispatch.spool.testing import commit

REFUSED = "relay upstream: cannot connect to 127.0.0.1:2525: refused"


@attrs.define
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def sources(spool: Spool, clock: Clock, suspended: str | None = None) -> DeliverySources:
    return DeliverySources(
        RelayOutcomes(clock), lambda: {"upstream": suspended, "spare": None}, spool, clock
    )


async def test_a_relay_whose_attempts_all_failed_with_mail_waiting_is_failing(
    tmp_path: Path,
) -> None:
    spool = await Spool.open(tmp_path / "spool")
    clock = Clock()
    delivery = sources(spool, clock)
    waiting = await commit(spool)
    healthy = check_delivery(delivery, 900)
    delivery.outcomes.record("upstream", waiting.id, ["transient"], REFUSED)
    clock.now += 5
    failing = check_delivery(delivery, 900)
    assert not healthy.degraded
    assert healthy.relays["upstream"]["state"] == "ok"
    assert failing.degraded
    entry = failing.relays["upstream"]
    assert entry["state"] == "failing"
    assert entry["mailWaiting"] is True
    assert entry["failedAttempts"] == 1
    assert entry["lastAttemptSecondsAgo"] == 5
    assert entry["lastSuccessSecondsAgo"] is None
    assert "relay upstream: no attempt succeeded since start-up (1 failed)" in entry["reason"]
    assert entry["reason"].endswith(f"last error: {REFUSED}")
    assert failing.relays["spare"]["state"] == "ok"  # the other relay is not blamed
    assert failing.as_json()["error"] == entry["reason"]


async def test_a_success_within_the_window_keeps_it_ok_and_clears_the_failures(
    tmp_path: Path,
) -> None:
    spool = await Spool.open(tmp_path / "spool")
    clock = Clock()
    delivery = sources(spool, clock)
    waiting = await commit(spool)
    delivery.outcomes.record("upstream", "spl_other", ["delivered", "transient"], "")
    clock.now += FAILING_WINDOW_SECONDS - 1
    delivery.outcomes.record("upstream", waiting.id, ["transient"], REFUSED)
    flaky = check_delivery(delivery, 900)
    clock.now += 2  # the last success is now older than the window
    failing = check_delivery(delivery, 900)
    delivery.outcomes.record("upstream", "spl_other", ["permanent"], "")  # the upstream answered
    answered = check_delivery(delivery, 900)
    assert flaky.relays["upstream"]["state"] == "ok"
    assert failing.relays["upstream"]["state"] == "failing"
    reason = failing.relays["upstream"]["reason"]
    assert f"no attempt succeeded for {FAILING_WINDOW_SECONDS + 1:.0f} s" in reason
    assert answered.relays["upstream"]["state"] == "ok"
    assert answered.relays["upstream"]["failedAttempts"] == 0
    assert answered.relays["upstream"]["mailWaiting"] is False


async def test_failures_without_mail_waiting_do_not_degrade(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool")
    clock = Clock()
    delivery = sources(spool, clock)
    gone = await commit(spool)
    delivery.outcomes.record("upstream", gone.id, ["transient"], REFUSED)
    before = check_delivery(delivery, 900)
    await spool.delete(gone.id)  # delivered by another relay, or deleted by an operator
    after = check_delivery(delivery, 900)
    assert before.relays["upstream"]["state"] == "failing"
    assert after.relays["upstream"]["state"] == "ok"
    assert after.relays["upstream"]["mailWaiting"] is False
    assert after.relays["upstream"]["failedAttempts"] == 1  # the facts stay visible
    assert not after.degraded


async def test_a_suspended_relay_is_degraded_whatever_its_attempts(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool")
    why = "relay upstream: timed out waiting for the greeting of 127.0.0.1:2525"
    result = check_delivery(sources(spool, Clock(), suspended=why), 900)
    assert result.degraded
    assert result.relays["upstream"]["state"] == "suspended"
    assert result.relays["upstream"]["reason"] == f"relay upstream is suspended: {why}"


async def test_the_oldest_due_message_over_the_key_is_degraded(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool")
    delivery = sources(spool, Clock())
    empty = check_delivery(delivery, 900)
    await commit(spool, received_at=time.time() - 1000)  # due since it arrived
    await commit(spool)
    behind = check_delivery(delivery, 900)
    tolerant = check_delivery(delivery, 1200)
    assert empty.oldest_due_seconds is None
    assert not empty.degraded
    assert behind.oldest_due_seconds is not None
    assert 1000 <= behind.oldest_due_seconds < 1100
    assert behind.degraded
    assert "over health.queue_age_warning_seconds (900 s)" in behind.reasons[0]
    assert behind.as_json()["queueAgeWarningSeconds"] == 900
    assert not tolerant.degraded
    assert tolerant.as_json()["status"] == "ok"


async def test_a_message_waiting_for_its_retry_is_not_due(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool")
    old = await commit(spool, received_at=time.time() - 5000)
    [claimed] = await spool.claim_due(limit=1)
    later = claimed.after_attempt(next_attempt_at=time.time() + 600, error="451 try later")
    await spool.release(later)
    result = check_delivery(sources(spool, Clock()), 900)
    assert claimed.id == old.id
    assert result.oldest_due_seconds is None
    assert not result.degraded


async def test_relays_no_longer_configured_are_forgotten(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool")
    clock = Clock()
    delivery = sources(spool, clock)
    waiting = await commit(spool)
    delivery.outcomes.record("removed", waiting.id, ["transient"], REFUSED)
    result = check_delivery(delivery, 900)
    assert set(result.relays) == {"upstream", "spare"}
    assert delivery.outcomes.get("removed") is None
    assert not result.degraded


def test_error_texts_keep_no_address() -> None:
    reply = "451 4.2.2 <alice@example.com> mailbox full; bob@example.org: over quota"
    assert without_addresses(reply) == "451 4.2.2 <address> mailbox full; <address>: over quota"
    assert len(without_addresses("x" * 5000)) == 300
