"""Searching the message log one message at a time: the dashboard's Message log (SPEC §8).

:func:`search_messages` answers "which messages match", newest first, a page at a time.
A message is its ``received`` row (sender, recipients, subject, size, tags, source, peer,
API key: every intake fact); what became of it is in its later rows (``retried``,
``delivered``, ``failed``), found through the ``message_log_message_id_at`` index.

Filters, all optional, all combined:

==================  ==========================================================================
``address``         the sender or a recipient: a whole address is matched exactly (case-
                    insensitive) through ``message_log_addresses``; anything else (``@example.
                    com``, ``bob``) is a substring of the sender or the recipient list
``subject``         a substring of the subject (case-insensitive for ASCII)
``tag``             one tag, exactly (case-insensitive for ASCII)
``source``          ``smtp`` or ``api``
``api_key``         the API key's prefix (``dsp_live_…``), exactly
``since``/``until`` received at ``since <= at < until`` (Unix time)
``relay``           some attempt went through this relay (delivered, failed or deferred there)
``outcome``         see :data:`OUTCOMES`: a message that had such an event (``delivered``,
                    ``failed``, ``deferred``), or one not finished yet (``open``)
==================  ==========================================================================

The outcomes are events, as in a provider's activity log, not one exclusive status: a
message delivered to one recipient and refused for another is found under ``delivered`` and
under ``failed``. Each row also carries its newest event (``latest``), which is what a list
shows as its status.

Pages are keyset-paginated: a page ends with a cursor ``(at, row id)`` and the next page
starts strictly after it, so page 1,000 costs what page 1 costs (no ``OFFSET``). The walk
goes down ``message_log_event_at`` (``event = 'received'``, newest first) unless the planner
finds a narrower index (an exact address, an API key). A selective filter on a long time
range therefore walks every ``received`` row of that range: measured at 100,000 rows in
docs/dashboard.md.

``denied`` rows (connections refused by an allow-list) are not messages; :func:`denied_page`
lists them on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal, get_args

import attrs

from dispatch.storage.database import Database, SqlCursor
from dispatch.storage.queries import _MESSAGE_SELECT, _ascii_lower, _json_string, _like_escape
from dispatch.storage.records import EventKind, MessageEvent, Source, message_from_row

Outcome = Literal["open", "delivered", "failed", "deferred"]
OUTCOMES: Final[tuple[Outcome, ...]] = get_args(Outcome)
"""``open``: the newest event is ``received`` or ``retried`` (not finished); the others:
the message had at least one ``delivered`` / ``failed`` / ``retried`` event."""

_EVENT_OF_OUTCOME: Final[dict[str, EventKind]] = {
    "delivered": "delivered",
    "failed": "failed",
    "deferred": "retried",
}
PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 200

_LATEST: Final = (
    "(SELECT l.event FROM message_log l WHERE l.message_id = m.message_id "
    "ORDER BY l.at DESC, l.id DESC LIMIT 1)"
)


@attrs.frozen
class Cursor:
    """A position in the newest-first order: the row's time, then its id."""

    at: float
    row_id: int

    def text(self) -> str:
        """The cursor as a URL parameter (``repr`` keeps every bit of the float)."""
        return f"{self.at!r}_{self.row_id}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """A cursor from :meth:`text`; :class:`ValueError` if it is not one."""
        at, sep, row_id = text.partition("_")
        if not sep:
            raise ValueError(f"{text!r} is not a page cursor")
        return cls(float(at), int(row_id))


@attrs.frozen(kw_only=True)
class MessageFilter:
    """What to look for; every field None means "any" (see the module docstring)."""

    address: str | None = None
    subject: str | None = None
    tag: str | None = None
    source: Source | None = None
    api_key: str | None = None
    since: float | None = None
    until: float | None = None
    relay: str | None = None
    outcome: Outcome | None = None


@attrs.frozen
class MessageRow:
    """One message as a list shows it: its ``received`` row and its newest event's kind."""

    received: MessageEvent
    latest: EventKind

    @property
    def cursor(self) -> Cursor:
        assert self.received.row_id is not None  # read from the database
        return Cursor(self.received.at, self.received.row_id)


@attrs.frozen
class Page[T]:
    """A page of rows, newest first, and whether there are rows before and after it."""

    rows: tuple[T, ...]
    newer: Cursor | None  # where the page before this one ends (None: this is the newest)
    older: Cursor | None  # where the page after this one starts (None: this is the last)


def _is_whole_address(text: str) -> bool:
    local, at, domain = text.rpartition("@")
    return bool(at and local and domain and " " not in text)


def _conditions(wanted: MessageFilter) -> tuple[list[str], list[object]]:
    where = ["m.event = 'received'"]
    params: list[object] = []
    if wanted.address:
        if _is_whole_address(wanted.address):
            where.append(
                "m.id IN (SELECT a.log_id FROM message_log_addresses a WHERE a.address = ?)"
            )
            params.append(wanted.address.lower())
        else:
            pattern = f"%{_like_escape(_ascii_lower(wanted.address))}%"
            where.append(
                "(LOWER(m.sender) LIKE ? ESCAPE '\\' OR LOWER(m.recipients) LIKE ? ESCAPE '\\')"
            )
            params += [pattern, pattern]
    if wanted.subject:
        where.append("LOWER(m.subject) LIKE ? ESCAPE '\\'")
        params.append(f"%{_like_escape(_ascii_lower(wanted.subject))}%")
    if wanted.tag:
        where.append("LOWER(m.tags) LIKE ? ESCAPE '\\'")
        params.append(f"%{_like_escape(_ascii_lower(_json_string(wanted.tag)))}%")
    if wanted.source:
        where.append("m.source = ?")
        params.append(wanted.source)
    if wanted.api_key:
        where.append("m.api_key_prefix = ?")
        params.append(wanted.api_key)
    if wanted.since is not None:
        where.append("m.at >= ?")
        params.append(wanted.since)
    if wanted.until is not None:
        where.append("m.at < ?")
        params.append(wanted.until)
    if wanted.relay:
        where.append(
            "EXISTS (SELECT 1 FROM message_log d WHERE d.message_id = m.message_id AND d.relay = ?)"
        )
        params.append(wanted.relay)
    if wanted.outcome == "open":
        where.append(f"{_LATEST} IN ('received', 'retried')")
    elif wanted.outcome is not None:
        where.append(
            "EXISTS (SELECT 1 FROM message_log d WHERE d.message_id = m.message_id AND d.event = ?)"
        )
        params.append(_EVENT_OF_OUTCOME[wanted.outcome])
    return where, params


def _page_clause(
    where: list[str], params: list[object], before: Cursor | None, after: Cursor | None
) -> str:
    """Add the cursor's condition; return the ORDER BY (descending, or ascending for a page
    of newer rows, which the caller reverses)."""
    if before is not None:
        where.append("(m.at < ? OR (m.at = ? AND m.id < ?))")
        params += [before.at, before.at, before.row_id]
    if after is not None:
        where.append("(m.at > ? OR (m.at = ? AND m.id > ?))")
        params += [after.at, after.at, after.row_id]
        return "m.at ASC, m.id ASC"
    return "m.at DESC, m.id DESC"


def _paged[T](
    rows: list[T], limit: int, before: Cursor | None, after: Cursor | None, cursor: Any
) -> Page[T]:
    """Trim the ``limit + 1`` rows read into a page, and work out its neighbours."""
    more = len(rows) > limit
    rows = rows[:limit]
    if after is not None:
        rows.reverse()
        newer = cursor(rows[0]) if more and rows else None
        older = cursor(rows[-1]) if rows else after
        return Page(tuple(rows), newer, older)
    newer = cursor(rows[0]) if before is not None and rows else None
    if before is not None and not rows:
        newer = before
    older = cursor(rows[-1]) if more else None
    return Page(tuple(rows), newer, older)


def _clamp(limit: int) -> int:
    return max(1, min(limit, MAX_PAGE_SIZE))


async def search_messages(
    database: Database,
    wanted: MessageFilter,
    *,
    before: Cursor | None = None,
    after: Cursor | None = None,
    limit: int = PAGE_SIZE,
) -> Page[MessageRow]:
    """One page of the messages matching ``wanted``, newest first.

    ``before``: the page that follows a page ending at that cursor (older rows);
    ``after``: the page that precedes a page starting at it (newer rows). One read, one
    worker thread; raises ``DatabaseUnavailableError`` like every query.
    """
    limit = _clamp(limit)
    where, params = _conditions(wanted)
    order = _page_clause(where, params, before, after)
    params.append(limit + 1)
    sql = (
        f"SELECT {_MESSAGE_SELECT}, {_LATEST} FROM message_log m "  # noqa: S608 (constants)
        f"WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?"
    )
    rows = await _read(database, sql, params)
    found = [MessageRow(message_from_row(row[:-1]), row[-1] or "received") for row in rows]
    return _paged(found, limit, before, after, lambda row: row.cursor)


async def denied_page(
    database: Database,
    *,
    since: float | None = None,
    until: float | None = None,
    source: Source | None = None,
    before: Cursor | None = None,
    after: Cursor | None = None,
    limit: int = PAGE_SIZE,
) -> Page[MessageEvent]:
    """One page of ``denied`` rows (peers refused by an allow-list), newest first."""
    limit = _clamp(limit)
    where: list[str] = ["m.event = 'denied'"]
    params: list[object] = []
    for condition, value in (("m.at >= ?", since), ("m.at < ?", until), ("m.source = ?", source)):
        if value is not None:
            where.append(condition)
            params.append(value)
    order = _page_clause(where, params, before, after)
    params.append(limit + 1)
    sql = (
        f"SELECT {_MESSAGE_SELECT} FROM message_log m "  # noqa: S608 (constants)
        f"WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?"
    )
    events = [message_from_row(row) for row in await _read(database, sql, params)]

    def cursor(event: MessageEvent) -> Cursor:
        assert event.row_id is not None
        return Cursor(event.at, event.row_id)

    return _paged(events, limit, before, after, cursor)


async def latest_received(database: Database, limit: int = 8) -> list[MessageRow]:
    """The newest ``limit`` messages received, with their newest event (the Overview)."""
    page = await search_messages(database, MessageFilter(), limit=limit)
    return list(page.rows)


async def subjects_of(database: Database, message_ids: Sequence[str]) -> dict[str, str]:
    """The subjects the ``received`` rows of ``message_ids`` recorded (at most
    :data:`MAX_PAGE_SIZE` ids: one page of a list; one ``message_id`` index probe each)."""
    ids = list(message_ids)[:MAX_PAGE_SIZE]
    if not ids:
        return {}
    marks = ", ".join("?" * len(ids))
    sql = (
        "SELECT message_id, subject FROM message_log "  # noqa: S608 (placeholders only)
        f"WHERE event = 'received' AND message_id IN ({marks})"
    )
    return {mid: subject for mid, subject in await _read(database, sql, ids) if subject}


async def _read(database: Database, sql: str, params: Sequence[object]) -> list[Any]:
    def work(cursor: SqlCursor) -> list[Any]:
        cursor.execute(sql, params)
        return cursor.fetchall()

    return await database.read(work)
