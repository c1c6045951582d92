"""A spooled MIME message as the JSON fields of Postmark's ``POST /email``.

Postmark takes fields, not raw MIME, so the message is parsed (stdlib ``email``) and
rebuilt by Postmark. What is kept: From, Subject, Reply-To, the To and Cc
addresses that are envelope recipients of this attempt, every other header as a
``Headers`` entry (values unfolded, encoded words as stored), the first ``text/plain`` and
first ``text/html`` part that is not an attachment (decoded to text), and every other leaf
part as an attachment (base64, with ``ContentID`` for parts that have a ``Content-ID``).
What is lost is listed in docs/providers.md (structure, header order and duplicates of the
mapped headers, charsets, transfer encodings, preamble and epilogue).

Envelope recipients (RFC 5321) decide who receives the message: a header address that is
not an envelope recipient of this attempt is left out (it was delivered elsewhere, or
never meant to be), and envelope recipients named in no To or Cc header go to ``Bcc``.
"""

from __future__ import annotations

import base64
import email.header
import email.parser
import email.policy
import email.utils
from email.message import Message
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


def _utf8(value: str) -> str:
    """A header value as parsed from bytes (raw 8-bit bytes kept as surrogates) as text,
    raw bytes read as UTF-8 (RFC 6532)."""
    return value.encode("ascii", "surrogateescape").decode("utf-8", "replace")


def _decoded(value: object) -> str:
    """A header value as text: unfolded, 8-bit UTF-8 and RFC 2047 encoded words decoded."""
    text = _utf8(_unfold(str(value)))
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (ValueError, LookupError, UnicodeError):
        return text  # an unknown charset or a broken encoded word: as stored


def _pick(headers: list[tuple[str, str]], name: str, wanted: dict[str, str]) -> list[str]:
    """The header's addresses that are envelope recipients, in display form; each taken
    only once (the first header naming it wins)."""
    picked = []
    values = [_decoded(v) for n, v in headers if n.lower() == name]
    for display, addr in email.utils.getaddresses(values):
        rcpt = wanted.pop(addr.lower(), None)
        if rcpt is not None:
            picked.append(email.utils.formataddr((display, addr)) if display else addr)
    return picked


def _text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    charset = part.get_content_charset() or "us-ascii"
    try:
        text = data.decode(charset, "replace")
    except LookupError:  # a charset Python does not know: UTF-8 is the likeliest
        text = data.decode("utf-8", "replace")
    return text.replace("\r\n", "\n")


def _leaves(part: Message) -> list[Message]:
    """The parts that carry content, depth first; an attached message stays whole."""
    if part.get_content_type() == "message/rfc822" or not part.is_multipart():
        return [part]
    children = part.get_payload()
    assert isinstance(children, list)  # is_multipart()
    return [leaf for child in children if isinstance(child, Message) for leaf in _leaves(child)]


def _attachment(part: Message, index: int) -> dict[str, object]:
    if part.get_content_type() == "message/rfc822":
        inner = part.get_payload(0)
        data = inner.as_bytes() if isinstance(inner, Message) else b""
    else:
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
    name = part.get_filename()
    item: dict[str, object] = {
        "Name": _decoded(name) if name else f"part-{index}",
        "Content": base64.b64encode(data).decode("ascii"),
        "ContentType": part.get_content_type(),
    }
    if (cid := part.get("Content-ID")) is not None:
        item["ContentID"] = "cid:" + str(cid).strip().strip("<>")
    return item


def _is_body(part: Message, subtype: str) -> bool:
    return (
        part.get_content_maintype() == "text"
        and part.get_content_subtype() == subtype
        and part.get_content_disposition() != "attachment"
    )


def map_message(raw: bytes, recipients: tuple[str, ...], stream: str) -> PostmarkMessage:
    """Map one spooled message for the envelope ``recipients`` of this attempt, sent to
    Postmark's message stream ``stream``. Runs in a worker thread (parsing is CPU work).

    Parsed with the ``compat32`` policy: the ``default`` policy parses every header into
    objects and costs five times as much CPU per message."""
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    wanted = {r.lower(): r for r in recipients}
    addresses = dict(wanted)
    # Raw values: the policy's own would wrap 8-bit ones in Header objects.
    headers = [(name, str(value)) for name, value in message.raw_items()]
    first = {}
    for name, value in reversed(headers):
        first[name.lower()] = value
    to, cc = _pick(headers, "to", wanted), _pick(headers, "cc", wanted)
    fields: dict[str, object] = {"From": _decoded(first.get("from", "")), "MessageStream": stream}
    if (subject := first.get("subject")) is not None:
        fields["Subject"] = _decoded(subject)
    if (reply_to := first.get("reply-to")) is not None:
        fields["ReplyTo"] = _decoded(reply_to)
    fields["Headers"] = [
        {"Name": name, "Value": _utf8(_unfold(value))}
        for name, value in headers
        if name.lower() not in _MAPPED
    ]
    leaves = _leaves(message)
    text = next((part for part in leaves if _is_body(part, "plain")), None)
    html = next((part for part in leaves if _is_body(part, "html")), None)
    if text is not None:
        fields["TextBody"] = _text(text)
    if html is not None:
        fields["HtmlBody"] = _text(html)
    attachments = [
        _attachment(part, n)
        for n, part in enumerate(leaves, 1)
        if part is not text and part is not html
    ]
    if attachments:
        fields["Attachments"] = attachments
    return PostmarkMessage(fields, tuple(to), tuple(cc), tuple(wanted.values()), addresses)
