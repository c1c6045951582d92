"""The suppression list at intake: RCPT refused for an address that bounced hard.

With ``[suppression] enabled`` and ``mode = "intake"``, :class:`RecipientGate` answers a
RCPT to a suppressed address with ``550 5.1.1`` naming the suppression, why, until when, and
how an operator removes it; the client learns at once instead of through a DSN later. Any
other recipient (and every recipient in ``delivery`` mode) is accepted here, and delivery
skips what is suppressed (``dispatch/delivery/suppression.py``).

In the main process the lookup is the list's in-memory copy (``storage/suppression.py``): no
database round trip on the RCPT path except a refresh every few seconds. An intake worker
process has no database: the main process pushes it the entries in force
(:class:`~dispatch.intake.link.SuppressionChanged`, empty when the list is off or in
``delivery`` mode) whenever they change, and its gate reads that copy
(:class:`PushedSuppressions`). A worker that has not received one yet accepts.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import trio

from dispatch.monitoring.stats import Stats
from dispatch.smtp import Reply
from dispatch.storage.suppression import Suppression, normalise

_UNPRINTABLE: Final = re.compile(r"[^\x20-\x7e]+")
MAX_REASON: Final = 120  # of the bounce quoted in the reply: a reply line stays short


class RecipientGate:
    """``refuse_recipient`` of the intake context (see the module docstring).

    ``lookup`` finds the entry in force for an address; ``active`` says whether intake
    refuses at all now (the main process: ``suppression.enabled`` and ``mode = "intake"``).
    """

    def __init__(
        self,
        lookup: Callable[[str], Awaitable[Suppression | None]],
        active: Callable[[], bool],
        stats: Stats,
    ) -> None:
        self._lookup = lookup
        self._active = active
        self._stats = stats

    async def __call__(self, address: str) -> Reply | None:
        if not self._active():
            return None
        entry = await self._lookup(address)
        if entry is None:
            return None
        self._stats.suppressed.add("intake")
        until = datetime.datetime.fromtimestamp(entry.expires_at, datetime.UTC)
        reason = _UNPRINTABLE.sub("?", entry.reason)[:MAX_REASON]
        shown = _UNPRINTABLE.sub("?", address)
        return Reply.of(
            550,
            f"<{shown}> is on the suppression list until {until:%Y-%m-%d %H:%M} UTC",
            f"after a hard bounce: {reason}",
            f"The operator can remove it: dispatch suppression remove {shown}",
            enhanced="5.1.1",
        )


class PushedSuppressions:
    """An intake worker's copy of the entries in force, replaced by each push."""

    def __init__(self) -> None:
        self._entries: dict[str, Suppression] = {}

    def replace(self, entries: Iterable[Suppression]) -> None:
        self._entries = {entry.address: entry for entry in entries}

    async def lookup(self, address: str) -> Suppression | None:
        await trio.lowlevel.checkpoint()
        entry = self._entries.get(normalise(address))
        return entry if entry is not None and entry.expires_at > time.time() else None
