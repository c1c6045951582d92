"""Throttling repeated failures (SPEC §11): SMTP AUTH, dashboard logins, API keys.

A key (a peer IP, or a username) that fails :attr:`FailureThrottle.max_failures` times within
:attr:`FailureThrottle.window` seconds is refused for the rest of that window, whatever it
sends: a brute-force attempt gets a handful of guesses per window instead of thousands.

Each failure may carry a *detail*: what else the failure was about. SMTP AUTH records every
failed attempt twice, under the peer IP with the username as detail and under the username
with the peer IP as detail; a success forgives only the failures with the same pair
(:meth:`FailureThrottle.record_success`). So a valid login as one user never forgives guesses
at another user from the same address, nor guesses at the same user from other addresses.

An attempt whose check takes time (a password hash) is counted as a failure from its start
(:meth:`FailureThrottle.begin_attempt`) until its verdict (:meth:`FailureThrottle.end_attempt`),
so guesses sent at once cannot all pass the throttle before the first is known to be wrong.
A caller that finds a key throttled only by attempts still in flight may wait for their
verdicts (:meth:`FailureThrottle.wait_for_verdict`) instead of refusing: a pool of correct
logins made at once then goes through, while parallel guesses still get no more checks than
the limit.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import Final

import trio

MAX_TRACKED_KEYS: Final = 10_000  # bounded memory under a spray of source addresses
KEPT_PER_KEY: Final = 8
"""Failures kept per key, in multiples of ``max_failures``: more than any limit asks (callers
may ask for up to this multiple), so that forgiving one detail's failures never drops the
count of another below what it was."""


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
        self._failures: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()
        self._in_flight: Counter[str] = Counter()  # attempts begun and not yet ended, per key
        self._verdict = trio.Event()  # set (and replaced) whenever an attempt ends

    def _recent(self, key: str) -> deque[tuple[float, str]]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        horizon = self._clock() - self.window
        while failures and failures[0][0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def retry_after(self, key: str, max_failures: int | None = None) -> float:
        """Seconds until ``key`` may try again; 0 when it is not throttled.

        ``max_failures``: a limit of its own for this kind of key (at most
        ``KEPT_PER_KEY`` times :attr:`max_failures`); the throttle's own by default.
        """
        limit = min(max_failures or self.max_failures, self.max_failures * KEPT_PER_KEY)
        failures = self._recent(key)
        if len(failures) < limit:
            return 0.0
        return max(0.0, failures[-limit][0] + self.window - self._clock())

    def record_failure(self, key: str, detail: str = "") -> None:
        """Count one failure of ``key``; ``detail`` says what else it was about (see above)."""
        failures = self._failures.get(key)
        if failures is None:
            failures = self._failures[key] = deque(maxlen=self.max_failures * KEPT_PER_KEY)
        failures.append((self._clock(), detail))
        self._failures.move_to_end(key)
        while len(self._failures) > MAX_TRACKED_KEYS:
            self._failures.popitem(last=False)

    def record_success(self, key: str, detail: str = "") -> None:
        """Forgive the failures of ``key`` recorded with this same ``detail``, no others.

        Without details (as the API records them) that is every failure of ``key``.
        """
        failures = self._failures.get(key)
        if failures is None:
            return
        kept = deque((f for f in failures if f[1] != detail), maxlen=failures.maxlen)
        if kept:
            self._failures[key] = kept
        else:
            del self._failures[key]

    def begin_attempt(self, key: str, detail: str = "") -> None:
        """Count an attempt being checked as a failure until :meth:`end_attempt`."""
        self.record_failure(key, detail)
        self._in_flight[key] += 1

    def end_attempt(self, key: str, detail: str = "", *, success: bool) -> None:
        """The verdict of an attempt :meth:`begin_attempt` counted (also call it when the
        check was cancelled: ``success=False`` keeps the failure)."""
        if success:
            self.record_success(key, detail)
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]
        self._verdict.set()
        self._verdict = trio.Event()

    def in_flight(self, key: str) -> int:
        """Attempts of ``key`` begun and not yet ended."""
        return self._in_flight[key]

    async def wait_for_verdict(self) -> None:
        """Until the next :meth:`end_attempt`, of any key."""
        await self._verdict.wait()
