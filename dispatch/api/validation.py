"""Checking an API request: every problem found, or the parts of a message (SPEC §4).

Pure: no I/O. :func:`validate` runs every check on a
:class:`~dispatch.api.request.ComposeRequest`, collecting problems instead of stopping at
the first, and either returns the :class:`MessageParts` the MIME builder
(:mod:`dispatch.api.mime`) needs, all of them valid, or raises one
:class:`~dispatch.api.problems.ValidationError` listing the problems (those the request's
shape already had first).

Choices (SPEC §4 is silent on them):

- Content: ``text``, ``html`` or at least one file is required. Empty strings count as
  absent; line breaks in bodies may be LF, CRLF or CR (the builder makes them all CRLF);
  subjects and file names lose leading and trailing white space, which readers drop anyway.
- Custom headers may be any RFC 5322 field name except the ones in ``_REFUSED`` below: those
  the API builds (From, To, Cc, Subject, MIME-Version, ``Content-*``), Bcc (never written into
  the message), and those only MTAs may write (trace and authentication headers,
  ``Resent-*``, signatures). ``Reply-To``, ``Sender``, ``Message-ID``, ``In-Reply-To``,
  ``References`` and ``Date`` are checked for syntax and allowed once each.
- Tags are envelope metadata: they never appear in the message. Empty tags are ignored and
  repeated ones kept once.
- Recipients: To, then Cc, then Bcc, de-duplicated case-insensitively (first spelling wins),
  at most 100 (SPEC §3, reported on ``to``). Bcc is in the envelope only. A value with a bad
  address gets one problem naming that address (:mod:`dispatch.api.mailboxes`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from email.headerregistry import Address
from email.utils import parsedate_to_datetime
from typing import Final

import attrs

from dispatch.api.mailboxes import MAX_LINE, parse_mailbox, split_address_list
from dispatch.api.problems import ProblemList, ValidationError, clip, quote
from dispatch.api.request import ComposeRequest, UploadedFile

__all__ = [
    "MAX_ATTACHMENTS",
    "MAX_CUSTOM_HEADERS",
    "MAX_FILENAME_CHARS",
    "MAX_HEADER_NAME",
    "MAX_RECIPIENTS",
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "MessageParts",
    "validate",
]

# SPEC §3 caps a transaction at 100 recipients; the API keeps the same promise.
MAX_RECIPIENTS: Final = 100
# Hostile input may list a million addresses; parsing stops after this many (the count
# problem is reported anyway).
_MAX_ADDRESSES_PARSED: Final = 10 * MAX_RECIPIENTS
# One to/cc/bcc value longer than this cannot hold MAX_RECIPIENTS addresses of MAX_LINE.
_MAX_ADDRESS_VALUE: Final = MAX_RECIPIENTS * 1000
MAX_TAGS: Final = 100
MAX_TAG_CHARS: Final = 128
# Far more than any honest message needs; bounds the work per request.
MAX_CUSTOM_HEADERS: Final = 100
MAX_ATTACHMENTS: Final = 100
# Longer field names cannot be followed by ": " within the 78 characters RFC 5322 asks for.
MAX_HEADER_NAME: Final = 76
# Receivers save attachments under their names; most file systems stop at 255.
MAX_FILENAME_CHARS: Final = 255

# Every character str.splitlines() breaks on: any of them in a header is a header injection.
_LINE_BREAK: Final = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # Unicode category Cc, but TAB
_FIELD_NAME: Final = re.compile(r"[!-9;-~]+")  # RFC 5322 §3.6.8 ftext
_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM: Final = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_MSG_ID: Final = rf"<{_DOT_ATOM}@(?:{_DOT_ATOM}|\[[!-Z^-~]*\])>"  # RFC 5322 §3.6.4
_ONE_MSG_ID: Final = re.compile(rf"\s*{_MSG_ID}\s*")
_MSG_ID_LIST: Final = re.compile(rf"(?:\s*{_MSG_ID})+\s*")
_CID_SAFE: Final = re.compile(rf"{_DOT_ATOM}(?:@{_DOT_ATOM})?")

# Custom headers the API refuses, with the reason given to the client.
_BUILT_HERE: Final = "Dispatch writes it itself"
_MTA_ONLY: Final = "only mail servers add it on the way (RFC 5321 §4.4)"
_REFUSED: Final[Mapping[str, str]] = {
    "from": "send the address in the `from` field",
    "to": "send the addresses in the `to` field",
    "cc": "send the addresses in the `cc` field",
    "bcc": "send the addresses in the `bcc` field; Bcc is never written into the message",
    "subject": "send it in the `subject` field",
    "mime-version": _BUILT_HERE,
    "received": _MTA_ONLY,
    "return-path": _MTA_ONLY,
    "delivered-to": _MTA_ONLY,
    "authentication-results": "receiving servers add it (RFC 8601)",
    "dkim-signature": "a signature made before Dispatch builds the message cannot match it",
}
_REFUSED_PREFIXES: Final = (
    ("content-", f"{_BUILT_HERE}; send files as `attachment` or `inline`"),
    ("resent-", "Resent-* headers re-send an existing message (RFC 5322 §3.6.6)"),
    ("arc-", "receiving servers add it (RFC 8617)"),
)
# RFC 5322 §3.6: at most one of each.
_ONCE: Final = frozenset({"date", "sender", "reply-to", "message-id", "in-reply-to", "references"})


@attrs.define
class MessageParts:
    """What the checks extracted: everything the MIME builder needs, all of it valid.

    ``recipients`` is the envelope (To + Cc + Bcc, bare, de-duplicated, in that order);
    ``message_id`` and ``date`` are set only when the request's headers gave them.
    """

    sender: Address | None = None
    to: list[Address] = attrs.Factory(list)
    cc: list[Address] = attrs.Factory(list)
    recipients: tuple[str, ...] = ()
    subject: str = ""
    text: str | None = None
    html: str | None = None
    headers: list[tuple[str, str | list[Address]]] = attrs.Factory(list)
    message_id: str | None = None
    date: datetime | None = None
    tags: tuple[str, ...] = ()
    files: list[UploadedFile] = attrs.Factory(list)  # file names stripped


def validate(request: ComposeRequest) -> MessageParts:
    """The parts of the message ``request`` describes, or :class:`ValidationError`."""
    checker = _Checker(request)
    parts = checker.run()
    if checker.problems:
        raise ValidationError(checker.problems.kept, checker.problems.more, checker.unchecked)
    return parts


class _Checker:
    """Runs every check on one request, collecting problems instead of stopping at the first."""

    def __init__(self, request: ComposeRequest) -> None:
        self.request = request
        self.problems = ProblemList(request.problems, request.more_problems)
        self.unchecked = 0  # values left unchecked once the problems were full
        self.parts = MessageParts()
        self._parsed_addresses = 0

    def run(self) -> MessageParts:
        # A field already reported (wrong type, or the whole body) is not "missing" as well.
        reported = set(self.problems.fields)
        whole = "(body)" not in reported
        self._check_from(required=whole and "from" not in reported)
        self._check_recipients(required=whole and not reported & {"to", "cc", "bcc"})
        self._check_subject()
        content = {"text", "html", "attachment", "attachments", "inline"}
        self._check_bodies(required=whole and not reported & content)
        self._check_headers()
        self._check_tags()
        self._check_files()
        return self.parts

    def add(self, field: str, problem: str) -> None:
        self.problems.add(field, problem)

    def _check_from(self, *, required: bool) -> None:
        value = self.request.from_
        if not value:
            if required:
                self.add("from", "required: send one address, such as 'Ann <ann@example.com>'")
            return
        addresses = self._addresses("from", value, max_length=MAX_LINE)
        if addresses is not None and len(addresses) != 1:
            self.add("from", f"{quote(value)} must be exactly one address")
        elif addresses:
            self.parts.sender = addresses[0]

    def _check_recipients(self, *, required: bool) -> None:
        request, seen, envelope = self.request, set[str](), list[str]()
        for name, values in (("to", request.to), ("cc", request.cc), ("bcc", request.bcc)):
            found: list[Address] = []
            for i, value in enumerate(values):
                if self._parsed_addresses > _MAX_ADDRESSES_PARSED:
                    break  # reported below as too many recipients
                if self.problems.full:
                    # No message can be built any more: checking the rest would only cost time.
                    self.unchecked += len(values) - i
                    required = False
                    break
                addresses = self._addresses(
                    f"{name}[{i}]", value, max_length=_MAX_ADDRESS_VALUE, counted=True
                )
                if addresses is None:  # reported; "no recipient at all" would be noise
                    required = False
                found.extend(addresses or ())
            for address in found:
                if address.addr_spec.lower() not in seen:
                    seen.add(address.addr_spec.lower())
                    envelope.append(address.addr_spec)
            if name == "to":
                self.parts.to = found
            elif name == "cc":
                self.parts.cc = found
        if required and not envelope:
            self.add("to", "required: send at least one recipient in to, cc or bcc")
        if len(envelope) > MAX_RECIPIENTS or self._parsed_addresses > _MAX_ADDRESSES_PARSED:
            self.add(
                "to",
                f"more than {MAX_RECIPIENTS} recipients in to, cc and bcc together; "
                "send several messages instead",
            )
        self.parts.recipients = tuple(envelope)

    def _addresses(
        self, field: str, value: str, *, max_length: int, counted: bool = False
    ) -> list[Address] | None:
        """The mailboxes in one comma-separated value, or None after reporting a problem.

        ``counted`` values (recipients) share the request's parsing budget; once it is spent
        this returns None and the caller reports too many recipients.
        """
        if (problem := _single_line_problem(value)) is not None:
            self.add(field, problem)
            return None
        if len(value) > max_length:
            self.add(field, f"longer than {max_length} characters; send fewer addresses")
            return None
        found: list[Address] = []
        for piece in split_address_list(value):
            self._parsed_addresses += counted
            if self._parsed_addresses > _MAX_ADDRESSES_PARSED:
                return None
            address = parse_mailbox(piece)
            if isinstance(address, str):
                self.add(field, address)
                return None
            found.append(address)
        return found

    def _check_subject(self) -> None:
        # Readers drop leading and trailing white space anyway; Composed.subject matches.
        subject = (self.request.subject or "").strip()
        if (problem := _single_line_problem(subject)) is not None:
            self.add("subject", problem)
        elif len(subject) > MAX_LINE:
            self.add("subject", f"longer than {MAX_LINE} characters; shorten it")
        else:
            self.parts.subject = subject

    def _check_bodies(self, *, required: bool) -> None:
        for name in ("text", "html"):
            body = getattr(self.request, name) or None
            if body is None:
                continue
            if not _is_unicode(body):
                self.add(name, "is not valid Unicode (a lone surrogate); send UTF-8 text")
            elif "\x00" in body:
                self.add(name, "contains a NUL character, which mail cannot carry; remove it")
            else:
                setattr(self.parts, name, body)
        if required and not (self.request.text or self.request.html or self.request.files):
            self.add("text", "required: send `text`, `html` (or both), or at least one file")

    def _check_headers(self) -> None:
        headers = self.request.headers
        if len(headers) > MAX_CUSTOM_HEADERS:
            self.add("headers", f"more than {MAX_CUSTOM_HEADERS} custom headers; send fewer")
            return
        seen: set[str] = set()
        for name, value in headers:
            field = f"headers.{clip(name)}" if self.request.origin == "json" else f"h:{clip(name)}"
            key = name.lower()
            problem = _header_name_problem(name) or _single_line_problem(value)
            if problem is not None:
                self.add(field, problem)
            elif len(name) + 2 + len(value) > MAX_LINE:
                self.add(field, f"'{name}: value' is longer than {MAX_LINE} characters")
            elif key in _ONCE and key in seen:
                self.add(field, f"{name} may appear only once (RFC 5322 §3.6)")
            else:
                self._check_header_value(field, name, value.strip())
            seen.add(key)

    def _check_header_value(self, field: str, name: str, value: str) -> None:
        key = name.lower()
        if key == "message-id":
            if not (value.isascii() and _ONE_MSG_ID.fullmatch(value)):
                self.add(field, "must be one message id such as <unique-part@example.com>")
            else:
                self.parts.message_id = value
        elif key in ("in-reply-to", "references"):
            if not (value.isascii() and _MSG_ID_LIST.fullmatch(value)):
                self.add(field, "must be message ids such as <a@example.com> <b@example.com>")
            else:
                self.parts.headers.append((name, value))
        elif key == "date":
            if (date := _date(value)) is None:
                self.add(field, "must be an RFC 5322 date such as 'Tue, 1 Jul 2025 10:00:00 +0200'")
            else:
                self.parts.date = date
        elif key in ("reply-to", "sender"):
            addresses = self._addresses(field, value, max_length=MAX_LINE)
            if addresses == []:
                self.add(field, "send an address such as 'Help <help@example.com>'")
            elif addresses is not None and key == "sender" and len(addresses) > 1:
                self.add(field, "Sender is exactly one address (RFC 5322 §3.6.2)")
            elif addresses:
                self.parts.headers.append((name, addresses))
        else:
            self.parts.headers.append((name, value))

    def _check_tags(self) -> None:
        tags = [tag for tag in self.request.tags if tag]
        field = "tags" if self.request.origin == "json" else "o:tag"
        if len(tags) > MAX_TAGS:
            self.add(field, f"more than {MAX_TAGS} tags; send fewer")
            return
        for i, tag in enumerate(self.request.tags):
            if not tag:
                continue
            if not (_is_unicode(tag) and tag.isprintable()):
                self.add(
                    f"{field}[{i}]",
                    "contains characters that do not print (controls, line breaks, separators "
                    "other than space); remove them",
                )
            elif len(tag) > MAX_TAG_CHARS:
                self.add(f"{field}[{i}]", f"longer than {MAX_TAG_CHARS} characters; shorten it")
        self.parts.tags = tuple(dict.fromkeys(tags))

    def _check_files(self) -> None:
        files = self.request.files
        if len(files) > MAX_ATTACHMENTS:
            self.add("attachment", f"more than {MAX_ATTACHMENTS} files; send fewer")
            return
        counters = {"attachment": 0, "inline": 0}
        for upload in files:
            field = f"{upload.field}[{counters.get(upload.field, 0)}]"
            counters[upload.field] = counters.get(upload.field, 0) + 1
            name = upload.filename.strip()  # as with the subject
            if (problem := _file_name_problem(upload.field, name)) is not None:
                self.add(field, problem)
            else:
                self.parts.files.append(attrs.evolve(upload, filename=name))


def _is_unicode(value: str) -> bool:
    """False for strings holding lone surrogates, which cannot be encoded as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _single_line_problem(value: str) -> str | None:
    """Why ``value`` cannot go into a header line, or None."""
    if not _is_unicode(value):
        return "is not valid Unicode (a lone surrogate); send UTF-8 text"
    if _LINE_BREAK.search(value):
        return "contains a line break (CR or LF), which could add headers; send one line"
    if (control := _CONTROL.search(value)) is not None:
        return f"contains the control character U+{ord(control.group()):04X}; remove it"
    return None


