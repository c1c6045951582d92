"""The Overview's two 24-hour charts: throughput and queue depth (:func:`build_charts`).

- **Throughput**: events per 15 minutes — received, delivered, retried, failed — from the
  database's per-minute counters (:func:`dispatch.storage.throughput.throughput`), so it
  survives restarts and covers every process sharing the database.
- **Queue depth**: messages waiting in the spool (queued, retrying, being delivered) and
  failed ones, from the samples the "figures" component takes every minute
  (:class:`~dispatch.monitoring.queue_history.QueueHistory`), ending with the spool's
  counts now. Samples live in memory: after a restart the line starts at the restart, and
  the chart says since when.

Both are drawn by :func:`dispatch.dashboard.charts.line_chart` over the same 24 hours.
"""

from __future__ import annotations

import time
from typing import Final

import attrs
from markupsafe import Markup

from dispatch.dashboard.charts import Series, line_chart
from dispatch.dashboard.sources import DashboardSources
from dispatch.monitoring.queue_history import SAMPLE_SECONDS, QueueSample
from dispatch.storage.database import DatabaseUnavailableError
from dispatch.storage.throughput import BUCKET_MINUTES, Bucket, throughput

DAY: Final = 86_400.0
THROUGHPUT_SERIES: Final = (
    ("received", "Received", "received"),
    ("delivered", "Delivered", "delivered"),
    ("retried", "Retried", "retried"),
    ("failed", "Failed", "failed"),
)


@attrs.frozen
class HourRow:
    """One hour of the throughput table (the chart's figures, for reading)."""

    start: float
    received: int
    delivered: int
    retried: int
    failed: int


@attrs.frozen
class Charts:
    throughput: Markup | None  # None when the database could not be read
    throughput_error: str | None
    hours: tuple[HourRow, ...]  # newest first
    totals: dict[str, int]
    queue: Markup
    queue_since: float | None  # the first sample (None: none yet)
    queue_now: QueueSample
    start: float
    end: float


def _hours(buckets: list[Bucket]) -> tuple[HourRow, ...]:
    per_hour = 60 // BUCKET_MINUTES
    rows = []
    for first in range(0, len(buckets), per_hour):
        group = buckets[first : first + per_hour]
        rows.append(
            HourRow(
                start=group[0].start,
                received=sum(b.get("received") for b in group),
                delivered=sum(b.get("delivered") for b in group),
                retried=sum(b.get("retried") for b in group),
                failed=sum(b.get("failed") for b in group),
            )
        )
    return tuple(reversed(rows))


def _throughput_chart(buckets: list[Bucket], start: float, end: float) -> Markup:
    series = [
        Series(label, css, [(b.start + b.seconds / 2, float(b.get(event))) for b in buckets])
        for event, label, css in THROUGHPUT_SERIES
    ]
    totals = ", ".join(
        f"{label.lower()} {sum(b.get(event) for b in buckets):,}"
        for event, label, _ in THROUGHPUT_SERIES
    )
    return line_chart(
        chart_id="throughput-chart",
        title=f"Messages per {BUCKET_MINUTES} minutes over the last 24 hours",
        description=f"In the last 24 hours: {totals}. Times on the axis are UTC.",
        series=series,
        start=start,
        end=end,
    )


def _queue_chart(samples: list[QueueSample], start: float, end: float) -> Markup:
    gap = 3 * SAMPLE_SECONDS  # a missing sample or two still draws one line
    waiting = Series(
        "Waiting (queued, retrying, being delivered)",
        "waiting",
        [(s.at, float(s.waiting)) for s in samples],
        gap,
    )
    failed = Series("Failed", "failed", [(s.at, float(s.failed)) for s in samples], gap)
    peak = max((s.waiting for s in samples), default=0)
    now = samples[-1]
    return line_chart(
        chart_id="queue-chart",
        title="Messages in the spool over the last 24 hours",
        description=(
            f"Now {now.waiting:,} waiting and {now.failed:,} failed; at most {peak:,} waiting "
            "in the samples shown. Times on the axis are UTC."
        ),
        series=[waiting, failed],
        start=start,
        end=end,
    )


async def build_charts(sources: DashboardSources, *, now: float | None = None) -> Charts:
    """Both charts as they are now (one read of the minute counters)."""
    end = time.time() if now is None else now
    start = end - DAY
    error = None
    chart: Markup | None = None
    hours: tuple[HourRow, ...] = ()
    totals: dict[str, int] = {}
    try:
        buckets = await throughput(sources.store.database, now=end)
    except DatabaseUnavailableError as exc:
        error = str(exc) or "the database is unavailable"
    else:
        chart = _throughput_chart(buckets, start, end)
        hours = _hours(buckets)
        totals = {e: sum(b.get(e) for b in buckets) for e, _, _ in THROUGHPUT_SERIES}
    current = QueueSample.of(sources.spool.counts(), end)
    samples = [*sources.queue_history.samples(since=start), current]
    return Charts(
        throughput=chart,
        throughput_error=error,
        hours=hours,
        totals=totals,
        queue=_queue_chart(samples, start, end),
        queue_since=sources.queue_history.started_at,
        queue_now=current,
        start=start,
        end=end,
    )
