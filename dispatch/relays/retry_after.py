"""A provider's ``Retry-After`` (RFC 9110 §10.2.3), read the one way every HTTP relay reads it.

The provider relays (postmark, mailgun, ses) hold themselves until the time it names; an hour
at most, so a provider's typo cannot park mail for days.
"""

from __future__ import annotations

import email.utils
import time
from typing import Final

LONGEST_HOLD: Final = 3600.0  # a Retry-After further away than an hour is not believed


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` value (seconds, or an HTTP date) in seconds from ``now``; None if
    absent or unreadable; capped at :data:`LONGEST_HOLD`."""
    if not value or not (value := value.strip()):
        return None
    if value.isdigit():
        return min(float(value), LONGEST_HOLD)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), LONGEST_HOLD)
