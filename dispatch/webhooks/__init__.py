"""Delivery webhooks: a signed JSON POST to each configured receiver for every delivery event
(docs/webhooks.md).

- :mod:`~dispatch.webhooks.payload`: the event types, the body, the signature and headers;
- :mod:`~dispatch.webhooks.outbox`: the calls owed, durable in ``<data_dir>/webhooks/``;
- :mod:`~dispatch.webhooks.calls`: one POST over httpx, and the clients (one per CA file);
- :mod:`~dispatch.webhooks.sender`: the "webhooks" component that schedules, settles,
  retries and gives up the calls, and ``record``, the delivery path's way in.

Its place in the layers is beside ``delivery``: it hears delivery's events through the
``record`` seam the composition root builds, and never imports delivery.
"""

from dispatch.webhooks.sender import WebhookSender, outbox_directory

__all__ = ["WebhookSender", "outbox_directory"]
