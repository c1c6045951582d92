"""Postmark's sending fields read into messages (pure but for reading the received body).

``POST /email`` takes one JSON object, ``POST /email/batch`` a list of them (at most
:data:`MAX_BATCH`), with Postmark's field names: ``From``, ``To``, ``Cc``, ``Bcc``
(comma-separated strings), ``Subject``, ``TextBody``, ``HtmlBody``, ``ReplyTo``,
``Headers`` (``[{"Name": …, "Value": …}]``), ``Attachments`` (``[{"Name", "Content"
(base64), "ContentType", "ContentID"}]``), ``Tag``, ``Metadata`` (an object of strings),
``MessageStream``, ``TrackOpens`` and ``TrackLinks``. Each is mapped onto the fields of
``/api/v1/messages`` (:class:`~dispatch.api.request.ComposeRequest`) and composed by
:func:`dispatch.api.compose.compose`, so both APIs build the same message:

* ``Tag`` becomes the message's tag; ``ReplyTo`` the ``Reply-To`` header; ``Metadata`` one
  ``X-PM-Metadata-<key>`` header per entry and ``MessageStream`` ``X-PM-Message-Stream``
  (the names Postmark's SMTP service reads, so a Postmark relay downstream keeps them);
* an attachment with a ``ContentID`` is an inline part whose Content-ID is that id (without
  ``cid:``), so the HTML's ``cid:`` references still resolve;
* ``TrackOpens``/``TrackLinks`` are accepted and ignored (Dispatch tracks nothing); any other
  field is refused with a message naming it.

A refusal is Postmark's ``{"ErrorCode": 300, "Message": …}`` (``402`` for a body that is not
JSON), one per message in a batch: the others are still sent, as at Postmark.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Final

import attrs

from dispatch.api.compose import Composed, compose
from dispatch.api.problems import ValidationError
from dispatch.api.request import ComposeRequest, UploadedFile

__all__ = ["MAX_BATCH", "PostmarkError", "read_postmark"]

MAX_BATCH: Final = 500  # Postmark's own limit of messages per batch call
INVALID_REQUEST: Final = 300
INVALID_JSON: Final = 402
TOO_MANY_BATCH: Final = 410
_FIELDS: Final = frozenset(
    {
        "From", "To", "Cc", "Bcc", "Subject", "TextBody", "HtmlBody", "ReplyTo", "Headers",
        "Attachments", "Tag", "Metadata", "MessageStream", "TrackOpens", "TrackLinks",
    }
)  # fmt: skip
_STRINGS: Final = {"From": "from", "To": "to", "Cc": "cc", "Bcc": "bcc", "Subject": "subject"}


@attrs.frozen
class PostmarkError:
    """Postmark's error body: ``ErrorCode`` and ``Message``."""

    code: int
    message: str


def read_postmark(
    path: Path, *, batch: bool, message_id_domain: str, now: float
) -> list[Composed | PostmarkError] | PostmarkError:
    """The messages of one request body, each composed or refused (blocking: call it in a
    thread). A whole-request error (not JSON, wrong shape) is one :class:`PostmarkError`."""
    try:
        document = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:
        return PostmarkError(INVALID_JSON, f"The request body is not valid JSON: {exc}")
    if batch:
        if not isinstance(document, list):
            return PostmarkError(INVALID_JSON, "POST /email/batch takes a JSON list of messages")
        if len(document) > MAX_BATCH:
            return PostmarkError(TOO_MANY_BATCH, f"A batch holds at most {MAX_BATCH} messages")
        items = document
    elif isinstance(document, dict):
        items = [document]
    else:
        return PostmarkError(INVALID_JSON, "POST /email takes one JSON object")
    return [_one(item, message_id_domain, now) for item in items]


