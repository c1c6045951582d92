"""The ``local`` relay: capture mail into the spool's ``captured/`` folder (the Local inbox).

Nothing leaves the machine: the message is hard-linked (or copied) into ``captured/`` with
its envelope, durably, and every recipient counts as delivered. This is the embedded default
relay, so a fresh install can be tried without an upstream; ``dispatch spool list --state
captured`` lists what it caught.

The relay is handed a :class:`~dispatch.relays.base.CaptureSink` (the spool is one) rather
than the spool: relays sit above the spool and never import it.
"""

from __future__ import annotations

import logging

from dispatch.relays.base import CaptureSink, DeliveryRequest, DeliveryResult

log = logging.getLogger("dispatch.delivery")


class LocalRelayClient:
    """Owns nothing but counters; the capture sink owns the files."""

    kind = "local"

    def __init__(self, name: str, sink: CaptureSink) -> None:
        self.name = name
        self._sink = sink
        self.inflight = 0
        self.delivered = 0
        self.failed = 0

    async def deliver(self, request: DeliveryRequest) -> DeliveryResult:
        self.inflight += 1
        try:
            path = await self._sink.capture(request.message_id)
        except Exception as exc:
            # The sink's contract: any failure means "no copy yet, try again later" (see
            # CaptureSink), an outcome like an upstream's 4xx; its text goes into the outcome.
            self.failed += 1
            log.debug("relay %s: %s not captured", self.name, request.message_id, exc_info=exc)
            return DeliveryResult.all(request, "transient", f"relay {self.name}: {exc}")
        finally:
            self.inflight -= 1
        self.delivered += 1
        return DeliveryResult.all(request, "delivered", f"captured as {path}")

    async def aclose(self) -> None:
        return None
