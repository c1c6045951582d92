"""Mailgun's sending fields, read into messages (pure but for reading the received body).

Two requests, as Mailgun documents them:

* ``POST /v3/{domain}/messages``: the fields of ``/api/v1/messages`` in Mailgun's names
  (``from``, ``to``, ``cc``, ``bcc``, ``subject``, ``text``, ``html``, ``attachment``,
  ``inline``, ``h:<Header>``, ``o:tag``) plus ``v:<name>`` (kept as the JSON object of the
  ``X-Mailgun-Variables`` header, as Mailgun writes it) and ``recipient-variables`` (a batch
  send: one message per ``to`` address, ``%recipient.<name>%``, ``%recipient_email%`` and
  ``%recipient_name%`` substituted in the subject, bodies and custom headers; a variable the
  recipient lacks becomes empty, as at Mailgun). Composed by :func:`dispatch.api.compose`.
* ``POST /v3/{domain}/messages.mime``: a ``message`` file holding a whole MIME message and
  the envelope recipients in ``to``; the message is spooled as given, only bare LF line ends
  made CRLF (RFC 5322 §2.3). The envelope sender is the message's ``From``.

Other ``o:`` options are refused with a message naming them, not silently ignored.
"""

from __future__ import annotations

import json
import re
from email import policy
from email.headerregistry import Address
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from typing import Final
from urllib.parse import parse_qsl

from dispatch.api.body import BodyRefusal, ReceivedBody, disk_refusal, media_type, read_form
from dispatch.api.compose import Composed, compose
from dispatch.api.mailboxes import parse_mailbox, split_address_list
from dispatch.api.problems import ValidationError
from dispatch.api.request import ComposeRequest, UploadedFile

__all__ = ["MAX_BATCH", "prepare_mailgun"]

MAX_BATCH: Final = 1000  # Mailgun's own limit of recipients per batch send
_SUBSTITUTED: Final = ("subject", "text", "html")
_PLACEHOLDER: Final = re.compile(r"%recipient(?:\.([^%\s]+)|_email|_name)%")

Pairs = list[tuple[str, str]]


def prepare_mailgun(
    body: ReceivedBody, content_type: str, *, mime: bool, message_id_domain: str, now: float
) -> list[Composed] | BodyRefusal:
    """The messages of one Mailgun request (blocking: call it in a thread)."""
    try:
        form = _read(body, content_type)
    except OSError as exc:
        return disk_refusal(exc, "read the body of an API request")
    if isinstance(form, BodyRefusal):
        return form
    pairs, uploads = form
    if mime:
        return _raw_message(pairs, uploads)
    return _composed(pairs, uploads, message_id_domain=message_id_domain, now=now)


def refusal(message: str, detail: object = None) -> BodyRefusal:
    """A ``400`` whose ``detail`` carries Mailgun's ``message`` text."""
    return BodyRefusal(400, message, detail)


def _read(body: ReceivedBody, content_type: str) -> tuple[Pairs, list[UploadedFile]] | BodyRefusal:
    if media_type(content_type) == "multipart/form-data":
        return read_form(body, content_type)
    raw = body.path.read_bytes()
    try:
        text = raw.decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text)), []
    except (UnicodeDecodeError, ValueError) as exc:
        return refusal("invalid form body", str(exc))


def _composed(
    pairs: Pairs, uploads: list[UploadedFile], *, message_id_domain: str, now: float
) -> list[Composed] | BodyRefusal:
    fields: Pairs = []
    variables: dict[str, str] = {}
    batch: str | None = None
    for name, value in pairs:
        if name.startswith("v:"):
            variables[name[2:]] = value
        elif name == "recipient-variables":
            batch = value
        else:
            fields.append((name, value))
    if variables:
        fields.append(("h:X-Mailgun-Variables", json.dumps(variables, ensure_ascii=False)))
    variants = [fields] if batch is None else _batch(fields, batch)
    if isinstance(variants, BodyRefusal):
        return variants
    messages = []
    for variant in variants:
        try:
            request = ComposeRequest.from_form(variant, uploads)
            messages.append(compose(request, message_id_domain=message_id_domain, now=now))
        except ValidationError as exc:
            return BodyRefusal(400, "validation failed", exc.detail)
    return messages


def _batch(fields: Pairs, raw: str) -> list[Pairs] | BodyRefusal:
    """One field list per ``to`` address, its recipient variables substituted."""
    try:
        table = json.loads(raw)
    except ValueError as exc:
        return refusal("recipient-variables is not valid JSON", str(exc))
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        return refusal(
            "recipient-variables must be a JSON object of objects, "
            'such as {"ann@example.com": {"first": "Ann"}}'
        )
    recipients = [p for name, value in fields if name == "to" for p in split_address_list(value)]
    if len(recipients) > MAX_BATCH:
        return refusal(f"a batch send takes at most {MAX_BATCH} to addresses")
    others = [(name, value) for name, value in fields if name != "to"]
    variants = []
    for piece in recipients:
        mailbox = parse_mailbox(piece)
        if isinstance(mailbox, str):
            return BodyRefusal(400, "validation failed", [{"field": "to", "problem": mailbox}])
        known = table.get(mailbox.addr_spec, {})

        def fill(
            match: re.Match[str], known: dict[str, object] = known, box: Address = mailbox
        ) -> str:
            if match.group(1) is not None:
                value = known.get(match.group(1), "")
                return value if isinstance(value, str) else json.dumps(value)
            if match.group(0) == "%recipient_email%":
                return str(box.addr_spec)
            return str(box.display_name)

        variant = [("to", piece)]
        for name, value in others:
            if name in _SUBSTITUTED or name.startswith("h:"):
                value = _PLACEHOLDER.sub(fill, value)
            variant.append((name, value))
        variants.append(variant)
    return variants


def _raw_message(pairs: Pairs, uploads: list[UploadedFile]) -> list[Composed] | BodyRefusal:
    recipients: list[str] = []
    tags: list[str] = []
    for name, value in pairs:
        if name == "to":
            for piece in split_address_list(value):
                mailbox = parse_mailbox(piece)
                if isinstance(mailbox, str):
                    return BodyRefusal(
                        400, "validation failed", [{"field": "to", "problem": mailbox}]
                    )
                recipients.append(mailbox.addr_spec)
        elif name == "o:tag":
            tags.append(value)
        else:
            return refusal(f"{name!r} is not a field of messages.mime; send to, message, o:tag")
    files = [u for u in uploads if u.field == "message"]
    if len(files) != 1 or len(uploads) != 1:
        return refusal("send exactly one file field 'message' holding the MIME message")
    if not recipients:
        return refusal("'to' parameter is missing")
    message = re.sub(rb"\r?\n", b"\r\n", files[0].data)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    headers = BytesHeaderParser(policy=policy.SMTP).parsebytes(message)
    senders = getaddresses([str(v) for v in headers.get_all("from", [])])
    if len(senders) != 1 or "@" not in senders[0][1]:
        return refusal("the message needs one From address (RFC 5322 §3.6.2)")
    unique = tuple(dict.fromkeys(recipients))
    return [
        Composed(
            mail_from=senders[0][1],
            recipients=unique,
            message=message,
            tags=tuple(tags),
            subject=str(headers.get("subject", "")),
            message_id=str(headers.get("message-id", "")),
        )
    ]
