"""The ``local`` relay: capture mail into the spool's ``captured/`` folder (the Local inbox).

Nothing leaves the machine: the message is hard-linked (or copied) into ``captured/`` with
its envelope, durably, and every recipient counts as delivered. This is the embedded default
relay, so a fresh install can be tried without an upstream; the dashboard shows the inbox.
"""

from __future__ import annotations

import logging

from dispatch.relays.base import DeliveryRequest, DeliveryResult
from dispatch.spool import Spool, SpoolError

log = logging.getLogger("dispatch.delivery")


class LocalRelayClient:
    """Owns nothing but counters; the spool owns the files."""

    kind = "local"

    def __init__(self, name: str, spool: Spool) -> None:
        self.name = name
        self._spool = spool
        self.inflight = 0
        self.delivered = 0
        self.failed = 0

    async def deliver(self, request: DeliveryRequest) -> DeliveryResult:
        self.inflight += 1
        try:
            path = await self._spool.capture(request.message_id)
        except SpoolError as exc:
            self.failed += 1
            return DeliveryResult.all(request, "transient", f"relay {self.name}: {exc}")
        finally:
            self.inflight -= 1
        self.delivered += 1
        return DeliveryResult.all(request, "delivered", f"captured as {path.name}")

    async def aclose(self) -> None:
        return None
