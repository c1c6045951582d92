"""The Postmark-compatible sending API: apps keep Postmark's SDKs, pointed at Dispatch.

``POST /email`` and ``POST /email/batch`` behind the same gate as ``/api/v1/messages``
(:mod:`dispatch.api.gate`: allow-list, the key — here in ``X-Postmark-Server-Token``, as
Postmark's SDKs send it —, rate limit, body limit, the JSON body streamed to the spool's
``tmp/``). The fields are read and composed by :mod:`dispatch.api.postmark_fields` in a
worker thread and each message is handed to the intake door; the answer comes only after
every message of the request is spooled (fsync). It has Postmark's shape: ``{"To",
"SubmittedAt", "MessageID", "ErrorCode": 0, "Message": "OK"}`` (a list of those for a
batch), where ``MessageID`` is Dispatch's message id, so ``GET /api/v1/messages/{id}``
finds it. A refused message is ``422 {"ErrorCode": 300, "Message": …}`` (in a batch: that
item of a ``200`` list, the others sent). The template paths (``/email/withTemplate``,
``/email/batchWithTemplates``) are answered ``422`` with ErrorCode 1101 and what to send
instead: Dispatch stores no templates.

Requests run in Hypercorn's per-request tasks; a cancelled request leaves the messages
already spooled (the door's rule: a duplicate, never a loss).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from dispatch.api.compose import Composed
from dispatch.api.gate import admitted
from dispatch.api.postmark_fields import PostmarkError, read_postmark
from dispatch.intake.door import SpoolFullError, SpoolWriteError
from dispatch.monitoring.traces import Trace
from dispatch.security.api_keys import VerifiedKey

if TYPE_CHECKING:
    from dispatch.api.app import ApiSources

log = logging.getLogger("dispatch.api")

# Not Postmark's codes (it has none for a full spool): Dispatch's own, above Postmark's range.
SPOOL_FULL_CODE = 9507
SPOOL_ERROR_CODE = 9503
TEMPLATE_NOT_FOUND = 1101  # Postmark's "template not found": its SDKs show the message


def postmark_error(status: int, code: int, message: str, **headers: str) -> Response:
    """An error in Postmark's shape."""
    response = jsonify(ErrorCode=code, Message=message)
    response.status_code = status
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


class PostmarkRoutes:
    """The two handlers; :meth:`register` adds them to the API app."""

    def __init__(
        self, sources: ApiSources, large_bodies: trio.CapacityLimiter, message_id_domain: str
    ) -> None:
        self.sources = sources
        self.large_bodies = large_bodies
        self.message_id_domain = message_id_domain

    def register(self, app: QuartTrio) -> None:
        app.post("/email")(self.email)
        app.post("/email/batch")(self.batch)
        for path in ("/email/withTemplate", "/email/batchWithTemplates"):
            app.post(path, strict_slashes=False)(self.template)  # postmarker adds a "/"

    async def email(self) -> Response:
        """``POST /email``: one message."""
        return await self.send(batch=False)

    async def batch(self) -> Response:
        """``POST /email/batch``: a list of messages, answered with a list."""
        return await self.send(batch=True)

    async def template(self) -> Response:
        """``POST /email/withTemplate`` and ``/email/batchWithTemplates``: refused by name.

        Postmark renders its stored templates itself; Dispatch stores none, so an SDK's
        template call gets an answer it shows (ErrorCode 1101, template not found) that says
        what to send instead, rather than a bare 404."""
        return postmark_error(
            422,
            TEMPLATE_NOT_FOUND,
            f"{request.path}: Dispatch does not store or render Postmark templates; render the "
            "message in your application and send it with POST /email (HtmlBody, TextBody)",
        )

    async def send(self, *, batch: bool) -> Response:
        """Compose the messages of the admitted body, spool each, answer in Postmark's shape."""
        found = admitted(request.scope)
        key, trace = found.key, found.trace
        if key is None or found.body is None or trace is None:
            raise RuntimeError(f"POST {request.path} passed the gate without key or body")
        work = partial(
            read_postmark,
            found.body.path,
            batch=batch,
            message_id_domain=self.message_id_domain,
            now=time.time(),
        )
        try:
            outcome = await trio.to_thread.run_sync(work, limiter=self.large_bodies)
        except OSError as exc:
            log.error("Postmark API: cannot read the request body: %s", exc)
            return postmark_error(503, SPOOL_ERROR_CODE, "Temporarily unable to queue; try again")
        if isinstance(outcome, PostmarkError):
            trace.error(f"refused: {outcome.code} {outcome.message}")
            return postmark_error(422, outcome.code, outcome.message)
        answers: list[dict[str, Any]] = []
        for item in outcome:
            answer = await self._answer(key, item, trace, found.peer)
            if isinstance(answer, Response):
                return answer  # the spool failed: the client retries the whole request
            answers.append(answer)
        if batch:
            return jsonify(answers)
        [answer] = answers
        if answer["ErrorCode"]:
            return postmark_error(422, answer["ErrorCode"], answer["Message"])
        return jsonify(answer)

    async def _answer(
        self, key: VerifiedKey, item: Composed | PostmarkError, trace: Trace, peer: str
    ) -> dict[str, Any] | Response:
        if isinstance(item, PostmarkError):
            trace.error(f"refused: ErrorCode {item.code} {item.message}")
            return {"ErrorCode": item.code, "Message": item.message}
        limit = self.sources.settings().max_message_bytes
        if item.size > limit:
            trace.error("refused: composed message too large")
            text = f"The composed message has {item.size} bytes; api.max_message_bytes is {limit}"
            return {"ErrorCode": 300, "Message": f"Invalid email request: {text}"}
        queued = await self._queue(key, item, trace, peer)
        if isinstance(queued, Response):
            return queued
        log.info("queued %s from key %s (Postmark API)", queued, key.prefix)
        return {
            "To": ", ".join(item.recipients),
            "SubmittedAt": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "MessageID": queued,
            "ErrorCode": 0,
            "Message": "OK",
        }

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
            return postmark_error(
                507, SPOOL_FULL_CODE, "The spool is full; try again later", Retry_After="60"
            )
        except SpoolWriteError as exc:
            log.error("spool write failed: %s", exc)
            trace.error("spool write failed")
            return postmark_error(
                503, SPOOL_ERROR_CODE, "Temporarily unable to queue; try again", Retry_After="30"
            )
        self.sources.tracer.message_queued(
            envelope.id,
            mail_from=envelope.mail_from,
            recipients=envelope.recipients,
            size=envelope.size,
            parent=trace,
        )
        trace.event(f"key {key.prefix}: queued as {envelope.id}")
        return envelope.id
