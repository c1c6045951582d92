"""What ``GET /api/v1/messages/{id}`` reports: the spool while a message is in it, the
message log after it has left (delivered, or deleted by an operator).

The spool is read through :class:`SpoolLookup`, one read-only query: the API puts messages
into the spool only through the intake door (:mod:`dispatch.intake.door`) and never changes
one that is there.
"""

from __future__ import annotations

from typing import Any, Protocol

from dispatch.spool.errors import UnknownMessageError
from dispatch.spool.index import SpoolEntry
from dispatch.spool.layout import MessageState
from dispatch.storage import LogQueries, MessageEvent


class SpoolLookup(Protocol):
    """The spool as the status lookup sees it (:class:`dispatch.spool.Spool` is one)."""

    def get(self, message_id: str) -> SpoolEntry:
        """The message's entry; :class:`UnknownMessageError` if it is not in the spool."""
        ...


def spool_status(entry: SpoolEntry) -> str:
    """``queued``, ``retrying``, ``processing`` or ``failed`` (SPEC §4)."""
    if entry.state is MessageState.FAILED:
        return "failed"
    if entry.state is MessageState.PROCESSING:
        return "processing"
    return "retrying" if entry.envelope.attempts else "queued"


def _results(entry: SpoolEntry) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for recipient in entry.envelope.recipients:
        result = entry.envelope.recipient_results.get(recipient)
        results[recipient] = (
            {"status": "pending"}
            if result is None
            else {
                "status": result.status,
                "relay": result.relay,
                "response": result.response,
                "at": result.at,
            }
        )
    return results


def _from_spool(entry: SpoolEntry) -> dict[str, Any]:
    envelope = entry.envelope
    relays = sorted({r.relay for r in envelope.recipient_results.values() if r.relay})
    return {
        "id": envelope.id,
        "status": spool_status(entry),
        "from": envelope.mail_from,
        "to": list(envelope.recipients),
        "tags": list(envelope.tags),
        "attempts": envelope.attempts,
        "relay": relays[-1] if relays else None,
        "receivedAt": envelope.received_at,
        "nextAttemptAt": envelope.next_attempt_at if entry.state is MessageState.INCOMING else None,
        "lastError": envelope.last_error,
        "recipients": _results(entry),
    }


def _from_log(message_id: str, history: list[MessageEvent]) -> dict[str, Any]:
    received = next((e for e in history if e.event == "received"), None)
    finals = [e for e in history if e.event in ("delivered", "failed")]
    retried = [e for e in history if e.event == "retried"]
    recipients: dict[str, Any] = {}
    for event in finals:
        for recipient in event.recipients:
            recipients[recipient] = {
                "status": event.event,
                "relay": event.relay,
                "response": event.response,
                "at": event.at,
            }
    status = "failed" if any(e.event == "failed" for e in finals) else "delivered"
    last = history[-1]
    waiting = [r for r in (received.recipients if received else ()) if r not in recipients]
    if waiting:
        # Still in the spool of the node that accepted it (several nodes sharing one
        # PostgreSQL database answer for each other's mail from the log: docs/scaling.md).
        status = "retrying" if retried else "queued"
        recipients.update({r: {"status": "pending"} for r in waiting})
    return {
        "id": message_id,
        "status": status,
        "from": received.sender if received else None,
        "to": list(received.recipients) if received else sorted(recipients),
        "tags": list(received.tags) if received else [],
        "attempts": max((e.attempt or 0 for e in history), default=0),
        "relay": finals[-1].relay if finals else None,
        "receivedAt": received.at if received else None,
        "finishedAt": None if waiting else last.at,
        "nextAttemptAt": None,
        "lastError": retried[-1].response if retried and status in ("failed", "retrying") else None,
        "recipients": recipients,
    }


async def message_status(
    spool: SpoolLookup, queries: LogQueries, message_id: str, key_prefix: str
) -> dict[str, Any] | None:
    """The status document, or None when the message is unknown or not this key's."""
    try:
        entry = spool.get(message_id)
    except UnknownMessageError:
        entry = None
    if entry is not None:
        return _from_spool(entry) if entry.envelope.auth_identity == key_prefix else None
    history = await queries.message_history(message_id)
    received = next((e for e in history if e.event == "received"), None)
    if received is None or received.api_key_prefix != key_prefix:
        return None
    return _from_log(message_id, history)
