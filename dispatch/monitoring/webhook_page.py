"""``/debug/webhooks``: the webhook sender's recent calls and the calls still owed.

A pure function of :class:`~dispatch.monitoring.webhook_activity.WebhookActivity` and the
configured receivers' URLs; every value is escaped (a receiver's error text is its own).
``?format=text`` gives the same as plain text for a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from dispatch.monitoring.pages import _e, _page
from dispatch.monitoring.vars import format_time
from dispatch.monitoring.webhook_activity import WebhookActivity, WebhookCall


def _answer(call: WebhookCall) -> str:
    if call.status is not None and call.result == "sent":
        return f"HTTP {call.status}"
    return call.error or (f"HTTP {call.status}" if call.status is not None else "")


def _owed(activity: WebhookActivity) -> str:
    if not activity.outbox_depth:
        return "nothing owed"
    oldest = activity.oldest_pending_at
    age = f", the oldest event {time.time() - oldest:.0f} s old" if oldest else ""
    return f"{activity.outbox_depth} call(s) owed{age}"


def webhooks_page(activity: WebhookActivity, receivers: Sequence[str]) -> str:
    """The HTML page: receivers, outbox depth, then the recent calls newest first."""
    hooks = "".join(f"<li>{_e(url)}</li>" for url in receivers) or "<li>none configured</li>"
    rows = "".join(
        "<tr>"
        f"<td>{_e(format_time(call.at))}</td><td>{_e(call.result)}</td>"
        f"<td>{_e(call.event)}</td><td class=num>{call.attempt}</td>"
        f"<td class=num>{call.duration_ms:.0f} ms</td><td>{_e(call.url)}</td>"
        f"<td>{_e(call.event_id)}</td><td>{_e(call.message_id or '')}</td>"
        f"<td{' class=error' if call.result != 'sent' else ''}>{_e(_answer(call))}</td>"
        "</tr>"
        for call in activity.recent()
    )
    table = (
        "<table><tr><th>ended</th><th>result</th><th>event</th><th>attempt</th>"
        "<th>took</th><th>receiver</th><th>event id</th><th>message</th><th>answer</th></tr>"
        f"{rows}</table>"
        if rows
        else "<p>No webhook calls since the daemon started.</p>"
    )
    return _page(
        "Webhooks",
        f"<h2>Receivers</h2><ul>{hooks}</ul><p>Outbox: {_e(_owed(activity))}</p>"
        f"<h2>Recent calls, newest first</h2>{table}",
    )


def webhooks_text(activity: WebhookActivity, receivers: Sequence[str]) -> str:
    """The same as :func:`webhooks_page`, one line per call."""
    lines = [f"receivers: {', '.join(receivers) or 'none configured'}", _owed(activity)]
    lines += [
        f"{format_time(call.at)}  {call.result:<8} {call.event:<9} attempt {call.attempt}  "
        f"{call.duration_ms:.0f} ms  {call.url}  {call.event_id}  {call.message_id or '-'}  "
        f"{_answer(call)}"
        for call in activity.recent()
    ]
    return "\n".join(lines) + "\n"
