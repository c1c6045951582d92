"""The one sliding window under every limit, and the record that reports each limit once.

Plain objects on a hand-driven clock: what the failure throttle and the API rate limit are
built on (their own behaviour is tested in test_security.py, test_api_keys.py, the intake
AUTH tests and tests/api).
"""

from __future__ import annotations

import pytest

from dispatch.api.ratelimit import WINDOW_SECONDS, KeyRateLimiter
from dispatch.security.throttle import FailureThrottle
from dispatch.security.window import Episodes, SlidingWindow


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_wait_is_until_the_limit_th_newest_event_leaves_the_window() -> None:
    clock = Clock()
    window = SlidingWindow(60, max_keys=10, clock=clock)
    for _step in range(3):  # events at 1000, 1010, 1020
        window.add("k")
        clock.now += 10
    assert window.count("k") == 3
    assert window.wait("k", 4) == 0  # below the limit
    assert window.wait("k", 3) == pytest.approx(30)  # the event at 1000 leaves at 1060
    assert window.wait("k", 2) == pytest.approx(40)  # the one at 1010 leaves at 1070
    clock.now = 1060
    assert window.count("k") == 2  # exactly 60 s old: gone
    assert window.wait("k", 3) == 0
    clock.now = 1081
    assert window.count("k") == 0
    assert window.wait("other", 1) == 0


def test_forget_drops_only_the_events_with_that_detail() -> None:
    window = SlidingWindow(60, max_keys=10, clock=Clock())
    window.add("k", "a")
    window.add("k", "b")
    window.add("k", "a")
    window.forget("k", "a")
    assert [detail for _, detail in window.recent("k")] == ["b"]
    window.forget("k", "b")
    assert window.count("k") == 0
    window.forget("never seen", "x")  # no error


def test_memory_is_bounded_in_keys_and_in_events_per_key() -> None:
    window = SlidingWindow(60, max_keys=3, max_per_key=2, clock=Clock())
    for key in ("a", "b", "c", "d"):
        window.add(key)
    assert window.count("a") == 0  # the least recently added key went first
    assert [window.count(k) for k in ("b", "c", "d")] == [1, 1, 1]
    window.add("b")  # b is now the most recent: c goes next
    window.add("e")
    assert window.count("c") == 0
    for _ in range(5):
        window.add("d")
    assert window.count("d") == 2  # the oldest events went first


def test_an_episode_is_reported_once_and_a_later_one_again() -> None:
    clock = Clock()
    episodes = Episodes(quiet=60, max_keys=10, clock=clock)
    assert episodes.begins("k", 30) is True  # limited until 1030; the episode lasts to 1090
    clock.now += 10
    assert episodes.begins("k", 20) is False  # the same episode, still limited
    assert episodes.begins("other", 5) is True  # keys are independent
    clock.now += 50  # 1060: no longer limited, but within the quiet period
    assert episodes.begins("k", 30) is False  # limited again at once: the same client
    clock.now += 30 + 60 + 1  # a whole quiet period after the last limited moment
    assert episodes.begins("k", 30) is True


def test_a_key_kept_over_its_rate_limit_is_one_episode() -> None:
    clock = Clock()
    limiter = KeyRateLimiter(clock=clock)
    reported = 0
    for _ in range(30 * 60 * 4):  # half an hour at 4 requests a second, limit 60 a minute
        wait = limiter.check("key", 60)
        if wait and limiter.newly_limited("key", wait):
            reported += 1
        clock.now += 0.25
    assert reported == 1
    clock.now += 2 * WINDOW_SECONDS  # the client calmed down; later it overdoes it again
    for _ in range(61):
        wait = limiter.check("key", 60)
    assert wait > 0
    assert limiter.newly_limited("key", wait) is True


def test_rate_limiter_keeps_its_behaviour_on_the_shared_window() -> None:
    clock = Clock()
    limiter = KeyRateLimiter(clock=clock)
    assert [limiter.check("key", 3) for _ in range(3)] == [0, 0, 0]
    wait = limiter.check("key", 3)
    assert wait == WINDOW_SECONDS  # the first request leaves the window a minute later
    assert limiter.newly_limited("key", wait) is True
    clock.now += 59.5
    assert limiter.check("key", 3) == 1  # whole seconds, never 0 when refused
    assert limiter.newly_limited("key", 1) is False  # the same run of refusals
    assert limiter.check("other", 3) == 0
    clock.now += 0.5
    assert limiter.check("key", 3) == 0  # refusals were not counted
    assert limiter.check("key", 1) > 0  # a lower limit after a reload applies at once


def test_throttle_says_newly_throttled_once_per_throttling() -> None:
    clock = Clock()
    throttle = FailureThrottle(max_failures=3, window=60, clock=clock)
    answers = []
    for _ in range(6):
        throttle.record_failure("1.2.3.4")
        answers.append(throttle.newly_throttled("1.2.3.4"))
    assert answers == [False, False, True, False, False, False]
    assert throttle.newly_throttled("1.2.3.4", max_failures=12) is False  # a higher limit
    clock.now += 61
    assert throttle.newly_throttled("1.2.3.4") is False  # the window passed: not throttled
    for _ in range(3):  # the next guesses as soon as they are allowed: the same attack
        throttle.record_failure("1.2.3.4")
    assert throttle.newly_throttled("1.2.3.4") is False
    clock.now += 60 + 60 + 1  # throttled until 1121, then a whole window of quiet
    for _ in range(3):
        throttle.record_failure("1.2.3.4")
    assert throttle.newly_throttled("1.2.3.4") is True  # a new attack, reported again
