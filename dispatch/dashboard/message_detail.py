"""One message's page (``/messages/<id>``): its timeline, envelope, headers and raw bytes.

The **timeline** is built from the message log (:meth:`LogQueries.message_history`): the
``received`` row, then each attempt's rows — deferred (``retried``), delivered or failed,
with the relay, the route, the duration, the upstream's reply and the provider's message id
— and last, while the spool holds the message, where it is now (waiting for its next
attempt, being delivered, failed and waiting for the operator).

The **envelope** is the spool's (every recipient's result and last deferral) while the
message is there, else what the ``received`` row recorded.

The **body** is the spool's copy while the message is there (``incoming/``, ``processing/``
or ``failed/``), else the Local inbox's copy if the ``local`` relay captured it; otherwise it
is gone — Dispatch keeps no copy of delivered mail — and the page says so. :func:`open_body`
finds and opens it in a worker thread, retrying when the message moves between states
meanwhile (an open file survives a rename or a delete, so a download that started always
finishes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Final

import attrs
import trio

from dispatch.dashboard.formats import size
from dispatch.spool import Envelope, MessageState, Spool, UnknownMessageError
from dispatch.spool.layout import EML, SpoolLayout
from dispatch.storage.records import MessageEvent

HEADER_LIMIT: Final = 256 * 1024  # headers shown on the page; the download has everything
OPEN_TRIES: Final = 3  # the message may move (claim, release) between the lookup and open


@attrs.frozen
class Step:
    """One line of the timeline: what happened, when, how it went (a badge class) and the
    facts worth showing (label, value)."""

    title: str
    at: float | None
    tone: str  # "", "ok", "warn", "bad"
    facts: tuple[tuple[str, str], ...] = ()


def _attempt_facts(event: MessageEvent) -> list[tuple[str, str]]:
    facts = [("Recipients", ", ".join(event.recipients) or "none")]
    if event.relay:
        facts.append(("Relay", event.relay))
    if event.route:
        facts.append(("Route", event.route))
    if event.duration_ms is not None:
        facts.append(("Duration", f"{event.duration_ms:,.0f} ms"))
    if event.response:
        facts.append(("Upstream reply", event.response))
    if event.remote_id:
        facts.append(("Provider message id", event.remote_id))
    return facts


def _received_step(event: MessageEvent) -> Step:
    if event.source == "api":
        how = "over the HTTP API" + (
            f" with key {event.api_key_prefix}" if event.api_key_prefix else ""
        )
    else:
        how = "over SMTP"
    if event.peer_ip:
        how += f" from {event.peer_ip}"
    facts = [
        ("From", event.sender or "<> (null sender)"),
        ("To", ", ".join(event.recipients)),
        ("Subject", event.subject or "(none)"),
        ("Size", size(event.size)),
    ]
    if event.tags:
        facts.append(("Tags", ", ".join(event.tags)))
    return Step(f"Received {how}", event.at, "", tuple(facts))


def _event_step(event: MessageEvent) -> Step:
    attempt = f"Attempt {event.attempt}" if event.attempt else "Attempt"
    through = f" through {event.relay}" if event.relay else ""
    count = len(event.recipients)
    whom = f"{count} recipient{'' if count == 1 else 's'}"
    if event.event == "delivered":
        return Step(
            f"{attempt}{through}: delivered to {whom}", event.at, "ok", tuple(_attempt_facts(event))
        )
    if event.event == "retried":
        return Step(
            f"{attempt}{through}: deferred for {whom}, to be tried again",
            event.at,
            "warn",
            tuple(_attempt_facts(event)),
        )
    return Step(
        f"{attempt}{through}: failed for {whom}", event.at, "bad", tuple(_attempt_facts(event))
    )


def _now_step(state: MessageState, envelope: Envelope) -> Step:
    if state is MessageState.PROCESSING:
        return Step("Being delivered now", None, "")
    if state is MessageState.FAILED:
        return Step(
            "Failed: kept in the spool's failed/ until retried or deleted (Spool page)",
            None,
            "bad",
            (("Last error", envelope.last_error or "unknown"),),
        )
    facts = [("Attempts so far", str(envelope.attempts))]
    if envelope.last_error:
        facts.append(("Last error", envelope.last_error))
    title = "Waiting to retry" if envelope.attempts else "Queued for its first attempt"
    return Step(title, envelope.next_attempt_at, "warn" if envelope.attempts else "", tuple(facts))


def timeline(
    history: Sequence[MessageEvent], spooled: tuple[MessageState, Envelope] | None
) -> list[Step]:
    """The steps of a message's life, oldest first (see the module docstring)."""
    steps = [
        _received_step(event) if event.event == "received" else _event_step(event)
        for event in history
        if event.event != "denied"
    ]
    if spooled is not None:
        steps.append(_now_step(*spooled))
    elif history and history[-1].event in ("received", "retried"):
        steps.append(
            Step(
                "No longer in the spool: deleted by an operator, or its log rows "
                "are not written yet",
                None,
                "warn",
            )
        )
    return steps


