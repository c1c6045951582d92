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

import attrs
import httpx
import pytest
import trio

from dispatch.webhooks.outbox import read_owed
from tests.conftest import free_port
from tests.delivery.harness import running_dispatch
from tests.support.config import base_config, smtp_relay
from tests.support.sink import Pki, StartSink
from tests.support.waiting import wait_until_async
from tests.system.faults import metric
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
                    "raw_body": call.body.decode(),  # the signed bytes, exactly
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
        ids = [
            await dispatch.submit("a@example.com", [to], MESSAGE)
            for to in ("ok@example.org", "reject@example.org", "later@example.org")
        ]

        def about_ours(receiver: Receiver) -> list[dict[str, Any]]:
            # A bounce (DSN) of the refused message is a message of its own, and its
            # "bounced" event is not what this test is about: neither is counted.
            return [
                document
                for document in (c.json() for c in receiver.calls)
                if document["message_id"] in ids and document["event"] != "bounced"
            ]

        await wait_until_async(lambda: len(about_ours(every)) == 3, what="three events")
        await wait_until_async(lambda: len(about_ours(failures)) == 1, what="one failure")
        await trio.sleep(0.3)  # nothing else arrives
    kinds = sorted(document["event"] for document in about_ours(every))
    assert kinds == ["deferred", "delivered", "failed"]
    assert {c.json()["event"] for c in failures.calls} == {"failed"}  # nothing else
    failed = next(c for c in failures.calls if c.json()["message_id"] == ids[1])
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


