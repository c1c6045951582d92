"""An intake worker is a batch process (SCHED_BATCH) while it keeps its core busy, and a normal
one otherwise. Here the test's own process is the worker: a thread that spins makes it busy."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import pytest
import trio

from dispatch.intake.batch_policy import BUSY_FROM, IDLE_BELOW, follow_load, next_policy, set_policy
from tests.support.waiting import wait_until_async


def policies() -> set[int]:
    """The policy of every thread of this process."""
    found = set()
    for name in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended since the listing
            found.add(os.sched_getscheduler(int(name)))
    return found


@pytest.fixture
def normal_afterwards() -> Iterator[None]:
    yield
    set_policy(os.SCHED_OTHER)  # whatever the test did, the rest of the suite runs normally


@pytest.mark.parametrize(
    ("batch", "busy", "expected"),
    [
        (False, 0.0, False),
        (False, BUSY_FROM - 0.01, False),
        (False, BUSY_FROM, True),
        (True, 1.0, True),
        (True, IDLE_BELOW, True),  # between the two: stays as it is
        (True, IDLE_BELOW - 0.01, False),
    ],
)
def test_the_policy_follows_the_load_with_a_gap_between(
    batch: bool, busy: float, expected: bool
) -> None:
    assert next_policy(batch, busy) is expected


async def test_a_busy_process_becomes_a_batch_one_and_normal_again(
    normal_afterwards: None,
) -> None:
    assert policies() == {os.SCHED_OTHER}
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():  # a whole core (Trio's thread gets the interpreter every 5 ms)
            sum(range(2000))

    spinner = threading.Thread(target=spin, daemon=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow_load, 0.05)
        spinner.start()
        try:
            await wait_until_async(lambda: policies() == {os.SCHED_BATCH}, what="batch")
        finally:
            stop.set()
            spinner.join()
        assert os.getpriority(os.PRIO_PROCESS, 0) == nice  # the nice value stays
        await wait_until_async(lambda: policies() == {os.SCHED_OTHER}, what="normal again")
        nursery.cancel_scope.cancel()
