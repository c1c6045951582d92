"""The per-relay token bucket, on Trio's mock clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dispatch.relays.ratelimit import TokenBucket


async def test_a_burst_of_one_minute_then_the_steady_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = TokenBucket(per_minute=60)
    start = trio.current_time()
    for _ in range(60):
        await bucket.take()
    assert trio.current_time() == start  # the burst is free
    for _ in range(5):
        await bucket.take()
    assert trio.current_time() - start == pytest.approx(5.0)  # then one a second


async def test_idle_time_refills_up_to_the_capacity_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = TokenBucket(per_minute=6)
    for _ in range(6):
        await bucket.take()
    await trio.sleep(3600)  # an hour idle still buys only one minute's allowance
    start = trio.current_time()
    for _ in range(7):
        await bucket.take()
    assert trio.current_time() - start == pytest.approx(10.0)
