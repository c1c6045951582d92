"""One captured message as the Local inbox shows it: :func:`read_view`, :func:`frame_document`,
:func:`read_part`.

The message is parsed with the standard library (``email.policy.default``), never executed:

- :class:`MailView` holds what the page prints — headers, the text part, the HTML part's
  source, the attachments (every leaf part that is not the text or HTML body shown), the
  links of the HTML — all as plain strings that the page's templates escape.
- :func:`frame_document` is the HTML part for the sandboxed frame. The frame's own
  Content-Security-Policy (``dispatch/dashboard/pages/inbox.py``) is what stops script and
  remote loads; here, images the HTML references as ``cid:`` are inlined as ``data:`` URIs
  (the frame may load nothing else), and the elements a policy does not fully govern are cut
  out: ``<meta http-equiv>`` (a refresh), ``<link>`` (preconnect and prefetch), child frames
  (see :data:`_CUT_TAGS`) and ``<base>``. A ``<base target="_blank">`` of ours makes a link
  the operator clicks open in a new tab rather than inside the frame.
- :func:`read_part` is one attachment's bytes, for a download or a thumbnail.

Parts are numbered by their position in ``message.walk()`` (0 is the message itself), the
same for every reading of the same bytes. Everything here blocks (file reads, parsing): run
it in a worker thread.
"""

from __future__ import annotations

import base64
import email.errors
import email.message
import email.parser
import email.policy
import html.parser
import re
from pathlib import Path
from typing import Final

import attrs

RASTER_TYPES: Final = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/avif"}
)
"""Images served inline and shown as thumbnails. Never SVG: opened on its own, an SVG is a
document that runs script."""

MAX_INLINED_IMAGE: Final = 2 << 20  # bytes of one cid: image inlined into the frame
MAX_INLINED_TOTAL: Final = 10 << 20  # bytes of all of them
MAX_LINKS: Final = 500
MAX_HEADER_CHARS: Final = 4000  # of one header value shown

_CID: Final = re.compile(r"(?i)\bcid:([^\s\"'()<>]+)")
_CUT_TAGS: Final = frozenset({"link", "base", "iframe", "frame", "portal", "fencedframe"})
"""Start tags cut out of captured HTML: the policy stops their loads, but Chromium opens a
connection for a child frame's URL before the policy refuses it (measured: one TCP connect,
no request), and a ``<link rel=preconnect>`` is not governed at all."""
_BASE: Final = '<base target="_blank">'  # links the operator clicks open in a new tab


@attrs.frozen
class Attachment:
    """A leaf part shown as an attachment (or inline image): its place and what it says it is."""

    index: int
    filename: str
    content_type: str
    size: int
    content_id: str | None
    inline: bool

    @property
    def is_image(self) -> bool:
        return self.content_type in RASTER_TYPES


@attrs.frozen
class MailView:
    """What the message page shows; ``None`` for a part the message does not have."""

    headers: tuple[tuple[str, str], ...]
    subject: str
    sender: str
    to: str
    cc: str
    date: str
    text: str | None
    html: str | None
    attachments: tuple[Attachment, ...]
    links: tuple[str, ...]
    defects: tuple[str, ...]


def parse(raw: bytes) -> email.message.EmailMessage:
    """The message, parsed leniently (defects are recorded, nothing raises)."""
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, email.message.EmailMessage)  # policy.default makes these
    return message


_HEADER_ERRORS: Final = (
    email.errors.HeaderParseError,
    ValueError,
    IndexError,
    TypeError,
    AttributeError,
    LookupError,
)
"""What the standard library's header parser may raise on a malformed header."""


def header_text(message: email.message.Message, name: str) -> str:
    """A header's decoded value ("" when absent); the raw value when it cannot be decoded."""
    try:
        value = message.get(name)
        return "" if value is None else str(value)[:MAX_HEADER_CHARS]
    except _HEADER_ERRORS:  # show a header the policy cannot parse as it came
        raw = message.get_all(name, failobj=[""])
        return str(raw[0])[:MAX_HEADER_CHARS]


def _all_headers(message: email.message.Message) -> tuple[tuple[str, str], ...]:
    headers = []
    for name, value in message.raw_items():
        try:
            shown = str(message.policy.header_fetch_parse(name, value))
        except _HEADER_ERRORS:
            shown = str(value)
        headers.append((name, shown[:MAX_HEADER_CHARS]))
    return tuple(headers)


def decoded_text(part: email.message.Message) -> str:
    """A text part's content as a string, whatever its charset claims; lines end in ``\n``."""
    try:
        content = part.get_content()  # type: ignore[attr-defined]
    except (LookupError, UnicodeError, ValueError, AssertionError):
        content = None
    if not isinstance(content, str):
        payload = part.get_payload(decode=True)
        content = (payload if isinstance(payload, bytes) else b"").decode("utf-8", "replace")
    return content.replace("\r\n", "\n")


def _payload(part: email.message.Message) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _bodies(
    message: email.message.EmailMessage,
) -> tuple[email.message.Message | None, email.message.Message | None]:
    text = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    return text, html_part


def _content_id(part: email.message.Message) -> str | None:
    value = part.get("Content-ID")
    return str(value).strip().strip("<>") if value else None


