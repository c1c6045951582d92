"""Per-relay rate limits (``rate_limit_per_minute``, SPEC §6): a token bucket in front of a relay.

The bucket holds up to one minute's allowance and refills continuously, so a relay limited
to 60/min takes a burst of 60 and then one message a second. A delivery that finds the
bucket empty waits for its token in the worker (the message stays claimed, nothing is
counted as an attempt); ``max_inflight`` still bounds the concurrency separately.
"""

from __future__ import annotations

import trio

from dispatch.relays.base import DeliveryRequest, DeliveryResult, Relay


class TokenBucket:
    """Owns the token count; call :meth:`take` from Trio tasks only."""

    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0  # tokens per second
        self.capacity = float(per_minute)
        self._tokens = self.capacity
        self._stamp = trio.current_time()

    def _refill(self) -> None:
        now = trio.current_time()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self) -> None:
        """Wait until a token is available and take it (FIFO is not guaranteed)."""
        self._refill()
        while self._tokens < 1:
            await trio.sleep((1 - self._tokens) / self.rate)
            self._refill()
        self._tokens -= 1


class RateLimitedRelay:
    """A relay behind a :class:`TokenBucket`; counters are the wrapped relay's."""

    def __init__(self, relay: Relay, per_minute: int) -> None:
        self.relay = relay
        self.name = relay.name
        self.kind = relay.kind
        self.bucket = TokenBucket(per_minute)

    @property
    def inflight(self) -> int:
        return self.relay.inflight

    @property
    def delivered(self) -> int:
        return self.relay.delivered

    @property
    def failed(self) -> int:
        return self.relay.failed

    async def deliver(self, request: DeliveryRequest) -> DeliveryResult:
        await self.bucket.take()
        return await self.relay.deliver(request)

    async def aclose(self) -> None:
        await self.relay.aclose()
