"""``/debug/queue``: every spooled message with each recipient's own state, as HTML or text.

Per recipient (from the envelope, see :mod:`dispatch.spool.envelope`):

- ``delivered`` / ``failed`` — a final result: the upstream's reply, the relay and route that
  gave it (``failed`` is a permanent refusal, 5xx);
- ``retrying`` — the last attempt deferred it (4xx, a refused connection): that reply, relay
  and route; it is tried again at the message's next attempt;
- ``exhausted`` — the message is in ``failed/`` with this recipient undelivered because the
  retries ran out (``spool.max_retries``); it waits for an operator's ``spool retry``;
- ``pending`` — not tried yet: the relay and route the current routes would choose are shown
  and marked planned (``*``);
- ``captured`` — the copy in the Local inbox (``?state=captured``), made by a ``local`` relay.

Envelopes written before deferrals were recorded have the transient replies only in
``last_error`` (``rcpt: reply; …``); their retrying recipients show the part that names them.

Everything shown is peer-controlled text (addresses, replies): HTML escapes it, the text form
writes control characters as escapes (:func:`dispatch.logs.printable`), so a hostile reply can
neither script the browser nor drive the terminal.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Final, Protocol

import attrs

from dispatch.logs import printable
from dispatch.monitoring.pages import _duration, _e, _page
from dispatch.monitoring.vars import format_time
from dispatch.spool.captured import CapturedListing
from dispatch.spool.envelope import Envelope
from dispatch.spool.index import SpoolCounts, SpoolEntry
from dispatch.spool.layout import MessageState

QUEUE_STATES: Final = ("incoming", "processing", "failed", "captured")
"""The values of ``?state=``: the spool's three states and the Local inbox."""

DEFAULT_LIMIT: Final = 500
MAX_LIMIT: Final = 10_000
"""Messages shown at most (``?limit=``): the page is built on the event loop."""

_PLANNED: Final = "*"


class PlannedRoute(Protocol):
    """What :meth:`RouteLookup.route` answers (``dispatch.delivery.routing.RouteDecision``)."""

    @property
    def relays(self) -> tuple[str, ...]: ...

    @property
    def label(self) -> str: ...


class RouteLookup(Protocol):
    """The current routing table (``dispatch.delivery.routing.Router``)."""

    def route(self, sender: str, recipient: str) -> PlannedRoute: ...


@attrs.frozen
class RecipientRow:
    """One recipient's state, the reply that decided it and who gave it."""

    recipient: str
    state: str
    reply: str = ""
    relay: str = ""
    route: str = ""
    at: float | None = None  # when the reply came
    planned: bool = False  # relay and route are what the current routes would choose


@attrs.frozen
class MessageRow:
    """One message and its recipients, as the page shows them."""

    id: str
    state: str
    mail_from: str
    received_at: float
    attempts: int
    next_attempt_at: float | None  # None: not waiting for an attempt (processing, failed…)
    recipients: tuple[RecipientRow, ...]


@attrs.frozen
class QueueView:
    """The messages chosen (``state``, at most ``limit``) and how many there were."""

    messages: Sequence[MessageRow]
    matching: int  # messages in the chosen state(s), before the limit
    state: str | None
    counts: SpoolCounts
    captured: int | None = None  # copies in the Local inbox, when they were counted


def _reply_in_last_error(envelope: Envelope, recipient: str) -> str:
    """The part of ``last_error`` (``rcpt: reply; rcpt: reply``) naming ``recipient``."""
    text = envelope.last_error or ""
    prefix = f"{recipient}: "
    for part in text.split("; "):
        if part.startswith(prefix):
            return part[len(prefix) :]
    return text


def _recipient_row(
    envelope: Envelope, recipient: str, state: MessageState, router: RouteLookup | None
) -> RecipientRow:
    result = envelope.recipient_results.get(recipient)
    if result is not None:
        return RecipientRow(
            recipient,
            "delivered" if result.status == "delivered" else "failed",
            result.response,
            result.relay or "",
            result.route or "",
            result.at,
        )
    waiting = "exhausted" if state is MessageState.FAILED else "retrying"
    deferral = envelope.deferrals.get(recipient)
    if deferral is not None:
        return RecipientRow(
            recipient,
            waiting,
            deferral.response,
            deferral.relay or "",
            deferral.route or "",
            deferral.at,
        )
    planned = router.route(envelope.mail_from, recipient) if router is not None else None
    relay, route = (" then ".join(planned.relays), planned.label) if planned else ("", "")
    if envelope.attempts > 0:  # tried, before deferrals were recorded
        reply = _reply_in_last_error(envelope, recipient)
        return RecipientRow(recipient, waiting, reply, relay, route, planned=planned is not None)
    pending = "exhausted" if state is MessageState.FAILED else "pending"
    return RecipientRow(recipient, pending, relay=relay, route=route, planned=planned is not None)


