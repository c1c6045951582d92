"""Messages per minute from the ``minute_counters`` table: the Overview's recent figures and
its 24-hour throughput chart (SPEC §8).

The log writer upserts ``minute_counters`` (Unix minute, event kind, count) in the same
transaction as the rows it counts and keeps :data:`~dispatch.storage.schema.MINUTE_COUNTERS_KEPT`
minutes of them (25 hours), so both answers read at most 1,500 x 5 small rows through the
table's primary key, never ``message_log``. The minutes are the events' own times, so a
journal replayed late still lands in the minute it happened. Nodes sharing one PostgreSQL
database each keep their own rows (the node is in the key): these answers add them up, so the
chart shows every node's traffic (the /metrics gauges are per node: ``queries.py``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import attrs

from dispatch.storage.database import Database, SqlCursor
from dispatch.storage.log_batch import minute_of
from dispatch.storage.records import EVENT_KINDS


@attrs.frozen
class Bucket:
    """Events of each kind from ``start`` (Unix time) for ``seconds``."""

    start: float
    seconds: float
    counts: Mapping[str, int]

    def get(self, event: str) -> int:
        return self.counts.get(event, 0)


async def minute_rows(database: Database, first_minute: int) -> list[tuple[int, str, int]]:
    """``(minute, event, count)`` of every minute from ``first_minute`` on."""

    def work(cursor: SqlCursor) -> list[Any]:
        cursor.execute(
            "SELECT minute, event, count FROM minute_counters WHERE minute >= ?",
            (first_minute,),
        )
        return cursor.fetchall()

    return [(int(m), str(e), int(c)) for m, e, c in await database.read(work)]


async def counts_last_minutes(
    database: Database, minutes: int = 5, *, now: float | None = None
) -> dict[str, int]:
    """Events of every kind in the current minute and the ``minutes - 1`` before it."""
    first = minute_of(time.time() if now is None else now) - (minutes - 1)
    counts: dict[str, int] = dict.fromkeys(EVENT_KINDS, 0)
    for _, event, count in await minute_rows(database, first):
        counts[event] = counts.get(event, 0) + count
    return counts


BUCKET_MINUTES: Final = 15
HOURS: Final = 24


async def throughput(
    database: Database,
    *,
    hours: int = HOURS,
    bucket_minutes: int = BUCKET_MINUTES,
    now: float | None = None,
) -> list[Bucket]:
    """Events per ``bucket_minutes`` over the last ``hours``, oldest first; the last bucket
    is the one running now (partial). Buckets start on multiples of ``bucket_minutes``."""
    current = minute_of(time.time() if now is None else now)
    last_start = current - current % bucket_minutes
    count = hours * 60 // bucket_minutes
    first_start = last_start - (count - 1) * bucket_minutes
    sums: list[dict[str, int]] = [{} for _ in range(count)]
    for minute, event, value in await minute_rows(database, first_start):
        index = (minute - first_start) // bucket_minutes
        if 0 <= index < count:
            sums[index][event] = sums[index].get(event, 0) + value
    return [
        Bucket((first_start + i * bucket_minutes) * 60.0, bucket_minutes * 60.0, sums[i])
        for i in range(count)
    ]
