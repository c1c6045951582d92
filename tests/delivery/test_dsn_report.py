"""The DSN message itself (RFC 3464 in RFC 6522 multipart/report), read back with the standard
library's ``email`` parser field by field."""

from __future__ import annotations

import email
import email.message
import email.policy
from email.message import Message

import pytest

from dispatch.delivery.bounces import is_delivery_report
from dispatch.delivery.dsn_report import (
    RecipientReport,
    ReportFacts,
    build_report,
    diagnostic_of,
    header_section,
    status_of,
)
from tests.support.mime_parts import parts_of, text_of

ORIGINAL = (
    b"Received: from client\r\nFrom: app@sender.test\r\nTo: b@y.test\r\n"
    b"Subject: invoice 42\r\nMessage-ID: <m42@sender.test>\r\n\r\nThe body.\r\nSecond line.\r\n"
)
FACTS = ReportFacts(
    reporting_mta="mx.dispatch.test",
    original_sender="app@sender.test",
    message_id="spl_01ABC",
    arrived_at=1_700_000_000.0,
    envid="env-42",
    ret=None,
    now=1_700_000_600.0,
)


def _parse(report: bytes) -> Message:
    message = email.message_from_bytes(report, policy=email.policy.compat32)
    assert not message.defects
    return message


def _status_blocks(message: Message) -> list[Message]:
    """The per-message block, then one per recipient (message/delivery-status parts)."""
    status = parts_of(message)[1]
    assert status.get_content_type() == "message/delivery-status"
    return parts_of(status)


def test_a_failure_report_field_by_field() -> None:
    reports = [
        RecipientReport(
            recipient="reject-1@y.test",
            action="failed",
            response="550 5.1.1 no such user",
            orcpt="rfc822;Reject-1@Y.test",
            remote_mta="smtp.y.test",
            last_attempt=1_700_000_500.0,
        )
    ]
    message = _parse(build_report(FACTS, reports, ORIGINAL))
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["To"] == "<app@sender.test>"
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@mx.dispatch.test>"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"
    parts = parts_of(message)
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    human_bytes = parts[0].get_payload(decode=True)
    assert isinstance(human_bytes, bytes)
    human = human_bytes.decode()
    assert "could not be delivered" in human
    assert "<reject-1@y.test>" in human
    assert "550 5.1.1 no such user" in human
    per_message, recipient = _status_blocks(message)
    assert per_message["Reporting-MTA"] == "dns; mx.dispatch.test"
    assert per_message["Original-Envelope-Id"] == "env-42"
    assert per_message["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert recipient["Original-Recipient"] == "rfc822;Reject-1@Y.test"
    assert recipient["Final-Recipient"] == "rfc822; reject-1@y.test"
    assert recipient["Action"] == "failed"
    assert recipient["Status"] == "5.1.1"
    assert recipient["Remote-MTA"] == "dns; smtp.y.test"
    assert recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert recipient["Last-Attempt-Date"] == "Tue, 14 Nov 2023 22:21:40 +0000"
    # RET=HDRS (the default): the header section only, byte for byte.
    returned = text_of(parts[2])
    assert returned.replace("\r\n", "\n").strip() == header_section(ORIGINAL).decode().replace(
        "\r\n", "\n"
    )
    assert "The body." not in returned


def test_ret_full_returns_the_whole_message_and_no_envid_means_no_field() -> None:
    facts = ReportFacts(
        reporting_mta="mx.dispatch.test",
        original_sender="app@sender.test",
        message_id="spl_01ABC",
        arrived_at=1_700_000_000.0,
        ret="FULL",
        now=1_700_000_600.0,
    )
    reports = [RecipientReport(recipient="b@y.test", action="failed", response="x", gave_up=True)]
    message = _parse(build_report(facts, reports, ORIGINAL))
    returned = parts_of(message)[2]
    assert returned.get_content_type() == "message/rfc822"
    inner = parts_of(returned)[0]
    assert inner["Subject"] == "invoice 42"
    assert text_of(inner).replace("\r\n", "\n") == "The body.\nSecond line.\n"
    per_message, recipient = _status_blocks(message)
    assert "Original-Envelope-Id" not in per_message
    assert recipient["Status"] == "5.4.7"  # the retries ran out
    assert recipient["Diagnostic-Code"] == "X-Dispatch; x"
    assert "Original-Recipient" not in recipient


def test_several_recipients_and_actions_share_one_report() -> None:
    reports = [
        RecipientReport(recipient="a@y.test", action="failed", response="s: 550 nope"),
        RecipientReport(recipient="b@y.test", action="relayed", response="250 2.0.0 ok"),
        RecipientReport(recipient="c@y.test", action="delayed", response="451 4.3.0 later"),
    ]
    message = _parse(build_report(FACTS, reports, ORIGINAL))
    blocks = _status_blocks(message)[1:]
    assert [(b["Final-Recipient"], b["Action"], b["Status"]) for b in blocks] == [
        ("rfc822; a@y.test", "failed", "5.0.0"),
        ("rfc822; b@y.test", "relayed", "2.0.0"),
        ("rfc822; c@y.test", "delayed", "4.3.0"),
    ]
    assert blocks[0]["Diagnostic-Code"] == "smtp; 550 nope"  # the relay's prefix dropped


def test_the_report_is_recognised_as_one_and_an_ordinary_message_is_not() -> None:
    reports = [RecipientReport(recipient="b@y.test", action="failed", response="550 no")]
    assert is_delivery_report(build_report(FACTS, reports, ORIGINAL))
    assert not is_delivery_report(ORIGINAL)
    folded = b"Content-Type: multipart/report;\r\n report-type=delivery-status;\r\n b=x\r\n\r\n"
    assert is_delivery_report(folded)


@pytest.mark.parametrize(
    ("action", "response", "status"),
    [
        ("failed", "550 5.7.1 relay denied", "5.7.1"),
        ("failed", "451 4.4.1 timeout", "5.0.0"),  # a 4.x.x code never marks a failure
        ("delivered", "250 2.6.0 queued", "2.6.0"),
        ("delayed", "connection refused", "4.4.7"),
    ],
)
def test_status_codes(action: str, response: str, status: str) -> None:
    report = RecipientReport(recipient="b@y.test", action=action, response=response)  # type: ignore[arg-type]
    assert status_of(report) == status


def test_a_long_multi_line_reply_stays_within_the_line_limit() -> None:
    reply = "\r\n".join(f"550-5.7.1 line {n} " + "x" * 300 for n in range(20))
    reports = [RecipientReport(recipient="b@y.test", action="failed", response=reply)]
    report = build_report(FACTS, reports, ORIGINAL)
    assert max(len(line) for line in report.split(b"\r\n")) <= 998  # RFC 5322 §2.1.1
    (block,) = _status_blocks(_parse(report))[1:]
    assert block["Diagnostic-Code"].startswith("smtp; 550-5.7.1 line 0 xxx")
    assert block["Status"] == "5.7.1"


def test_diagnostic_of_strips_control_characters() -> None:
    assert diagnostic_of("550 bad\r\nInjected: yes") == "smtp; 550 bad Injected: yes"
    assert diagnostic_of("") is None
