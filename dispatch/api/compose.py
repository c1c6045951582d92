"""From the fields of ``POST /api/v1/messages`` to an envelope and a MIME message (SPEC §4).

Pure: no I/O, no clock (the caller passes ``now``). The web layer parses the JSON body or the
``multipart/form-data`` fields and hands them to :meth:`ComposeRequest.from_json` or
:meth:`ComposeRequest.from_form`; :func:`compose` validates everything and either returns a
:class:`Composed` (envelope facts plus the message bytes, ready to spool) or raises one
:class:`ValidationError` listing every problem found, each as ``{"field", "problem"}``.

Field paths in problems: ``from``, ``subject``, ``text``, ``html``; ``to[i]``/``cc[i]``/``bcc[i]``
is the i-th value sent (a JSON list item or a repeated form field; a JSON string counts as
``[0]``), and one value may hold several comma-separated addresses; ``tags[i]`` / ``o:tag[i]``;
``headers.<Name>`` / ``h:<Name>``; ``attachment[i]`` and ``inline[i]``. At most
:data:`MAX_PROBLEMS` problems are listed; the others are only counted, and the list ends with
one ``{"field": "(more)"}`` entry saying how many there were (a hostile body may hold
millions: each would cost memory and time to describe). In JSON, ``to``,
``cc``, ``bcc`` and ``tags`` may be a string or a list of strings, ``headers`` an object of
strings; files come only in multipart requests. Unknown fields are refused, Mailgun's other
``o:``/``v:`` options included, rather than silently ignored.

Choices (SPEC §4 is silent on them):

- Content: ``text``, ``html`` or at least one file is required; a file alone makes a
  multipart/mixed message without a body part. Empty strings count as absent; line breaks in
  bodies may be LF, CRLF or CR (all become CRLF); subjects and file names lose leading and
  trailing white space, which readers drop anyway.
- Structure: text/plain, text/html, or multipart/alternative for both; ``inline`` files go
  into a multipart/related with the HTML part (``Content-ID: <filename>``, so the HTML refers
  to them as ``cid:filename``, as with Mailgun); ``attachment`` files make a multipart/mixed
  around the body. A missing or ``application/octet-stream`` content type is guessed from the
  file name with the interpreter's built-in table (never the machine's ``/etc/mime.types``, so
  the result does not depend on the host); ``message/*`` and ``multipart/*`` are sent as
  ``application/octet-stream`` because RFC 2046 §5 forbids base64 on them.
- Encoding: the message is 7-bit ASCII with CRLF line ends, so any relay can carry it without
  8BITMIME or SMTPUTF8: non-ASCII text goes quoted-printable or base64 (whichever is shorter),
  non-ASCII subjects, display names and header values as RFC 2047 encoded words, non-ASCII file
  names as RFC 2231 parameters. Addresses themselves must be ASCII; an internationalised
  domain is accepted in its ``xn--`` form (converting it here would need IDNA 2008, which the
  standard library lacks). ASCII custom header values are folded at their own spaces and never
  encoded, so long ``List-Unsubscribe`` URLs and ``References`` stay intact.
- Headers: ``Message-ID`` (``<random@message_id_domain>``), ``Date`` (from ``now``, UTC) and
  ``MIME-Version`` are added unless given. Custom headers may be any RFC 5322 field name except
  the ones in ``_REFUSED`` below: those the API builds (From, To, Cc, Subject, MIME-Version,
  ``Content-*``), Bcc (never written into the message), and those only MTAs may write (trace
  and authentication headers, ``Resent-*``, signatures). ``Reply-To``, ``Sender``,
  ``Message-ID``, ``In-Reply-To``, ``References`` and ``Date`` are checked for syntax and
  allowed once each.
- Tags are envelope metadata: they never appear in the message. Empty tags are ignored and
  repeated ones kept once.
- Recipients: To, then Cc, then Bcc, de-duplicated case-insensitively (first spelling wins),
  at most 100 (SPEC §3, reported on ``to``). Bcc is in the envelope only. A value with a bad
  address gets one problem naming that address.

Cost: building is CPU work proportional to the body (quoted-printable is pure Python); for
bodies of megabytes, call :func:`compose` through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import mimetypes
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from email import errors as email_errors
from email import policy as email_policy
from email.headerregistry import Address
from email.message import MIMEPart
from email.utils import parsedate_to_datetime
from typing import Final, Literal

import attrs

from dispatch.smtp.addresses import PathError, parse_path, valid_domain

__all__ = [
    "MAX_PROBLEMS",
    "MAX_RECIPIENTS",
    "ComposeRequest",
    "Composed",
    "Problem",
    "UploadedFile",
    "ValidationError",
    "compose",
]

# SPEC §3 caps a transaction at 100 recipients; the API keeps the same promise.
MAX_RECIPIENTS: Final = 100
# Problems described in full; beyond this they are only counted (see the module docstring).
MAX_PROBLEMS: Final = 20
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
# RFC 5322 §2.1.1: a line is at most 998 characters. A custom header must fit on one line
# unfolded, a subject or one address is held to the same bound.
MAX_LINE: Final = 998
# Longer field names cannot be followed by ": " within the 78 characters RFC 5322 asks for.
MAX_HEADER_NAME: Final = 76
# Receivers save attachments under their names; most file systems stop at 255.
MAX_FILENAME_CHARS: Final = 255

# 7bit: see "Encoding" above. refold_source="none": the custom header values we fold
# ourselves (set_raw) are written as they are instead of being re-encoded.
_POLICY: Final = email_policy.SMTP.clone(cte_type="7bit", refold_source="none")
_MIME_TYPES: Final = mimetypes.MimeTypes()  # built-in table only, see "Structure" above
# RFC 5322 §2.1.1: lines SHOULD be at most 78 characters; fold there when spaces allow.
_FOLD_AT: Final = 78

Origin = Literal["json", "form"]
FileField = Literal["attachment", "inline"]

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
_MIME_TOKEN: Final = re.compile(r"[A-Za-z0-9!#$&^_.+-]+")
_FOLD_TOKEN: Final = re.compile(r"[ \t]*[^ \t]+")

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

_JSON_FIELDS: Final = ("from", "to", "cc", "bcc", "subject", "text", "html", "headers", "tags")
_FORM_FIELDS: Final = "from, to, cc, bcc, subject, text, html, h:<Header>, o:tag"
_FORM_SINGLE: Final = ("from", "subject", "text", "html")
_FILES_ONLY_IN_FORMS: Final = (
    "files are accepted only in multipart/form-data requests, as `attachment` or `inline` "
    "file fields; send the request as multipart/form-data"
)


@attrs.frozen
class Problem:
    """One thing wrong with a request: the field path and what to send instead."""

    field: str
    problem: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "problem": self.problem}


class ValidationError(Exception):
    """The request cannot become a message; ``problems`` lists the reasons (never empty).

    At most :data:`MAX_PROBLEMS` are described; ``more`` counts the others. The API answers
    ``400 {"error": "validation failed", "detail": error.detail}``.
    """

    def __init__(self, problems: Sequence[Problem], more: int = 0, unchecked: int = 0) -> None:
        if not problems:
            raise ValueError("a ValidationError needs at least one problem")
        self.problems = tuple(problems)
        self.more = more
        self.unchecked = unchecked
        listed = "; ".join(f"{p.field}: {p.problem}" for p in self.problems)
        super().__init__(f"validation failed: {listed}" + (f"; and {more} more" if more else ""))

    @property
    def detail(self) -> list[dict[str, str]]:
        described = [p.as_dict() for p in self.problems]
        if self.more or self.unchecked:
            words = [f"{self.more} more problem{'s' if self.more != 1 else ''} not listed"]
            if self.unchecked:
                words.append(
                    f"{self.unchecked} more value{'s' if self.unchecked != 1 else ''} not checked"
                )
            described.append(
                {
                    "field": "(more)",
                    "problem": f"{' and '.join(words)} (at most {MAX_PROBLEMS} problems are "
                    "described); fix these and send again",
                }
            )
        return described


class _Problems:
    """The problems of one request: the first :data:`MAX_PROBLEMS` kept, the rest counted.

    ``fields`` holds the top-level field of every problem, listed or not, so that a field
    already reported is never also reported missing.
    """

    def __init__(self, initial: Iterable[Problem] = (), more: int = 0) -> None:
        self.kept: list[Problem] = []
        self.more = more
        self.fields: set[str] = set()
        for problem in initial:
            self.append(problem)

    @property
    def full(self) -> bool:
        """Whether further problems are only counted."""
        return len(self.kept) >= MAX_PROBLEMS

    def add(self, field: str, problem: str) -> None:
        if self.full:
            self.skip(field, 1)
        else:
            self.append(Problem(field, problem))

    def append(self, problem: Problem) -> None:
        if self.full:
            self.skip(problem.field, 1)
        else:
            self.fields.add(problem.field.partition("[")[0].partition(".")[0])
            self.kept.append(problem)

    def skip(self, field: str, count: int) -> None:
        """Count ``count`` problems of ``field`` without describing them."""
        self.fields.add(field.partition("[")[0].partition(".")[0])
        self.more += count

    def __bool__(self) -> bool:
        return bool(self.kept)


@attrs.frozen
class UploadedFile:
    """A file from a multipart body, as the web layer parsed it.

    ``field`` is the form field name (``attachment`` or ``inline``; others are refused),
    ``content_type`` is the part's Content-Type or ``""``.
    """

    field: str
    filename: str
    content_type: str
    data: bytes


@attrs.frozen
class ComposeRequest:
    """The fields of one request, normalised but not yet validated.

    ``problems`` are what the constructors found wrong with the shape of the input (a JSON
    number where a string belongs, an unknown field, a repeated ``from``), at most
    :data:`MAX_PROBLEMS` of them, ``more_problems`` the count of the others; :func:`compose`
    reports them together with its own. A field of the wrong type is dropped.
    """

    origin: Origin
    from_: str | None = None
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    tags: tuple[str, ...] = ()
    files: tuple[UploadedFile, ...] = ()
    problems: tuple[Problem, ...] = ()
    more_problems: int = 0  # found beyond MAX_PROBLEMS, not described

    @classmethod
    def from_json(cls, document: object) -> ComposeRequest:
        """Read a decoded ``application/json`` body (whatever ``json.loads`` returned)."""
        if not isinstance(document, dict):
            return cls("json", problems=(Problem("(body)", "send a JSON object of fields"),))
        problems = _Problems()
        strings: dict[str, str | None] = {}
        for name in ("from", "subject", "text", "html"):
            value = document.get(name)
            if value is None or isinstance(value, str):
                strings[name] = value
            else:
                problems.add(name, "must be a string")
        lists = {name: _json_strings(document.get(name), name, problems) for name in _LISTS}
        tags = _json_strings(document.get("tags"), "tags", problems)
        headers: list[tuple[str, str]] = []
        raw_headers = document.get("headers")
        if isinstance(raw_headers, dict):
            for name, value in raw_headers.items():
                if isinstance(value, str):
                    headers.append((str(name), value))
                else:
                    problems.add(f"headers.{_clip(str(name))}", "must be a string")
        elif raw_headers is not None:
            problems.add("headers", 'must be an object such as {"X-Foo": "bar"}')
        for key in document:
            if key in ("attachment", "attachments", "inline"):
                problems.add(str(key), _FILES_ONLY_IN_FORMS)
            elif key not in _JSON_FIELDS:
                known = ", ".join(_JSON_FIELDS)
                problems.add(_clip(str(key)), f"unknown field; the fields are {known}")
        return cls(
            "json",
            from_=strings.get("from"),
            to=lists["to"],
            cc=lists["cc"],
            bcc=lists["bcc"],
            subject=strings.get("subject"),
            text=strings.get("text"),
            html=strings.get("html"),
            headers=tuple(headers),
            tags=tags,
            problems=tuple(problems.kept),
            more_problems=problems.more,
        )

    @classmethod
    def from_form(
        cls, fields: Iterable[tuple[str, str]], files: Iterable[UploadedFile] = ()
    ) -> ComposeRequest:
        """Read ``multipart/form-data`` (or urlencoded) fields, in order, and uploaded files."""
        problems = _Problems()
        single: dict[str, str] = {}
        repeats: dict[str, int] = {}
        lists: dict[str, list[str]] = {name: [] for name in _LISTS}
        headers: list[tuple[str, str]] = []
        tags: list[str] = []
        for name, value in fields:
            if name in _FORM_SINGLE:
                if name in single:
                    repeats[name] = repeats.get(name, 1) + 1
                else:
                    single[name] = value
            elif name in lists:
                lists[name].append(value)
            elif name == "o:tag":
                tags.append(value)
            elif name.startswith("h:"):
                headers.append((name[2:], value))
            elif name in ("attachment", "inline"):
                problems.add(name, "must be a file upload, not a text field (curl: -F name=@path)")
            elif name.startswith("o:"):
                problems.add(_clip(name), "unsupported option; only o:tag is")
            else:
                problems.add(_clip(name), f"unknown field; the fields are {_FORM_FIELDS}")
        for name, count in repeats.items():
            problems.add(name, f"sent {count} times; send it once")
        kept: list[UploadedFile] = []
        for upload in files:
            if upload.field in ("attachment", "inline"):
                kept.append(upload)
            else:
                problems.add(_clip(upload.field), "files are accepted as `attachment` or `inline`")
        return cls(
            "form",
            from_=single.get("from"),
            to=tuple(lists["to"]),
            cc=tuple(lists["cc"]),
            bcc=tuple(lists["bcc"]),
            subject=single.get("subject"),
            text=single.get("text"),
            html=single.get("html"),
            headers=tuple(headers),
            tags=tuple(tags),
            files=tuple(kept),
            problems=tuple(problems.kept),
            more_problems=problems.more,
        )


_LISTS: Final = ("to", "cc", "bcc")


@attrs.frozen
class Composed:
    """A valid request, composed: the envelope facts and the message to spool."""

    mail_from: str  # the bare address of From
    recipients: tuple[str, ...]  # To + Cc + Bcc, bare, de-duplicated, in that order
    message: bytes = attrs.field(repr=lambda m: f"<{len(m)} bytes>")  # 7-bit, CRLF line ends
    tags: tuple[str, ...]
    subject: str
    message_id: str  # with its angle brackets

    @property
    def size(self) -> int:
        """Bytes of the message, for the caller's ``api.max_message_bytes`` re-check."""
        return len(self.message)


