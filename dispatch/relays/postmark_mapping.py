"""A spooled MIME message as the JSON fields of Postmark's ``POST /email``.

Postmark takes fields, not raw MIME, so the message is parsed (stdlib ``email``, policy
``default``) and rebuilt by Postmark. What is kept: From, Subject, Reply-To, the To and Cc
addresses that are envelope recipients of this attempt, every other header as a
``Headers`` entry (values unfolded, encoded words as stored), the first ``text/plain`` and
first ``text/html`` bodies (decoded to text), and every other leaf part as an attachment
(base64, with ``ContentID`` for parts that have a ``Content-ID``). What is lost is listed in
docs/providers.md (structure, header order and duplicates of the mapped headers, charsets,
transfer encodings, preamble and epilogue).

Envelope recipients (RFC 5321) decide who receives the message: a header address that is
not an envelope recipient of this attempt is left out (it was delivered elsewhere, or
never meant to be), and envelope recipients named in no To or Cc header go to ``Bcc``.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import email.utils
from email.message import EmailMessage, MIMEPart
from typing import Final

import attrs

__all__ = ["PostmarkMessage", "map_message"]

# Headers that become Postmark fields or that Postmark writes itself (the MIME structure).
_MAPPED: Final = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "reply-to",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)


@attrs.frozen
class PostmarkMessage:
    """The fields shared by every request for one message, and who goes where."""

    fields: dict[str, object]  # From, Subject, TextBody, HtmlBody, Headers, Attachments...
    to: tuple[str, ...]  # display form ("Ana <ana@example.net>"), envelope recipients only
    cc: tuple[str, ...]
    bcc: tuple[str, ...]  # bare addresses
    addresses: dict[str, str]  # lower-cased address → the envelope recipient it stands for

    def bodies(self) -> list[tuple[dict[str, object], tuple[str, ...]]]:
        """The JSON bodies to post, each with the envelope recipients it covers.

        Postmark needs a ``To``; when no To header names an envelope recipient, each
        recipient gets its own request with itself as ``To`` (no recipient learns another's
        address, as a Bcc promises)."""
        if self.to:
            body = dict(self.fields, To=", ".join(self.to))
            if self.cc:
                body["Cc"] = ", ".join(self.cc)
            if self.bcc:
                body["Bcc"] = ", ".join(self.bcc)
            return [(body, tuple(self.addresses.values()))]
        return [
            (dict(self.fields, To=rcpt), (rcpt,)) for rcpt in dict.fromkeys(self.addresses.values())
        ]


def _unfold(value: str) -> str:
    return " ".join(line.strip() for line in value.replace("\r\n", "\n").split("\n")).strip()


def _pick(message: EmailMessage, name: str, wanted: dict[str, str]) -> list[str]:
    """The header's addresses that are envelope recipients, in display form; each taken
    only once (the first header naming it wins)."""
    picked = []
    for display, addr in email.utils.getaddresses([str(v) for v in message.get_all(name, [])]):
        rcpt = wanted.pop(addr.lower(), None)
        if rcpt is not None:
            picked.append(email.utils.formataddr((display, addr)) if display else addr)
    return picked


def _text(part: MIMEPart) -> str:
    content = part.get_content()
    return content if isinstance(content, str) else bytes(content).decode("utf-8", "replace")


def _leaves(part: MIMEPart) -> list[MIMEPart]:
    """The parts that carry content, depth first; an attached message stays whole."""
    if part.get_content_type() == "message/rfc822" or not part.is_multipart():
        return [part]
    return [leaf for child in part.iter_parts() for leaf in _leaves(child)]


def _attachment(part: MIMEPart, index: int) -> dict[str, object]:
    if part.get_content_type() == "message/rfc822":
        data = part.get_payload(0).as_bytes()  # type: ignore[union-attr]
    else:
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
    item: dict[str, object] = {
        "Name": part.get_filename() or f"part-{index}",
        "Content": base64.b64encode(data).decode("ascii"),
        "ContentType": part.get_content_type(),
    }
    if (cid := part.get("Content-ID")) is not None:
        item["ContentID"] = "cid:" + str(cid).strip().strip("<>")
    return item


def map_message(raw: bytes, recipients: tuple[str, ...], stream: str) -> PostmarkMessage:
    """Map one spooled message for the envelope ``recipients`` of this attempt, sent to
    Postmark's message stream ``stream``. Runs in a worker thread (parsing is CPU work)."""
    parser = email.parser.BytesParser(policy=email.policy.default)
    message = parser.parsebytes(raw)
    assert isinstance(message, EmailMessage)  # policy.default builds EmailMessage
    wanted = {r.lower(): r for r in recipients}
    addresses = dict(wanted)
    to, cc = _pick(message, "To", wanted), _pick(message, "Cc", wanted)
    fields: dict[str, object] = {"From": str(message.get("From", "")), "MessageStream": stream}
    if (subject := message.get("Subject")) is not None:
        fields["Subject"] = str(subject)
    if (reply_to := message.get("Reply-To")) is not None:
        fields["ReplyTo"] = str(reply_to)
    fields["Headers"] = [
        {"Name": name, "Value": _unfold(str(value))}
        for name, value in message.raw_items()
        if name.lower() not in _MAPPED
    ]
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    if text is not None:
        fields["TextBody"] = _text(text)
    if html is not None:
        fields["HtmlBody"] = _text(html)
    attachments = [
        _attachment(part, n)
        for n, part in enumerate(_leaves(message), 1)
        if part is not text and part is not html
    ]
    if attachments:
        fields["Attachments"] = attachments
    return PostmarkMessage(fields, tuple(to), tuple(cc), tuple(wanted.values()), addresses)
