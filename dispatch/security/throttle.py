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

Failures are counted in a :class:`~dispatch.security.window.SlidingWindow`, the same window
the API's per-key rate limit uses. :meth:`FailureThrottle.newly_throttled` says when a key has
just become throttled, so that each throttling is audited once, not each refused attempt.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Final

import trio

from dispatch.security.window import Episodes, SlidingWindow

MAX_TRACKED_KEYS: Final = 10_000  # bounded memory under a spray of source addresses
KEPT_PER_KEY: Final = 8
"""Failures kept per key, in multiples of ``max_failures``: more than any limit asks (callers
may ask for up to this multiple), so that forgiving one detail's failures never drops the
count of another below what it was."""


class FailureThrottle:
    """Owns the recent failure times per key (a :class:`SlidingWindow`) and which throttled
    keys were reported. Not thread-safe: use it from the Trio thread."""

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self._failures = SlidingWindow(
            window,
            max_keys=MAX_TRACKED_KEYS,
            max_per_key=max_failures * KEPT_PER_KEY,
            clock=clock,
        )
        self._reported = Episodes(quiet=window, max_keys=MAX_TRACKED_KEYS, clock=clock)
        self._in_flight: Counter[str] = Counter()  # attempts begun and not yet ended, per key
        self._verdict = trio.Event()  # set (and replaced) whenever an attempt ends

    @property
    def window(self) -> float:
        """Seconds a failure counts for."""
        return self._failures.window

    def retry_after(self, key: str, max_failures: int | None = None) -> float:
        """Seconds until ``key`` may try again; 0 when it is not throttled.

        ``max_failures``: a limit of its own for this kind of key (at most
        ``KEPT_PER_KEY`` times :attr:`max_failures`); the throttle's own by default.
        """
        limit = min(max_failures or self.max_failures, self.max_failures * KEPT_PER_KEY)
        return self._failures.wait(key, limit)

    def newly_throttled(self, key: str, max_failures: int | None = None) -> bool:
        """Whether ``key`` is throttled now and was not yet when this was last asked.

        True once per throttling, however many attempts it refuses: callers ask after each
        failure and each refusal, and report (log, audit) only when this says so. A key
        throttled again within a window of its last throttled moment (an attacker who sends
        the next guesses as soon as the window lets them) is the same throttling.
        """
        wait = self.retry_after(key, max_failures)
        return wait > 0 and self._reported.begins(key, wait)

    def record_failure(self, key: str, detail: str = "") -> None:
        """Count one failure of ``key``; ``detail`` says what else it was about (see above)."""
        self._failures.add(key, detail)

    def record_success(self, key: str, detail: str = "") -> None:
        """Forgive the failures of ``key`` recorded with this same ``detail``, no others.

        Without details (as the API records them) that is every failure of ``key``.
        """
        self._failures.forget(key, detail)

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
