"""The ``bounced`` webhook event end to end: smtplib → Dispatch → a sink that refuses two of
three recipients with 550 → one DSN queued to the sender → one ``bounced`` call about the
original message, to a loopback receiver (``receiver.py``), signed like the others.

The DSN goes to a second sink (the route for ``sender.test``), so its own ``delivered`` event
reaches the receiver too and names the DSN's spool id the ``bounced`` call gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from dispatch.spool import MessageState
from tests.conftest import free_port
from tests.delivery.harness import running_dispatch
from tests.delivery.test_bounces_e2e import submit
from tests.support.config import base_config, smtp_relay
from tests.support.sink import StartSink
from tests.support.waiting import wait_until_async
from tests.webhooks.receiver import Receiver

SECRET = "whsec-test-0123456789"
SENDER = "app@sender.test"
MESSAGE = b"From: app@sender.test\r\nSubject: invoice 42\r\n\r\nHello.\r\n"
SETTLE = 1.0  # seconds to wait for a call that must not come


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        receiver.stop()


def documents(receiver: Receiver, kind: str) -> list[dict[str, Any]]:
    return [d for d in (call.json() for call in receiver.calls) if d["event"] == kind]


async def test_a_refusal_posts_one_bounced_event_about_the_original(
    tmp_path: Path, receivers: list[Receiver], start_sink: StartSink
) -> None:
    every, bounces_only = Receiver(), Receiver()
    receivers.extend((every, bounces_only))
    upstream, returns = start_sink(), start_sink()
    hook = {"secret": SECRET, "retry_first_seconds": 0.1}
    config = base_config(
        tmp_path,
        relays=[smtp_relay("upstream", upstream.port), smtp_relay("returns", returns.port)],
        routes=[{"recipient_domain": "sender.test", "relay": "returns"}],
        default_relay="upstream",
        webhooks=[
            {"url": every.url, **hook},
            {"url": bounces_only.url, "events": ["bounced"], **hook},
        ],
    )
    recipients = ["reject-1@y.test", "fine@y.test", "reject-2@y.test"]
    async with running_dispatch(tmp_path, config) as dispatch:
        message_id = await dispatch.submit(SENDER, recipients, MESSAGE)
        await wait_until_async(lambda: len(returns.messages) == 1, what="the DSN delivered")
        await wait_until_async(
            lambda: len(documents(every, "bounced")) == 1 and len(bounces_only.calls) == 1,
            what="one bounced call to each receiver",
        )
        await wait_until_async(
            lambda: any(d["sender"] == "" for d in documents(every, "delivered")),
            what="the DSN's own delivered call",
        )
        await trio.sleep(SETTLE)
        history = await dispatch.history(message_id)

    assert len(bounces_only.calls) == 1  # exactly one, and nothing but bounced
    call = bounces_only.calls[0]
    assert call.signature_verifies(SECRET)
    assert not call.signature_verifies("another secret")
    assert call.headers["dispatch-event"] == "bounced"
    bounced = call.json()
    assert documents(every, "bounced") == [bounced]  # the same event (same id) to both
    assert call.headers["dispatch-event-id"] == bounced["id"]
    assert bounced["event"] == "bounced"
    assert bounced["log_event"] is None
    assert bounced["message_id"] == message_id
    assert bounced["sender"] == SENDER
    assert bounced["recipients"] == ["reject-1@y.test", "reject-2@y.test"]
    assert bounced["response"].startswith("550 5.1.1")
    assert bounced["relay"] == "upstream"
    assert bounced["attempt"] == 1
    assert bounced["source"] == "smtp"

    # The DSN is a message of its own: its delivered call names the id the bounced one gave.
    (dsn_delivered,) = [d for d in documents(every, "delivered") if d["sender"] == ""]
    assert bounced["dsn_id"] == dsn_delivered["message_id"] != message_id
    assert dsn_delivered["recipients"] == [SENDER]

    # The original's own failed event is still posted; the log has no bounced row.
    (failed,) = [d for d in documents(every, "failed") if d["message_id"] == message_id]
    assert failed["recipients"] == ["reject-1@y.test", "reject-2@y.test"]
    assert failed["id"] != bounced["id"]
    assert {e.event for e in history} == {"received", "delivered", "failed"}
    assert bounced["id"] not in {e.event_id for e in history}


async def test_retries_exhausted_bounce_once_and_notify_never_not_at_all(
    tmp_path: Path, receivers: list[Receiver], start_sink: StartSink
) -> None:
    receiver = Receiver()
    receivers.append(receiver)
    returns = start_sink()
    config = base_config(
        tmp_path,
        relays=[smtp_relay("upstream", free_port()), smtp_relay("returns", returns.port)],
        routes=[{"recipient_domain": "sender.test", "relay": "returns"}],
        default_relay="upstream",  # down: every attempt is refused
        spool={"retry_delays_seconds": [0.2], "max_retries": 1},
        webhooks=[{"url": receiver.url, "secret": SECRET, "events": ["bounced"]}],
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        quiet = await submit(
            dispatch, SENDER, ["quiet@y.test"], MESSAGE, rcpt_options=("NOTIFY=NEVER",)
        )
        loud = await submit(dispatch, SENDER, ["loud@y.test"], MESSAGE)
        spool = dispatch.parts.spool
        await wait_until_async(
            lambda: all(spool.get(i).state is MessageState.FAILED for i in (quiet, loud))
        )
        await wait_until_async(lambda: len(receiver.calls) == 1, what="one bounced call")
        await trio.sleep(SETTLE)
    assert len(receiver.calls) == 1  # none for the recipient that said NOTIFY=NEVER
    bounced = receiver.calls[0].json()
    assert receiver.calls[0].signature_verifies(SECRET)
    assert bounced["message_id"] == loud
    assert bounced["recipients"] == ["loud@y.test"]
    assert bounced["attempt"] == 2
    assert bounced["relay"] == "upstream"  # from the last deferral
    assert "refused" in bounced["response"]  # why the upstream could not be reached