def message_rows(
    entries: Iterable[SpoolEntry], router: RouteLookup | None = None
) -> list[MessageRow]:
    """Rows of spool entries, in the order given."""
    rows = []
    for entry in entries:
        env = entry.envelope
        due = env.next_attempt_at if entry.state is MessageState.INCOMING else None
        recipients = tuple(_recipient_row(env, r, entry.state, router) for r in env.recipients)
        rows.append(
            MessageRow(
                env.id,
                entry.state.value,
                env.mail_from,
                env.received_at,
                env.attempts,
                due,
                recipients,
            )
        )
    return rows


def captured_rows(listing: CapturedListing) -> list[MessageRow]:
    """Rows of the Local inbox's copies: every recipient ``captured`` when the copy was made."""
    return [
        MessageRow(
            copy.envelope.id,
            "captured",
            copy.envelope.mail_from,
            copy.envelope.received_at,
            copy.envelope.attempts,
            None,
            tuple(
                RecipientRow(r, "captured", f"captured as {copy.path}", at=copy.captured_at)
                for r in copy.envelope.recipients
            ),
        )
        for copy in listing.copies
    ]


def select_entries(
    entries: Iterable[SpoolEntry], state: str | None, limit: int
) -> tuple[list[SpoolEntry], int]:
    """The entries in ``state`` (all if None), by state, next attempt, then arrival; at most
    ``limit`` of them, and how many matched."""
    order = {name: i for i, name in enumerate(QUEUE_STATES)}
    chosen = [e for e in entries if state is None or e.state.value == state]
    chosen.sort(key=lambda e: (order[e.state.value], e.envelope.next_attempt_at, e.envelope.id))
    return chosen[:limit], len(chosen)


def _next_attempt(message: MessageRow, now: float) -> str:
    if message.state == "processing":
        return "in progress"
    if message.next_attempt_at is None:
        return "—"
    if message.next_attempt_at <= now:
        return "due now"
    return f"in {_duration(message.next_attempt_at - now)}"


def compact_duration(seconds: float) -> str:
    """A duration in one word for the text form: ``7s``, ``3m05s``, ``2h10m``, ``4d03h``."""
    whole = int(seconds)
    if whole < 60:
        return f"{max(seconds, 0.0):.1f}s" if seconds < 10 else f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02}h"


def _next_word(message: MessageRow, now: float) -> str:
    """The next attempt in one word: ``now``, ``+3m05s``, ``running`` or ``-``."""
    if message.state == "processing":
        return "running"
    if message.next_attempt_at is None:
        return "-"
    if message.next_attempt_at <= now:
        return "now"
    return "+" + compact_duration(message.next_attempt_at - now)


def _relay_text(row: RecipientRow) -> str:
    return f"{row.relay}{_PLANNED}" if row.planned and row.relay else row.relay


def _counts_text(view: QueueView) -> str:
    counts = view.counts
    parts = [
        f"incoming {counts.incoming} ({counts.retrying} retrying)",
        f"processing {counts.processing}",
        f"failed {counts.failed}",
    ]
    if view.captured is not None:
        parts.append(f"captured {view.captured}")
    shown = len(view.messages)
    which = f"state={view.state}" if view.state else "all states"
    more = f", the first {shown} shown" if shown < view.matching else ""
    return f"{view.matching} message(s), {which}{more}. Spool: {', '.join(parts)}."


TEXT_COLUMNS: Final = (
    "ID",
    "STATE",
    "AGE",
    "ATTEMPTS",
    "NEXT",
    "FROM",
    "RECIPIENT",
    "RCPT_STATE",
    "RELAY",
    "ROUTE",
    "REPLY",
)


def queue_text(view: QueueView, *, now: float | None = None) -> str:
    """The text form (``?format=text``): one line per recipient, columns aligned with spaces,
    the reply last and unpadded; a summary first and a legend last, each line starting ``#``."""
    at = time.time() if now is None else now
    lines: list[tuple[str, ...]] = [TEXT_COLUMNS]
    for message in view.messages:
        for row in message.recipients:
            cells = (
                message.id,
                message.state,
                compact_duration(max(0.0, at - message.received_at)),
                str(message.attempts),
                _next_word(message, at),
                message.mail_from or "<>",
                row.recipient,
                row.state,
                _relay_text(row) or "-",
                row.route or "-",
                row.reply,
            )
            lines.append(tuple(printable(cell) for cell in cells))
    widths = [max(len(line[i]) for line in lines) for i in range(len(TEXT_COLUMNS) - 1)]
    out = [f"# {_counts_text(view)}"]
    for line in lines:
        padded = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        out.append("  ".join([*padded, line[-1]]).rstrip())
    out.append(f"# {_PLANNED} after a relay: not tried yet, the relay the current routes choose")
    return "\n".join(out) + "\n"


