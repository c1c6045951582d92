"""When to try a message again (SPEC §6: ``spool.retry_delays_seconds``, ``spool.max_retries``)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Final

JITTER: Final = 0.1
"""Up to 10 % added to each delay, so messages that failed together do not retry in lockstep."""

_SHARED_RNG: Final = random.Random()
"""Seeded once: a schedule is built per attempt, and seeding from the OS each time showed up
in the benchmark's profile. Jitter needs no secrecy."""


class RetrySchedule:
    """Delays before retry 1, 2, …; the last delay repeats. ``max_retries`` after the first try."""

    def __init__(
        self, delays: Sequence[float], max_retries: int, rng: random.Random | None = None
    ) -> None:
        if not delays:
            raise ValueError("retry_delays_seconds needs at least one delay")
        self.delays = tuple(delays)
        self.max_retries = max_retries
        self._rng = rng or _SHARED_RNG

    def exhausted(self, attempts: int) -> bool:
        """After ``attempts`` attempts (the first one included), may we try again?"""
        return attempts > self.max_retries

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th attempt failed transiently."""
        base = self.delays[min(attempts, len(self.delays)) - 1]
        return base * (1 + self._rng.uniform(0, JITTER))
