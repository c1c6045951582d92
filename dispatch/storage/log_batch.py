"""Writing one batch of log records in one transaction: rows, address index and counters.

:func:`write_batch` is the ``work`` the log writer hands to :meth:`Database.write`. For
each record it inserts the row with ``ON CONFLICT (event_id) DO NOTHING``; only rows that
were really inserted are indexed by address and counted, so a record written twice (a
journal replayed after a crash mid-replay) changes neither the rows nor the counters.

Counters are summed in memory first and then upserted once per key, so a batch of 500
"received" rows costs one counter statement per (day, relay) and per minute, not 500.
"""

from __future__ import annotations

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


INSERT_MESSAGE: Final = (
    f"INSERT INTO message_log ({', '.join(MESSAGE_COLUMNS)}, node) "  # noqa: S608 (constants)
    f"VALUES ({_placeholders(len(MESSAGE_COLUMNS) + 1)}) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING id"
)
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


def utc_day(at: float) -> str:
    """The UTC date of Unix time ``at`` as ``YYYY-MM-DD``: the key of the daily counters."""
    return time.strftime("%Y-%m-%d", time.gmtime(at))


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
    for record in records:
        if isinstance(record, AuditEntry):
            cursor.execute(INSERT_AUDIT, (*audit_to_row(record), node))
            inserted += max(cursor.rowcount, 0)
            continue
        cursor.execute(INSERT_MESSAGE, (*message_to_row(record), node))
        row = cursor.fetchone()
        if row is None:
            continue  # already written by an earlier attempt
        inserted += 1
        cursor.executemany(
            INSERT_ADDRESS, ((address, record.at, row[0]) for address in addresses_of(record))
        )
        per_day[(utc_day(record.at), record.event, record.relay or "", node or "")] += 1
        per_minute[(minute_of(record.at), record.event, node or "")] += 1
    if per_day:
        cursor.executemany(UPSERT_DAY, _with_counts(per_day))
        cursor.executemany(UPSERT_MINUTE, _with_counts(per_minute))
    if prune_minutes_before is not None:
        cursor.execute(PRUNE_MINUTES, (prune_minutes_before,))
    return inserted


def _with_counts[K: tuple[object, ...]](counts: Counter[K]) -> Iterable[tuple[object, ...]]:
    return ((*key, count) for key, count in counts.items())
