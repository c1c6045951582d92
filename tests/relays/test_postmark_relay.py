"""The ``postmark`` relay against a strict Postmark peer on loopback
(tests/relays/postmark_peer.py): the message's fields compared with the spooled bytes,
Bcc from the envelope, 429 with Retry-After, 500, 422 ErrorCode 406, a bad token, a timeout,
and the delivery rate over 200 messages."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
from email.message import EmailMessage
from pathlib import Path

import attrs
import pytest
import trio

from dispatch.config.settings import PostmarkRelay
from dispatch.config.types import PositiveFloat, Secret
from dispatch.monitoring.traces import Tracer
from dispatch.relays.base import DeliveryRequest
from dispatch.relays.postmark import PostmarkRelayClient, outcome_of
from dispatch.relays.postmark_mapping import map_message
from dispatch.relays.registry import build_relay
from tests.relays.postmark_peer import PostmarkPeer, postmark_peer

# UTF-8 headers and 8-bit UTF-8 text, HTML, an inline image with a Content-ID, a binary
# attachment and a Latin-1 text attachment: each must reach Postmark with its content.
MESSAGE = (
    "From: Zoë <zoe@example.test>\r\n"
    "To: Ana <ana@example.net>, other@example.org\r\n"
    "Cc: bo@example.net\r\n"
    "Subject: Grüße — ☃\r\n"
    "Reply-To: replies@example.test\r\n"
    "X-Custom: kept\r\n"
    "X-Folded: one\r\n two\r\n"
    "Message-ID: <m1@example.test>\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b1"\r\n'
    "\r\n"
    "--b1\r\n"
    'Content-Type: multipart/related; boundary="b2"\r\n'
    "\r\n"
    "--b2\r\n"
    'Content-Type: multipart/alternative; boundary="b3"\r\n'
    "\r\n"
    "--b3\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Ünïcödé body, 8-bit: ÿ\r\n"
    "--b3\r\n"
    "Content-Type: text/html; charset=utf-8\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    '<p>H=C3=A9llo <img src=3D"cid:logo@x"></p>\r\n'
    "--b3--\r\n"
    "--b2\r\n"
    "Content-Type: image/png\r\n"
    "Content-ID: <logo@x>\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "iVBORw0KGgo=\r\n"
    "--b2--\r\n"
    "--b1\r\n"
    'Content-Type: application/octet-stream; name="blob.bin"\r\n'
    "Content-Transfer-Encoding: base64\r\n"
    'Content-Disposition: attachment; filename="blob.bin"\r\n'
    "\r\n"
    "AAECA/7/\r\n"
    "--b1--\r\n"
).encode()
RECIPIENTS = ("ana@example.net", "bo@example.net", "hidden@example.net")


def relay_for(
    peer: PostmarkPeer, *, token: str | None = None, timeout: float = 10.0
) -> PostmarkRelayClient:
    settings = PostmarkRelay(
        name="pm",
        api_key=Secret(peer.token if token is None else token),
        base_url=peer.base_url,
        timeout_seconds=PositiveFloat(timeout),
    )
    return PostmarkRelayClient(settings)


def request_for(
    path: Path, message_id: str = "m1", recipients: tuple[str, ...] = RECIPIENTS
) -> DeliveryRequest:
    if not path.exists():
        path.write_bytes(MESSAGE)
    return DeliveryRequest(message_id, "zoe@example.test", recipients, path, len(MESSAGE))


def parsed(raw: bytes) -> EmailMessage:
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


async def test_a_message_reaches_postmark_with_every_part_and_header(tmp_path: Path) -> None:
    with postmark_peer() as peer:
        relay = relay_for(peer)
        result = await relay.deliver(request_for(tmp_path / "m1.eml"))
        await relay.aclose()
    [(remote_id, body)] = peer.accepted
    spooled = parsed((tmp_path / "m1.eml").read_bytes())
    assert result.remote_id == remote_id
    assert [o.outcome for o in result.outcomes] == ["delivered"] * 3
    assert remote_id in result.outcomes[0].response
    assert (relay.delivered, relay.failed, relay.inflight) == (1, 0, 0)
    # Who: To/Cc only for envelope recipients; the rest of the envelope in Bcc.
    assert body["From"] == str(spooled["From"]) == "Zoë <zoe@example.test>"
    assert body["To"] == "Ana <ana@example.net>"
    assert body["Cc"] == "bo@example.net"
    assert body["Bcc"] == "hidden@example.net"
    assert body["Subject"] == "Grüße — ☃"
    assert body["ReplyTo"] == "replies@example.test"
    assert body["MessageStream"] == "outbound"
    headers = {h["Name"]: h["Value"] for h in body["Headers"]}
    assert headers == {"X-Custom": "kept", "X-Folded": "one two", "Message-ID": "<m1@example.test>"}
    text = spooled.get_body(("plain",))
    html = spooled.get_body(("html",))
    assert text is not None
    assert html is not None
    assert body["TextBody"] == text.get_content() == "Ünïcödé body, 8-bit: ÿ"
    assert body["HtmlBody"] == html.get_content()
    assert "Héllo" in body["HtmlBody"]
    logo, blob = body["Attachments"]
    assert logo["ContentID"] == "cid:logo@x"
    assert logo["ContentType"] == "image/png"
    assert base64.b64decode(logo["Content"]) == base64.b64decode("iVBORw0KGgo=")
    assert (blob["Name"], blob["ContentType"]) == ("blob.bin", "application/octet-stream")
    assert base64.b64decode(blob["Content"]) == bytes([0, 1, 2, 3, 254, 255])
    assert "ContentID" not in blob


async def test_without_a_to_recipient_each_gets_its_own_request(tmp_path: Path) -> None:
    with postmark_peer() as peer:
        relay = relay_for(peer)
        request = request_for(tmp_path / "m.eml", recipients=("x@example.net", "y@example.net"))
        result = await relay.deliver(request)
        await relay.aclose()
    assert sorted(body["To"] for _, body in peer.accepted) == ["x@example.net", "y@example.net"]
    assert all("Bcc" not in body and "Cc" not in body for _, body in peer.accepted)
    assert [o.outcome for o in result.outcomes] == ["delivered", "delivered"]
    assert result.remote_id == ", ".join(remote_id for remote_id, _ in peer.accepted)


async def test_429_with_retry_after_is_transient_and_holds_the_relay(tmp_path: Path) -> None:
    with postmark_peer() as peer:
        body = json.dumps({"ErrorCode": 429, "Message": "Rate limit exceeded"}).encode()
        peer.script.append((429, {"Retry-After": "30", "Content-Type": "application/json"}, body))
        relay = relay_for(peer)
        first = await relay.deliver(request_for(tmp_path / "m.eml"))
        second = await relay.deliver(request_for(tmp_path / "m.eml"))
        await relay.aclose()
    assert {o.outcome for o in first.outcomes} == {"transient"}
    assert "429 ErrorCode 429: Rate limit exceeded" in first.outcomes[0].response
    assert "retry after 30s" in first.outcomes[0].response
    assert peer.requests == 1
    assert not peer.accepted
    assert {o.outcome for o in second.outcomes} == {"transient"}
    assert "as Postmark asked" in second.outcomes[0].response
    assert (relay.delivered, relay.failed) == (0, 2)


async def test_500_is_transient_and_the_next_attempt_delivers(tmp_path: Path) -> None:
    with postmark_peer() as peer:
        peer.script.append((500, {"Content-Type": "text/plain"}, b"Internal Server Error"))
        relay = relay_for(peer)
        failed = await relay.deliver(request_for(tmp_path / "m.eml"))
        delivered = await relay.deliver(request_for(tmp_path / "m.eml"))
        await relay.aclose()
    assert {o.outcome for o in failed.outcomes} == {"transient"}
    assert "Postmark answered 500: Internal Server Error" in failed.outcomes[0].response
    assert {o.outcome for o in delivered.outcomes} == {"delivered"}
    assert len(peer.accepted) == 1


async def test_422_inactive_recipient_is_permanent_with_postmarks_reason(tmp_path: Path) -> None:
    with postmark_peer() as peer:
        message = "You tried to send to recipient(s) that have been marked as inactive."
        body = json.dumps({"ErrorCode": 406, "Message": message}).encode()
        peer.script.append((422, {"Content-Type": "application/json"}, body))
        relay = relay_for(peer)
        result = await relay.deliver(request_for(tmp_path / "m.eml"))
        await relay.aclose()
    assert {o.outcome for o in result.outcomes} == {"permanent"}
    assert f"422 ErrorCode 406: {message}" in result.outcomes[0].response


async def test_a_bad_token_or_stream_is_transient_and_names_the_setting(tmp_path: Path) -> None:
    with postmark_peer() as peer:
        relay = relay_for(peer, token="wrong")
        bad_token = await relay.deliver(request_for(tmp_path / "m.eml"))
        await relay.aclose()
        settings = PostmarkRelay(
            name="pm", api_key=Secret(peer.token), base_url=peer.base_url, message_stream="nope"
        )
        relay = PostmarkRelayClient(settings)
        bad_stream = await relay.deliver(request_for(tmp_path / "m.eml"))
        await relay.aclose()
    assert {o.outcome for o in bad_token.outcomes} == {"transient"}
    assert "401 ErrorCode 10" in bad_token.outcomes[0].response
    assert "api_key" in bad_token.outcomes[0].response
    assert {o.outcome for o in bad_stream.outcomes} == {"transient"}
    assert "ErrorCode 1235" in bad_stream.outcomes[0].response
    assert "message_stream" in bad_stream.outcomes[0].response
    assert not peer.accepted


async def test_a_peer_that_does_not_answer_in_time_is_transient(tmp_path: Path) -> None:
    with postmark_peer() as peer:
        peer.delay = 3.0
        relay = relay_for(peer, timeout=0.5)
        with trio.fail_after(2.5):  # semantic deadline: the relay's own timeout ends it
            result = await relay.deliver(request_for(tmp_path / "m.eml"))
        await relay.aclose()
    assert {o.outcome for o in result.outcomes} == {"transient"}
    assert "did not answer within 0.5s" in result.outcomes[0].response


async def test_the_dialogue_is_traced_under_the_attempt(tmp_path: Path) -> None:
    tracer = Tracer()
    with postmark_peer() as peer:
        relay = relay_for(peer)
        with tracer.start("delivery.attempt", "m1") as attempt:
            plain = request_for(tmp_path / "m.eml")
            await relay.deliver(attrs.evolve(plain, trace=attempt))
        await relay.aclose()
    [dialogue] = [c for c in attempt.children if c.family == "relay.dialogue"]
    found = tracer.find(dialogue.trace_id)
    assert found is not None
    assert found.finished
    assert not found.errored
    assert any("accepted by Postmark as" in e.message for e in found.events())


def test_latin1_text_and_encoded_words_are_decoded_and_an_attached_message_stays_whole() -> None:
    raw = (
        b"From: a@example.test\r\nTo: b@example.net\r\nSubject: =?iso-8859-1?q?Caf=E9?=\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nCaf\xe9\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\n"
        b"From: c@example.test\r\nSubject: inner\r\n\r\nInner body\r\n"
        b"--b--\r\n"
    )
    mapped = map_message(raw, ("b@example.net",), "outbound")
    [(body, covered)] = mapped.bodies()
    assert body["TextBody"] == "Café"
    assert body["Subject"] == "Café"
    assert covered == ("b@example.net",)
    attachments = body["Attachments"]
    assert isinstance(attachments, list)
    [inner] = attachments
    assert inner["ContentType"] == "message/rfc822"
    assert b"Subject: inner" in base64.b64decode(inner["Content"])


def test_the_registry_builds_it_and_refuses_settings_that_cannot_work() -> None:
    good = PostmarkRelay(name="pm", api_key=Secret("k"))
    relay = build_relay(good, capture=None, helo_name="h")  # type: ignore[arg-type]
    assert isinstance(relay, PostmarkRelayClient)
    assert relay.url == "https://api.postmarkapp.com/email"
    for bad, words in [
        (PostmarkRelay(name="x"), "needs api_key"),
        (PostmarkRelay(name="x", api_key=Secret("k"), message_stream=""), "message_stream"),
        (PostmarkRelay(name="x", api_key=Secret("k"), base_url="api"), "base_url"),
    ]:
        with pytest.raises(ValueError, match=words):
            PostmarkRelayClient(bad)


def test_error_code_mapping() -> None:
    cases = [(200, 0), (422, 300), (422, 406), (401, 10), (422, 400), (422, 1235), (429, None)]
    assert [outcome_of(s, c) for s, c in [*cases, (500, None), (404, 0)]] == [
        "delivered", "permanent", "permanent", "transient", "transient", "transient",
        "transient", "transient", "permanent",
    ]  # fmt: skip


async def test_delivery_rate_to_the_peer(tmp_path: Path) -> None:
    """200 messages through max_inflight = 8; every one accepted once. Prints the rate."""
    path = tmp_path / "m.eml"
    request_for(path)
    with postmark_peer() as peer:
        relay = relay_for(peer)
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for n in range(200):
                nursery.start_soon(relay.deliver, request_for(path, f"m{n}"))
        elapsed = trio.current_time() - started
        await relay.aclose()
    assert len(peer.accepted) == 200
    assert (relay.delivered, relay.failed) == (200, 0)
    assert all(body["Subject"] == "Grüße — ☃" for _, body in peer.accepted)
    print(f"postmark relay: 200 messages in {elapsed:.2f}s = {200 / elapsed:.0f} messages/s")
