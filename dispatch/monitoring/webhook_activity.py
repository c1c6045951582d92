"""What the webhook sender did lately: its recent calls and the outbox's depth.

The sender (``dispatch/webhooks/sender.py``) records every call it makes here, as it ends;
``/debug/webhooks``, the dashboard's Webhooks page and ``dispatch webhooks recent`` (the
control socket's ``webhooks.recent``) read it. It lives in memory only: a restart starts an
empty list (what is still owed is in the outbox file, and is sent again).

Bounded: the newest :data:`RECENT_CALLS` calls are kept. A call carries the receiver's URL,
the event's id and type, the message id, the HTTP status or the error, never the body (which
names addresses) nor the secret.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any, Final, Literal

import attrs

RECENT_CALLS: Final = 200
"""Calls kept: enough to see an outage start and end on one page; a few dozen KiB."""

CallResult = Literal["sent", "retry", "gave up"]


@attrs.frozen(kw_only=True)
class WebhookCall:
    """One POST to one receiver (or one attempt that could not reach it).

    ``result``: ``sent`` (answered 2xx), ``retry`` (another attempt is scheduled) or
    ``gave up`` (``give_up_after_seconds`` had passed: the event is dropped).
    ``status`` is the HTTP status, None when no answer came (``error`` says why).
    """

    at: float  # Unix time the call ended
    url: str
    event: str  # delivered, deferred, failed, bounced
    event_id: str
    message_id: str | None
    attempt: int  # 1 for the first call of this event to this receiver (since start)
    status: int | None
    error: str | None
    duration_ms: float
    result: CallResult
    next_attempt_in: float | None = None  # seconds, for ``retry``

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


class WebhookActivity:
    """The recent calls (newest last) and the outbox's depth; written by the sender only."""

    def __init__(self, keep: int = RECENT_CALLS) -> None:
        self._calls: collections.deque[WebhookCall] = collections.deque(maxlen=keep)
        self.outbox_depth = 0
        """Calls owed to receivers: in the outbox, not yet answered 2xx nor given up."""
        self.oldest_pending_at: float | None = None
        """Unix time the oldest owed call's event happened; None when nothing is owed."""

    def add(self, call: WebhookCall) -> None:
        self._calls.append(call)

    def recent(self, limit: int = RECENT_CALLS) -> list[WebhookCall]:
        """The newest ``limit`` calls, newest first."""
        newest_first: Iterator[WebhookCall] = reversed(self._calls)
        return [call for _, call in zip(range(max(0, limit)), newest_first, strict=False)]
