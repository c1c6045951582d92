"""The read side of the message log: figures for ``/metrics``, and lookups.

Every query is one ``Database.read`` (a worker thread, the database's own limiter; see
``sqlite.py`` for why reads share the writer's connection) and reads an index range or the
counters tables, never the whole log:

=========================  ====================================================
query                      reads
=========================  ====================================================
counts_today               ``counters`` primary key, prefix ``day``
relay_counts_today         ``counters`` primary key, prefix ``day``
counts_last_5_minutes      ``minute_counters`` primary key, range of ``minute``
message_history            ``message_log_message_id_at``, one ``message_id``
latest_status              ``message_log_message_id_at``, newest entry of one id
search(address=…)          ``message_log_addresses`` primary key (address, at)
search(status=…)           ``message_log_event_at``
search(…)                  ``message_log_at``
audit_entries              ``audit_log_at``
relay_events               ``message_log_at`` (rows of other relays are skipped)
=========================  ====================================================

``search`` walks its index newest first between ``since`` and ``until`` and stops after
``limit`` matches; ``tag`` and ``subject`` (substring matches, case-insensitive for ASCII)
are checked on the rows it walks, as no portable index can answer a substring. Narrow such
searches with a time range.

Figures for a moment other than now (tests) take ``now=``; "today" is the UTC date of
``now``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, Final

from dispatch.storage.database import Database, SqlCursor
from dispatch.storage.log_batch import minute_of, utc_day
from dispatch.storage.records import (
    AUDIT_COLUMNS,
    EVENT_KINDS,
    MESSAGE_COLUMNS,
    AuditCategory,
    AuditEntry,
    AuditLevel,
    EventKind,
    MessageEvent,
    audit_from_row,
    message_from_row,
)

# The most rows one search returns: a page of results, not an export.
MAX_SEARCH_LIMIT: Final = 500
LAST_MINUTES: Final = 5

_MESSAGE_SELECT: Final = ", ".join(["m.id", *(f"m.{c}" for c in MESSAGE_COLUMNS)])
_AUDIT_SELECT: Final = ", ".join(["id", *AUDIT_COLUMNS])


class LogQueries:
    """Read-only questions about the message and audit logs. Owns nothing; cheap to keep.

    Every method raises ``DatabaseUnavailableError`` when the database cannot be read. Rows
    still waiting in the writer's queue or journal are not seen yet.
    """

    def __init__(self, database: Database, *, node: str | None = None) -> None:
        """``node``: count only this node's traffic in the counters (nodes sharing one
        PostgreSQL database each report their own gauges; rows counted before the
        counters had a node, node ``''``, count for every node)."""
        self._database = database
        self._node_filter = "" if node is None else " AND node IN (?, '')"
        self._node_params: tuple[str, ...] = () if node is None else (node,)

    async def counts_today(self, *, now: float | None = None) -> dict[str, int]:
        """Events of each kind (received, delivered, failed, retried, denied) today, UTC."""
        day = utc_day(time.time() if now is None else now)
        rows = await self._rows(
            f"SELECT event, SUM(count) FROM counters WHERE day = ?{self._node_filter} "  # noqa: S608
            "GROUP BY event",
            (day, *self._node_params),
        )
        counts: dict[str, int] = dict.fromkeys(EVENT_KINDS, 0)
        counts.update({event: int(total) for event, total in rows})
        return counts

    async def counts_last_5_minutes(self, *, now: float | None = None) -> dict[str, int]:
        """Messages received and sent (delivered) in the current minute and the 4 before it."""
        first = minute_of(time.time() if now is None else now) - (LAST_MINUTES - 1)
        rows = await self._rows(
            "SELECT event, SUM(count) FROM minute_counters "  # noqa: S608 (constants only)
            f"WHERE minute >= ? AND event IN ('received', 'delivered'){self._node_filter} "
            "GROUP BY event",
            (first, *self._node_params),
        )
        totals = {event: int(total) for event, total in rows}
        return {"received": totals.get("received", 0), "sent": totals.get("delivered", 0)}

    async def relay_counts_today(self, *, now: float | None = None) -> dict[str, dict[str, int]]:
        """``{relay: {"delivered": n, "failed": m}}`` for every relay with an event today."""
        day = utc_day(time.time() if now is None else now)
        rows = await self._rows(
            "SELECT relay, event, SUM(count) FROM counters "  # noqa: S608 (constants only)
            "WHERE day = ? AND event IN ('delivered', 'failed') AND relay <> ''"
            f"{self._node_filter} GROUP BY relay, event",
            (day, *self._node_params),
        )
        result: dict[str, dict[str, int]] = {}
        for relay, event, count in rows:
            result.setdefault(relay, {"delivered": 0, "failed": 0})[event] = int(count)
        return result

    async def message_history(self, message_id: str) -> list[MessageEvent]:
        """Every event of one message, oldest first (ties in the order they were written)."""
        rows = await self._rows(
            f"SELECT {_MESSAGE_SELECT} FROM message_log m "  # noqa: S608 (constants only)
            "WHERE m.message_id = ? ORDER BY m.at, m.id",
            (message_id,),
        )
        return [message_from_row(row) for row in rows]

    async def latest_status(self, message_id: str) -> MessageEvent | None:
        """The newest event of one message (its ``event`` is the status), or ``None``."""
        rows = await self._rows(
            f"SELECT {_MESSAGE_SELECT} FROM message_log m "  # noqa: S608 (constants only)
            "WHERE m.message_id = ? ORDER BY m.at DESC, m.id DESC LIMIT 1",
            (message_id,),
        )
        return message_from_row(rows[0]) if rows else None

    async def received_for_key(self, api_key_prefix: str, limit: int = 50) -> list[MessageEvent]:
        """The newest ``received`` events of messages sent with one API key (index range)."""
        rows = await self._rows(
            f"SELECT {_MESSAGE_SELECT} FROM message_log m "  # noqa: S608 (constants only)
            "WHERE m.api_key_prefix = ? AND m.event = 'received' "
            "ORDER BY m.at DESC, m.id DESC LIMIT ?",
            (api_key_prefix, max(1, min(limit, 500))),
        )
        return [message_from_row(row) for row in rows]

    async def search(
        self,
        *,
        address: str | None = None,
        status: EventKind | None = None,
        since: float | None = None,
        until: float | None = None,
        tag: str | None = None,
        subject: str | None = None,
        limit: int = 50,
    ) -> list[MessageEvent]:
        """Log rows matching every given filter, newest first, at most ``limit``.

        ``address`` matches the sender or any recipient exactly (case-insensitive);
        ``status`` is the event kind; ``since <= at < until``; ``tag`` matches one tag
        exactly and ``subject`` a substring (both case-insensitive for ASCII).
        """
        where: list[str] = []
        params: list[object] = []
        if address is not None:
            source = "message_log_addresses a JOIN message_log m ON m.id = a.log_id"
            time_column, order = "a.at", "a.at DESC, a.log_id DESC"
            where.append("a.address = ?")
            params.append(address.lower())
        else:
            source, time_column, order = "message_log m", "m.at", "m.at DESC, m.id DESC"
        if status is not None:
            where.append("m.event = ?")
            params.append(status)
        if since is not None:
            where.append(f"{time_column} >= ?")
            params.append(since)
        if until is not None:
            where.append(f"{time_column} < ?")
            params.append(until)
        if tag is not None:
            where.append("LOWER(m.tags) LIKE ? ESCAPE '\\'")
            params.append(f"%{_like_escape(_ascii_lower(_json_string(tag)))}%")
        if subject is not None:
            where.append("LOWER(m.subject) LIKE ? ESCAPE '\\'")
            params.append(f"%{_like_escape(_ascii_lower(subject))}%")
        condition = f"WHERE {' AND '.join(where)} " if where else ""
        params.append(max(1, min(limit, MAX_SEARCH_LIMIT)))
        # Only constants of this module go into the text; every value is a parameter.
        rows = await self._rows(
            f"SELECT {_MESSAGE_SELECT} FROM {source} {condition}ORDER BY {order} LIMIT ?",  # noqa: S608
            params,
        )
        return [message_from_row(row) for row in rows]

    async def audit_entries(
        self,
        *,
        category: AuditCategory | None = None,
        level: AuditLevel | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Audit log entries, newest first; ``since <= at < until``. ``category`` and
        ``level`` are checked on the rows the time index walks."""
        where = ["1 = 1"]
        params: list[object] = []
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        if until is not None:
            where.append("at < ?")
            params.append(until)
        if category is not None:
            where.append("category = ?")
            params.append(category)
        if level is not None:
            where.append("level = ?")
            params.append(level)
        params.append(max(1, min(limit, MAX_SEARCH_LIMIT)))
        rows = await self._rows(
            f"SELECT {_AUDIT_SELECT} FROM audit_log WHERE {' AND '.join(where)} "  # noqa: S608
            "ORDER BY at DESC, id DESC LIMIT ?",
            params,
        )
        return [audit_from_row(row) for row in rows]

    async def relay_events(self, relay: str, limit: int = 50) -> list[MessageEvent]:
        """The newest log rows written by one relay's attempts (delivered, retried, failed),
        newest first. Walks ``message_log_at`` newest first and stops after ``limit``."""
        rows = await self._rows(
            f"SELECT {_MESSAGE_SELECT} FROM message_log m "  # noqa: S608 (constants only)
            "WHERE m.relay = ? ORDER BY m.at DESC, m.id DESC LIMIT ?",
            (relay, max(1, min(limit, MAX_SEARCH_LIMIT))),
        )
        return [message_from_row(row) for row in rows]

    async def _rows(self, sql: str, params: Sequence[object]) -> list[Any]:
        def work(cursor: SqlCursor) -> list[Any]:
            cursor.execute(sql, params)
            return cursor.fetchall()

        return await self._database.read(work)


def _json_string(text: str) -> str:
    """``text`` as it appears inside the JSON list of tags (quotes included)."""
    return json.dumps(text)


def _ascii_lower(text: str) -> str:
    # SQLite's LOWER folds ASCII only: fold the pattern the same way so both sides agree.
    return "".join(c.lower() if c.isascii() else c for c in text)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
