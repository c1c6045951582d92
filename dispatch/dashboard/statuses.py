"""What the Message log, the Spool and the Overview call a message's state.

A message's status in a list is its newest log event (``received`` → queued, ``retried`` →
retrying, ``delivered``, ``failed``), unless the spool holds it: the spool's state is then
the truth (``processing`` while a worker delivers it; ``failed`` for a message whose last
attempt delivered to one recipient after another was refused earlier). Each status has a
label and the CSS class of its badge (``dashboard.css``: ``ok``, ``warn``, ``bad``).
"""

from __future__ import annotations

from typing import Final

from dispatch.spool import MessageState, Spool, UnknownMessageError
from dispatch.spool.ids import is_valid_id

STATUS_LABELS: Final = {
    "received": "queued",
    "retried": "retrying",
    "delivered": "delivered",
    "failed": "failed",
    "denied": "denied",
    "queued": "queued",
    "retrying": "retrying",
    "processing": "being delivered",
}
BADGES: Final = {
    "queued": "",
    "retrying": "warn",
    "being delivered": "",
    "delivered": "ok",
    "failed": "bad",
    "denied": "bad",
}


def spool_status(spool: Spool, message_id: str | None) -> str | None:
    """``queued``, ``retrying``, ``processing`` or ``failed`` while the spool holds the
    message; None once it has left (or for an id that is not a spool id)."""
    if message_id is None or not is_valid_id(message_id):
        return None
    try:
        entry = spool.get(message_id)
    except UnknownMessageError:
        return None
    if entry.state is MessageState.INCOMING:
        return "retrying" if entry.envelope.attempts else "queued"
    return entry.state.value


def status_label(spool: Spool, message_id: str | None, latest_event: str) -> str:
    """The label a list shows for a message whose newest event is ``latest_event``."""
    current = spool_status(spool, message_id)
    return STATUS_LABELS.get(current or latest_event, current or latest_event)