def attachments_of(message: email.message.EmailMessage) -> tuple[Attachment, ...]:
    """Every leaf part but the text and HTML bodies, numbered by ``walk()`` order."""
    shown = {id(p) for p in _bodies(message) if p is not None}
    found = []
    for index, part in enumerate(message.walk()):
        if part.is_multipart() or id(part) in shown:
            continue
        filename = part.get_filename() or ""
        found.append(
            Attachment(
                index=index,
                filename=filename or f"part-{index}",
                content_type=part.get_content_type(),
                size=len(_payload(part)),
                content_id=_content_id(part),
                inline=part.get_content_disposition() != "attachment",
            )
        )
    return tuple(found)


class _Markup(html.parser.HTMLParser):
    """Finds, in an HTML document, the tags to cut out (by character offsets), where our
    ``<base>`` goes, and the links."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=False)
        self.line_starts = [0, *(i + 1 for i, c in enumerate(text) if c == "\n")]
        self.cuts: list[tuple[int, int]] = []
        self.head_end: int | None = None
        self.doctype_end: int | None = None
        self.links: list[str] = []

    def _span(self) -> tuple[int, int]:
        line, column = self.getpos()
        start = self.line_starts[line - 1] + column
        return start, start + len(self.get_starttag_text() or "")

    def handle_decl(self, decl: str) -> None:
        if self.doctype_end is None and decl.lower().startswith("doctype"):
            line, column = self.getpos()
            self.doctype_end = self.line_starts[line - 1] + column + len(decl) + 3  # <!…>

    def handle_starttag(self, tag: str, attrs_: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs_}
        if tag in _CUT_TAGS or (tag == "meta" and "http-equiv" in names):
            self.cuts.append(self._span())
        elif tag == "head" and self.head_end is None:
            self.head_end = self._span()[1]
        if tag in ("a", "area") and len(self.links) < MAX_LINKS:
            href = dict(attrs_).get("href")
            if href and href.strip() and href.strip() not in self.links:
                self.links.append(href.strip())


def _markup(text: str) -> _Markup:
    markup = _Markup(text)
    try:
        markup.feed(text)
        markup.close()
    except (AssertionError, ValueError):  # the parser gave up on broken markup: keep its finds
        pass
    return markup


def _inline_images(text: str, message: email.message.EmailMessage) -> str:
    """Replace ``cid:`` references to raster images of the message by ``data:`` URIs."""
    images: dict[str, email.message.Message] = {}
    for part in message.walk():
        cid = _content_id(part)
        if cid and part.get_content_type() in RASTER_TYPES:
            images.setdefault(cid, part)
    budget = MAX_INLINED_TOTAL
    cache: dict[str, str] = {}

    def replace(match: re.Match[str]) -> str:
        nonlocal budget
        cid = match.group(1)
        if cid in cache:
            return cache[cid]
        part = images.get(cid)
        data = _payload(part) if part is not None else b""
        if part is None or not data or len(data) > min(MAX_INLINED_IMAGE, budget):
            return match.group(0)  # the frame's policy blocks cid: itself: nothing loads
        budget -= len(data)
        uri = f"data:{part.get_content_type()};base64,{base64.b64encode(data).decode()}"
        cache[cid] = uri
        return uri

    return _CID.sub(replace, text)


def frame_document(message: email.message.EmailMessage) -> str | None:
    """The HTML part prepared for the sandboxed frame (see the module docstring)."""
    _, html_part = _bodies(message)
    if html_part is None:
        return None
    text = decoded_text(html_part)
    markup = _markup(text)
    at = markup.head_end if markup.head_end is not None else markup.doctype_end or 0
    edits = sorted([*((start, end, "") for start, end in markup.cuts), (at, at, _BASE)])
    pieces = []
    position = 0
    for start, end, replacement in edits:
        if start >= position:  # overlapping finds of broken markup: the first one wins
            pieces += [text[position:start], replacement]
            position = end
    pieces.append(text[position:])
    cleaned = "".join(pieces)
    return _inline_images(cleaned, message)


def view_of(message: email.message.EmailMessage) -> MailView:
    text_part, html_part = _bodies(message)
    html_text = decoded_text(html_part) if html_part is not None else None
    links = tuple(_markup(html_text).links) if html_text else ()
    return MailView(
        headers=_all_headers(message),
        subject=header_text(message, "Subject"),
        sender=header_text(message, "From"),
        to=header_text(message, "To"),
        cc=header_text(message, "Cc"),
        date=header_text(message, "Date"),
        text=decoded_text(text_part) if text_part is not None else None,
        html=html_text,
        attachments=attachments_of(message),
        links=links,
        defects=tuple(type(d).__name__ for d in message.defects),
    )


def read_view(path: Path) -> MailView:
    """Blocking: the view of the message at ``path``. Raises ``OSError``."""
    return view_of(parse(path.read_bytes()))


def read_frame(path: Path) -> str | None:
    """Blocking: :func:`frame_document` of the message at ``path``."""
    return frame_document(parse(path.read_bytes()))


def read_part(path: Path, index: int) -> tuple[Attachment, bytes] | None:
    """Blocking: the attachment numbered ``index`` and its decoded bytes (None: no such
    attachment; the text and HTML bodies are shown, not served). Raises ``OSError``."""
    message = parse(path.read_bytes())
    for attachment in attachments_of(message):
        if attachment.index == index:
            part = list(message.walk())[index]
            return attachment, _payload(part)
    return None
