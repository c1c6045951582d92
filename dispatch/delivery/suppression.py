"""The suppression list as delivery uses it: learn from hard bounces, skip suppressed recipients.

After an attempt, :meth:`DeliverySuppression.learn` puts every recipient refused with a hard
bounce on the list for ``suppression.days`` (:func:`is_hard_bounce`: the address itself was
refused, not the message). Before an attempt, :meth:`DeliverySuppression.skip` takes the
suppressed recipients out: they fail at once, without a connection, with a reply that names
the suppression and its expiry, so the sender's DSN says why.

Delivery skips suppressed recipients whatever ``suppression.mode`` says: in ``intake`` mode
the SMTP listener refuses them at RCPT, and delivery still catches what was accepted before
the address bounced, what the HTTP API accepted, and what an intake worker process accepted
before the main process pushed it the new entry. Both read the same
:class:`~dispatch.storage.suppression.SuppressionList`.

Owns nothing; a database that cannot be used is logged and delivery goes on as if no address
were suppressed (the list is a courtesy to receivers, never a reason to hold mail).
"""

from __future__ import annotations

import datetime
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from dispatch.config.settings import SuppressionSettings
from dispatch.monitoring.stats import Stats
from dispatch.spool import RecipientResult
from dispatch.storage.suppression import Suppression, SuppressionList

log = logging.getLogger("dispatch.suppression")

# RFC 3463 §3.2 X.1.x (addressing) and 5.2.1 (mailbox disabled) are about the address; a
# plain 550/551/553 without an enhanced code is read the same way (RFC 5321 §4.2.3).
_HARD_ENHANCED: Final = re.compile(r"\b5\.(1\.\d{1,3}|2\.1)\b")
_ENHANCED: Final = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")
_HARD_CODE: Final = re.compile(r"(?:^|:\s)(550|551|553)[ -]")
SUPPRESSED_PREFIX: Final = "suppressed: "


def is_hard_bounce(response: str) -> bool:
    """Does this permanent reply refuse the address (so mailing it again is pointless)?"""
    if _HARD_ENHANCED.search(response):
        return True
    return _ENHANCED.search(response) is None and _HARD_CODE.search(response) is not None


def until_text(entry: Suppression) -> str:
    """The expiry as an operator reads it: ``2026-01-03 04:05 UTC``."""
    moment = datetime.datetime.fromtimestamp(entry.expires_at, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


class DeliverySuppression:
    """Delivery's side of the suppression list (see the module docstring)."""

    def __init__(
        self,
        suppressions: SuppressionList,
        settings: Callable[[], SuppressionSettings],
        stats: Stats,
    ) -> None:
        self._suppressions = suppressions
        self._settings = settings
        self._stats = stats

    async def skip(self, recipients: Iterable[str]) -> dict[str, RecipientResult]:
        """The suppressed ``recipients``, each with the failed result it gets instead of a
        delivery attempt. Reads the list's in-memory copy, which a database outage leaves
        as it was (``SuppressionList.check``)."""
        if not self._settings().enabled:
            return {}
        skipped: dict[str, RecipientResult] = {}
        for recipient in recipients:
            entry = await self._suppressions.check(recipient)
            if entry is None:
                continue
            response = (
                f"{SUPPRESSED_PREFIX}{recipient} is on the suppression list until "
                f"{until_text(entry)} after a hard bounce ({entry.reason}); not sent. "
                f"Remove it with: dispatch suppression remove {recipient}"
            )
            skipped[recipient] = RecipientResult("failed", response, None, time.time())
        if skipped:
            self._stats.suppressed.add("delivery", len(skipped))
        return skipped

    async def learn(self, message_id: str, results: Mapping[str, RecipientResult]) -> None:
        """Suppress the recipients these results refused with a hard bounce."""
        settings = self._settings()
        if not settings.enabled:
            return
        for recipient, result in results.items():
            if result.status != "failed" or result.response.startswith(SUPPRESSED_PREFIX):
                continue
            if not is_hard_bounce(result.response):
                continue
            try:
                await self._suppressions.add(
                    recipient, result.response, days=settings.days, message_id=message_id
                )
            except SuppressionList.unavailable_errors as exc:
                log.warning("%s not put on the suppression list: %s", recipient, exc)
                continue
            self._stats.suppression_added.add()
            log.info("%s suppressed for %d days after a hard bounce", recipient, settings.days)
