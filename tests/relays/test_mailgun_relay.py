"""The ``mailgun`` relay against a strict Mailgun peer on loopback (tests/relays/mailgun_peer.py):
success with the bytes compared, 429 with Retry-After, 500, 400, a wrong key, a wrong domain,
a timeout, and the delivery rate over 200 messages."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
import trio

from dispatch.config.settings import MailgunRelay
from dispatch.config.types import PositiveFloat, PositiveInt, Secret
from dispatch.monitoring.traces import Tracer
from dispatch.relays.base import DeliveryRequest
from dispatch.relays.mailgun import MailgunRelayClient, outcome_of_status
from dispatch.relays.registry import build_relay
from dispatch.relays.retry_after import retry_after_seconds
from tests.relays.mailgun_peer import MailgunPeer, mailgun_peer

# UTF-8 headers and body (8-bit, as SMTPUTF8/8BITMIME intake keeps it), a base64 attachment,
# a bare-LF-free CRLF message: every byte must reach Mailgun as spooled.
MESSAGE = (
    "From: Zoë <zoe@example.test>\r\n"
    "To: ana@example.net, bo@example.net\r\n"
    "Subject: Grüße — ☃\r\n"
    "X-Custom: kept\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b1"\r\n'
    "\r\n"
    "--b1\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Ünïcödé body, 8-bit: ÿ\r\n"
    "--b1\r\n"
    'Content-Type: application/octet-stream; name="blob.bin"\r\n'
    "Content-Transfer-Encoding: base64\r\n"
    'Content-Disposition: attachment; filename="blob.bin"\r\n'
    "\r\n"
    "AAECA/7/\r\n"
    "--b1--\r\n"
).encode()
RECIPIENTS = ("ana@example.net", "bo@example.net")


def relay_for(
    peer: MailgunPeer, *, key: str | None = None, timeout: float = 10.0, max_inflight: int = 8
) -> MailgunRelayClient:
    settings = MailgunRelay(
        name="mg",
        api_key=Secret(peer.key if key is None else key),
        domain=peer.domain,
        base_url=peer.base_url,
        timeout_seconds=PositiveFloat(timeout),
        max_inflight=PositiveInt(max_inflight),
    )
    return MailgunRelayClient(settings)


def request_for(path: Path, message_id: str = "m1") -> DeliveryRequest:
    if not path.exists():
        path.write_bytes(MESSAGE)
    return DeliveryRequest(message_id, "zoe@example.test", RECIPIENTS, path, len(MESSAGE))


async def test_a_message_reaches_mailgun_byte_for_byte_with_the_envelope_recipients(
    tmp_path: Path,
) -> None:
    with mailgun_peer() as peer:
        relay = relay_for(peer)
        result = await relay.deliver(request_for(tmp_path / "m1.eml"))
        await relay.aclose()
    [accepted] = peer.accepted
    assert accepted.message == MESSAGE == (tmp_path / "m1.eml").read_bytes()
    assert accepted.to == list(RECIPIENTS)
    assert result.remote_id == accepted.id
    assert [o.outcome for o in result.outcomes] == ["delivered", "delivered"]
    assert accepted.id in result.outcomes[0].response
    assert (relay.delivered, relay.failed, relay.inflight) == (1, 0, 0)


async def test_429_with_retry_after_is_transient_and_holds_the_relay(tmp_path: Path) -> None:
    with mailgun_peer() as peer:
        peer.script.append((429, {"Retry-After": "30"}, b'{"message": "Too many requests"}'))
        relay = relay_for(peer)
        first = await relay.deliver(request_for(tmp_path / "m.eml"))
        second = await relay.deliver(request_for(tmp_path / "m.eml"))
        await relay.aclose()
    assert {o.outcome for o in first.outcomes} == {"transient"}
    assert "429: Too many requests" in first.outcomes[0].response
    assert "retry after 30s" in first.outcomes[0].response
    # Held: the second attempt did not reach Mailgun and says why.
    assert peer.requests == 1
    assert not peer.accepted
    assert {o.outcome for o in second.outcomes} == {"transient"}
    assert "as Mailgun asked" in second.outcomes[0].response
    assert (relay.delivered, relay.failed) == (0, 2)


async def test_500_is_transient_and_the_next_attempt_delivers(tmp_path: Path) -> None:
    with mailgun_peer() as peer:
        peer.script.append((500, {"Content-Type": "application/json"}, b'{"message": "oops"}'))
        relay = relay_for(peer)
        failed = await relay.deliver(request_for(tmp_path / "m.eml"))
        delivered = await relay.deliver(request_for(tmp_path / "m.eml"))
        await relay.aclose()
    assert {o.outcome for o in failed.outcomes} == {"transient"}
    assert "Mailgun answered 500: oops" in failed.outcomes[0].response
    assert {o.outcome for o in delivered.outcomes} == {"delivered"}
    assert len(peer.accepted) == 1


async def test_400_is_permanent_with_mailguns_reason(tmp_path: Path) -> None:
    with mailgun_peer() as peer:
        body = json.dumps({"message": "to parameter is not a valid address"}).encode()
        peer.script.append((400, {"Content-Type": "application/json"}, body))
        relay = relay_for(peer)
        result = await relay.deliver(request_for(tmp_path / "m.eml"))
        await relay.aclose()
    assert {o.outcome for o in result.outcomes} == {"permanent"}
    assert "400: to parameter is not a valid address" in result.outcomes[0].response


async def test_a_wrong_key_or_domain_is_transient_and_names_the_setting(tmp_path: Path) -> None:
    with mailgun_peer() as peer:
        relay = relay_for(peer, key="wrong")
        bad_key = await relay.deliver(request_for(tmp_path / "m.eml"))
        await relay.aclose()
        settings = MailgunRelay(
            name="mg", api_key=Secret(peer.key), domain="other.test", base_url=peer.base_url
        )
        relay = MailgunRelayClient(settings)
        bad_domain = await relay.deliver(request_for(tmp_path / "m.eml"))
        await relay.aclose()
    assert {o.outcome for o in bad_key.outcomes} == {"transient"}
    assert "401: Forbidden" in bad_key.outcomes[0].response
    assert "api_key" in bad_key.outcomes[0].response
    assert {o.outcome for o in bad_domain.outcomes} == {"transient"}
    assert "Domain not found: other.test" in bad_domain.outcomes[0].response
    assert not peer.accepted


async def test_a_peer_that_does_not_answer_in_time_is_transient(tmp_path: Path) -> None:
    with mailgun_peer() as peer:
        peer.delay = 3.0
        relay = relay_for(peer, timeout=0.5)
        with trio.fail_after(2.5):  # semantic deadline: the relay's own timeout ends it
            result = await relay.deliver(request_for(tmp_path / "m.eml"))
        await relay.aclose()
    assert {o.outcome for o in result.outcomes} == {"transient"}
    assert "did not answer within 0.5s" in result.outcomes[0].response


async def test_an_unreachable_mailgun_is_transient(tmp_path: Path) -> None:
    with mailgun_peer() as peer:
        url = peer.base_url
    settings = MailgunRelay(name="mg", api_key=Secret("k"), domain="d.test", base_url=url)
    relay = MailgunRelayClient(settings)
    result = await relay.deliver(request_for(tmp_path / "m.eml"))
    await relay.aclose()
    assert {o.outcome for o in result.outcomes} == {"transient"}
    assert "cannot reach" in result.outcomes[0].response


def test_the_registry_builds_it_and_refuses_settings_that_cannot_work() -> None:
    good = MailgunRelay(name="mg", api_key=Secret("k"), domain="mg.example.test")
    relay = build_relay(good, capture=None, helo_name="h")  # type: ignore[arg-type]
    assert isinstance(relay, MailgunRelayClient)
    assert relay.url == "https://api.mailgun.net/v3/mg.example.test/messages.mime"
    eu = MailgunRelay(
        name="eu", api_key=Secret("k"), domain="d.test", base_url="https://api.eu.mailgun.net/"
    )
    assert MailgunRelayClient(eu).url == "https://api.eu.mailgun.net/v3/d.test/messages.mime"
    for bad, words in [
        (MailgunRelay(name="x", domain="d.test"), "needs api_key"),
        (MailgunRelay(name="x", api_key=Secret("k"), domain=""), "needs domain"),
        (MailgunRelay(name="x", api_key=Secret("k"), domain="d", base_url="api"), "base_url"),
    ]:
        with pytest.raises(ValueError, match=words):
            MailgunRelayClient(bad)


def test_status_and_retry_after_mapping() -> None:
    assert [outcome_of_status(s) for s in (200, 400, 401, 403, 404, 413, 429, 500, 503)] == [
        "delivered", "permanent", "transient", "transient", "transient",
        "permanent", "transient", "transient", "transient",
    ]  # fmt: skip
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("999999") == 3600.0


async def test_delivery_rate_to_the_peer(tmp_path: Path) -> None:
    """200 messages through max_inflight = 8; every one accepted once. Prints the rate."""
    path = tmp_path / "m.eml"
    request = request_for(path)
    with mailgun_peer() as peer:
        relay = relay_for(peer)
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for n in range(200):
                nursery.start_soon(relay.deliver, request_for(path, f"m{n}"))
        elapsed = trio.current_time() - started
        await relay.aclose()
    assert len(peer.accepted) == 200
    assert (relay.delivered, relay.failed) == (200, 0)
    assert all(a.message == MESSAGE for a in peer.accepted)
    assert request.size == len(MESSAGE)
    print(f"mailgun relay: 200 messages in {elapsed:.2f}s = {200 / elapsed:.0f} messages/s")


async def test_max_inflight_bounds_the_requests_at_mailgun(tmp_path: Path) -> None:
    with mailgun_peer() as peer:
        peer.delay = 0.2  # each answer waits, so the deliveries overlap
        relay = relay_for(peer, max_inflight=2)
        async with trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(relay.deliver, request_for(tmp_path / "m.eml", f"m{n}"))
        await relay.aclose()
    assert len(peer.accepted) == 6
    assert peer.most_concurrent == 2


async def test_the_dialogue_is_traced_under_the_attempt(tmp_path: Path) -> None:
    tracer = Tracer()
    with mailgun_peer() as peer:
        peer.script.append((500, {"Content-Type": "application/json"}, b'{"message": "down"}'))
        relay = relay_for(peer)
        traced = []
        for _ in range(2):
            with tracer.start("delivery.attempt", "m1") as attempt:
                plain = request_for(tmp_path / "m.eml")
                await relay.deliver(attrs.evolve(plain, trace=attempt))
            [dialogue] = [c for c in attempt.children if c.family == "relay.dialogue"]
            traced.append(tracer.find(dialogue.trace_id))
        await relay.aclose()
    failed, delivered = traced
    assert failed is not None
    assert delivered is not None
    assert failed.finished
    assert failed.errored
    assert any("Mailgun answered 500: down" in e.message for e in failed.events())
    assert not delivered.errored
    assert any("queued by Mailgun as <" in e.message for e in delivered.events())
