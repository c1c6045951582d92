"""The Local inbox's listing and search: :class:`CapturedInbox`.

Captured mail lives in ``<spool>/captured/`` as ``<id>.eml`` + ``<id>.json`` (see
``dispatch/spool/captured.py``), not in a database, and ids sort in arrival order. So:

- **the list of ids** is one ``listdir`` in a worker thread, sorted, and kept until the
  folder's modification time (``st_mtime_ns``, which every capture and removal changes)
  moves: an unchanged inbox costs one ``stat`` per request. That time is also the inbox's
  :meth:`version`, which the page polls to show new mail without a reload.
- **a page** is the newest ids before a cursor (``before``: the last id of the previous page);
  only the :data:`PAGE_SIZE` shown are read.
- **a search** walks the ids newest first, reading each copy's :class:`Summary` (its envelope
  and its header block, never the body) in worker threads, :data:`READ_BATCH` per hop, until
  a page of matches is found, the folder ends, or :data:`SEARCH_BUDGET_SECONDS` have been
  spent; then the page says how far it looked and offers to look further (the cursor).
  Summaries are kept, newest used last out, up to :data:`MAX_SUMMARIES`, so a search
  typed again, or refined, reads nothing it has read recently.

A query is words, each of which must match (case-insensitive substring) one field;
``from:``, ``to:``, ``subject:``, ``tag:`` and ``id:`` name the field, a bare word may match
any of them. ``"quoted words"`` are one word.

Owns the id list and the summaries (memory bounded by :data:`MAX_SUMMARIES`); plain state on
the Trio thread, touched only between thread hops. No task.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import email.errors
import email.header
import email.message
import email.parser
import email.policy
import os
import shlex
import time
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Final

import attrs
import trio

from dispatch.spool.captured import captured_ids
from dispatch.spool.envelope import Envelope
from dispatch.spool.errors import CorruptEnvelopeError
from dispatch.spool.layout import EML, JSON

PAGE_SIZE: Final = 50
READ_BATCH: Final = 200
SEARCH_BUDGET_SECONDS: Final = 1.0
"""Server time one search request may spend reading summaries; the page then offers to go
on. One request never ties up a worker thread for longer than a batch."""
MAX_SUMMARIES: Final = 20_000
"""Summaries kept (about 0.5 KiB each): a recent inbox of this size is searched in memory."""
HEADER_BYTES: Final = 64 << 10  # of a body read for its header block
MAX_FIELD_CHARS: Final = 300  # of a summary's subject or From kept
FIELDS: Final = ("from", "to", "subject", "tag", "id")


@attrs.frozen
class Summary:
    """What the list shows of one captured copy, and what a search matches."""

    id: str
    captured_at: float
    mail_from: str  # the envelope's
    recipients: tuple[str, ...]  # the envelope's
    tags: tuple[str, ...]
    size: int
    subject: str
    from_header: str
    to_header: str
    mixed: bool  # multipart/mixed: it most likely has attachments

    def haystacks(self, field: str | None) -> Iterable[str]:
        if field in (None, "from"):
            yield self.mail_from
            yield self.from_header
        if field in (None, "to"):
            yield from self.recipients
            yield self.to_header
        if field in (None, "subject"):
            yield self.subject
        if field in (None, "tag"):
            yield from self.tags
        if field in (None, "id"):
            yield self.id


@attrs.frozen
class Query:
    """Parsed search words: ``(field or None, lower-cased text)``, all of which must match."""

    words: tuple[tuple[str | None, str], ...] = ()
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> Query:
        try:
            tokens = shlex.split(text)
        except ValueError:  # an unbalanced quote: take the words as they are
            tokens = text.split()
        words: list[tuple[str | None, str]] = []
        for token in tokens:
            field, colon, rest = token.partition(":")
            if colon and field.lower() in FIELDS and rest:
                words.append((field.lower(), rest.casefold()))
            elif token:
                words.append((None, token.casefold()))
        return cls(tuple(words), text.strip())

    def matches(self, summary: Summary) -> bool:
        return all(
            any(word in value.casefold() for value in summary.haystacks(field))
            for field, word in self.words
        )


@attrs.frozen
class InboxPage:
    """One page of the list or of a search's results, newest first.

    ``total`` copies are in the inbox; ``looked_at`` of them were examined for this page;
    ``next_before`` is the cursor of the next page (None: nothing older); ``complete`` is
    False when a search stopped for time before it had a full page.
    """

    rows: tuple[Summary, ...]
    total: int
    looked_at: int
    next_before: str | None
    complete: bool
    version: int


def _read_summary(directory: str, message_id: str) -> Summary | None:
    """Blocking: a copy's summary; None when it is gone or cannot be read.

    Plain ``open`` on string paths and one ``fstat``: a search makes tens of thousands of
    these calls, and ``pathlib`` and a second ``stat`` were a third of their time."""
    base = os.path.join(directory, message_id)
    try:
        with open(base + JSON, "rb") as file:
            data = file.read()
            captured_at = os.fstat(file.fileno()).st_mtime
        envelope = Envelope.from_json(data, path=base + JSON)
        with open(base + EML, "rb") as body:
            head = body.read(HEADER_BYTES)
    except (OSError, CorruptEnvelopeError):
        return None
    end = head.find(b"\r\n\r\n")
    # compat32 and decode_header: a tenth of the time of policy.default's header objects,
    # which counts when a search reads thousands of header blocks.
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        head if end < 0 else head[: end + 4]
    )
    return Summary(
        id=message_id,
        captured_at=captured_at,
        mail_from=envelope.mail_from,
        recipients=envelope.recipients,
        tags=envelope.tags,
        size=envelope.size,
        subject=_decoded(headers, "Subject"),
        from_header=_decoded(headers, "From"),
        to_header=_decoded(headers, "To"),
        mixed=headers.get_content_type() == "multipart/mixed",
    )


def _decoded(headers: email.message.Message, name: str) -> str:
    """A header's text with RFC 2047 encoded words decoded, cut to :data:`MAX_FIELD_CHARS`."""
    raw = headers.get(name)
    if raw is None:
        return ""
    text = str(raw)
    with contextlib.suppress(email.errors.HeaderParseError, UnicodeError, LookupError, ValueError):
        text = str(email.header.make_header(email.header.decode_header(text)))  # else as it came
    return " ".join(text.split())[:MAX_FIELD_CHARS]


