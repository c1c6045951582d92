"""The sliding window every limit in Dispatch counts with, and the record of reported limits.

:class:`SlidingWindow` keeps, per key, the times of recent events (each with an optional
*detail*) and forgets them once they are ``window`` seconds old. Two limits are built on it:
the failure throttle (:mod:`dispatch.security.throttle`: SMTP AUTH and API key failures) and
the API's requests-per-minute per key (:mod:`dispatch.api.ratelimit`). A sliding window,
unlike per-minute buckets, never lets a burst across a bucket boundary through at twice the
rate: a key with ``limit`` events in the last ``window`` seconds waits until the oldest of
them leaves the window (:meth:`SlidingWindow.wait`).

Memory is bounded whatever the traffic: at most ``max_keys`` keys (the one least recently
added to goes first, so a spray of source addresses cannot grow it) and at most
``max_per_key`` events per key (the oldest go first).

:class:`Episodes` remembers which keys were reported as limited and until when, so a limit
is reported (logged, audited) once when a key reaches it, not once per refused attempt. An
episode lasts while the key keeps being limited and for a quiet period after: a client that
stays over its limit gets an event through each time the oldest of its events leaves the
window, and each such pause must not start a new episode.

Neither is thread-safe: use them from the Trio thread.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable


class SlidingWindow:
    """Owns the recent event times (and details) per key; see the module docstring."""

    def __init__(
        self,
        window: float,
        *,
        max_keys: int,
        max_per_key: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_keys = max_keys
        self.max_per_key = max_per_key
        self._clock = clock
        self._events: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()

    def now(self) -> float:
        return self._clock()

    def recent(self, key: str) -> deque[tuple[float, str]]:
        """``(time, detail)`` of the events of ``key`` still in the window, oldest first.

        Events that left the window are dropped here (and a key left with none). Read it,
        never change it: the window owns it.
        """
        events = self._events.get(key)
        if events is None:
            return deque()
        horizon = self._clock() - self.window
        while events and events[0][0] <= horizon:
            events.popleft()
        if not events:
            del self._events[key]
        return events

    def count(self, key: str) -> int:
        """Events of ``key`` in the window."""
        return len(self.recent(key))

    def wait(self, key: str, limit: int) -> float:
        """Seconds until ``key`` has fewer than ``limit`` events in the window; 0 if it has.

        That is when the ``limit``-th most recent event leaves the window.
        """
        events = self.recent(key)
        if len(events) < limit:
            return 0.0
        return max(0.0, events[-limit][0] + self.window - self._clock())

    def add(self, key: str, detail: str = "") -> None:
        """Count one event of ``key`` now; ``detail`` is what :meth:`forget` matches."""
        events = self._events.get(key)
        if events is None:
            events = self._events[key] = deque(maxlen=self.max_per_key)
        events.append((self._clock(), detail))
        self._events.move_to_end(key)
        while len(self._events) > self.max_keys:
            self._events.popitem(last=False)

    def forget(self, key: str, detail: str) -> None:
        """Drop the events of ``key`` that were added with this ``detail``, no others."""
        events = self._events.get(key)
        if events is None:
            return
        kept = deque((e for e in events if e[1] != detail), maxlen=events.maxlen)
        if kept:
            self._events[key] = kept
        else:
            del self._events[key]


class Episodes:
    """Which keys are known to be limited, and until when: each limit is reported once.

    :meth:`begins` answers True only for the first look at a limited key; later looks while
    the same episode lasts answer False and extend it. An episode ends ``quiet`` seconds
    after the key was last seen limited (the limit's window: a key limited again within it
    is the same client still at it); the next limit is a new one, reported again. Bounded
    like :class:`SlidingWindow`.
    """

    def __init__(
        self, *, quiet: float, max_keys: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.quiet = quiet
        self.max_keys = max_keys
        self._clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()

    def begins(self, key: str, lasting: float) -> bool:
        """``key`` is limited for ``lasting`` more seconds: whether that is a new episode."""
        now = self._clock()
        until = self._until.get(key)
        self._until[key] = max(now + lasting + self.quiet, until or now)
        self._until.move_to_end(key)
        while len(self._until) > self.max_keys:
            self._until.popitem(last=False)
        return until is None or until <= now
