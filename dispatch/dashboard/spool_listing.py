"""The Spool page's list: which messages the spool holds, filtered, sorted and paged.

:func:`list_spool` takes a snapshot of the spool's in-memory index (on the Trio thread: the
index is not thread-safe) and filters, sorts and pages it in a worker thread, as
``/debug/queue`` does: the envelopes are immutable, and with 100,000 messages in the spool
the event loop does not wait for the sort. Then the subjects of the page's messages are
read from the message log (one indexed query; the spool's envelopes hold no subject).

Views (``state``): ``all``, ``queued`` (incoming, never tried), ``retrying`` (incoming,
tried before), ``processing`` (being delivered now), ``failed``. Filters: ``q`` — a part of
the sender, a recipient, the message id or the last error, case-insensitive — and
``relay`` — messages with an undelivered recipient the current routes send through that
relay (first or failover), the same rule as ``spool retry --all --relay``. Oldest first:
the head of the queue, where stuck mail shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Final

import attrs
import trio

from dispatch.delivery.routing import Router
from dispatch.spool import Envelope, MessageState, Spool, SpoolEntry
from dispatch.storage.database import Database, DatabaseUnavailableError
from dispatch.storage.message_search import subjects_of

PAGE_SIZE: Final = 100
VIEWS: Final = ("all", "queued", "retrying", "processing", "failed")
VIEW_LABELS: Final = {
    "all": "All",
    "queued": "Queued",
    "retrying": "Retrying",
    "processing": "Being delivered",
    "failed": "Failed",
}


def view_of(entry: SpoolEntry) -> str:
    if entry.state is MessageState.INCOMING:
        return "retrying" if entry.envelope.attempts else "queued"
    return entry.state.value


@attrs.frozen
class SpoolRow:
    """One message of the list, with what the page shows about it."""

    entry: SpoolEntry
    view: str
    subject: str | None = None

    @property
    def envelope(self) -> Envelope:
        return self.entry.envelope

    @property
    def reason(self) -> str:
        """Why it waits or failed: each refused recipient's reply, each deferred one's last
        reply, else the last error (a relay that could not be reached)."""
        envelope = self.envelope
        replies = [
            f"{rcpt}: {result.response}"
            for rcpt, result in envelope.recipient_results.items()
            if result.status == "failed"
        ]
        replies += [f"{rcpt}: {deferral.response}" for rcpt, deferral in envelope.deferrals.items()]
        error = envelope.last_error or ""
        if not replies:
            return error
        if error.startswith("retries exhausted"):
            return "retries exhausted: " + "; ".join(replies)
        return "; ".join(replies)

    @property
    def next_attempt(self) -> float | None:
        return self.envelope.next_attempt_at if self.view in ("queued", "retrying") else None


@attrs.frozen
class SpoolListing:
    rows: tuple[SpoolRow, ...]
    matched: int  # rows matching the view and filters, over every page
    counts: dict[str, int]  # messages per view (unfiltered)
    page: int
    pages: int
    subjects_error: str | None = None


def _undelivered(envelope: Envelope) -> list[str]:
    results = envelope.recipient_results
    return [r for r in envelope.recipients if r not in results or results[r].status != "delivered"]


def _matcher(query: str, relay: str, router: Router) -> Callable[[Envelope], bool]:
    needle = query.casefold()

    def matches(envelope: Envelope) -> bool:
        if needle and not any(
            needle in text.casefold()
            for text in (
                envelope.id,
                envelope.mail_from,
                envelope.last_error or "",
                *envelope.recipients,
            )
        ):
            return False
        return not relay or any(
            relay in router.route(envelope.mail_from, rcpt).relays
            for rcpt in _undelivered(envelope)
        )

    return matches


def _select(
    entries: Sequence[SpoolEntry], view: str, matches: Callable[[Envelope], bool], page: int
) -> tuple[list[SpoolRow], int, dict[str, int]]:
    """Blocking (a worker thread): filter, sort oldest first, cut one page."""
    counts = dict.fromkeys(VIEWS, 0)
    chosen: list[SpoolRow] = []
    for entry in entries:
        kind = view_of(entry)
        counts[kind] += 1
        counts["all"] += 1
        if (view == "all" or view == kind) and matches(entry.envelope):
            chosen.append(SpoolRow(entry, kind))
    chosen.sort(key=lambda row: (row.envelope.received_at, row.envelope.id))
    start = (page - 1) * PAGE_SIZE
    return chosen[start : start + PAGE_SIZE], len(chosen), counts


async def list_spool(
    spool: Spool,
    database: Database,
    router: Router,
    *,
    view: str = "all",
    query: str = "",
    relay: str = "",
    page: int = 1,
) -> SpoolListing:
    """One page of the spool (see the module docstring). ``view`` must be one of VIEWS."""
    entries = tuple(spool.entries())
    work = partial(_select, entries, view, _matcher(query, relay, router), max(page, 1))
    rows, matched, counts = await trio.to_thread.run_sync(work)
    subjects: dict[str, str] = {}
    error = None
    if rows:
        try:
            subjects = await subjects_of(database, [row.envelope.id for row in rows])
        except DatabaseUnavailableError as exc:
            error = str(exc) or "the database is unavailable"
    pages = max(1, -(-matched // PAGE_SIZE))
    return SpoolListing(
        rows=tuple(attrs.evolve(row, subject=subjects.get(row.envelope.id)) for row in rows),
        matched=matched,
        counts=counts,
        page=min(max(page, 1), pages),
        pages=pages,
        subjects_error=error,
    )


def age(at: float, now: float | None = None) -> str:
    """``3 min``, ``2 h``, ``4 d``: how long a message has been in the spool."""
    seconds = int(max(0.0, (time.time() if now is None else now) - at))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