def _read_summaries(directory: str, message_ids: Sequence[str]) -> list[Summary | None]:
    return [_read_summary(directory, message_id) for message_id in message_ids]


def _folder_version(directory: Path) -> int:
    try:
        return directory.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


class CapturedInbox:
    """The listing of one ``captured/`` folder (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._ids: list[str] = []
        self._listed_version: int | None = None
        self._summaries: collections.OrderedDict[str, Summary] = collections.OrderedDict()

    async def version(self) -> int:
        """The folder's modification time in ns: it changes with every capture or removal."""
        return await trio.to_thread.run_sync(_folder_version, self.directory)

    async def ids(self) -> tuple[list[str], int]:
        """Every id, oldest first, and the version they were listed at."""
        version = await self.version()
        if version != self._listed_version:
            self._ids = await trio.to_thread.run_sync(captured_ids, self.directory)
            self._listed_version = version
        return self._ids, version

    def forget(self, message_ids: Iterable[str]) -> None:
        """Drop summaries of copies that were deleted."""
        for message_id in message_ids:
            self._summaries.pop(message_id, None)

    async def summaries(self, message_ids: Sequence[str]) -> list[Summary]:
        """The summaries of these ids, in order; copies gone since the listing are left out."""
        missing = [m for m in message_ids if m not in self._summaries]
        if missing:
            work = partial(_read_summaries, str(self.directory), missing)
            read = await trio.to_thread.run_sync(work)
            for summary in read:
                if summary is not None:
                    self._summaries[summary.id] = summary
            while len(self._summaries) > MAX_SUMMARIES:
                self._summaries.popitem(last=False)
        found = []
        for message_id in message_ids:
            summary = self._summaries.get(message_id)
            if summary is not None:
                self._summaries.move_to_end(message_id)
                found.append(summary)
        return found

    async def page(
        self, query: Query, before: str | None = None, limit: int = PAGE_SIZE
    ) -> InboxPage:
        """The newest copies older than ``before`` (an id) matching ``query``."""
        ids, version = await self.ids()
        end = bisect.bisect_left(ids, before) if before else len(ids)
        if not query.words:
            chosen = ids[max(0, end - limit) : end][::-1]
            rows = await self.summaries(chosen)
            start = end - len(chosen)
            return InboxPage(
                tuple(rows), len(ids), len(chosen), ids[start] if start > 0 else None, True, version
            )
        return await self._search(ids, end, query, limit, version)

    async def _search(
        self, ids: list[str], end: int, query: Query, limit: int, version: int
    ) -> InboxPage:
        deadline = time.monotonic() + SEARCH_BUDGET_SECONDS
        rows: list[Summary] = []
        position = end  # ids[position:end] have been looked at
        while position > 0 and len(rows) < limit and time.monotonic() < deadline:
            batch = ids[max(0, position - READ_BATCH) : position][::-1]  # newest first
            found = {summary.id: summary for summary in await self.summaries(batch)}
            for message_id in batch:
                position -= 1
                summary = found.get(message_id)
                if summary is not None and query.matches(summary):
                    rows.append(summary)
                    if len(rows) == limit:
                        break
        return InboxPage(
            tuple(rows),
            len(ids),
            end - position,
            ids[position] if position > 0 else None,
            position == 0 or len(rows) == limit,
            version,
        )
