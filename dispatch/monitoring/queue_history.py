"""The spool's depth over the last 24 hours, sampled in memory: the Overview's queue chart.

:class:`QueueHistory` keeps one :class:`QueueSample` a minute (the spool index's counts:
free, in memory) in a ring of :data:`SAMPLES_KEPT`. :meth:`QueueHistory.sample_forever` is
run by the "figures" component of the composition root (``dispatch/daemon.py``), beside the
database figures: it starts sampling at once, takes a sample every :data:`SAMPLE_SECONDS`
and stops when cancelled (it owns nothing but the ring, so cancellation is always clean).

After a restart the history starts empty. It cannot be rebuilt from the message log: the
log counts events per relay and recipient group (a message split over two relays is
delivered twice; a failed message retried from the dashboard goes back without an event),
so a depth computed backwards from it would be an estimate that could show queues that
never were. The chart says since when it has samples instead.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Final

import attrs
import trio

from dispatch.spool.index import SpoolCounts

SAMPLE_SECONDS: Final = 60.0
SAMPLES_KEPT: Final = 24 * 60  # a day of minutes: a few tens of kilobytes


@attrs.frozen
class QueueSample:
    """The spool at one moment: waiting for a first attempt, waiting to retry, being
    delivered, failed (Unix time ``at``)."""

    at: float
    queued: int
    retrying: int
    processing: int
    failed: int

    @property
    def waiting(self) -> int:
        """Messages not yet delivered that delivery still works on."""
        return self.queued + self.retrying + self.processing

    @classmethod
    def of(cls, counts: SpoolCounts, at: float) -> QueueSample:
        return cls(
            at=at,
            queued=counts.incoming - counts.retrying,
            retrying=counts.retrying,
            processing=counts.processing,
            failed=counts.failed,
        )


class QueueHistory:
    """A ring of the last :data:`SAMPLES_KEPT` samples. Only the Trio thread touches it."""

    def __init__(self, kept: int = SAMPLES_KEPT) -> None:
        self._samples: collections.deque[QueueSample] = collections.deque(maxlen=kept)
        self.started_at: float | None = None
        """When the first sample was taken (None before): the chart's honest beginning."""

    def add(self, sample: QueueSample) -> None:
        if self.started_at is None:
            self.started_at = sample.at
        self._samples.append(sample)

    def samples(self, since: float | None = None) -> list[QueueSample]:
        """The samples, oldest first (those at or after ``since``, when given)."""
        if since is None:
            return list(self._samples)
        return [s for s in self._samples if s.at >= since]

    async def sample_forever(
        self,
        counts: Callable[[], SpoolCounts],
        interval: float = SAMPLE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Sample ``counts()`` now and every ``interval`` seconds until cancelled."""
        while True:
            self.add(QueueSample.of(counts(), clock()))
            await trio.sleep(interval)
