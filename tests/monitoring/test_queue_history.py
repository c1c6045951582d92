"""The queue-depth history behind the Overview's chart: a bounded ring of minute samples."""

from __future__ import annotations

import trio
import trio.testing

from dispatch.monitoring.queue_history import QueueHistory, QueueSample
from dispatch.spool.index import SpoolCounts


def counts(incoming: int, retrying: int, processing: int = 0, failed: int = 0) -> SpoolCounts:
    return SpoolCounts(incoming, retrying, processing, failed, total_bytes=0)


def test_a_sample_splits_incoming_into_queued_and_retrying() -> None:
    sample = QueueSample.of(counts(incoming=5, retrying=2, processing=1, failed=3), at=10.0)
    assert (sample.queued, sample.retrying, sample.processing, sample.failed) == (3, 2, 1, 3)
    assert sample.waiting == 6  # failed mail waits for the operator, not for delivery


def test_the_ring_keeps_the_newest_samples_and_remembers_its_start() -> None:
    history = QueueHistory(kept=3)
    assert history.started_at is None
    for minute in range(5):
        history.add(QueueSample.of(counts(minute, 0), at=minute * 60.0))
    assert [s.at for s in history.samples()] == [120.0, 180.0, 240.0]
    assert [s.at for s in history.samples(since=200.0)] == [240.0]
    assert history.started_at == 0.0  # since when the process has samples, kept or not


async def test_sampling_takes_one_sample_a_minute_until_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    history = QueueHistory()
    depth = [0]

    def now_counts() -> SpoolCounts:
        depth[0] += 1
        return counts(depth[0], 0)

    with trio.move_on_after(60 * 10 + 1):
        await history.sample_forever(now_counts, clock=trio.current_time)
    taken = history.samples()
    assert [s.queued for s in taken] == list(range(1, 12))  # at 0, 60, ..., 600 s
    assert [s.at for s in taken] == [60.0 * n for n in range(11)]
