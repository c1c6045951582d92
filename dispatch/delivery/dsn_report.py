"""The bytes of a delivery status notification (RFC 3464 inside RFC 6522's multipart/report).

Pure: given what happened to which recipients and the original message's bytes (or its
header section), :func:`build_report` returns the message to spool. Its parts, in the order
RFC 6522 §3 requires:

1. ``text/plain``: what happened, for a person;
2. ``message/delivery-status`` (RFC 3464 §2): the per-message fields (``Reporting-MTA``,
   ``Original-Envelope-Id`` if the sender gave ENVID, ``Arrival-Date``), then one block per
   recipient (``Original-Recipient`` if ORCPT was given, ``Final-Recipient``, ``Action``,
   ``Status``, ``Remote-MTA``, ``Diagnostic-Code`` with the upstream's reply,
   ``Last-Attempt-Date``);
3. the original: ``text/rfc822-headers`` (RET=HDRS, the default) or ``message/rfc822``
   (RET=FULL) — the bytes as stored, never re-serialised.

The report itself is 7-bit where it can be; an original with 8-bit bytes in its returned part
makes the report need 8BITMIME, as for any 8-bit message Dispatch relays.
"""

from __future__ import annotations

import datetime
import email.utils
import re
import secrets
from collections.abc import Sequence
from typing import Final, Literal

import attrs

Action = Literal["failed", "delayed", "delivered", "relayed"]

_ENHANCED: Final = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_CODE: Final = re.compile(r"(?:^|:\s)([2-5]\d\d)[ -]")
_UNSAFE: Final = re.compile(r"[\x00-\x1f\x7f]+")
_HEADER_END: Final = re.compile(rb"\r?\n\r?\n")
# A multi-line upstream reply becomes one field line: kept under RFC 5322's 998 octets.
MAX_DIAGNOSTIC: Final = 900
MAX_RETURNED_FULL: Final = 1_048_576  # RET=FULL of a larger message returns its headers only


@attrs.frozen(kw_only=True)
class RecipientReport:
    """One recipient's block of the report."""

    recipient: str
    action: Action
    response: str  # the upstream's reply, or what went wrong ("connection refused")
    orcpt: str | None = None  # addr-type;address as given with ORCPT
    remote_mta: str | None = None
    last_attempt: float | None = None
    gave_up: bool = False  # failed because the retries ran out, not because of a 5xx


@attrs.frozen(kw_only=True)
class ReportFacts:
    """What the report says about the message as a whole."""

    reporting_mta: str
    original_sender: str
    message_id: str  # the spool id of the original
    arrived_at: float
    envid: str | None = None
    ret: Literal["FULL", "HDRS"] | None = None
    now: float


def status_of(report: RecipientReport) -> str:
    """The RFC 3463 status code for the ``Status`` field.

    The upstream's enhanced code when it gave one of the right class; else one derived
    from the action: 5.0.0 refused, 5.4.7 retries ran out (delivery time expired), 4.0.0 /
    4.4.7 delayed, 2.0.0 delivered or relayed.
    """
    match = _ENHANCED.search(report.response)
    wanted = {"failed": "5", "delayed": "4", "delivered": "2", "relayed": "2"}[report.action]
    if match is not None and match.group(1) == wanted:
        return ".".join(match.groups())
    if report.action == "failed":
        return "5.4.7" if report.gave_up else "5.0.0"
    if report.action == "delayed":
        return "4.4.7"
    return "2.0.0"


def diagnostic_of(response: str) -> str | None:
    """The ``Diagnostic-Code`` value: ``smtp; <reply>`` when the response holds an SMTP
    reply (a relay may prefix it with its name), else ``X-Dispatch; <text>``."""
    text = _UNSAFE.sub(" ", response).strip()[:MAX_DIAGNOSTIC]
    if not text:
        return None
    match = _REPLY_CODE.search(text)
    if match is not None:
        return f"smtp; {text[match.start(1) :]}"
    return f"X-Dispatch; {text}"


def _date(at: float) -> str:
    """RFC 5322 date-time in UTC, ``+0000`` (``-0000`` would mean "offset unknown")."""
    return email.utils.format_datetime(datetime.datetime.fromtimestamp(at, datetime.UTC))


def _address_type(address: str) -> str:
    return "rfc822" if address.isascii() else "utf-8"  # RFC 6533 §3 for non-ASCII addresses


