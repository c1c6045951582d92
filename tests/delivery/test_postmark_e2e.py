"""SMTP in, the ``postmark`` relay out: the real composition root delivering to a strict
Postmark peer on loopback; Postmark's MessageID is the remote id in the message log."""

from __future__ import annotations

import base64
from pathlib import Path

import trio

from tests.delivery.harness import running_dispatch
from tests.relays.postmark_peer import postmark_peer
from tests.relays.test_postmark_relay import MESSAGE
from tests.support.config import base_config
from tests.support.waiting import wait_until_async


async def test_smtp_to_postmark_records_its_message_id_and_keeps_the_content(
    tmp_path: Path,
) -> None:
    with postmark_peer() as peer:
        relay = {
            "name": "pm",
            "kind": "postmark",
            "api_key": peer.token,
            "base_url": peer.base_url,
        }
        config = base_config(tmp_path, relays=[relay], default_relay="pm")
        async with running_dispatch(tmp_path, config) as dispatch:
            message_id = await dispatch.submit(
                "zoe@example.test", ["ana@example.net", "secret@example.net"], MESSAGE
            )
            await wait_until_async(lambda: len(peer.accepted) == 1)
            await wait_until_async(lambda: dispatch.parts.spool.counts().total == 0)
            history = await dispatch.history(message_id)
    [(remote_id, body)] = peer.accepted
    assert (body["To"], body["Bcc"]) == ("Ana <ana@example.net>", "secret@example.net")
    assert "Cc" not in body  # bo@ is in the Cc header but not in this envelope
    assert body["Subject"] == "Grüße — ☃"
    assert body["TextBody"] == "Ünïcödé body, 8-bit: ÿ"
    # Dispatch's Received trace field (RFC 5321 §4.4) travels as a header like any other.
    assert body["Headers"][0]["Name"] == "Received"
    blob = body["Attachments"][1]
    assert base64.b64decode(blob["Content"]) == bytes([0, 1, 2, 3, 254, 255])
    delivered = [e for e in history if e.event == "delivered"]
    assert [e.remote_id for e in delivered] == [remote_id]
    await trio.lowlevel.checkpoint()
