"""The Mailgun-compatible sending API: apps keep Mailgun's SDKs, pointed at Dispatch.

``POST /v3/{domain}/messages`` and ``POST /v3/{domain}/messages.mime`` behind the same gate
as ``/api/v1/messages`` (:mod:`dispatch.api.gate`: allow-list, the key — here as Basic
``api:KEY``, as Mailgun's SDKs send it —, rate limit, body limit, the body streamed to the
spool's ``tmp/``). The fields are read by :mod:`dispatch.api.mailgun_form` in a worker
thread and each message is handed to the intake door; the answer, ``200 {"id": …,
"message": "Queued. Thank you."}`` as Mailgun's, comes only after every message of the
request is spooled (fsync). ``id`` is Dispatch's message id, so
``GET /api/v1/messages/{id}`` finds it; a batch send (``recipient-variables``) spools one
message per recipient and answers the first one's id (all are listed by
``GET /api/v1/messages``). The domain in the path is not checked: Dispatch sends for
whatever the routing sends. Refusals carry Mailgun's ``message`` beside Dispatch's ``error``
and ``detail``.

Requests run in Hypercorn's per-request tasks; a cancelled request leaves the messages
already spooled (the door's rule: a duplicate, never a loss).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Final

import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from dispatch.api.body import BodyRefusal
from dispatch.api.compose import Composed
from dispatch.api.gate import admitted
from dispatch.api.mailgun_form import prepare_mailgun
from dispatch.intake.door import SpoolFullError, SpoolWriteError
from dispatch.monitoring.traces import Trace
from dispatch.security.api_keys import VerifiedKey

if TYPE_CHECKING:
    from dispatch.api.app import ApiSources

log = logging.getLogger("dispatch.api")

QUEUED: Final = "Queued. Thank you."


def mailgun_error(status: int, error: str, detail: object = None, **headers: str) -> Response:
    """An error in Mailgun's shape (``message``) that still says what Dispatch's do."""
    message = error
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        message += ": " + "; ".join(f"{p.get('field')}: {p.get('problem')}" for p in detail[:5])
    elif isinstance(detail, str):
        message += f": {detail}"
    response = jsonify(message=message, error=error, detail=detail)
    response.status_code = status
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


class MailgunRoutes:
    """The two handlers; :meth:`register` adds them to the API app."""

    def __init__(
        self, sources: ApiSources, large_bodies: trio.CapacityLimiter, message_id_domain: str
    ) -> None:
        self.sources = sources
        self.large_bodies = large_bodies
        self.message_id_domain = message_id_domain

    def register(self, app: QuartTrio) -> None:
        app.post("/v3/<domain>/messages")(self.messages)
        app.post("/v3/<domain>/messages.mime")(self.messages_mime)

    async def messages(self, domain: str) -> Response:
        """``POST /v3/{domain}/messages``: Mailgun's fields, composed here."""
        return await self.send(domain, mime=False)

    async def messages_mime(self, domain: str) -> Response:
        """``POST /v3/{domain}/messages.mime``: a whole MIME message and its recipients."""
        return await self.send(domain, mime=True)

    async def send(self, domain: str, *, mime: bool) -> Response:
        """Compose (or take) the messages of the admitted body, spool them, answer ``200``."""
        found = admitted(request.scope)
        key, trace = found.key, found.trace
        if key is None or found.body is None or trace is None:
            raise RuntimeError(f"POST {request.path} passed the gate without key or body")
        work = partial(
            prepare_mailgun,
            found.body,
            request.headers.get("Content-Type", ""),
            mime=mime,
            message_id_domain=self.message_id_domain,
            now=time.time(),
        )
        outcome = await trio.to_thread.run_sync(work, limiter=self.large_bodies)
        if isinstance(outcome, BodyRefusal):
            trace.error(f"refused: {outcome.status} {outcome.error}")
            extra = {} if outcome.retry_after is None else {"Retry_After": str(outcome.retry_after)}
            return mailgun_error(outcome.status, outcome.error, outcome.detail, **extra)
        limit = self.sources.settings().max_message_bytes
        if (largest := max(m.size for m in outcome)) > limit:
            trace.error("refused: 413 composed message too large")
            return mailgun_error(
                413,
                "message too large",
                f"the composed message has {largest} bytes; api.max_message_bytes is {limit}",
            )
        ids = []
        for composed in outcome:
            queued = await self._queue(key, composed, trace, found.peer)
            if isinstance(queued, Response):
                return queued
            ids.append(queued)
        log.info(
            "queued %s from key %s (Mailgun API, domain %s)", ", ".join(ids), key.prefix, domain
        )
        return jsonify(id=ids[0], message=QUEUED)

    async def _queue(
        self, key: VerifiedKey, composed: Composed, trace: Trace, peer: str
    ) -> str | Response:
        """Spool one message through the intake door: its id once durable."""
        try:
            envelope = await self.sources.door.commit(
                composed.message,
                mail_from=composed.mail_from,
                recipients=composed.recipients,
                peer_ip=peer,
                auth_identity=key.prefix,
                tags=composed.tags,
                subject=composed.subject,
            )
        except SpoolFullError:
            trace.error("spool full")
            return mailgun_error(507, "insufficient storage", "the spool is full", Retry_After="60")
        except SpoolWriteError as exc:
            log.error("spool write failed: %s", exc)
            trace.error("spool write failed")
            return mailgun_error(503, "temporarily unable to queue", "try again", Retry_After="30")
        self.sources.tracer.message_queued(
            envelope.id,
            mail_from=envelope.mail_from,
            recipients=envelope.recipients,
            size=envelope.size,
            parent=trace,
        )
        trace.event(f"key {key.prefix}: queued as {envelope.id}")
        return envelope.id
