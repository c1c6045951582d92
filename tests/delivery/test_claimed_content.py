"""A small message is read with its claim and sent from those bytes; a large one is streamed.

Real spool, real smtp relay, real aiosmtpd sink. :meth:`Spool.claim_due` with ``read_bytes``
reads every claimed message of at most that many bytes in the claim's thread hop; the
request carries the bytes (``DeliveryRequest.content``) and the SMTP session sends them
without opening the file. The proof that the file is not opened: it is replaced (or removed)
after the claim, and the sink still gets the claimed bytes. A larger message has no content
and streams from the file block by block. DKIM signs the bytes that are sent.
"""

from __future__ import annotations

from pathlib import Path

import dkim
import pytest

from dispatch.monitoring.stats import Stats
from dispatch.relays.base import DeliveryRequest
from dispatch.relays.dkim_sign import DkimSigner
from dispatch.relays.smarthost import SmtpRelayClient
from dispatch.relays.smtp_transaction import MESSAGE_BLOCK_BYTES
from dispatch.security.dkim_keys import generate_key
from dispatch.spool import Envelope, Spool
from dispatch.spool.testing import commit
from tests.delivery.test_dkim_e2e import publish, split_signature, txt_from
from tests.relays.peers import DnsServer
from tests.relays.test_smtp_relay import relay_settings
from tests.support.sink import StartSink

SMALL = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: small\r\n\r\nclaimed bytes\r\n"


@pytest.fixture
async def spool(tmp_path: Path) -> Spool:
    return await Spool.open(tmp_path / "spool")


def request_for(spool: Spool, envelope: Envelope) -> DeliveryRequest:
    """What DeliveryAttempt builds for the claimed message."""
    return DeliveryRequest(
        message_id=envelope.id,
        mail_from=envelope.mail_from,
        recipients=envelope.recipients,
        message_path=spool.message_path(envelope.id),
        size=envelope.size,
        content=spool.claimed_content(envelope.id),
    )


def large_body(size: int) -> bytes:
    line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstu\r\n"
    head = b"From: a@example.com\r\nSubject: large\r\n\r\n"
    body = head + line * ((size - len(head)) // len(line) + 1)
    return body[: size - 2] + b"\r\n"


async def test_a_small_message_is_sent_from_its_claim_without_opening_the_file(
    spool: Spool, start_sink: StartSink
) -> None:
    kept, gone = await commit(spool, SMALL), await commit(spool, SMALL.replace(b"small", b"gone"))
    claimed = await spool.claim_due(10, read_bytes=MESSAGE_BLOCK_BYTES)
    assert {e.id for e in claimed} == {kept.id, gone.id}
    assert spool.claimed_content(kept.id) == SMALL
    requests = [request_for(spool, e) for e in (kept, gone)]
    # After the claim, one file is rewritten and the other removed: neither is read again.
    spool.message_path(kept.id).write_bytes(b"Subject: replaced\r\n\r\nnot these bytes\r\n")
    spool.message_path(gone.id).unlink()
    sink = start_sink()
    relay = SmtpRelayClient(relay_settings(sink.port), "dispatch.test")
    try:
        results = [await relay.deliver(r) for r in requests]
    finally:
        await relay.aclose()
    assert [o.outcome for r in results for o in r.outcomes] == ["delivered", "delivered"]
    assert [m.content for m in sink.messages] == [SMALL, SMALL.replace(b"small", b"gone")]


# 2 blocks exactly: the last read is empty, and the final "." goes out after it on its own.
@pytest.mark.parametrize(
    "size", [MESSAGE_BLOCK_BYTES, MESSAGE_BLOCK_BYTES + 1, 2 * MESSAGE_BLOCK_BYTES, 200_000]
)
async def test_one_block_is_read_with_the_claim_and_anything_larger_is_streamed(
    spool: Spool, start_sink: StartSink, size: int
) -> None:
    body = large_body(size)
    envelope = await commit(spool, body)
    [claimed] = await spool.claim_due(1, read_bytes=MESSAGE_BLOCK_BYTES)
    content = spool.claimed_content(claimed.id)
    assert content == (body if size <= MESSAGE_BLOCK_BYTES else None)
    sink = start_sink()
    relay = SmtpRelayClient(relay_settings(sink.port), "dispatch.test")
    try:
        result = await relay.deliver(request_for(spool, envelope))
    finally:
        await relay.aclose()
    assert [o.outcome for o in result.outcomes] == ["delivered"]
    [received] = sink.messages
    assert received.content == body  # byte for byte, whichever path it took


async def test_nothing_is_read_without_read_bytes_and_the_content_ends_with_the_claim(
    spool: Spool,
) -> None:
    unread = await commit(spool, SMALL)
    [claimed] = await spool.claim_due(1)
    assert spool.claimed_content(claimed.id) is None
    await spool.release(claimed)
    made = [await commit(spool, SMALL) for _ in range(3)]
    claimed_all = await spool.claim_due(10, read_bytes=MESSAGE_BLOCK_BYTES)
    assert {e.id for e in claimed_all} == {unread.id, *(e.id for e in made)}
    assert all(spool.claimed_content(e.id) == SMALL for e in claimed_all)
    first, second, third = made
    await spool.release(first)
    await spool.remove(second.id)
    await spool.mark_failed(third.after_attempt(next_attempt_at=0.0, error="550 no"))
    for envelope in made:  # memory is held only while the claim lasts
        assert spool.claimed_content(envelope.id) is None
    assert spool.claimed_content(unread.id) == SMALL
    assert await spool.release_all_claims() == 1
    assert spool.claimed_content(unread.id) is None


async def test_dkim_signs_the_claimed_bytes(
    spool: Spool, start_sink: StartSink, tmp_path: Path
) -> None:
    dns_server = DnsServer()
    try:
        made = generate_key("example.com", "sel", "ed25519", tmp_path / "keys" / "k.key")
        publish(dns_server, made.key.record_name, made.key.public_record)
        envelope = await commit(spool, SMALL, mail_from="a@example.com")
        await spool.claim_due(1, read_bytes=MESSAGE_BLOCK_BYTES)
        spool.message_path(envelope.id).write_bytes(SMALL.replace(b"claimed", b"altered"))
        sink = start_sink()
        signer = DkimSigner([made.key], Stats())
        relay = SmtpRelayClient(relay_settings(sink.port), "dispatch.test", signer=signer)
        try:
            result = await relay.deliver(request_for(spool, envelope))
        finally:
            await relay.aclose()
        assert [o.outcome for o in result.outcomes] == ["delivered"]
        [received] = sink.messages
        _, rest = split_signature(received.content)
        assert rest == SMALL
        assert dkim.verify(received.content, dnsfunc=txt_from(dns_server))
    finally:
        dns_server.stop()
