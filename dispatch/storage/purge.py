"""Deleting what retention no longer wants: old log rows, audit rows and minute counters.

The retention component (SPEC §1, ``[retention]``) decides how old is too old and calls
:func:`purge` every few hours. Deletion goes in chunks of :data:`PURGE_CHUNK` rows, each its
own short write transaction, so a purge of a month of rows never holds the database's write
lock (and the log writer) for long. The daily ``counters`` are kept: one row per day, kind
and relay is small, and they are the history of the "today" figures.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import partial
from typing import Final

from dispatch.storage.database import Database, SqlCursor
from dispatch.storage.log_batch import PRUNE_MINUTES, minute_of
from dispatch.storage.records import EVENT_KINDS
from dispatch.storage.schema import MINUTE_COUNTERS_KEPT

# Rows deleted per transaction: milliseconds of work, so the writer waits no longer.
PURGE_CHUNK: Final = 1000
AUDIT: Final = "audit"
"""The key of :func:`purge`'s ``older_than`` for audit log entries."""


async def purge(
    database: Database, older_than: Mapping[str, float], *, now: float | None = None
) -> dict[str, int]:
    """Delete rows older than their kind's age in seconds; return how many, per kind.

    ``older_than`` maps an event kind (``"delivered"``, ``"failed"``, …) or :data:`AUDIT` to
    an age in seconds; kinds not in it, or with an age of 0 or less, are kept. Per-minute
    counters older than :data:`MINUTE_COUNTERS_KEPT` minutes always go (key
    ``"minute_counters"`` in the result). Raises :class:`ValueError` for an unknown kind and
    ``DatabaseUnavailableError`` if the database cannot be written (nothing is half-done:
    rows deleted so far stay deleted, the rest go next time).
    """
    unknown = sorted(set(older_than) - {*EVENT_KINDS, AUDIT})
    if unknown:
        raise ValueError(f"cannot purge {unknown}: kinds are {[*EVENT_KINDS, AUDIT]}")
    now = time.time() if now is None else now
    deleted: dict[str, int] = {}
    for kind, seconds in older_than.items():
        if seconds <= 0:
            continue
        work = partial(
            _delete_audit_chunk if kind == AUDIT else _delete_message_chunk,
            kind=kind,
            before=now - seconds,
        )
        total = 0
        while (count := await database.write(work)) > 0:
            total += count
            if count < PURGE_CHUNK:
                break
        deleted[kind] = total
    deleted["minute_counters"] = await database.write(
        partial(_prune_minutes, before=minute_of(now) - MINUTE_COUNTERS_KEPT)
    )
    return deleted


def _delete_message_chunk(cursor: SqlCursor, *, kind: str, before: float) -> int:
    cursor.execute(
        "SELECT id FROM message_log WHERE event = ? AND at < ? ORDER BY at LIMIT ?",
        (kind, before, PURGE_CHUNK),
    )
    ids = [row[0] for row in cursor.fetchall()]
    if ids:
        marks = ", ".join("?" * len(ids))
        cursor.execute(f"DELETE FROM message_log_addresses WHERE log_id IN ({marks})", ids)  # noqa: S608
        cursor.execute(f"DELETE FROM message_log WHERE id IN ({marks})", ids)  # noqa: S608
    return len(ids)


def _delete_audit_chunk(cursor: SqlCursor, *, kind: str, before: float) -> int:
    cursor.execute(
        "SELECT id FROM audit_log WHERE at < ? ORDER BY at LIMIT ?", (before, PURGE_CHUNK)
    )
    ids = [row[0] for row in cursor.fetchall()]
    if ids:
        marks = ", ".join("?" * len(ids))
        cursor.execute(f"DELETE FROM audit_log WHERE id IN ({marks})", ids)  # noqa: S608
    return len(ids)


def _prune_minutes(cursor: SqlCursor, *, before: int) -> int:
    cursor.execute(PRUNE_MINUTES, (before,))
    return max(cursor.rowcount, 0)