def compose(request: ComposeRequest, *, message_id_domain: str, now: float) -> Composed:
    """Validate ``request`` and build its message, or raise :class:`ValidationError`.

    ``message_id_domain`` is the right-hand side of generated Message-IDs (a host name of
    this server; a ``ValueError`` if it is not one); ``now`` (seconds since the epoch) is the
    default Date. Nothing else escapes: any input the request can hold is either composed or
    answered with the list of its problems.
    """
    if not (message_id_domain.isascii() and valid_domain(message_id_domain)):
        raise ValueError(f"message_id_domain {message_id_domain!r} is not a domain name")
    checker = _Checker(request)
    parts = checker.run()
    if checker.problems:
        raise ValidationError(checker.problems.kept, checker.problems.more, checker.unchecked)
    message_id = parts.message_id or f"<{secrets.token_hex(16)}@{message_id_domain}>"
    date = parts.date or datetime.fromtimestamp(now, UTC)
    message = _build(parts, message_id=message_id, date=date)
    assert parts.sender is not None  # no problems, so from was found
    return Composed(
        mail_from=parts.sender.addr_spec,
        recipients=parts.recipients,
        message=message,
        tags=parts.tags,
        subject=parts.subject,
        message_id=message_id,
    )


@attrs.define
class _Parts:
    """What the checks extracted: everything _build needs, all of it valid."""

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
    files: list[tuple[UploadedFile, str, str]] = attrs.Factory(list)  # file, maintype, subtype


