"""Lifecycle vocabulary shared by every long-lived task: the stop request, the component
contract, the restart back-off, and what a process does once it is ready.

This module sits below every room (``intake/``, ``delivery/``, ``web/``, ``control/``…): they
take a :class:`Shutdown` and implement :class:`ComponentRun`; the supervisor
(:mod:`dispatch.supervisor`) and the intake worker processes
(:mod:`dispatch.intake.processes`) restart what crashed with one :class:`RestartBackoff`.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable
from typing import Final, Protocol

import attrs
import trio

RESTART_BACKOFF_FIRST: Final = 0.5
RESTART_BACKOFF_MAX: Final = 30.0
# A task that ran this long before it crashed is considered healthy again: the back-off starts
# over, so a rare crash does not inherit the delay of an old crash loop.
RESTART_BACKOFF_RESET_AFTER: Final = 60.0


class Shutdown:
    """A stop request: set once, watched by the task it was handed to."""

    def __init__(self, grace_seconds: float) -> None:
        self.requested = trio.Event()
        self.grace_seconds = grace_seconds

    def request(self) -> None:
        self.requested.set()


class ComponentRun(Protocol):
    def __call__(
        self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]
    ) -> Awaitable[None]: ...


@attrs.frozen
class Component:
    """A named long-lived task.

    ``run(shutdown, task_status=...)`` must call ``task_status.started()`` once it is ready,
    then run until ``shutdown.requested`` is set, finish its work and return.
    """

    name: str
    run: ComponentRun


class RestartBackoff:
    """How long to wait before starting a crashed task again: 0.5 s, doubling up to 30 s.

    A run that lasted longer than :data:`RESTART_BACKOFF_RESET_AFTER` starts the sequence over.
    """

    def __init__(self) -> None:
        self._next = RESTART_BACKOFF_FIRST

    def delay(self, ran_for: float) -> float:
        """The delay before the next start, given how long the run that just ended lasted."""
        if ran_for > RESTART_BACKOFF_RESET_AFTER:
            self._next = RESTART_BACKOFF_FIRST
        delay = self._next
        self._next = min(self._next * 2, RESTART_BACKOFF_MAX)
        return delay

    @staticmethod
    async def wait(delay: float, shutdown: Shutdown) -> bool:
        """Sleep ``delay`` seconds or until a stop request; True when the task should restart."""
        with trio.move_on_after(delay):
            await shutdown.requested.wait()
        return not shutdown.requested.is_set()


def freeze_start_up_objects() -> None:
    """Take what start-up built out of the garbage collector's reach; call once, when ready.

    A full (generation 2) collection walks every container object of the process, and
    start-up leaves about 100,000 (modules, classes, functions, settings) that live until
    exit: 37-74 ms measured under load, with the interpreter lock held, during which no
    session and no ``/health`` answer moves. Python runs one whenever the long-lived
    objects have grown by a quarter.
    One collection now, then :func:`gc.freeze`: everything alive moves to the permanent
    generation, which no collection walks again; the collector keeps working on what is
    made from here on (docs/intake-cpu.md, round 3, has the pauses before and after).
    """
    gc.collect()
    gc.freeze()
