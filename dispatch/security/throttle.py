"""Throttling repeated failures (SPEC §11): SMTP AUTH, dashboard logins, API keys.

A key (usually the peer IP) that fails :attr:`FailureThrottle.max_failures` times within
:attr:`FailureThrottle.window` seconds is refused for the rest of that window, whatever it
sends: a brute-force attempt gets a handful of guesses per window instead of thousands.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final

MAX_TRACKED_KEYS: Final = 10_000  # bounded memory under a spray of source addresses


class FailureThrottle:
    """Owns the recent failure times per key. Not thread-safe: use it from the Trio thread."""

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str) -> deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        horizon = self._clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0 when it is not throttled."""
        failures = self._recent(key)
        if len(failures) < self.max_failures:
            return 0.0
        return max(0.0, failures[-self.max_failures] + self.window - self._clock())

    def record_failure(self, key: str) -> None:
        failures = self._failures.setdefault(key, deque(maxlen=self.max_failures))
        failures.append(self._clock())
        self._failures.move_to_end(key)
        while len(self._failures) > MAX_TRACKED_KEYS:
            self._failures.popitem(last=False)

    def record_success(self, key: str) -> None:
        self._failures.pop(key, None)