class _Checker:
    """Runs every check on one request, collecting problems instead of stopping at the first."""

    def __init__(self, request: ComposeRequest) -> None:
        self.request = request
        self.problems = _Problems(request.problems, request.more_problems)
        self.unchecked = 0  # values left unchecked once the problems were full
        self.parts = _Parts()
        self._parsed_addresses = 0

    def run(self) -> _Parts:
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
            self.add("from", f"{_quote(value)} must be exactly one address")
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
                    # No message will be built: checking the rest would only cost time.
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
        for piece in _split_address_list(value):
            self._parsed_addresses += counted
            if self._parsed_addresses > _MAX_ADDRESSES_PARSED:
                return None
            address = _parse_mailbox(piece)
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
            field = (
                f"headers.{_clip(name)}" if self.request.origin == "json" else f"h:{_clip(name)}"
            )
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
            try:
                date = parsedate_to_datetime(value)
            except (ValueError, TypeError, IndexError, OverflowError):
                date = None
            if date is None or date.year < 1900:  # RFC 5322 §3.3: year is 1900 or later
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
            if not name:
                self.add(field, "has no file name; send the file with a name such as report.pdf")
            elif (problem := _single_line_problem(name)) is not None:
                self.add(field, f"file name {problem}")
            elif len(name) > MAX_FILENAME_CHARS:
                self.add(field, f"file name longer than {MAX_FILENAME_CHARS} characters")
            elif upload.field == "inline" and not _CID_SAFE.fullmatch(name):
                self.add(
                    field,
                    f"file name {_quote(name)} cannot be a Content-ID (the HTML refers to it as "
                    "cid:<name>); use ASCII letters, digits and . - _",
                )
            else:
                upload = attrs.evolve(upload, filename=name)
                self.parts.files.append((upload, *_attachment_type(upload)))