def _one(item: object, message_id_domain: str, now: float) -> Composed | PostmarkError:
    mapped = _request(item)
    if isinstance(mapped, PostmarkError):
        return mapped
    try:
        return compose(mapped, message_id_domain=message_id_domain, now=now)
    except ValidationError as exc:
        return PostmarkError(INVALID_REQUEST, "Invalid email request: " + _problems(exc.detail))


def _problems(detail: object) -> str:
    if isinstance(detail, list):
        texts = [f"{p.get('field')}: {p.get('problem')}" for p in detail if isinstance(p, dict)]
        return "; ".join(texts[:5])
    return str(detail)


def _string(item: dict[str, object], name: str) -> str | None:
    value = item.get(name)
    if value is None or isinstance(value, str):
        return value
    raise _Bad(f"{name} must be a string")


class _Bad(Exception):
    pass


def _request(item: object) -> ComposeRequest | PostmarkError:
    """One Postmark message object as the fields of ``/api/v1/messages``."""
    if not isinstance(item, dict):
        return PostmarkError(INVALID_REQUEST, "Invalid email request: a message is a JSON object")
    unknown = sorted(str(k) for k in item if k not in _FIELDS)
    if unknown:
        known = ", ".join(sorted(_FIELDS))
        return PostmarkError(
            INVALID_REQUEST, f"Invalid email request: unknown field(s) {unknown}; known: {known}"
        )
    try:
        fields = [(ours, v) for theirs, ours in _STRINGS.items() if (v := _string(item, theirs))]
        if (text := _string(item, "TextBody")) is not None:
            fields.append(("text", text))
        if (html := _string(item, "HtmlBody")) is not None:
            fields.append(("html", html))
        if tag := _string(item, "Tag"):
            fields.append(("o:tag", tag))
        fields += [("h:" + name, value) for name, value in _headers(item)]
        files = _attachments(item.get("Attachments"))
    except _Bad as exc:
        return PostmarkError(INVALID_REQUEST, f"Invalid email request: {exc}")
    return ComposeRequest.from_form(fields, files)


def _headers(item: dict[str, object]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    raw = item.get("Headers") or []
    if not isinstance(raw, list):
        raise _Bad('Headers must be a list of {"Name": …, "Value": …}')
    for n, header in enumerate(raw):
        if not isinstance(header, dict) or set(header) != {"Name", "Value"}:
            raise _Bad(f'Headers[{n}] must be {{"Name": …, "Value": …}}')
        name, value = header["Name"], header["Value"]
        if not isinstance(name, str) or not isinstance(value, str):
            raise _Bad(f"Headers[{n}]: Name and Value must be strings")
        headers.append((name, value))
    if reply_to := _string(item, "ReplyTo"):
        headers.append(("Reply-To", reply_to))
    metadata = item.get("Metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _Bad("Metadata must be an object of strings")
    headers += [(f"X-PM-Metadata-{key}", value) for key, value in metadata.items()]
    if stream := _string(item, "MessageStream"):
        headers.append(("X-PM-Message-Stream", stream))
    return headers


def _attachments(raw: object) -> list[UploadedFile]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _Bad("Attachments must be a list")
    files = []
    for n, item in enumerate(raw):
        if not isinstance(item, dict) or not {"Name", "Content"} <= set(item):
            raise _Bad(f"Attachments[{n}] needs Name and Content (base64)")
        name, content = item["Name"], item["Content"]
        kind, cid = item.get("ContentType") or "", item.get("ContentID") or ""
        if not all(isinstance(v, str) for v in (name, content, kind, cid)):
            raise _Bad(f"Attachments[{n}]: Name, Content, ContentType and ContentID are strings")
        try:
            data = base64.b64decode(content, validate=True)
        except binascii.Error:
            raise _Bad(f"Attachments[{n}] ({name}): Content is not base64") from None
        if cid:
            # Dispatch's inline parts are referred to by their file name (cid:<name>).
            files.append(UploadedFile("inline", cid.removeprefix("cid:"), kind, data))
        else:
            files.append(UploadedFile("attachment", name, kind, data))
    return files
