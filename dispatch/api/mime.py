"""The MIME message built from a validated API request (RFC 5322, RFC 2045-2049).

Pure: no I/O. :func:`build_message` turns the :class:`~dispatch.api.validation.MessageParts`
that validation extracted, every one of them already checked, into the bytes to spool.

- Structure: text/plain, text/html, or multipart/alternative for both; ``inline`` files go
  into a multipart/related with the HTML part (``Content-ID: <filename>``, so the HTML refers
  to them as ``cid:filename``, as with Mailgun); ``attachment`` files make a multipart/mixed
  around the body; a file alone makes a multipart/mixed without a body part. A missing or
  ``application/octet-stream`` content type is guessed from the file name with the
  interpreter's built-in table (never the machine's ``/etc/mime.types``, so the result does
  not depend on the host); ``message/*`` and ``multipart/*`` are sent as
  ``application/octet-stream`` because RFC 2046 §5 forbids base64 on them.
- Encoding: the message is 7-bit ASCII with CRLF line ends, so any relay can carry it without
  8BITMIME or SMTPUTF8: non-ASCII text goes quoted-printable or base64 (whichever is shorter),
  non-ASCII subjects, display names and header values as RFC 2047 encoded words, non-ASCII
  file names as RFC 2231 parameters. ASCII custom header values are folded at their own spaces
  and never encoded, so long ``List-Unsubscribe`` URLs and ``References`` stay intact.
- Headers: ``Date`` and ``Message-ID`` are the caller's; ``MIME-Version`` is added.

Cost: CPU work proportional to the body (quoted-printable is pure Python); for bodies of
megabytes, build in a worker thread (:mod:`dispatch.api.body` does).
"""

from __future__ import annotations

import mimetypes
import re
from datetime import datetime
from email import policy as email_policy
from email.message import MIMEPart
from typing import Final

from dispatch.api.request import UploadedFile
from dispatch.api.validation import MessageParts

__all__ = ["build_message"]

# 7bit: see "Encoding" above. refold_source="none": the custom header values we fold
# ourselves (set_raw) are written as they are instead of being re-encoded.
_POLICY: Final = email_policy.SMTP.clone(cte_type="7bit", refold_source="none")
_MIME_TYPES: Final = mimetypes.MimeTypes()  # built-in table only, see "Structure" above
# RFC 5322 §2.1.1: lines SHOULD be at most 78 characters; fold there when spaces allow.
_FOLD_AT: Final = 78
_MIME_TOKEN: Final = re.compile(r"[A-Za-z0-9!#$&^_.+-]+")
_FOLD_TOKEN: Final = re.compile(r"[ \t]*[^ \t]+")


def build_message(parts: MessageParts, *, message_id: str, date: datetime) -> bytes:
    """The message as bytes; everything in ``parts`` has been checked."""
    root = MIMEPart(policy=_POLICY)
    _write_headers(root, parts, message_id=message_id, date=date)
    # MIMEPart rather than EmailMessage: its sub-parts do not each get a MIME-Version.
    root["MIME-Version"] = "1.0"
    html_part: MIMEPart | None = None
    if parts.text is not None:
        root.set_content(parts.text)
        if parts.html is not None:
            root.add_alternative(parts.html, subtype="html")
            html_part = list(root.iter_parts())[1]
    elif parts.html is not None:
        root.set_content(parts.html, subtype="html")
        html_part = root
    # Inline files first: once an attachment wraps the body in multipart/mixed, the HTML part
    # may no longer be the root that add_related() would convert.
    ordered = sorted(parts.files, key=lambda upload: upload.field != "inline")
    for upload in ordered:
        inline = upload.field == "inline"
        add = html_part.add_related if inline and html_part is not None else root.add_attachment
        maintype, subtype = _attachment_type(upload)
        add(
            upload.data,
            maintype=maintype,
            subtype=subtype,
            filename=upload.filename,
            disposition="inline" if inline else "attachment",
            cid=f"<{upload.filename}>" if inline else None,
        )
    return root.as_bytes(policy=_POLICY)


def _write_headers(root: MIMEPart, parts: MessageParts, *, message_id: str, date: datetime) -> None:
    assert parts.sender is not None  # validation found exactly one
    root["From"] = parts.sender
    if parts.to:
        root["To"] = parts.to
    if parts.cc:
        root["Cc"] = parts.cc
    if parts.subject:
        root["Subject"] = parts.subject
    root["Date"] = date
    root["Message-ID"] = message_id
    for name, value in parts.headers:
        if isinstance(value, list):
            root[name] = value
        elif value.isascii():
            root.set_raw(name, _fold_ascii(name, value))
        else:
            root[name] = value


def _attachment_type(upload: UploadedFile) -> tuple[str, str]:
    """(maintype, subtype): the one sent if usable, else a guess from the file name."""
    given = upload.content_type.split(";", 1)[0].strip().lower()
    maintype, _, subtype = given.partition("/")
    usable = _MIME_TOKEN.fullmatch(maintype) and _MIME_TOKEN.fullmatch(subtype)
    if not usable or given == "application/octet-stream":
        guessed, encoding = _MIME_TYPES.guess_file_type(upload.filename)
        if guessed is None or encoding is not None:
            guessed = "application/octet-stream"
        maintype, _, subtype = guessed.partition("/")
    if maintype in ("message", "multipart"):
        return "application", "octet-stream"
    return maintype, subtype


def _fold_ascii(name: str, value: str) -> str:
    """Fold an ASCII header value before its own spaces (RFC 5322 §2.2.3), never encoding it."""
    lines: list[str] = []
    line = f"{name}:"
    for token in _FOLD_TOKEN.findall(" " + value):
        if len(line) + len(token) > _FOLD_AT and line.strip(" \t") != f"{name}:":
            lines.append(line)
            line = token
        else:
            line += token
    lines.append(line)
    return "\n".join(lines)[len(name) + 1 :].lstrip(" ")
