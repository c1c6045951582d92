"""Webhooks end to end: smtplib → Dispatch (in-process) → delivery → a loopback receiver.

The receiver is a real HTTP server (``receiver.py``); the daemon is the real composition root
(``tests/delivery/harness.py``) with its "webhooks" component.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.delivery.harness import running_dispatch
from tests.support.config import base_config, smtp_relay
from tests.support.sink import StartSink
from tests.support.waiting import wait_until_async
from tests.webhooks.receiver import Receiver

SECRET = "whsec-test-0123456789"
MESSAGE = b"From: a@example.com\r\nSubject: hello\r\n\r\nHello.\r\n"


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        receiver.stop()


def hook(receiver: Receiver, **keys: Any) -> dict[str, Any]:
    return {"url": receiver.url, "secret": SECRET, "retry_first_seconds": 0.1, **keys}


async def test_a_delivery_is_posted_once_signed_with_every_field(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    receiver = Receiver()
    receivers.append(receiver)
    config = base_config(tmp_path, webhooks=[hook(receiver)])
    async with running_dispatch(tmp_path, config) as dispatch:
        message_id = await dispatch.submit("a@example.com", ["b@example.org"], MESSAGE)
        await wait_until_async(lambda: len(receiver.calls) == 1, what="one webhook call")
        await wait_until_async(lambda: dispatch.parts.stats.webhook_sent.value == 1)
        history = await dispatch.history(message_id)
        activity = dispatch.parts.stats.webhook_activity
        assert activity.outbox_depth == 0
        assert [call.result for call in activity.recent()] == ["sent"]
    call = receiver.calls[0]
    assert call.signature_verifies(SECRET)
    assert not call.signature_verifies("another secret")
    document = call.json()
    delivered = next(e for e in history if e.event == "delivered")
    assert document["id"] == delivered.event_id == call.headers["dispatch-event-id"]
    assert document["event"] == "delivered" == call.headers["dispatch-event"]
    assert document["message_id"] == message_id
    assert document["recipients"] == ["b@example.org"]
    assert document["sender"] == "a@example.com"
    assert document["relay"] == "local"
    assert document["attempt"] == 1
    assert call.headers["dispatch-attempt"] == "1"
    assert document["source"] == "smtp"
    assert document["occurred_at"].endswith("Z")
    assert call.headers["content-type"] == "application/json"
    assert (tmp_path / "data" / "webhooks" / "outbox.jsonl").stat().st_size == 0
    # docs/webhooks.md shows a call this test produced (set DISPATCH_WEBHOOK_EXAMPLE=PATH).
    if example := os.environ.get("DISPATCH_WEBHOOK_EXAMPLE"):
        await trio.Path(example).write_text(
            json.dumps(
                {
                    "headers": {k: v for k, v in call.headers.items() if k.startswith("dispatch-")},
                    "body": document,
                },
                indent=2,
            )
            + "\n"
        )


async def test_500s_are_retried_with_back_off_until_answered(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    receiver = Receiver(statuses=[500, 500, 503])
    receivers.append(receiver)
    config = base_config(tmp_path, webhooks=[hook(receiver)])
    async with running_dispatch(tmp_path, config) as dispatch:
        await dispatch.submit("a@example.com", ["b@example.org"], MESSAGE)
        stats = dispatch.parts.stats
        await wait_until_async(lambda: stats.webhook_sent.value == 1, what="sent after 500s")
        assert stats.webhook_retried.value == 3
        assert stats.webhook_failed.value == 0
        recent = dispatch.parts.stats.webhook_activity.recent()
    assert [c.result for c in recent] == ["sent", "retry", "retry", "retry"]
    assert [c.status for c in recent] == [200, 503, 500, 500]
    assert [c.attempt for c in recent] == [4, 3, 2, 1]
    # The same body (same event id) every time, each attempt signed anew.
    assert len({c.body for c in receiver.calls}) == 1
    assert [c.headers["dispatch-attempt"] for c in receiver.calls] == ["1", "2", "3", "4"]
    assert all(c.signature_verifies(SECRET) for c in receiver.calls)
    gaps = [b.at - a.at for a, b in zip(receiver.calls, receiver.calls[1:], strict=False)]
    # doubling from retry_first_seconds (0.1 s)
    assert all(gap >= low - 0.01 for gap, low in zip(gaps, (0.1, 0.2, 0.4), strict=True)), gaps


async def test_a_receiver_gets_only_the_events_it_listens_to(
    tmp_path: Path, receivers: list[Receiver], start_sink: StartSink
) -> None:
    every, failures = Receiver(), Receiver()
    receivers.extend((every, failures))
    sink = start_sink()
    config = base_config(
        tmp_path,
        relays=[smtp_relay("upstream", sink.port)],
        spool={"retry_delays_seconds": [30.0], "max_retries": 3},
        webhooks=[hook(every), hook(failures, events=["failed"])],
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        await dispatch.submit("a@example.com", ["ok@example.org"], MESSAGE)
        await dispatch.submit("a@example.com", ["reject@example.org"], MESSAGE)
        await dispatch.submit("a@example.com", ["later@example.org"], MESSAGE)
        await wait_until_async(lambda: len(every.calls) == 3, what="three events")
        await wait_until_async(lambda: len(failures.calls) == 1, what="one failure")
        await trio.sleep(0.3)  # nothing else arrives
    kinds = sorted(c.json()["event"] for c in every.calls)
    assert kinds == ["deferred", "delivered", "failed"]
    (failed,) = failures.calls
    assert failed.json()["event"] == "failed"
    assert failed.json()["recipients"] == ["reject@example.org"]
    assert failed.json()["response"].startswith("550")
    assert failed.signature_verifies(SECRET)
    deferred = next(c.json() for c in every.calls if c.json()["event"] == "deferred")
    assert deferred["log_event"] == "retried"
    assert deferred["recipients"] == ["later@example.org"]
    assert "451" in deferred["response"]


async def test_a_hanging_receiver_does_not_slow_delivery(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    hanging = Receiver(hang=True)
    receivers.append(hanging)
    config = base_config(tmp_path, webhooks=[hook(hanging, timeout_seconds=60, max_concurrency=2)])
    async with running_dispatch(tmp_path, config) as dispatch:
        started = trio.current_time()
        for _ in range(10):
            await dispatch.submit("a@example.com", ["b@example.org"], MESSAGE)
        await wait_until_async(
            lambda: dispatch.parts.spool.counts().total == 0, what="all ten delivered"
        )
        elapsed = trio.current_time() - started
        activity = dispatch.parts.stats.webhook_activity
        await wait_until_async(lambda: len(hanging.calls) == 2, what="two calls hanging")
        assert activity.outbox_depth == 10  # owed, none answered
        assert dispatch.parts.stats.webhook_queued.value == 10
    # Ten local deliveries take well under a second here; a blocked delivery path would have
    # waited on the first call's 60 s timeout.
    assert elapsed < 10, elapsed
    assert len(hanging.calls) == 2  # max_concurrency: the other eight wait their turn