def _human_text(facts: ReportFacts, reports: Sequence[RecipientReport]) -> str:
    lines = [
        f"This is the mail system at {facts.reporting_mta}.",
        "",
    ]
    groups: dict[Action, list[RecipientReport]] = {}
    for report in reports:
        groups.setdefault(report.action, []).append(report)
    intro = {
        "failed": "Your message could not be delivered to these recipients:",
        "delayed": "Your message has not been delivered yet to these recipients; "
        "delivery will be retried, and you will be told if it fails:",
        "delivered": "Your message was delivered to these recipients:",
        "relayed": "Your message was handed on to these recipients' mail systems, which "
        "do not send delivery notices:",
    }
    for action in ("failed", "delayed", "delivered", "relayed"):
        if action not in groups:
            continue
        lines.append(intro[action])
        lines.append("")
        for report in groups[action]:
            lines.append(f"  <{report.recipient}>")
            if report.response:
                lines.append(f"    {_UNSAFE.sub(' ', report.response)[:MAX_DIAGNOSTIC]}")
        lines.append("")
    lines.append(f"Queue id of your message: {facts.message_id}")
    return "\r\n".join(lines) + "\r\n"


def _status_fields(facts: ReportFacts, reports: Sequence[RecipientReport]) -> str:
    """The message/delivery-status body (RFC 3464 §2.1: per-message, then per-recipient)."""
    blocks = []
    per_message = [f"Reporting-MTA: dns; {facts.reporting_mta}"]
    if facts.envid is not None:
        per_message.append(f"Original-Envelope-Id: {_UNSAFE.sub(' ', facts.envid)}")
    per_message.append(f"X-Dispatch-Queue-ID: {facts.message_id}")
    per_message.append(f"Arrival-Date: {_date(facts.arrived_at)}")
    blocks.append(per_message)
    for report in reports:
        block = []
        if report.orcpt is not None:
            block.append(f"Original-Recipient: {_UNSAFE.sub(' ', report.orcpt)}")
        block.append(f"Final-Recipient: {_address_type(report.recipient)}; {report.recipient}")
        block.append(f"Action: {report.action}")
        block.append(f"Status: {status_of(report)}")
        if report.remote_mta:
            block.append(f"Remote-MTA: dns; {report.remote_mta}")
        if (diagnostic := diagnostic_of(report.response)) is not None:
            block.append(f"Diagnostic-Code: {diagnostic}")
        if report.last_attempt is not None:
            block.append(f"Last-Attempt-Date: {_date(report.last_attempt)}")
        blocks.append(block)
    return "".join("\r\n".join(block) + "\r\n\r\n" for block in blocks)


def header_section(original: bytes) -> bytes:
    """The original's header section, without the blank line that ends it."""
    match = _HEADER_END.search(original)
    return original if match is None else original[: match.start()]


def _subject(reports: Sequence[RecipientReport]) -> str:
    actions = {r.action for r in reports}
    if "failed" in actions:
        return "Undelivered Mail Returned to Sender"
    if "delayed" in actions:
        return "Delayed Mail (still being retried)"
    return "Successful Mail Delivery Report"


def build_report(facts: ReportFacts, reports: Sequence[RecipientReport], original: bytes) -> bytes:
    """The whole DSN message, CRLF line ends (see the module docstring).

    ``original``: the stored message, or at least its header section (all that RET=HDRS
    returns). Sent from the null reverse path by the caller (RFC 3461 §6.2).
    """
    if not reports:
        raise ValueError("a delivery status notification needs at least one recipient")
    boundary = f"dispatch-dsn-{secrets.token_hex(12)}"
    full = facts.ret == "FULL" and len(original) <= MAX_RETURNED_FULL
    returned = original if full else header_section(original) + b"\r\n"
    returned_type = "message/rfc822" if full else "text/rfc822-headers"
    eight_bit = not returned.isascii()
    domain = facts.reporting_mta
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{domain}>",
        f"To: <{facts.original_sender}>",
        f"Subject: {_subject(reports)}",
        f"Date: {_date(facts.now)}",
        f"Message-ID: <{facts.message_id}.{secrets.token_hex(6)}.dsn@{domain}>",
        "Auto-Submitted: auto-replied",  # RFC 3834 §5: no automatic reply to this
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    text_part = _human_text(facts, reports)
    body = [
        "\r\n".join(head).encode("utf-8") + b"\r\n\r\n",
        b"This is a MIME-encapsulated message.\r\n\r\n",
        f"--{boundary}\r\n".encode(),
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" if not text_part.isascii() else b"\r\n",
        text_part.encode("utf-8"),
        f"\r\n--{boundary}\r\n".encode(),
        b"Content-Type: message/delivery-status\r\n\r\n",
        _status_fields(facts, reports).encode("utf-8"),
        f"--{boundary}\r\n".encode(),
        f"Content-Type: {returned_type}\r\n".encode(),
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" if eight_bit else b"\r\n",
        returned if returned.endswith(b"\n") else returned + b"\r\n",
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    return b"".join(body)
