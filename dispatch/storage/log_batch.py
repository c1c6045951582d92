"""Writing one batch of log records in one transaction: rows, address index and counters.

:func:`write_batch` is the ``work`` the log writer hands to :meth:`Database.write`. For
each record it inserts the row with ``ON CONFLICT (event_id) DO NOTHING``; only rows that
were really inserted are indexed by address and counted, so a record written twice (a
journal replayed after a crash mid-replay) changes neither the rows nor the counters.

Message rows go in :data:`MESSAGE_CHUNK` at a time, one multi-row ``INSERT ... RETURNING``
each, and their address rows in one ``executemany``: a handful of round trips per batch, which
matters on PostgreSQL (every statement is a network round trip) and costs SQLite nothing.

Counters are summed in memory first and then upserted once per key, so a batch of 500
"received" rows costs one counter statement per (day, relay) and per minute, not 500.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final

from dispatch.storage.database import SqlCursor
from dispatch.storage.records import (
    AUDIT_COLUMNS,
    MESSAGE_COLUMNS,
    AuditEntry,
    LogRecord,
    MessageEvent,
    audit_to_row,
    message_to_row,
)


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


INSERT_ADDRESS: Final = "INSERT INTO message_log_addresses (address, at, log_id) VALUES (?, ?, ?)"
INSERT_AUDIT: Final = (
    f"INSERT INTO audit_log ({', '.join(AUDIT_COLUMNS)}, node) "  # noqa: S608 (constants only)
    f"VALUES ({_placeholders(len(AUDIT_COLUMNS) + 1)}) ON CONFLICT (event_id) DO NOTHING"
)
UPSERT_DAY: Final = (
    "INSERT INTO counters (day, event, relay, node, count) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (day, event, relay, node) DO UPDATE SET count = counters.count + excluded.count"
)
UPSERT_MINUTE: Final = (
    "INSERT INTO minute_counters (minute, event, node, count) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (minute, event, node) "
    "DO UPDATE SET count = minute_counters.count + excluded.count"
)
PRUNE_MINUTES: Final = "DELETE FROM minute_counters WHERE minute < ?"
# Message rows per INSERT statement: one round trip for 100 rows (2,000 parameters, far from
# SQLite's 32,766 and PostgreSQL's 65,535), which is what a remote database needs.
MESSAGE_CHUNK: Final = 100


def utc_day(at: float) -> str:
    """The UTC date of Unix time ``at`` as ``YYYY-MM-DD``: the key of the daily counters."""
    return _day_text(int(at // 86_400))


@functools.lru_cache(maxsize=4)  # a batch's rows fall on a day or two
def _day_text(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))


def minute_of(at: float) -> int:
    """The Unix minute of ``at``: the key of the per-minute counters."""
    return int(at // 60)


def addresses_of(event: MessageEvent) -> set[str]:
    """The lower-cased sender and recipient addresses a row is found by."""
    found = {address.lower() for address in event.recipients if address}
    if event.sender:
        found.add(event.sender.lower())
    return found


def write_batch(
    cursor: SqlCursor,
    records: Sequence[LogRecord],
    *,
    prune_minutes_before: int | None = None,
    node: str | None = None,
) -> int:
    """Insert ``records`` that are not in the database yet; return how many were inserted.

    ``prune_minutes_before``: also delete per-minute counters older than this minute.
    ``node``: the id of the node writing them (its journal holds only its own records), put
    on every row so that nodes sharing one database can tell their rows apart.
    """
    inserted = 0
    per_day: Counter[tuple[str, str, str, str]] = Counter()
    per_minute: Counter[tuple[int, str, str]] = Counter()
    messages: list[MessageEvent] = []
    for record in records:
        if isinstance(record, AuditEntry):
            cursor.execute(INSERT_AUDIT, (*audit_to_row(record), node))
            inserted += max(cursor.rowcount, 0)
        else:
            messages.append(record)
    addresses: list[tuple[str, float, int]] = []
    for start in range(0, len(messages), MESSAGE_CHUNK):
        chunk = messages[start : start + MESSAGE_CHUNK]
        for record, row_id in _insert_messages(cursor, chunk, node):
            inserted += 1
            addresses += [(address, record.at, row_id) for address in addresses_of(record)]
            per_day[(utc_day(record.at), record.event, record.relay or "", node or "")] += 1
            per_minute[(minute_of(record.at), record.event, node or "")] += 1
    cursor.executemany(INSERT_ADDRESS, addresses)
    if per_day:
        cursor.executemany(UPSERT_DAY, _with_counts(per_day))
        cursor.executemany(UPSERT_MINUTE, _with_counts(per_minute))
    if prune_minutes_before is not None:
        cursor.execute(PRUNE_MINUTES, (prune_minutes_before,))
    return inserted


def _insert_messages(
    cursor: SqlCursor, chunk: Sequence[MessageEvent], node: str | None
) -> list[tuple[MessageEvent, int]]:
    """Insert ``chunk`` in one statement; the records really inserted, with their row ids
    (a record already in the database is left out: ``ON CONFLICT DO NOTHING``)."""
    if not chunk:
        return []
    row = f"({_placeholders(len(MESSAGE_COLUMNS) + 1)})"
    cursor.execute(
        f"INSERT INTO message_log ({', '.join(MESSAGE_COLUMNS)}, node) "  # noqa: S608 (constants)
        f"VALUES {', '.join([row] * len(chunk))} "
        "ON CONFLICT (event_id) DO NOTHING RETURNING id, event_id",
        [value for record in chunk for value in (*message_to_row(record), node)],
    )
    ids = {str(event_id): int(row_id) for row_id, event_id in cursor.fetchall()}
    return [(record, ids[record.event_id]) for record in chunk if record.event_id in ids]


def _with_counts[K: tuple[object, ...]](counts: Counter[K]) -> Iterable[tuple[object, ...]]:
    return ((*key, count) for key, count in counts.items())
