"""Bounces end to end: smtplib → Dispatch → a sink that refuses → a DSN, spooled and routed
back through Dispatch to a second sink that captures it (RFC 3461, RFC 3464, RFC 6522).

Two sinks: ``upstream`` takes the mail (and refuses ``reject…`` recipients with 550 5.1.1),
``returns`` takes whatever goes to the sender domain ``sender.test`` — the DSNs.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import trio

from dispatch.spool import MessageState
from tests.conftest import free_port
from tests.delivery.harness import Running, running_dispatch
from tests.support.config import base_config, smtp_relay
from tests.support.mime_parts import parts_of, text_of
from tests.support.sink import Sink, StartSink
from tests.support.waiting import wait_until_async

SENDER = "app@sender.test"
MESSAGE = b"From: app@sender.test\r\nTo: b@y.test\r\nSubject: invoice %s\r\n\r\nHello.\r\n"
SETTLE = 1.0  # seconds to wait for something that must not happen


def config_for(root: Path, upstream: Sink | int, returns: Sink, **sections: Any) -> dict[str, Any]:
    port = upstream if isinstance(upstream, int) else upstream.port
    relays = [smtp_relay("upstream", port), smtp_relay("returns", returns.port)]
    routes = [{"recipient_domain": "sender.test", "relay": "returns"}]
    return base_config(root, relays=relays, routes=routes, default_relay="upstream", **sections)


def send(
    dispatch: Running,
    sender: str,
    recipients: list[str],
    message: bytes,
    *,
    mail_options: tuple[str, ...] = (),
    rcpt_options: tuple[str, ...] = (),
) -> str:
    """Submit with smtplib and DSN parameters (blocking); the queue id."""
    with smtplib.SMTP("127.0.0.1", dispatch.smtp_port, timeout=10) as client:
        client.ehlo()
        assert client.has_extn("dsn")
        client.mail(sender, list(mail_options))
        for recipient in recipients:
            code, text = client.rcpt(recipient, list(rcpt_options))
            assert code == 250, (code, text)
        code, text = client.data(message)
        assert code == 250, (code, text)
        return text.split()[-1].decode()


async def submit(dispatch: Running, *args: Any, **kwargs: Any) -> str:
    return await trio.to_thread.run_sync(lambda: send(dispatch, *args, **kwargs))


def parsed(content: bytes) -> Message:
    message = email.message_from_bytes(content, policy=email.policy.compat32)
    assert not message.defects
    return message


def status_blocks(report: Message) -> list[Message]:
    part = parts_of(report)[1]
    assert part.get_content_type() == "message/delivery-status"
    return parts_of(part)


async def test_one_refusal_gives_exactly_one_dsn_routed_back_to_the_sender(
    tmp_path: Path, start_sink: StartSink
) -> None:
    upstream, returns = start_sink(), start_sink()
    monitoring = f"127.0.0.1:{free_port()}"
    config = config_for(
        tmp_path,
        upstream,
        returns,
        listener={"server_name": "mx.dispatch.test"},
        monitoring={"address": monitoring},
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        message_id = await submit(
            dispatch,
            SENDER,
            ["reject-1@y.test", "fine@y.test"],
            MESSAGE % b"42",
            mail_options=("RET=HDRS", "ENVID=inv+2B42"),
            rcpt_options=("ORCPT=rfc822;Reject-1+40y.test",),
        )
        spool = dispatch.parts.spool
        await wait_until_async(lambda: len(returns.messages) == 1)
        await wait_until_async(lambda: spool.counts().total == 1)  # the original, failed/
        await trio.sleep(SETTLE)
        assert len(returns.messages) == 1  # exactly one, however many rows the failure wrote
        assert spool.get(message_id).state is MessageState.FAILED
        history = await dispatch.history(message_id)
        stats = dispatch.parts.stats
        assert stats.dsn_queued.value == 1
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://{monitoring}/metrics")).text
            debug_vars = (await http.get(f"http://{monitoring}/debug/vars")).json()
    assert "dispatch_dsn_queued_total 1.0" in metrics
    assert debug_vars["dispatch/queue/dsnQueued"] == 1
    assert [m.rcpt_tos for m in upstream.messages] == [("fine@y.test",)]
    dsn = returns.messages[0]
    assert dsn.mail_from == "<>" or dsn.mail_from == ""  # the null reverse path
    assert dsn.rcpt_tos == (SENDER,)
    report = parsed(dsn.content.split(b"\r\n", 1)[1])  # after Dispatch's Received: line
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["To"] == f"<{SENDER}>"
    assert report["Subject"] == "Undelivered Mail Returned to Sender"
    per_message, *recipients = status_blocks(report)
    assert per_message["Reporting-MTA"] == "dns; mx.dispatch.test"
    assert per_message["Original-Envelope-Id"] == "inv+42"
    assert per_message["X-Dispatch-Queue-ID"] == message_id
    assert per_message["Arrival-Date"]
    assert len(recipients) == 1  # fine@y.test was delivered and asked for no success notice
    block = recipients[0]
    assert block["Original-Recipient"] == "rfc822;Reject-1@y.test"
    assert block["Final-Recipient"] == "rfc822; reject-1@y.test"
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert block["Remote-MTA"] == "dns; 127.0.0.1"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    returned = parts_of(report)[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "Subject: invoice 42" in text_of(returned)
    assert "Hello." not in text_of(returned)
    assert [e.event for e in history] == ["received", "delivered", "failed"]


async def test_an_operator_retry_that_fails_again_sends_no_second_dsn(
    tmp_path: Path, start_sink: StartSink
) -> None:
    upstream, returns = start_sink(), start_sink()
    async with running_dispatch(tmp_path, config_for(tmp_path, upstream, returns)) as dispatch:
        message_id = await submit(dispatch, SENDER, ["reject-12@y.test"], MESSAGE % b"again")
        spool = dispatch.parts.spool
        await wait_until_async(lambda: len(returns.messages) == 1)
        await wait_until_async(lambda: spool.get(message_id).state is MessageState.FAILED)
        assert spool.get(message_id).envelope.bounced
        await dispatch.parts.store.suppressions.remove("reject-12@y.test")  # let it reach
        await spool.retry_failed(message_id)  # as `dispatch spool retry` does
        await wait_until_async(lambda: upstream.handler.refused["rcpt 550"] == 2)
        await wait_until_async(lambda: spool.get(message_id).state is MessageState.FAILED)
        await trio.sleep(SETTLE)
        assert dispatch.parts.stats.dsn_queued.value == 1
    assert len(returns.messages) == 1


async def test_a_null_sender_message_never_bounces(tmp_path: Path, start_sink: StartSink) -> None:
    upstream, returns = start_sink(), start_sink()
    async with running_dispatch(tmp_path, config_for(tmp_path, upstream, returns)) as dispatch:
        message_id = await submit(dispatch, "", ["reject-2@y.test"], MESSAGE % b"null")
        spool = dispatch.parts.spool
        await wait_until_async(lambda: spool.get(message_id).state is MessageState.FAILED)
        await trio.sleep(SETTLE)
        assert spool.counts().total == 1
        assert dispatch.parts.stats.dsn_queued.value == 0
    assert returns.messages == []


async def test_a_dsn_that_bounces_is_never_bounced_again(
    tmp_path: Path, start_sink: StartSink
) -> None:
    upstream, returns = start_sink(), start_sink()  # returns refuses reject… senders too
    async with running_dispatch(tmp_path, config_for(tmp_path, upstream, returns)) as dispatch:
        await submit(dispatch, "reject-sender@sender.test", ["reject-3@y.test"], MESSAGE % b"b")
        spool = dispatch.parts.spool
        await wait_until_async(lambda: spool.counts().failed == 2)  # the original, the DSN
        await trio.sleep(SETTLE)
        assert spool.counts().total == 2
        assert dispatch.parts.stats.dsn_queued.value == 1
        failed = [e.envelope for e in spool.entries(MessageState.FAILED)]
    assert returns.refused["rcpt 550"] == 1
    assert sorted(e.source for e in failed) == ["bounce", "smtp"]


async def test_a_delivery_report_from_a_real_sender_is_not_answered(
    tmp_path: Path, start_sink: StartSink
) -> None:
    upstream, returns = start_sink(), start_sink()
    report = (
        b"From: MAILER-DAEMON@elsewhere.test\r\nTo: b@y.test\r\nSubject: bounce\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b--\r\n"
    )
    async with running_dispatch(tmp_path, config_for(tmp_path, upstream, returns)) as dispatch:
        message_id = await submit(dispatch, SENDER, ["reject-4@y.test"], report)
        spool = dispatch.parts.spool
        await wait_until_async(lambda: spool.get(message_id).state is MessageState.FAILED)
        await trio.sleep(SETTLE)
        assert dispatch.parts.stats.dsn_queued.value == 0
    assert returns.messages == []


async def test_notify_never_and_bounces_disabled_send_nothing(
    tmp_path: Path, start_sink: StartSink
) -> None:
    upstream, returns = start_sink(), start_sink()
    async with running_dispatch(tmp_path, config_for(tmp_path, upstream, returns)) as dispatch:
        never = await submit(
            dispatch, SENDER, ["reject-5@y.test"], MESSAGE % b"n", rcpt_options=("NOTIFY=NEVER",)
        )
        spool = dispatch.parts.spool
        await wait_until_async(lambda: spool.get(never).state is MessageState.FAILED)
        await trio.sleep(SETTLE)
        assert dispatch.parts.stats.dsn_queued.value == 0
    assert returns.messages == []
    other = tmp_path / "off"
    config = config_for(other, upstream, returns, bounces={"enabled": False})
    async with running_dispatch(other, config) as dispatch:
        off = await submit(dispatch, SENDER, ["reject-6@y.test"], MESSAGE % b"off")
        spool = dispatch.parts.spool
        await wait_until_async(lambda: spool.get(off).state is MessageState.FAILED)
        await trio.sleep(SETTLE)
        assert dispatch.parts.stats.dsn_queued.value == 0
    assert returns.messages == []


async def test_retries_exhausted_bounce_once_with_the_last_reason(
    tmp_path: Path, start_sink: StartSink
) -> None:
    returns = start_sink()
    config = config_for(
        tmp_path,
        free_port(),  # nothing listens: every attempt is refused
        returns,
        spool={"retry_delays_seconds": [0.05], "max_retries": 2},
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        message_id = await submit(dispatch, SENDER, ["b@y.test"], MESSAGE % b"down")
        await wait_until_async(lambda: len(returns.messages) == 1)
        await trio.sleep(SETTLE)
        assert dispatch.parts.spool.get(message_id).envelope.attempts == 3
    assert len(returns.messages) == 1
    (block,) = status_blocks(parsed(returns.messages[0].content))[1:]
    assert block["Action"] == "failed"
    assert block["Status"] == "5.4.7"  # delivery time expired
    assert "refused" in block["Diagnostic-Code"]


async def test_a_delay_warning_goes_once_then_the_failure(
    tmp_path: Path, start_sink: StartSink
) -> None:
    returns = start_sink()
    config = config_for(
        tmp_path,
        free_port(),
        returns,
        spool={"retry_delays_seconds": [0.3], "max_retries": 8},
        bounces={"delay_warning_after_seconds": 1},
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        await submit(dispatch, SENDER, ["b@y.test"], MESSAGE % b"slow")
        await wait_until_async(lambda: len(returns.messages) == 2)
        await trio.sleep(SETTLE)
    actions = [status_blocks(parsed(m.content))[1]["Action"] for m in returns.messages]
    assert actions == ["delayed", "failed"]
    first = parsed(returns.messages[0].content)
    assert first["Subject"] == "Delayed Mail (still being retried)"


async def test_dsn_parameters_go_to_an_upstream_that_offers_dsn_and_it_reports_success(
    tmp_path: Path, start_sink: StartSink
) -> None:
    upstream, returns = start_sink(dsn=True), start_sink()
    async with running_dispatch(tmp_path, config_for(tmp_path, upstream, returns)) as dispatch:
        await submit(
            dispatch,
            SENDER,
            ["b@y.test"],
            MESSAGE % b"dsn",
            mail_options=("RET=FULL", "ENVID=abc+2B1"),
            rcpt_options=("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b+40y.test"),
        )
        await wait_until_async(lambda: dispatch.parts.spool.counts().total == 0)
        await trio.sleep(SETTLE)
        assert dispatch.parts.stats.dsn_queued.value == 0  # the upstream's to send now
    (received,) = upstream.messages
    # aiosmtpd upper-cases the parameters it reads; xtext's hex digits are upper-case anyway.
    assert {"RET=FULL", "ENVID=ABC+2B1"} <= set(received.mail_options)
    assert upstream.handler.rcpt_options["b@y.test"] == (
        "NOTIFY=SUCCESS,FAILURE",
        "ORCPT=RFC822;B@Y.TEST",  # re-encoded: "@" needs no escape in xtext
    )
    assert returns.messages == []


async def test_notify_success_through_an_upstream_without_dsn_says_relayed(
    tmp_path: Path, start_sink: StartSink
) -> None:
    upstream, returns = start_sink(), start_sink()  # upstream offers no DSN
    async with running_dispatch(tmp_path, config_for(tmp_path, upstream, returns)) as dispatch:
        await submit(
            dispatch,
            SENDER,
            ["b@y.test", "c@y.test"],
            MESSAGE % b"ok",
            rcpt_options=("NOTIFY=SUCCESS",),
        )
        await wait_until_async(lambda: len(returns.messages) == 1)
        await trio.sleep(SETTLE)
    assert upstream.messages[0].mail_options == ("BODY=8BITMIME",) or all(
        not o.startswith(("RET", "ENVID")) for o in upstream.messages[0].mail_options
    )
    assert len(returns.messages) == 1
    report = parsed(returns.messages[0].content)
    assert report["Subject"] == "Successful Mail Delivery Report"
    blocks = status_blocks(report)[1:]
    assert [(b["Final-Recipient"], b["Action"], b["Status"]) for b in blocks] == [
        ("rfc822; b@y.test", "relayed", "2.0.0"),
        ("rfc822; c@y.test", "relayed", "2.0.0"),
    ]
