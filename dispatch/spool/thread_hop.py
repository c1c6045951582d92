"""The spool's thread hop: one blocking call in a worker thread, run to completion.

Every state change of every message (a commit, a claim, a batch of removals) is one call of
blocking file operations in a worker thread, and none may be abandoned half-way: the spool
ran each as ``trio.to_thread.run_sync`` inside a shielded cancel scope. :func:`run_to_completion`
is that, without what the spool does not use and pays for on every hop: trio names the OS
thread after the job and back (two system calls through ``ctypes`` per hop), builds that
name, and copies the context into the thread. Here the call goes to trio's thread cache
(``trio.lowlevel.start_thread_soon``, the primitive ``to_thread.run_sync`` is built on)
and the task sleeps until the thread hands back the outcome. Measured in
docs/intake-cpu.md (round 6).

Cancellation: none, as with the shielded scope it replaces. The call always runs to its end
and its result (or exception) is returned; a cancellation of the caller takes effect at its
next checkpoint. Waiting for a thread of ``limiter`` is shielded too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    import outcome

__all__ = ["run_to_completion"]


async def run_to_completion[T](work: Callable[[], T], limiter: trio.CapacityLimiter) -> T:
    """Run ``work()`` in a worker thread once ``limiter`` has room; return what it returns
    or raise what it raises. Never cancelled (module docstring)."""
    holder = object()  # the hop holds the token, not the task (as in trio.to_thread)
    try:  # a free token needs no wait: the task yields below anyway, until the thread is done
        limiter.acquire_on_behalf_of_nowait(holder)
    except trio.WouldBlock:
        with trio.CancelScope(shield=True):
            await limiter.acquire_on_behalf_of(holder)
    try:
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[T]) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        trio.lowlevel.start_thread_soon(work, deliver)
        return await trio.lowlevel.wait_task_rescheduled(_keep_waiting)  # type: ignore[no-any-return]
    finally:
        limiter.release_on_behalf_of(holder)


def _keep_waiting(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED
