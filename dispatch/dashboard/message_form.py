"""The Message log's search form: what the operator typed, checked, as a storage filter.

:func:`parse_form` reads the query string of ``GET /messages`` into a :class:`SearchForm`:
the values to show back in the form, the :class:`~dispatch.storage.message_search.MessageFilter`
they mean, the page cursor, and a list of problems (each naming the field and what to type
instead). Nothing here touches the database.

Dates come from ``<input type="datetime-local">`` (``2026-12-03T08:00``) or are typed as a
date (``2026-12-03``), in the browser's time zone: the page's script fills the hidden field
``tz`` with the browser's offset from UTC in minutes (``Date.getTimezoneOffset()``);
without it (no script) the times are UTC, and the form says so. "To" is exclusive; a date
alone in "To" means the end of that day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlencode

import attrs

from dispatch.spool.ids import is_valid_id
from dispatch.storage.message_search import OUTCOMES, Cursor, MessageFilter, Outcome
from dispatch.storage.records import SOURCES, Source

FIELDS: Final = (
    "address",
    "subject",
    "status",
    "tag",
    "relay",
    "source",
    "api_key",
    "since",
    "until",
    "tz",
)
MAX_FIELD: Final = 500
DENIED: Final = "denied"  # the status that lists refused connections instead of messages

STATUS_CHOICES: Final = (
    ("", "Any"),
    ("open", "Not finished (queued or retrying)"),
    ("delivered", "Delivered (to a recipient)"),
    ("failed", "Failed (for a recipient)"),
    ("deferred", "Deferred at least once"),
    (DENIED, "Denied connections"),
)


@attrs.frozen
class SearchForm:
    """The form as typed (``values``), what it asks for, and what is wrong with it."""

    values: Mapping[str, str]
    wanted: MessageFilter
    denied: bool  # list refused connections, not messages
    before: Cursor | None
    after: Cursor | None
    problems: tuple[str, ...]
    go_to: str | None = None  # a message id typed into "address": open that message

    @property
    def active(self) -> bool:
        """Whether any filter is set (the page then offers to clear them)."""
        return any(self.values.get(name) for name in FIELDS if name != "tz")

    def link(self, **cursor: str) -> str:
        """``/messages?…`` with this search's filters and the given cursor."""
        query = {k: v for k, v in self.values.items() if v}
        query.update(cursor)
        return "/messages" + (f"?{urlencode(query)}" if query else "")


def _offset(text: str) -> dt.timezone:
    try:
        minutes = int(text)
    except ValueError:
        return dt.UTC
    if not -24 * 60 < minutes < 24 * 60:
        return dt.UTC
    # getTimezoneOffset() is UTC minus local time, in minutes.
    return dt.timezone(-dt.timedelta(minutes=minutes))


def parse_time(text: str, zone: dt.tzinfo, *, end_of_day: bool = False) -> float:
    """A typed date or date-time in ``zone`` as Unix time; :class:`ValueError` if neither."""
    text = text.strip().replace(" ", "T")
    if len(text) == 10:  # a date alone
        day = dt.date.fromisoformat(text)
        start = dt.datetime.combine(day, dt.time(), zone)
        return (start + dt.timedelta(days=1 if end_of_day else 0)).timestamp()
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.timestamp()


def _cursor(text: str, name: str, problems: list[str]) -> Cursor | None:
    if not text:
        return None
    try:
        return Cursor.parse(text)
    except ValueError:
        problems.append(f"The page link is damaged ({name}): start again from the first page.")
        return None


def parse_form(args: Mapping[str, str]) -> SearchForm:
    """Read ``GET /messages``'s query string (see the module docstring)."""
    values = {name: args.get(name, "").strip()[:MAX_FIELD] for name in FIELDS}
    problems: list[str] = []
    zone = _offset(values["tz"])
    times: dict[str, float | None] = {"since": None, "until": None}
    for name, label in (("since", "From"), ("until", "To")):
        if values[name]:
            try:
                times[name] = parse_time(values[name], zone, end_of_day=name == "until")
            except ValueError:
                problems.append(
                    f"{label}: {values[name]!r} is not a date; use 2026-12-03 or 2026-12-03T08:00."
                )
    status = values["status"]
    if status and status != DENIED and status not in OUTCOMES:
        problems.append(f"Status: {status!r} is not one of the listed choices.")
        status = ""
    source = values["source"]
    if source and source not in SOURCES:
        problems.append(f"Source: {source!r} is neither smtp nor api.")
        source = ""
    address = values["address"]
    go_to = address if is_valid_id(address) else None
    wanted = MessageFilter(
        address=address or None,
        subject=values["subject"] or None,
        tag=values["tag"] or None,
        source=_source(source),
        api_key=values["api_key"] or None,
        since=times["since"],
        until=times["until"],
        relay=values["relay"] or None,
        outcome=_outcome(status),
    )
    return SearchForm(
        values=values,
        wanted=wanted,
        denied=status == DENIED,
        before=_cursor(args.get("before", ""), "before", problems),
        after=_cursor(args.get("after", ""), "after", problems),
        problems=tuple(problems),
        go_to=go_to,
    )


def _source(text: str) -> Source | None:
    for source in SOURCES:
        if source == text:
            return source
    return None


def _outcome(text: str) -> Outcome | None:
    for outcome in OUTCOMES:
        if outcome == text:
            return outcome
    return None
