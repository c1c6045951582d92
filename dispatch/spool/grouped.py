"""Blocking spool work for many messages in one thread hop: the removals after delivery.

Why: on a loaded machine a thread hop costs milliseconds of scheduling (a worker thread to
wake, then the Trio thread), far more than the unlinks it carries; measured on two busy
cores, a hop took ~7 ms around 0.5 ms of file work. Delivery workers that finish together
therefore share one hop.

How: :meth:`GroupedHops.submit` queues a message id. If no hop is under way, the caller runs
one for every id queued so far; ids queued meanwhile wait for the hop in progress to end,
and the first of their callers then runs the next hop for all of them (a FIFO
:class:`trio.Lock` decides who). The work returns each id's ``OSError``, if any, so one
message's failure is its own caller's only. The wait is shielded: a removal, once asked for,
is carried out and its caller sees a cancellation at its next checkpoint, as with every
other spool operation. Owns no task; nothing to close.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio


class GroupedHops:
    """One thread hop for every id submitted while the previous hop was under way."""

    def __init__(
        self,
        run: Callable[[list[str]], Awaitable[dict[str, OSError]]],
    ) -> None:
        """``run(ids)`` does the work in a thread hop and returns each failed id's error."""
        self._run = run
        self._waiting: list[str] = []
        self._done: dict[str, OSError | None] = {}
        self._lock = trio.Lock()

    async def submit(self, message_id: str) -> None:
        """Do the work for ``message_id`` (with whatever else is queued); raise its error."""
        self._waiting.append(message_id)
        with trio.CancelScope(shield=True):
            while message_id not in self._done:
                async with self._lock:
                    if message_id in self._done:
                        break
                    ids, self._waiting = self._waiting, []
                    try:
                        errors = await self._run(ids)
                    except BaseException:
                        self._waiting[:0] = [i for i in ids if i != message_id]  # next hop's
                        raise
                    for done in ids:
                        self._done[done] = errors.get(done)
        error = self._done.pop(message_id)
        if error is not None:
            raise error
