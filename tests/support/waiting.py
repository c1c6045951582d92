"""The one way tests wait for the system under test to reach a state.

Polling on purpose: the conditions read plain attributes, files and counters that the code
under test changes without telling anyone. The timeout is a bound on a hang, never the thing a
test measures; when it runs out, the failure names what was not reached.

Two forms of one helper, because a test either blocks (a daemon in a subprocess, threads) or
runs inside Trio, where blocking would stop the very loop it waits for:

- :func:`wait_until` polls from a plain thread with ``time.sleep``;
- :func:`wait_until_async` polls with ``trio.sleep``, for code running in the test's loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import trio

WITHIN: Final = 30.0  # seconds; far past anything a passing test waits
BLOCKING_INTERVAL: Final = 0.05  # a subprocess or a thread: no need to look more often
TRIO_INTERVAL: Final = 0.01  # in-process state changes between two checkpoints of the loop


def _not_reached(condition: Callable[[], bool], within: float, what: str) -> AssertionError:
    return AssertionError(f"not reached within {within} s: {what or condition}")


def wait_until(condition: Callable[[], bool], *, within: float = WITHIN, what: str = "") -> None:
    """Block until ``condition()`` is true; fail naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise _not_reached(condition, within, what)
        time.sleep(BLOCKING_INTERVAL)


async def wait_until_async(
    condition: Callable[[], bool], *, within: float = WITHIN, what: str = ""
) -> None:
    """Wait in Trio until ``condition()`` is true; fail naming ``what`` after ``within`` s.

    Cancellation of the caller cancels the wait; nothing is left running.
    """
    deadline = trio.current_time() + within
    while not condition():
        if trio.current_time() > deadline:
            raise _not_reached(condition, within, what)
        await trio.sleep(TRIO_INTERVAL)
