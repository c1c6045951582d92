"""``api.rate_limit_per_key`` (SPEC §4): requests per minute per key, as a sliding window.

A key that has made ``limit`` requests in the last 60 seconds is refused until the oldest of
them is a minute old; ``Retry-After`` says when, in whole seconds (RFC 9110 §10.2.3). The
window is :class:`~dispatch.security.window.SlidingWindow`, the one the failure throttle
counts with; unlike per-minute buckets it never lets a burst across a minute boundary
through at twice the rate. :meth:`KeyRateLimiter.newly_limited` says when a key has just hit
its limit, so that is audited once, not each refused request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final

from dispatch.security.window import Episodes, SlidingWindow

WINDOW_SECONDS: Final = 60.0
MAX_TRACKED_KEYS: Final = 100_000  # bounded memory; the least recently used key goes first


class KeyRateLimiter:
    """Owns the recent request times per key. Use it from the Trio thread only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._requests = SlidingWindow(WINDOW_SECONDS, max_keys=MAX_TRACKED_KEYS, clock=clock)
        self._reported = Episodes(quiet=WINDOW_SECONDS, max_keys=MAX_TRACKED_KEYS, clock=clock)

    def check(self, key: str, limit: int) -> float:
        """Count one request of ``key``; return 0 if allowed, else seconds to wait (≥ 1).

        A refused request is not counted: a client retrying too early does not push its own
        wait further out.
        """
        wait = self._requests.wait(key, limit)
        if wait > 0:
            return max(1.0, math.ceil(wait))
        self._requests.add(key)
        return 0.0

    def newly_limited(self, key: str, wait: float) -> bool:
        """Whether a refusal of ``key`` (``wait`` from :meth:`check`) starts a new episode of
        refusals, rather than continuing one already reported: a key kept over its limit has
        a request through each time its oldest leaves the window, and is still one episode
        until a minute passes without a refusal."""
        return self._reported.begins(key, wait)
