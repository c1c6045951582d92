"""SMTP in, the ``mailgun`` relay out: the real composition root delivering to a strict
Mailgun peer on loopback; Mailgun's id is the remote id in the message log."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.delivery.harness import running_dispatch
from tests.relays.mailgun_peer import mailgun_peer
from tests.relays.test_mailgun_relay import MESSAGE
from tests.support.config import base_config
from tests.support.waiting import wait_until_async


async def test_smtp_to_mailgun_records_mailguns_id_and_keeps_the_bytes(tmp_path: Path) -> None:
    with mailgun_peer() as peer:
        relay = {
            "name": "mg",
            "kind": "mailgun",
            "api_key": peer.key,
            "domain": peer.domain,
            "base_url": peer.base_url,
        }
        config = base_config(tmp_path, relays=[relay], default_relay="mg")
        async with running_dispatch(tmp_path, config) as dispatch:
            message_id = await dispatch.submit(
                "zoe@example.test", ["ana@example.net", "bo@example.net"], MESSAGE
            )
            await wait_until_async(lambda: len(peer.accepted) == 1)
            await wait_until_async(lambda: dispatch.parts.spool.counts().total == 0)
            history = await dispatch.history(message_id)
    [accepted] = peer.accepted
    assert accepted.to == ["ana@example.net", "bo@example.net"]
    # Dispatch adds its Received trace field on top (RFC 5321 §4.4); the rest is as sent.
    assert accepted.message.endswith(MESSAGE)
    assert accepted.message[: -len(MESSAGE)].startswith(b"Received: ")
    delivered = [e for e in history if e.event == "delivered"]
    assert [e.remote_id for e in delivered] == [accepted.id]
    await trio.lowlevel.checkpoint()
