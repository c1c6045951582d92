"""The smtp relay end to end: Dispatch's SMTP client against a real aiosmtpd sink on 127.0.0.1."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from dispatch.config.settings import SmtpRelay
from dispatch.config.types import Port, PositiveFloat, PositiveInt, Secret
from dispatch.relays import smtp_pool
from dispatch.relays.base import DeliveryRequest, DeliveryResult, Relay
from dispatch.relays.smarthost import SmtpRelayClient
from dispatch.relays.smtp_options import Timeouts
from dispatch.relays.smtp_transaction import remote_id_of
from dispatch.smtp import Reply
from tests.conftest import free_port
from tests.relays.peers import (
    Handler,
    ScriptedSmtp,
    greet_then_garbage,
    greet_then_hang,
    raw_server,
)
from tests.support.sink import Pki, StartSink

MESSAGE = (
    b"Received: from client.example by dispatch.test; Mon, 2 Mar 2026 10:00:00 +0000\r\n"
    b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"Hello \xc3\xa9t\xc3\xa9.\r\n.leading dot\r\n..two dots\r\n.\r\n. \r\nlast line\r\n"
)
# What goes on the wire (RFC 5321 §4.5.2): every line starting with "." gets one more.
STUFFED = MESSAGE.replace(b"\r\n.", b"\r\n..")
USERS = {"relay-user": "s3cret pass"}


def relay_settings(port: int, **overrides: Any) -> SmtpRelay:
    values: dict[str, Any] = {
        "name": "primary",
        "host": "127.0.0.1",
        "port": Port(port),
        "tls": "none",
        "timeout_seconds": PositiveFloat(5.0),
    }
    values.update(overrides)
    return SmtpRelay(**values)


def make_relay(port: int, **overrides: Any) -> SmtpRelayClient:
    return SmtpRelayClient(relay_settings(port, **overrides), "dispatch.test")


def request(
    path: Path, *recipients: str, mail_from: str = "a@example.com", smtputf8: bool = False
) -> DeliveryRequest:
    return DeliveryRequest(
        message_id="m1",
        mail_from=mail_from,
        recipients=recipients or ("b@example.org",),
        message_path=path,
        size=path.stat().st_size,
        smtputf8=smtputf8,
    )


@pytest.fixture
def eml(tmp_path: Path) -> Path:
    path = tmp_path / "message.eml"
    path.write_bytes(MESSAGE)
    return path


def outcomes(result: DeliveryResult) -> list[str]:
    return [o.outcome for o in result.outcomes]


async def test_delivers_the_stored_bytes_exactly(start_sink: StartSink, eml: Path) -> None:
    sink = start_sink()
    relay: Relay = make_relay(sink.port)
    result = await relay.deliver(request(eml, "b@example.org", "c@example.org"))
    assert outcomes(result) == ["delivered", "delivered"]
    assert result.outcomes[0].response == "250 2.0.0 Ok: queued as Q1"
    assert result.remote_id == "Q1"
    [received] = sink.messages
    assert received.content == MESSAGE  # dot-stuffed on the way, unstuffed by the sink
    assert received.mail_from == "a@example.com"
    assert received.rcpt_tos == ("b@example.org", "c@example.org")
    assert f"SIZE={len(MESSAGE)}" in received.mail_options
    assert "BODY=8BITMIME" in received.mail_options
    await relay.aclose()


@pytest.mark.parametrize("pipelining", [True, False])
async def test_per_recipient_outcomes(start_sink: StartSink, eml: Path, pipelining: bool) -> None:
    sink = start_sink(pipelining=pipelining)
    relay = make_relay(sink.port)
    result = await relay.deliver(request(eml, "ok@example.org", "reject@example.org", "later@x"))
    assert outcomes(result) == ["delivered", "permanent", "transient"]
    assert result.outcomes[1].response == "550 5.1.1 no such user"
    assert result.outcomes[2].response == "451 4.3.0 try later"
    assert [m.rcpt_tos for m in sink.messages] == [("ok@example.org",)]
    assert (relay.delivered, relay.failed, relay.inflight) == (1, 1, 0)
    await relay.aclose()


@pytest.mark.parametrize("pipelining", [True, False])
async def test_no_accepted_recipient_sends_no_data(
    start_sink: StartSink, eml: Path, pipelining: bool
) -> None:
    sink = start_sink(pipelining=pipelining)
    relay = make_relay(sink.port)
    result = await relay.deliver(request(eml, "reject@example.org", "later@example.org"))
    assert outcomes(result) == ["permanent", "transient"]
    assert sink.messages == []
    # The connection stays usable: RSET, then the next message.
    assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
    assert sink.connections == 1
    await relay.aclose()


async def test_data_451_is_transient_and_the_connection_is_kept(
    start_sink: StartSink, eml: Path
) -> None:
    sink = start_sink()
    sink.handler.fail_data = 1
    relay = make_relay(sink.port)
    result = await relay.deliver(request(eml, "b@example.org", "reject@example.org"))
    assert outcomes(result) == ["transient", "permanent"]
    assert result.outcomes[0].response == "451 4.3.0 try later"
    assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
    assert sink.connections == 1
    await relay.aclose()


async def test_connection_reuse(start_sink: StartSink, eml: Path) -> None:
    sink = start_sink()
    relay = make_relay(sink.port)
    for _ in range(5):
        assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
    assert len(sink.messages) == 5
    assert sink.connections == 1
    assert relay.idle_connections == 1
    assert relay.connections == {"plain": 1, "tls": 0}
    await relay.aclose()
    assert relay.idle_connections == 0
    assert sink.handler.quits == 1
    await relay.aclose()  # idempotent


@pytest.mark.parametrize(("max_inflight", "expected"), [(1, 1), (2, 2)])
async def test_concurrency_is_bounded_by_max_inflight(
    start_sink: StartSink, eml: Path, max_inflight: int, expected: int
) -> None:
    sink = start_sink(data_delay=0.2)
    relay = make_relay(sink.port, max_inflight=PositiveInt(max_inflight))
    peak = 0

    async def one() -> None:
        nonlocal peak
        result = await relay.deliver(request(eml))
        assert outcomes(result) == ["delivered"]

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, relay.inflight)
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        async with trio.open_nursery() as senders:
            for _ in range(4):
                senders.start_soon(one)
        nursery.cancel_scope.cancel()
    assert len(sink.messages) == 4
    assert sink.connections == expected
    assert peak == expected
    assert relay.idle_connections == expected
    await relay.aclose()


async def test_starttls_with_ca_file_and_auth_plain(
    start_sink: StartSink, pki: Pki, eml: Path
) -> None:
    sink = start_sink(tls="starttls", require_starttls=True, users=USERS)
    relay = make_relay(
        sink.port,
        tls="starttls",
        ca_file=str(pki.ca_file),
        username="relay-user",
        password=Secret(USERS["relay-user"]),
    )
    assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
    assert sink.handler.auth == [("PLAIN", "relay-user")]
    assert sink.messages[0].tls
    assert sink.messages[0].content == MESSAGE
    assert relay.connections == {"plain": 0, "tls": 1}
    await relay.aclose()


async def test_auth_login_when_plain_is_not_offered(
    start_sink: StartSink, pki: Pki, eml: Path
) -> None:
    sink = start_sink(tls="starttls", users=USERS, auth_exclude=("PLAIN",))
    relay = make_relay(
        sink.port,
        tls="auto",
        ca_file=str(pki.ca_file),
        username="relay-user",
        password=Secret(USERS["relay-user"]),
    )
    assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
    assert sink.handler.auth == [("LOGIN", "relay-user")]
    await relay.aclose()


async def test_wrong_password_is_transient(start_sink: StartSink, pki: Pki, eml: Path) -> None:
    sink = start_sink(tls="starttls", users=USERS)
    relay = make_relay(
        sink.port,
        tls="starttls",
        ca_file=str(pki.ca_file),
        username="relay-user",
        password=Secret("wrong"),
    )
    [outcome] = (await relay.deliver(request(eml))).outcomes
    assert outcome.outcome == "transient"
    assert outcome.response.startswith("relay primary: authentication as 'relay-user' at ")
    assert "535" in outcome.response
    assert "wrong" not in outcome.response
    await relay.aclose()


async def test_untrusted_certificate_is_transient(
    start_sink: StartSink, tmp_path: Path, eml: Path
) -> None:
    import trustme

    sink = start_sink(tls="starttls")
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    relay = make_relay(sink.port, tls="starttls", ca_file=str(other_ca))
    [outcome] = (await relay.deliver(request(eml))).outcomes
    assert outcome.outcome == "transient"
    assert outcome.response.startswith(
        f"relay primary: TLS certificate of 127.0.0.1:{sink.port} failed verification"
    )
    assert sink.messages == []
    await relay.aclose()


async def test_unverified_tls_warns_once(
    start_sink: StartSink, eml: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = start_sink(tls="starttls")
    with caplog.at_level(logging.WARNING, "dispatch.relays.smarthost"):
        relay = make_relay(sink.port, tls="starttls", verify_certificates=False)
        for _ in range(2):
            assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
    warnings = [r for r in caplog.records if "verify_certificates = false" in r.getMessage()]
    assert len(warnings) == 1
    assert relay.connections == {"plain": 0, "tls": 1}
    await relay.aclose()


async def test_implicit_tls(start_sink: StartSink, pki: Pki, eml: Path) -> None:
    sink = start_sink(tls="implicit")
    relay = make_relay(sink.port, tls="implicit", ca_file=str(pki.ca_file))
    assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
    assert sink.messages[0].content == MESSAGE
    assert relay.connections == {"plain": 0, "tls": 1}
    await relay.aclose()


async def test_starttls_required_but_not_offered_is_transient(
    start_sink: StartSink, eml: Path
) -> None:
    sink = start_sink()
    relay = make_relay(sink.port, tls="starttls")
    [outcome] = (await relay.deliver(request(eml))).outcomes
    assert outcome.outcome == "transient"
    assert outcome.response == f"relay primary: 127.0.0.1:{sink.port} does not offer STARTTLS"
    await relay.aclose()


async def test_auto_tls_sends_no_password_in_clear(start_sink: StartSink, eml: Path) -> None:
    sink = start_sink(users=USERS, auth_require_tls=False)
    relay = make_relay(sink.port, tls="auto", username="relay-user", password=Secret("x"))
    [outcome] = (await relay.deliver(request(eml))).outcomes
    assert outcome.outcome == "permanent"
    assert outcome.response == "relay primary: refusing AUTH without TLS"
    assert sink.handler.auth == []
    await relay.aclose()


async def test_tls_none_allows_auth_in_clear(start_sink: StartSink, eml: Path) -> None:
    sink = start_sink(users=USERS, auth_require_tls=False)
    relay = make_relay(
        sink.port, tls="none", username="relay-user", password=Secret(USERS["relay-user"])
    )
    assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
    assert sink.handler.auth == [("PLAIN", "relay-user")]
    await relay.aclose()


async def test_message_larger_than_server_size_is_permanent_and_not_sent(
    start_sink: StartSink, eml: Path
) -> None:
    sink = start_sink(size_limit=100)
    relay = make_relay(sink.port)
    [outcome] = (await relay.deliver(request(eml))).outcomes
    assert outcome.outcome == "permanent"
    assert f"({len(MESSAGE)} bytes) is larger than the 100 bytes" in outcome.response
    assert sink.messages == []
    await relay.aclose()


async def test_smtputf8_needed(start_sink: StartSink, eml: Path) -> None:
    plain = start_sink()
    relay = make_relay(plain.port)
    [outcome] = (await relay.deliver(request(eml, "jürgen@example.org"))).outcomes
    assert outcome.outcome == "permanent"
    assert "SMTPUTF8" in outcome.response
    assert "RFC 6531" in outcome.response
    await relay.aclose()

    utf8 = start_sink(smtputf8=True)
    relay = make_relay(utf8.port)
    result = await relay.deliver(request(eml, "jürgen@example.org", smtputf8=True))
    assert outcomes(result) == ["delivered"]
    assert "SMTPUTF8" in utf8.messages[0].mail_options
    await relay.aclose()


async def test_connection_refused_is_transient(eml: Path) -> None:
    port = free_port()
    relay = make_relay(port)
    [outcome] = (await relay.deliver(request(eml))).outcomes
    assert outcome.outcome == "transient"
    assert outcome.response == f"relay primary: connection to 127.0.0.1:{port} refused"
    assert (relay.delivered, relay.failed) == (0, 1)
    await relay.aclose()


async def greet_then_drip(stream: trio.SocketStream) -> None:
    """Greet, then answer EHLO with one more continuation line every 0.2 s, forever: no single
    read waits 0.5 s, yet the reply never ends."""
    await stream.send_all(b"220 drip.test ESMTP\r\n")
    await stream.receive_some()
    while True:
        await stream.send_all(b"250-still going\r\n")
        await trio.sleep(0.2)


@pytest.mark.parametrize("handler", [greet_then_hang, greet_then_drip], ids=["hangs", "drips"])
async def test_a_reply_that_does_not_come_whole_in_time_times_out(
    handler: Handler, eml: Path
) -> None:
    """The 0.5 s deadline covers the whole reply, not each read (a server that drips its
    reply is given up as one that says nothing)."""
    async with raw_server(handler) as server:
        relay = make_relay(server.port, timeout_seconds=PositiveFloat(0.5))
        started = time.monotonic()
        [outcome] = (await relay.deliver(request(eml))).outcomes
        elapsed = time.monotonic() - started
        await relay.aclose()
    assert outcome.outcome == "transient"
    assert outcome.response == (
        "relay primary: timed out after 0.5 s waiting for the reply to EHLO "
        f"(127.0.0.1:{server.port})"
    )
    assert 0.4 < elapsed < 3


async def test_malformed_reply_is_transient_and_the_connection_dropped(eml: Path) -> None:
    async with raw_server(greet_then_garbage) as server:
        relay = make_relay(server.port)
        for _ in range(2):
            [outcome] = (await relay.deliver(request(eml))).outcomes
            assert outcome.outcome == "transient"
            assert "protocol error" in outcome.response
            assert "malformed SMTP reply line" in outcome.response
        assert relay.idle_connections == 0
        await relay.aclose()
    assert server.connections == 2


async def test_out_of_step_connection_is_not_reused(start_sink: StartSink, eml: Path) -> None:
    sink = start_sink()
    sink.handler.desync_data = 1  # the first message gets "250 ..." twice
    relay = make_relay(sink.port)
    assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
    assert relay.idle_connections == 0
    assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
    assert sink.connections == 2
    assert len(sink.messages) == 2
    await relay.aclose()


async def test_a_pooled_connection_the_server_closed_is_replaced(
    start_sink: StartSink, eml: Path
) -> None:
    sink = start_sink(idle_timeout=0.5)  # the sink says 421 and hangs up when idle
    relay = make_relay(sink.port)
    assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
    await trio.sleep(1.0)
    assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
    assert sink.connections == 2
    await relay.aclose()


async def test_cancelled_delivery_drops_the_connection(start_sink: StartSink, eml: Path) -> None:
    sink = start_sink(data_delay=1.0)
    relay = make_relay(sink.port)
    with trio.move_on_after(0.3) as scope:
        await relay.deliver(request(eml))
    assert scope.cancelled_caught
    assert relay.inflight == 0
    assert relay.idle_connections == 0
    await relay.aclose()


async def test_missing_message_file_is_transient(start_sink: StartSink, tmp_path: Path) -> None:
    sink = start_sink()
    relay = make_relay(sink.port)
    missing = DeliveryRequest("m1", "a@example.com", ("b@example.org",), tmp_path / "gone", 10)
    [outcome] = (await relay.deliver(missing)).outcomes
    assert outcome.outcome == "transient"
    assert outcome.response.startswith("relay primary: cannot read the message: ")
    await relay.aclose()


def test_unreadable_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="relay primary: cannot load ca_file"):
        make_relay(25, tls="starttls", ca_file=str(tmp_path / "missing.pem"))


def test_timeouts_follow_rfc_5321_capped_by_the_setting() -> None:
    default = Timeouts.scaled(60.0)
    assert (default.greeting, default.mail, default.data_init, default.data_end) == (
        60.0,
        60.0,
        60.0,
        300.0,
    )
    generous = Timeouts.scaled(1000.0)
    assert (generous.greeting, generous.rcpt, generous.data_init) == (300.0, 300.0, 120.0)
    assert (generous.data_block, generous.data_end) == (180.0, 1000.0)
    assert Timeouts.scaled(0.5).data_end == 2.5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ok: queued as 4Xyz12AbC", "4Xyz12AbC"),
        ("OK id=1tAbCd-000123-4x", "1tAbCd-000123-4x"),
        ("Message accepted", None),
    ],
)
def test_remote_id_of(text: str, expected: str | None) -> None:
    assert remote_id_of(Reply.of(250, text, enhanced="2.0.0")) == expected


async def test_pipelining_sends_mail_rcpt_and_data_together(eml: Path) -> None:
    # The server answers MAIL and RCPT only once DATA has arrived: a client waiting for each
    # reply would time out.
    script = ScriptedSmtp(
        ehlo=b"250-mini.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n",
        hold_until_data=True,
    )
    assert STUFFED != MESSAGE
    async with raw_server(script) as server:
        relay = make_relay(server.port, timeout_seconds=PositiveFloat(2.0))
        result = await relay.deliver(request(eml, "b@example.org", "c@example.org"))
        await relay.aclose()
    assert outcomes(result) == ["delivered", "delivered"]
    assert result.remote_id == "mini-1"
    assert script.messages == [STUFFED]
    assert script.commands[1:5] == [
        f"MAIL FROM:<a@example.com> SIZE={len(MESSAGE)} BODY=8BITMIME".encode(),
        b"RCPT TO:<b@example.org>",
        b"RCPT TO:<c@example.org>",
        b"DATA",
    ]


async def test_helo_when_ehlo_is_refused(eml: Path) -> None:
    script = ScriptedSmtp(ehlo=b"502 5.5.1 EHLO not implemented\r\n")
    async with raw_server(script) as server:
        relay = make_relay(server.port)
        result = await relay.deliver(request(eml))
        await relay.aclose()
    assert outcomes(result) == ["delivered"]
    assert script.commands[:3] == [
        b"EHLO dispatch.test",
        b"HELO dispatch.test",
        b"MAIL FROM:<a@example.com>",  # no extensions: no SIZE, no BODY
    ]
    assert script.messages == [STUFFED]
    assert script.commands[-1] == b"QUIT"


async def test_positive_reply_to_data_is_a_protocol_error(eml: Path) -> None:
    script = ScriptedSmtp(data_reply=b"250 fine\r\n")
    async with raw_server(script) as server:
        relay = make_relay(server.port)
        [outcome] = (await relay.deliver(request(eml))).outcomes
        await relay.aclose()
    assert outcome.outcome == "transient"
    assert outcome.response == (
        f"relay primary: unexpected reply to DATA from 127.0.0.1:{server.port}: 250 fine"
    )
    assert relay.idle_connections == 0


@pytest.mark.parametrize("pipelining", [True, False])
async def test_421_closes_the_session(eml: Path, pipelining: bool) -> None:
    ehlo = b"250-mini.test\r\n250 PIPELINING\r\n" if pipelining else b"250 mini.test\r\n"
    script = ScriptedSmtp(ehlo=ehlo, replies={b"RCPT": b"421 4.3.2 shutting down\r\n"})
    async with raw_server(script) as server:
        relay = make_relay(server.port)
        result = await relay.deliver(request(eml, "b@example.org", "c@example.org"))
        assert relay.idle_connections == 0
        await relay.aclose()
    assert outcomes(result) == ["transient", "transient"]
    assert result.outcomes[0].response == "421 4.3.2 shutting down"
    assert result.outcomes[1].response == (
        f"relay primary: 127.0.0.1:{server.port} closed the connection after "
        "421 4.3.2 shutting down"
    )
    assert script.messages == []


async def test_line_break_in_an_address_is_refused(start_sink: StartSink, eml: Path) -> None:
    sink = start_sink()
    relay = make_relay(sink.port)
    result = await relay.deliver(request(eml, "b@example.org\r\nRCPT TO:<c@example.org>"))
    assert outcomes(result) == ["permanent"]
    assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
    assert len(sink.messages) == 1
    await relay.aclose()


async def test_idle_connections_expire(
    start_sink: StartSink, eml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smtp_pool, "IDLE_SECONDS", 0.1)
    sink = start_sink()
    relay = make_relay(sink.port)
    assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
    await trio.sleep(0.2)
    assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
    assert sink.connections == 2
    assert sink.handler.quits == 1  # the expired one was closed politely
    await relay.aclose()


async def test_a_connection_just_used_is_reused_without_rset(eml: Path) -> None:
    script = ScriptedSmtp()
    async with raw_server(script) as server:
        relay = make_relay(server.port)
        for _ in range(3):
            assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
        await relay.aclose()
    assert server.connections == 1
    assert not [c for c in script.commands if c.upper().startswith(b"RSET")]
    assert len(script.messages) == 3


async def test_a_reused_connection_found_dead_is_replaced_and_the_message_sent_once(
    eml: Path,
) -> None:
    """The server hangs up after each message; the client sees it only on reuse (no RSET):
    not one reply, so nothing was sent, and the message goes over a new connection."""
    script = ScriptedSmtp(hang_up_after_message=True)
    async with raw_server(script) as server:
        relay = make_relay(server.port)
        assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
        assert relay.idle_connections == 1  # the hang-up is not seen yet
        assert outcomes(await relay.deliver(request(eml))) == ["delivered"]
        await relay.aclose()
    assert server.connections == 2
    assert len(script.messages) == 2