@attrs.frozen
class RecipientView:
    """One recipient of the envelope: its final result or its last deferral."""

    address: str
    status: str  # delivered, failed, deferred, pending
    relay: str | None
    reply: str | None
    at: float | None


def recipients(envelope: Envelope) -> list[RecipientView]:
    views = []
    for address in envelope.recipients:
        result = envelope.recipient_results.get(address)
        deferral = envelope.deferrals.get(address)
        if result is not None:
            views.append(
                RecipientView(address, result.status, result.relay, result.response, result.at)
            )
        elif deferral is not None:
            views.append(
                RecipientView(address, "deferred", deferral.relay, deferral.response, deferral.at)
            )
        else:
            views.append(RecipientView(address, "pending", None, None, None))
    return views


def spooled(spool: Spool, message_id: str) -> tuple[MessageState, Envelope] | None:
    try:
        entry = spool.get(message_id)
    except UnknownMessageError:
        return None
    return entry.state, entry.envelope


@attrs.frozen
class Body:
    """An open body file and where it was found (``"spool (failed/)"``, ``"Local inbox"``).
    The caller closes ``file``."""

    file: BinaryIO
    where: str
    size: int


def _open_once(spool_dir: Path, message_id: str, state: MessageState | None) -> Body | None:
    """Blocking: open the body in ``state`` (None: the captured copy); None if absent."""
    layout = SpoolLayout(spool_dir)
    path = (
        layout.captured / f"{message_id}{EML}"
        if state is None
        else Path(layout.path(state, message_id, EML))
    )
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return None
    where = "the Local inbox (captured/)" if state is None else f"the spool ({state.value}/)"
    return Body(file, where, os.fstat(file.fileno()).st_size)


async def open_body(spool: Spool, message_id: str) -> Body | None:
    """The message's body, opened; None when it is gone (see the module docstring)."""
    for _ in range(OPEN_TRIES):
        where = spooled(spool, message_id)
        state = None if where is None else where[0]
        body = await trio.to_thread.run_sync(_open_once, spool.directory, message_id, state)
        if body is not None:
            return body
        if state is None:
            return None  # neither in the spool nor captured
    return await trio.to_thread.run_sync(_open_once, spool.directory, message_id, None)


def _header_block(file: BinaryIO) -> tuple[str, bool]:
    """Blocking: the header lines (up to the blank line), decoded for display, and whether
    they were cut at :data:`HEADER_LIMIT`."""
    data = file.read(HEADER_LIMIT + 1)
    cut = len(data) > HEADER_LIMIT
    end = -1
    for separator in (b"\r\n\r\n", b"\n\n"):
        found = data.find(separator)
        if found != -1 and (end == -1 or found < end):
            end = found
    block = data[:HEADER_LIMIT] if end == -1 else data[:end]
    return block.decode("utf-8", "replace").replace("\r\n", "\n"), cut and end == -1


async def read_headers(body: Body) -> tuple[str, bool]:
    """The header block of an open body (a worker thread); closes nothing."""
    return await trio.to_thread.run_sync(_header_block, body.file)
