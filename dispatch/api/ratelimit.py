"""``api.rate_limit_per_key`` (SPEC §4): requests per minute per key, as a sliding window.

A key that has made ``limit`` requests in the last 60 seconds is refused until the oldest of
them is a minute old; ``Retry-After`` says when, in whole seconds (RFC 9110 §10.2.3). A
sliding window, unlike per-minute buckets, never lets a burst across a minute boundary
through at twice the rate.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final

WINDOW_SECONDS: Final = 60.0
MAX_TRACKED_KEYS: Final = 100_000  # bounded memory; the least recently used key goes first


class KeyRateLimiter:
    """Owns the recent request times per key. Use it from the Trio thread only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._recent: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, key: str, limit: int) -> float:
        """Count one request of ``key``; return 0 if allowed, else seconds to wait."""
        now = self._clock()
        recent = self._recent.get(key)
        if recent is None:
            recent = self._recent[key] = deque()
        self._recent.move_to_end(key)
        while recent and recent[0] <= now - WINDOW_SECONDS:
            recent.popleft()
        if len(recent) >= limit:
            return max(1.0, math.ceil(recent[len(recent) - limit] + WINDOW_SECONDS - now))
        recent.append(now)
        while len(self._recent) > MAX_TRACKED_KEYS:
            self._recent.popitem(last=False)
        return 0.0
