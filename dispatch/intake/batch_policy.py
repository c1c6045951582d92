"""An intake worker's scheduling policy: ``SCHED_BATCH`` while it keeps its core busy.

Theory of operation
-------------------
``SCHED_BATCH`` (sched(7)) is Linux's normal policy, at the same nice value, for threads the
scheduler may take as CPU-bound: one that wakes up does not preempt what runs on its core,
and once it runs it handles everything that arrived meanwhile in one go. For a worker that
fills its core (intake at full speed) that means fewer context switches — between its Trio
thread and the commit threads it hands fsyncs to, and with the main process — and more work
per wake-up: measured, 6 to 15 % more messages per second and a shorter ``/health`` tail
(docs/intake-cpu.md, round 12). For a worker that mostly waits the policy is the wrong one:
a reply would wait for the tick, or for the end of another task's slice, before the worker
may run. (One bench run with the policy always on had a p99 latency at 200 msgs/s ten times
Postfix's; the alternated runs after it did not resolve a cost either way.)

So :func:`follow_load` measures the share of a core the process used over each
:data:`INTERVAL` and switches every thread of the process to ``SCHED_BATCH`` once it reaches
:data:`BUSY_FROM`, and back to the normal policy below :data:`IDLE_BELOW` (the gap keeps it
from flapping). Threads started later inherit the policy of the thread that starts them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Final

import trio

log = logging.getLogger("dispatch.smtp")

INTERVAL: Final = 0.05
"""Seconds over which the load is measured: a burst's first 50 ms run under the normal policy
(the quick bench sends each run's 1,000 messages in under a second). Twenty wake-ups a second
of a timer and a clock read cost nothing measurable."""

BUSY_FROM: Final = 0.8
"""The share of a core that makes the worker a batch process."""

IDLE_BELOW: Final = 0.5
"""The share of a core below which it is a normal process again."""


def next_policy(batch: bool, busy: float) -> bool:
    """Whether to run as a batch process next, from the policy now and the share of a core
    used over the last interval."""
    return busy >= IDLE_BELOW if batch else busy >= BUSY_FROM


def set_policy(policy: int) -> None:
    """Put every thread of this process under ``policy`` (``os.SCHED_BATCH`` or
    ``os.SCHED_OTHER``); the nice value stays. Raises :class:`OSError` if the kernel refuses."""
    for name in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended since the listing
            os.sched_setscheduler(int(name), policy, os.sched_param(0))


async def follow_load(interval: float = INTERVAL) -> None:
    """Own the scheduling policy of this process's threads: batch while busy (see the module
    docstring). Runs until cancelled, which leaves the policy as it is (the worker is
    stopping). If the kernel refuses a switch, it says so once, puts back the normal policy
    where it can and stops switching."""
    batch = False
    cpu, at = time.process_time(), time.monotonic()
    while True:
        await trio.sleep(interval)
        now_cpu, now = time.process_time(), time.monotonic()
        busy, cpu, at = (now_cpu - cpu) / max(now - at, 1e-9), now_cpu, now
        wanted = next_policy(batch, busy)
        if wanted == batch:
            continue
        try:
            set_policy(os.SCHED_BATCH if wanted else os.SCHED_OTHER)
        except OSError as exc:
            log.warning("scheduling policy not changed (%s): the worker stays normal", exc)
            with contextlib.suppress(OSError):
                set_policy(os.SCHED_OTHER)
            return
        batch = wanted
