"""What a webhook call says and how it is signed: pure functions, no I/O.

The event types a receiver sees, three from the message log's events
(``storage/records.py``) and one from delivery's bounces:

=================  ============  ====================================================
message log        webhook       when
=================  ============  ====================================================
``delivered``      delivered     a relay accepted the recipients
``retried``        deferred      refused for now (4xx, timeout); a retry is scheduled
``failed``         failed        refused for good (5xx) or retries exhausted
(none)             bounced       a failure notice (DSN, RFC 3464) to the sender was
                                 queued (:func:`bounce_payload`)
=================  ============  ====================================================

``received`` and ``denied`` are not sent. ``bounced`` has no row of its own in the message
log, which keeps the original's ``failed`` and the DSN's own ``received``: its ``id`` is made
for the call, and ``log_event`` is ``null``.

The body is JSON (UTF-8) made once, when the event is put in the outbox: every attempt sends
the same bytes, so ``id`` (the message log's ``event_id``) lets a receiver drop a duplicate.
Each attempt is signed anew with its own timestamp (docs/webhooks.md, "Verifying"):

    Dispatch-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

where ``<timestamp>`` is the ``Dispatch-Timestamp`` header (Unix seconds) and ``<body>`` the
raw request body, the scheme Stripe and Svix use: binding the time into the signature lets a
receiver refuse a replayed call by its age.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Final

from dispatch import __version__
from dispatch.storage.records import MessageEvent

EVENT_TYPES: Final[Mapping[str, str]] = {
    "delivered": "delivered",
    "retried": "deferred",
    "failed": "failed",
}
"""The message log's event → the webhook's event type; others are not sent."""
BOUNCED: Final = "bounced"
"""The event type of a failure notice (DSN) queued to the sender; no log event maps to it."""

SIGNATURE_HEADER: Final = "Dispatch-Signature"
TIMESTAMP_HEADER: Final = "Dispatch-Timestamp"
EVENT_ID_HEADER: Final = "Dispatch-Event-Id"
EVENT_HEADER: Final = "Dispatch-Event"
ATTEMPT_HEADER: Final = "Dispatch-Attempt"
SIGNATURE_VERSION: Final = "v1"
PAYLOAD_VERSION: Final = 1


def event_type(event: MessageEvent) -> str | None:
    """The webhook event type of ``event``, or None if no webhook hears of it."""
    return EVENT_TYPES.get(event.event)


def _iso(at: float) -> str:
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def payload(event: MessageEvent, kind: str, node: str) -> dict[str, object]:
    """The JSON document of one call (docs/webhooks.md lists every field)."""
    return {
        "version": PAYLOAD_VERSION,
        "id": event.event_id,
        "event": kind,
        "log_event": event.event,
        "occurred_at": _iso(event.at),
        "timestamp": event.at,
        "message_id": event.message_id,
        "sender": event.sender,
        "recipients": list(event.recipients),
        "relay": event.relay,
        "route": event.route,
        "response": event.response,
        "remote_id": event.remote_id,
        "attempt": event.attempt,
        "duration_ms": None if event.duration_ms is None else round(event.duration_ms, 3),
        "size": event.size,
        "tags": list(event.tags),
        "source": event.source,
        "node": node,
    }


def bounce_payload(failure: MessageEvent, dsn_id: str, node: str) -> dict[str, object]:
    """The document of a ``bounced`` call: ``failure`` is what the DSN reports about the
    original message (its id, sender, the failed recipients, the diagnostic in ``response``),
    not a message-log row; ``dsn_id`` is the DSN's own spool id."""
    document = payload(failure, BOUNCED, node)
    document["log_event"] = None
    document["dsn_id"] = dsn_id
    return document


def body_of(document: Mapping[str, object]) -> bytes:
    """The request body: compact JSON, UTF-8 (addresses may not be ASCII)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``v1=<hex>``: HMAC-SHA256 with ``secret`` over ``b"<timestamp>." + body``."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def headers(
    *, secret: str, timestamp: int, body: bytes, event_id: str, kind: str, attempt: int
) -> dict[str, str]:
    """The request headers of one attempt."""
    return {
        "Content-Type": "application/json",
        "User-Agent": f"Dispatch/{__version__} (webhooks)",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
        EVENT_ID_HEADER: event_id,
        EVENT_HEADER: kind,
        ATTEMPT_HEADER: str(attempt),
    }
