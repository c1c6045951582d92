"""Delivery end to end: smtplib → Dispatch → spool → relays → a real SMTP sink."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.lowlevel

from dispatch.spool import MessageState
from tests.conftest import free_port
from tests.delivery.harness import running_dispatch
from tests.support.config import base_config, smtp_relay
from tests.support.sink import Pki, StartSink
from tests.support.waiting import wait_until_async

MESSAGE = b"From: a@example.com\r\nSubject: %s\r\n\r\nHello.\r\n.leading dot\r\n"


async def test_messages_arrive_byte_identical_once_over_one_reused_tls_connection(
    tmp_path: Path, start_sink: StartSink, pki: Pki
) -> None:
    sink = start_sink(tls="starttls", users={"relay": "relay-secret"})
    relay = smtp_relay(
        "primary",
        sink.port,
        tls="starttls",
        ca_file=str(pki.ca_file),
        username="relay",
        password="relay-secret",
    )
    config = base_config(tmp_path, relays=[relay], spool={"worker_count": 1})
    async with running_dispatch(tmp_path, config) as dispatch:
        bodies = [MESSAGE % str(n).encode() for n in range(5)]
        ids = [await dispatch.submit("a@example.com", ["b@example.org"], b) for b in bodies]
        await wait_until_async(lambda: len(sink.messages) == 5)
        await wait_until_async(lambda: dispatch.parts.spool.counts().total == 0)
        history = await dispatch.history(ids[0])
    for body, received in zip(bodies, sink.messages, strict=True):
        assert received.tls
        head, _, rest = received.content.partition(b"From: a@example.com")
        assert head.startswith(b"Received: from ")
        assert head.count(b"Received:") == 1
        assert b"From: a@example.com" + rest == body
    assert sink.connections == 1  # one connection reused for all five
    assert [e.event for e in history] == ["received", "delivered"]
    assert history[1].relay == "primary"
    assert history[1].route == "default"
    assert history[1].duration_ms is not None


async def test_upstream_down_then_up_is_retried_then_delivered(
    tmp_path: Path, start_sink: StartSink
) -> None:
    port = free_port()  # nothing listens here yet
    config = base_config(
        tmp_path,
        relays=[smtp_relay("up", port)],
        spool={"retry_delays_seconds": [0.3], "max_retries": 20},
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        message_id = await dispatch.submit("a@x.test", ["b@y.test"], MESSAGE % b"retry")
        spool = dispatch.parts.spool
        await wait_until_async(lambda: spool.get(message_id).envelope.attempts >= 2)
        entry = spool.get(message_id)
        assert "refused" in (entry.envelope.last_error or "")
        sink = start_sink(port=port)
        await wait_until_async(lambda: len(sink.messages) == 1)
        await wait_until_async(lambda: spool.counts().total == 0)
        events = [e.event for e in await dispatch.history(message_id)]
    assert events[0] == "received"
    assert events.count("retried") >= 2
    assert events[-1] == "delivered"


async def test_451_then_250(tmp_path: Path, start_sink: StartSink) -> None:
    sink = start_sink()
    sink.handler.fail_data = 1
    config = base_config(
        tmp_path, relays=[smtp_relay("s", sink.port)], spool={"retry_delays_seconds": [0.2]}
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        message_id = await dispatch.submit("a@x.test", ["b@y.test"], MESSAGE % b"451")
        await wait_until_async(lambda: len(sink.messages) == 1)
        await wait_until_async(lambda: dispatch.parts.spool.counts().total == 0)
        events = [e.event for e in await dispatch.history(message_id)]
    assert events == ["received", "retried", "delivered"]


async def test_permanent_refusals_fail_only_the_refused_recipient(
    tmp_path: Path, start_sink: StartSink
) -> None:
    sink = start_sink()
    config = base_config(tmp_path, relays=[smtp_relay("s", sink.port)])
    async with running_dispatch(tmp_path, config) as dispatch:
        message_id = await dispatch.submit(
            "a@x.test", ["reject-me@y.test", "fine@y.test"], MESSAGE % b"mixed"
        )
        spool = dispatch.parts.spool
        await wait_until_async(lambda: spool.counts().failed == 1)
        envelope = spool.get(message_id).envelope
        history = await dispatch.history(message_id)
    # The sender's bounce (a DSN from <>, tests/delivery/test_bounces_e2e.py) may follow.
    sent = [m.rcpt_tos for m in sink.messages if m.mail_from not in ("", "<>")]
    assert sent == [("fine@y.test",)]
    results = envelope.recipient_results
    assert results["fine@y.test"].status == "delivered"
    assert results["reject-me@y.test"].status == "failed"
    assert results["reject-me@y.test"].response.startswith("550")
    failed = [e for e in history if e.event == "failed"]
    assert failed[0].recipients == ("reject-me@y.test",)
    assert failed[0].relay == "s"
    # A retry from the operator tries only the failed recipient again.
    assert envelope.pending_recipients == ()


async def test_failover_to_the_second_relay_and_split_by_domain(
    tmp_path: Path, start_sink: StartSink
) -> None:
    sink = start_sink()
    relays = [
        smtp_relay("down", free_port()),
        smtp_relay("sink", sink.port),
        {"name": "local", "kind": "local"},
    ]
    routes = [{"recipient_domain": "external.test", "relay": ["down", "sink"]}]
    config = base_config(tmp_path, relays=relays, routes=routes, default_relay="local")
    async with running_dispatch(tmp_path, config) as dispatch:
        message_id = await dispatch.submit(
            "a@x.test", ["one@external.test", "two@internal.test"], MESSAGE % b"split"
        )
        await wait_until_async(lambda: dispatch.parts.spool.counts().total == 0)
        history = await dispatch.history(message_id)
    assert [m.rcpt_tos for m in sink.messages] == [("one@external.test",)]
    assert (tmp_path / "spool" / "captured" / f"{message_id}.eml").exists()
    delivered = {e.relay: e for e in history if e.event == "delivered"}
    assert set(delivered) == {"sink", "local"}
    assert delivered["sink"].route == "routes[0]"
    assert delivered["local"].recipients == ("two@internal.test",)


async def test_retries_exhausted_go_to_failed(tmp_path: Path) -> None:
    config = base_config(
        tmp_path,
        relays=[smtp_relay("down", free_port())],
        spool={"retry_delays_seconds": [0.05], "max_retries": 2},
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        message_id = await dispatch.submit("a@x.test", ["b@y.test"], MESSAGE % b"gives up")
        spool = dispatch.parts.spool
        await wait_until_async(lambda: spool.get(message_id).state is MessageState.FAILED)
        envelope = spool.get(message_id).envelope
        events = [e.event for e in await dispatch.history(message_id)]
    assert envelope.attempts == 3  # the first attempt and two retries
    assert (envelope.last_error or "").startswith("retries exhausted")
    assert events == ["received", "retried", "retried", "failed"]


async def test_mail_flows_while_the_database_file_is_deleted(
    tmp_path: Path, start_sink: StartSink
) -> None:
    sink = start_sink()
    config = base_config(tmp_path, relays=[smtp_relay("s", sink.port)])
    async with running_dispatch(tmp_path, config) as dispatch:
        first = await dispatch.submit("a@x.test", ["b@y.test"], MESSAGE % b"before")
        await dispatch.parts.store.log.wait_until_written()
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / "data" / f"dispatch.db{suffix}").unlink(missing_ok=True)
        later = [
            await dispatch.submit("a@x.test", ["b@y.test"], MESSAGE % b"after") for _ in range(3)
        ]
        await wait_until_async(lambda: len(sink.messages) == 4)
        for message_id in later:
            events = [e.event for e in await dispatch.history(message_id)]
            assert events == ["received", "delivered"]
    assert first not in later
    await trio.lowlevel.checkpoint()


async def test_a_relay_that_cannot_be_built_keeps_mail_waiting_with_the_reason(
    tmp_path: Path,
) -> None:
    relays = [{"name": "pm", "kind": "postmark", "api_key": "token", "message_stream": ""}]
    config = base_config(
        tmp_path, relays=relays, spool={"retry_delays_seconds": [60], "max_retries": 5}
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        message_id = await dispatch.submit("a@x.test", ["b@y.test"], MESSAGE % b"waits")
        spool = dispatch.parts.spool
        await wait_until_async(lambda: spool.get(message_id).envelope.attempts == 1)
        envelope = spool.get(message_id).envelope
    assert spool.get(message_id).state is MessageState.INCOMING
    assert "postmark needs message_stream" in (envelope.last_error or "")