async def test_a_receiver_that_never_answers_2xx_is_given_up_and_counted(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    refusing = Receiver(default_status=500)
    receivers.append(refusing)
    port = free_port()
    config = base_config(
        tmp_path,
        monitoring={"address": f"127.0.0.1:{port}"},
        webhooks=[hook(refusing, give_up_after_seconds=0.6)],
    )
    async with (
        running_dispatch(tmp_path, config) as dispatch,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        await dispatch.submit("a@example.com", ["b@example.org"], MESSAGE)
        stats = dispatch.parts.stats
        await wait_until_async(lambda: stats.webhook_failed.value == 1, what="given up")
        recent = stats.webhook_activity.recent()
        variables = (await client.get("/debug/vars")).json()
        scraped = (await client.get("/metrics")).text
        page = await client.get("/debug/webhooks")
        text = (await client.get("/debug/webhooks?format=text")).text
        index = (await client.get("/debug/")).text
    assert recent[0].result == "gave up"
    assert recent[0].status == 500
    assert {c.result for c in recent[1:]} == {"retry"}
    assert len(refusing.calls) == len(recent) >= 3  # 0.1 s, 0.2 s, then the deadline
    assert stats.webhook_activity.outbox_depth == 0
    assert (tmp_path / "data" / "webhooks" / "outbox.jsonl").read_bytes() == b""
    retried = len(recent) - 1
    assert variables["dispatch/webhooks/queued"] == 1
    assert variables["dispatch/webhooks/sent"] == 0
    assert variables["dispatch/webhooks/retried"] == retried
    assert variables["dispatch/webhooks/failed"] == 1
    assert variables["dispatch/webhooks/outboxDepth"] == 0
    assert metric(scraped, "dispatch_webhook_queued_total") == 1
    assert metric(scraped, "dispatch_webhook_retried_total") == retried
    assert metric(scraped, "dispatch_webhook_failed_total") == 1
    assert metric(scraped, "dispatch_webhook_sent_total") == 0
    assert metric(scraped, "dispatch_webhook_outbox_depth") == 0
    assert page.status_code == 200
    assert "gave up" in page.text
    assert refusing.url in page.text
    assert 'href="webhooks"' in index
    assert f"gave up  delivered attempt {len(recent)}" in text


async def test_a_receiver_removed_by_a_reload_has_its_owed_calls_dropped(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    kept, removed = Receiver(), Receiver(default_status=500)
    receivers.extend((kept, removed))
    config = base_config(
        tmp_path,
        webhooks=[hook(kept), hook(removed, retry_first_seconds=0.2, retry_max_seconds=0.2)],
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        await dispatch.submit("a@example.com", ["b@example.org"], MESSAGE)
        await wait_until_async(lambda: len(removed.calls) >= 1 and len(kept.calls) == 1)
        live = dispatch.parts.settings
        live.current = attrs.evolve(live.current, webhooks=live.current.webhooks[:1])
        stats = dispatch.parts.stats
        await wait_until_async(lambda: stats.webhook_activity.outbox_depth == 0, what="dropped")
        assert stats.webhook_failed.value == 1
        calls = len(removed.calls)
        await trio.sleep(0.5)
    assert len(removed.calls) == calls  # no call after the reload


async def test_calls_cut_short_by_a_stop_are_made_by_the_next_start(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    receiver = Receiver(hang=True)
    receivers.append(receiver)
    config = base_config(tmp_path, webhooks=[hook(receiver)])
    async with running_dispatch(tmp_path, config) as dispatch:
        ids = [await dispatch.submit("a@example.com", ["b@example.org"], MESSAGE) for _ in "abc"]
        await wait_until_async(lambda: len(receiver.calls) == 3, what="three calls hanging")
    # The stop gave them STOP_GRACE_SECONDS, then cut them short: still owed, on disk.
    owed = read_owed(tmp_path / "data" / "webhooks" / "outbox.jsonl").owed
    assert sorted(call.message_id or "" for call in owed.values()) == sorted(ids)
    receiver.hang = False
    async with running_dispatch(tmp_path, config) as dispatch:
        await wait_until_async(lambda: len(receiver.acknowledged) == 3, what="made again")
        assert dispatch.parts.stats.webhook_activity.outbox_depth == 0
    assert sorted(c.json()["message_id"] for c in receiver.acknowledged) == sorted(ids)
    assert {c.headers["dispatch-attempt"] for c in receiver.acknowledged} == {"1"}  # new run


async def test_a_password_in_the_url_is_sent_as_basic_auth_and_never_shown(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    receiver = Receiver(statuses=[503])
    receivers.append(receiver)
    url = receiver.url.replace("http://", "http://hooks:pa55word@")
    port = free_port()
    config = base_config(
        tmp_path, monitoring={"address": f"127.0.0.1:{port}"}, webhooks=[hook(receiver, url=url)]
    )
    async with (
        running_dispatch(tmp_path, config) as dispatch,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        await dispatch.submit("a@example.com", ["b@example.org"], MESSAGE)
        await wait_until_async(lambda: len(receiver.acknowledged) == 1, what="sent on retry")
        page = (await client.get("/debug/webhooks")).text
        recent = dispatch.parts.stats.webhook_activity.recent()
    assert receiver.calls[0].headers["authorization"] == "Basic aG9va3M6cGE1NXdvcmQ="
    assert all("pa55word" not in call.url for call in recent)
    assert recent[0].url == url.replace("pa55word", "<redacted>")
    assert "pa55word" not in page
    assert "hooks:&lt;redacted&gt;@127.0.0.1" in page


async def test_an_https_receiver_is_verified_against_its_ca_file(
    tmp_path: Path, receivers: list[Receiver], pki: Pki
) -> None:
    receiver = Receiver(tls=pki.server)
    receivers.append(receiver)
    untrusted = receiver.url.replace("/hooks", "/untrusted")  # same server, no ca_file
    config = base_config(
        tmp_path,
        webhooks=[
            hook(receiver, ca_file=str(pki.ca_file)),
            hook(receiver, url=untrusted, give_up_after_seconds=60),
        ],
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        await dispatch.submit("a@example.com", ["b@example.org"], MESSAGE)
        await wait_until_async(lambda: len(receiver.acknowledged) == 1, what="the https call")
        activity = dispatch.parts.stats.webhook_activity
        await wait_until_async(
            lambda: any(c.url == untrusted for c in activity.recent()), what="the refused one"
        )
        refused = next(c for c in activity.recent() if c.url == untrusted)
    assert receiver.url.startswith("https://")
    assert receiver.acknowledged[0].signature_verifies(SECRET)
    assert len(receiver.calls) == 1  # the untrusted one never got past the handshake
    assert refused.result == "retry"
    assert refused.status is None
    assert "CERTIFICATE_VERIFY_FAILED" in (refused.error or ""), refused.error