def _header_name_problem(name: str) -> str | None:
    if not _FIELD_NAME.fullmatch(name) or len(name) > MAX_HEADER_NAME:
        return (
            f"not a header field name: use up to {MAX_HEADER_NAME} printable ASCII characters "
            "without spaces or colons, such as X-Campaign"
        )
    key = name.lower()
    reason = _REFUSED.get(key) or next((r for p, r in _REFUSED_PREFIXES if key.startswith(p)), None)
    if reason is not None:
        return f"the {name} header cannot be set: {reason}"
    return None


def _date(value: str) -> datetime | None:
    """An RFC 5322 date, or None."""
    try:
        date = parsedate_to_datetime(value)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    return date if date.year >= 1900 else None  # RFC 5322 §3.3: year is 1900 or later


def _file_name_problem(field: str, name: str) -> str | None:
    """What is wrong with an uploaded file's (stripped) name, or None."""
    if not name:
        return "has no file name; send the file with a name such as report.pdf"
    if (problem := _single_line_problem(name)) is not None:
        return f"file name {problem}"
    if len(name) > MAX_FILENAME_CHARS:
        return f"file name longer than {MAX_FILENAME_CHARS} characters"
    if field == "inline" and not _CID_SAFE.fullmatch(name):
        return (
            f"file name {quote(name)} cannot be a Content-ID (the HTML refers to it as "
            "cid:<name>); use ASCII letters, digits and . - _"
        )
    return None