def _json_strings(value: object, name: str, problems: _Problems) -> tuple[str, ...]:
    """A JSON string or list of strings as a tuple; anything else is a problem."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        problems.add(name, "must be a string or a list of strings")
        return ()
    kept = [item for item in value if isinstance(item, str)]
    wrong = len(value) - len(kept)
    # Hostile lists hold millions of items: describe the first few, count the rest.
    for n, i in enumerate(i for i, item in enumerate(value) if not isinstance(item, str)):
        if problems.full:
            problems.skip(name, wrong - n)
            break
        problems.add(f"{name}[{i}]", "must be a string")
    return tuple(kept)


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


def _split_address_list(value: str) -> Iterator[str]:
    """Split at the commas between addresses, not those in quotes, comments or <...>."""
    start, quoted, escaped, comment, angle = 0, False, False, 0, False
    for i, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\" and (quoted or comment):
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif comment:
            comment += {"(": 1, ")": -1}.get(char, 0)
        elif char == '"':
            quoted = True
        elif char == "(":
            comment = 1
        elif char in "<>":
            angle = char == "<"
        elif char == "," and not angle:
            if piece := value[start:i].strip():
                yield piece
            start = i + 1
    if piece := value[start:].strip():
        yield piece


def _parse_mailbox(piece: str) -> Address | str:
    """One mailbox (``ann@x.test`` or ``Ann <ann@x.test>``), or the problem with it."""
    shown = _quote(piece)
    if len(piece) > MAX_LINE:
        return f"{shown} is longer than {MAX_LINE} characters"
    try:
        header = _POLICY.header_factory("to", piece)
        addresses, groups, defects = header.addresses, header.groups, header.defects
    except (email_errors.HeaderParseError, ValueError, IndexError, AttributeError):
        # The stdlib parser is not total: ':;a' raises AttributeError (CPython 3.13.0).
        addresses, groups, defects = (), (), (email_errors.HeaderParseError(),)
    # Obsolete syntax (RFC 5322 §4) is fine: the header is written anew from the parts.
    tolerated = (email_errors.ObsoleteHeaderDefect, email_errors.NonASCIILocalPartDefect)
    defects = [d for d in defects if not isinstance(d, tolerated)]
    # For the explanation only: the angle-addr comes last, after any display name.
    spec = piece[piece.rfind("<") + 1 : piece.rfind(">")] if "<" in piece else piece
    if "@" not in spec:
        return f"{shown} has no @domain; send an address such as name@example.com"
    if spec.strip().endswith("@"):
        return f"{shown} has no domain after the @; send an address such as name@example.com"
    if spec.strip().startswith("@"):
        return f"{shown} has no local part before the @; send an address such as name@example.com"
    if defects or len(addresses) != 1 or any(g.display_name is not None for g in groups):
        return (
            f"{shown} is not an address (RFC 5322); send 'name@example.com' or "
            "'Name <name@example.com>', several separated by commas"
        )
    address: Address = addresses[0]
    if not address.username or not address.domain:
        return f"{shown} needs a local part and a domain, such as name@example.com"
    if not address.addr_spec.isascii():
        return (
            f"{shown}: addresses must be ASCII; write an internationalised domain in its "
            "xn-- form (bücher.example → xn--bcher-kva.example)"
        )
    try:
        parse_path(f"<{address.addr_spec}>", 0, allow_null=False, allow_postmaster=False)
    except PathError as exc:
        return f"{shown} cannot be used in SMTP: {exc.reason}"
    return address


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


def _build(parts: _Parts, *, message_id: str, date: datetime) -> bytes:
    """The message as bytes; everything in ``parts`` has been checked."""
    root = MIMEPart(policy=_POLICY)
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
    ordered = sorted(parts.files, key=lambda item: item[0].field != "inline")
    for upload, maintype, subtype in ordered:
        inline = upload.field == "inline"
        add = html_part.add_related if inline and html_part is not None else root.add_attachment
        add(
            upload.data,
            maintype=maintype,
            subtype=subtype,
            filename=upload.filename,
            disposition="inline" if inline else "attachment",
            cid=f"<{upload.filename}>" if inline else None,
        )
    return root.as_bytes(policy=_POLICY)


def _clip(text: str, limit: int = 64) -> str:
    """Shorten client text echoed into a problem."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _quote(text: str) -> str:
    return repr(_clip(text, 80))