_HEAD: Final = (
    "message",
    "state",
    "from",
    "age",
    "attempts",
    "next attempt",
    "recipient",
    "recipient state",
    "relay",
    "route",
    "reply",
)
_STATE_CLASS: Final = {"failed": "error", "exhausted": "error", "delivered": "ok"}
_EXTRA_STYLE: Final = "<style>.ok { color: #070; } .planned { font-style: italic; }</style>"


def _recipient_cells(row: RecipientRow) -> str:
    css = _STATE_CLASS.get(row.state)
    state = f'<td class="{css}">{_e(row.state)}</td>' if css else f"<td>{_e(row.state)}</td>"
    relay = _e(_relay_text(row))
    if row.planned:
        relay = f'<span class="planned" title="not tried yet: the current routes">{relay}</span>'
    when = (
        f" <small>({_e(format_time(row.at))})</small>" if row.at is not None and row.reply else ""
    )
    return (
        f"<td>{_e(row.recipient)}</td>{state}<td>{relay}</td><td>{_e(row.route)}</td>"
        f"<td>{_e(row.reply)}{when}</td>"
    )


def _message_rows_html(message: MessageRow, now: float) -> str:
    span = len(message.recipients)
    facts = (
        message.id,
        message.state,
        message.mail_from or "<>",
        _duration(max(0.0, now - message.received_at)),
        str(message.attempts),
        _next_attempt(message, now),
    )
    first = "".join(f'<td rowspan="{span}">{_e(fact)}</td>' for fact in facts)
    rows = [f"<tr>{first}{_recipient_cells(message.recipients[0])}</tr>"]
    rows.extend(f"<tr>{_recipient_cells(row)}</tr>" for row in message.recipients[1:])
    return "".join(rows)


def _filters(view: QueueView) -> str:
    links = ['<a href="queue">all</a>']
    links.extend(f'<a href="queue?state={state}">{state}</a>' for state in QUEUE_STATES)
    text = "queue?format=text" + (f"&amp;state={view.state}" if view.state else "")
    return f'<p>Show: {" · ".join(links)} — <a href="{text}">as text</a></p>'


def queue_html(view: QueueView, *, now: float | None = None) -> str:
    """The HTML form: one row per recipient, the message's cells spanning its recipients."""
    at = time.time() if now is None else now
    head = "".join(f"<th>{_e(h)}</th>" for h in _HEAD)
    rows = "".join(_message_rows_html(message, at) for message in view.messages)
    legend = (
        "<p><small>Recipient states: pending (not tried yet; the relay in italics is what the "
        "current routes choose), retrying (deferred, tried again at the next attempt), "
        "delivered, failed (refused permanently), exhausted (retries used up; waits for "
        "<code>spool retry</code>), captured (in the Local inbox).</small></p>"
    )
    return _page(
        "Spool queue",
        f"{_EXTRA_STYLE}<p>{_e(_counts_text(view))}</p>{_filters(view)}"
        f"<table><tr>{head}</tr>{rows}</table>{legend}",
    )


def render(
    entries: Sequence[SpoolEntry],
    *,
    captured: CapturedListing | None,
    router: RouteLookup | None,
    counts: SpoolCounts,
    state: str | None,
    limit: int,
    as_text: bool,
) -> str:
    """The whole page from snapshots: spool ``entries`` (or, for ``state="captured"``, the
    ``captured`` listing). Everything it reads is immutable, so it may run in a worker thread
    (10,000 messages of three recipients take ~0.6 s; the event loop must not wait for that).
    """
    if state == "captured":
        rows = captured_rows(captured) if captured is not None else []
        total = captured.total if captured is not None else 0
        view = QueueView(rows, total, state, counts, captured=total)
    else:
        chosen, matching = select_entries(entries, state, limit)
        view = QueueView(message_rows(chosen, router), matching, state, counts)
    return queue_text(view) if as_text else queue_html(view)


def error_page(title: str, text: str) -> str:
    """A page that says what was wrong with the request (a 400's body)."""
    return _page(title, f'<p class="error">{_e(text)}</p>')
