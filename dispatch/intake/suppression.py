"""The suppression list at intake: RCPT refused for an address that bounced hard.

With ``[suppression] enabled`` and ``mode = "intake"``, :class:`RecipientGate` answers a
RCPT to a suppressed address with ``550 5.1.1`` naming the suppression, why, until when, and
how an operator removes it; the client learns at once instead of through a DSN later. Any
other recipient (and every recipient in ``delivery`` mode) is accepted here, and delivery
skips what is suppressed (``dispatch/delivery/suppression.py``).

The lookup answers from the list's in-memory copy (``storage/suppression.py``): no database
round trip on the RCPT path except a refresh every few seconds. Sessions of intake worker
processes have no database and accept; delivery catches those.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Final

from dispatch.config.settings import SuppressionSettings
from dispatch.monitoring.stats import Stats
from dispatch.smtp import Reply
from dispatch.storage.suppression import SuppressionList

_UNPRINTABLE: Final = re.compile(r"[^\x20-\x7e]+")
MAX_REASON: Final = 120  # of the bounce quoted in the reply: a reply line stays short


class RecipientGate:
    """``refuse_recipient`` of the intake context (see the module docstring)."""

    def __init__(
        self,
        suppressions: SuppressionList,
        settings: Callable[[], SuppressionSettings],
        stats: Stats,
    ) -> None:
        self._suppressions = suppressions
        self._settings = settings
        self._stats = stats

    async def __call__(self, address: str) -> Reply | None:
        settings = self._settings()
        if not settings.enabled or settings.mode != "intake":
            return None
        entry = await self._suppressions.check(address)
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
