"""The HTTP ingestion API (SPEC §4): Mailgun-style sending, status lookups, the OpenAPI doc.

Theory of operation: :func:`build_api` returns the ASGI application the API ports serve:
the gate (:mod:`dispatch.api.gate`) in front of the Quart app made here. The gate decides
everything that needs no body — allow-list, ``api.enabled``, the concurrency caps, the
bearer key, the rate limit, the media type — before one body byte is read, and streams an
admitted ``POST /api/v1/messages`` body into the intake door's scratch directory (the
spool's ``tmp/``). The handlers (:class:`_Routes`) find its findings with
:func:`~dispatch.api.gate.admitted`. Sending parses, validates and composes the body in a
worker thread (:mod:`dispatch.api.body`; ``400`` lists at most
:data:`~dispatch.api.problems.MAX_PROBLEMS` problems and counts the rest), re-checks the
composed size against ``api.max_message_bytes`` (``413``) and hands the message to the
intake door (:class:`~dispatch.intake.door.IntakeDoor`), which spools it as SMTP messages
are, counts it and logs its ``received`` event: ``202`` only after the fsync. Status lookups
read the spool through a read-only :class:`~dispatch.api.status.SpoolLookup` and the
message log. Errors are JSON ``{"error": …, "detail": …}``. ``/health`` and ``/metrics`` are
not served here (``404``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from importlib import resources
from typing import Any, Final

import attrs
import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from dispatch.api.body import LARGE_BODY_THREADS, BodyRefusal, prepare_in_thread
from dispatch.api.compose import Composed
from dispatch.api.gate import Admitted, ApiGate, GateSources, admitted
from dispatch.api.mailgun import MailgunRoutes
from dispatch.api.postmark import PostmarkRoutes
from dispatch.api.status import SpoolLookup, message_status
from dispatch.config.settings import ApiSettings
from dispatch.intake.door import IntakeDoor, SpoolFullError, SpoolWriteError
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.traces import Trace, Tracer
from dispatch.security.api_keys import ApiKeyVerifier, VerifiedKey
from dispatch.storage import AuditEntry, DatabaseUnavailableError, LogQueries

log = logging.getLogger("dispatch.api")

QUEUED: Final = "Queued. Thank you."
MESSAGE_ID_DOMAIN: Final = "dispatch.invalid"
MAX_LISTING: Final = 500
_BAD_LIMIT: Final = [
    {"field": "limit", "problem": f"must be a whole number from 1 to {MAX_LISTING}"}
]


@attrs.frozen
class ApiSources:
    """What the API reads and writes; built by the composition root (:mod:`dispatch.daemon`).

    ``door`` is the only way a message enters the spool from here; ``spool`` is read only,
    for status lookups.
    """

    settings: Callable[[], ApiSettings]
    door: IntakeDoor
    spool: SpoolLookup
    verifier: ApiKeyVerifier
    queries: LogQueries
    audit: Callable[[AuditEntry], None]
    stats: Stats
    tracer: Tracer


def error(status: int, message: str, detail: Any = None, **headers: str) -> Response:
    response = jsonify(error=message, detail=detail)
    response.status_code = status
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def openapi_document() -> dict[str, Any]:
    text = resources.files("dispatch.api").joinpath("openapi.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def build_api(sources: ApiSources) -> ApiGate:
    """The API as Hypercorn serves it: the gate in front of :func:`create_api_app`."""
    gate_sources = GateSources(
        settings=sources.settings,
        door=sources.door,
        verifier=sources.verifier,
        audit=sources.audit,
        stats=sources.stats,
        tracer=sources.tracer,
    )
    return ApiGate(create_api_app(sources), gate_sources)  # type: ignore[arg-type]


def create_api_app(sources: ApiSources) -> QuartTrio:
    """The routes; reachable only through :class:`~dispatch.api.gate.ApiGate`."""
    app = QuartTrio("dispatch-api")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # The gate takes every body before the app sees the request (the app receives an empty
    # one); the framework's own limits would only contradict api.max_message_bytes.
    app.config.update(MAX_CONTENT_LENGTH=None, MAX_FORM_MEMORY_SIZE=None)
    routes = _Routes(sources)
    app.post("/api/v1/messages")(routes.send)
    app.get("/api/v1/messages/<message_id>")(routes.status)
    app.get("/api/v1/messages")(routes.listing)
    app.get("/api/v1/openapi.json")(routes.openapi)
    MailgunRoutes(sources, routes.large_bodies, MESSAGE_ID_DOMAIN).register(app)
    PostmarkRoutes(sources, routes.large_bodies, MESSAGE_ID_DOMAIN).register(app)
    app.errorhandler(HTTPException)(_http_error)
    app.errorhandler(Exception)(_crash)
    return app


class _Routes:
    """The request handlers. ``large_bodies``: see :data:`~dispatch.api.body.LARGE_BODY_THREADS`."""

    def __init__(self, sources: ApiSources) -> None:
        self.sources = sources
        self.large_bodies = trio.CapacityLimiter(LARGE_BODY_THREADS)

    async def send(self) -> Response:
        """``POST /api/v1/messages``: compose the admitted body, then queue it (``202``)."""
        found = admitted(request.scope)
        key, trace = found.key, found.trace
        if key is None or found.body is None or trace is None:
            raise RuntimeError("POST /api/v1/messages passed the gate without key or body")
        outcome = await self._compose(found, trace)
        if isinstance(outcome, Response):
            return outcome
        return await self._queue(key, outcome, trace, found.peer)

    async def status(self, message_id: str) -> Response:
        """``GET /api/v1/messages/{id}``: one message sent with this key."""
        key = _key_of_request()
        try:
            document = await message_status(
                self.sources.spool, self.sources.queries, message_id, key.prefix
            )
        except DatabaseUnavailableError:
            return _log_unavailable()
        if document is None:
            return error(404, "not found", f"no message {message_id} sent with this key")
        return jsonify(document)

    async def listing(self) -> Response:
        """``GET /api/v1/messages?limit=N``: the latest messages sent with this key."""
        key = _key_of_request()
        try:
            limit = int(request.args.get("limit", "50"))
        except ValueError:
            return error(400, "validation failed", _BAD_LIMIT)
        if not 1 <= limit <= MAX_LISTING:
            return error(400, "validation failed", _BAD_LIMIT)
        spool, queries = self.sources.spool, self.sources.queries
        try:
            received = await queries.received_for_key(key.prefix, limit)
            documents = [
                doc
                for event in received
                if event.message_id is not None
                and (doc := await message_status(spool, queries, event.message_id, key.prefix))
                is not None
            ]
        except DatabaseUnavailableError:
            return _log_unavailable()
        return jsonify(items=documents)

    async def openapi(self) -> Response:
        """``GET /api/v1/openapi.json``."""
        return jsonify(openapi_document())

    async def _compose(self, found: Admitted, trace: Trace) -> Composed | Response:
        """The composed message, or the answer refusing it (``400``, ``413``, ``507``...)."""
        assert found.body is not None
        outcome = await prepare_in_thread(
            found.body,
            request.headers.get("Content-Type", ""),
            message_id_domain=MESSAGE_ID_DOMAIN,
            large_bodies=self.large_bodies,
        )
        if isinstance(outcome, BodyRefusal):
            trace.error(f"refused: {outcome.status} {outcome.error}")
            if outcome.retry_after is None:
                return error(outcome.status, outcome.error, outcome.detail)
            if outcome.status == 507:
                self.sources.stats.spool_writes.add("full")
            return error(
                outcome.status,
                outcome.error,
                outcome.detail,
                Retry_After=str(outcome.retry_after),
            )
        limit = self.sources.settings().max_message_bytes
        if len(outcome.message) > limit:
            trace.error("refused: 413 composed message too large")
            return error(
                413,
                "message too large",
                f"the composed message has {len(outcome.message)} bytes; "
                f"api.max_message_bytes is {limit}",
            )
        return outcome

    async def _queue(
        self, key: VerifiedKey, composed: Composed, trace: Trace, peer: str
    ) -> Response:
        """Hand ``composed`` to the intake door: ``202`` once it is durable."""
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
            return error(
                507, "insufficient storage", "the spool is full; try again later", Retry_After="60"
            )
        except SpoolWriteError as exc:
            log.error("spool write failed: %s", exc)
            trace.error("spool write failed")
            return error(503, "temporarily unable to queue", "try again later", Retry_After="30")
        trace.event(f"key {key.prefix}")
        self.sources.tracer.message_queued(
            envelope.id,
            mail_from=envelope.mail_from,
            recipients=envelope.recipients,
            size=envelope.size,
            parent=trace,
        )
        trace.event(f"202 queued as {envelope.id}")
        log.info(
            "queued %s from key %s: %d recipient(s)",
            envelope.id,
            key.prefix,
            len(envelope.recipients),
        )
        response = jsonify(id=envelope.id, message=QUEUED)
        response.status_code = 202
        return response


def _key_of_request() -> VerifiedKey:
    key = admitted(request.scope).key
    if key is None:
        raise RuntimeError(f"{request.path} was routed without a key check")
    return key


def _log_unavailable() -> Response:
    return error(503, "message log unavailable", "try again shortly", Retry_After="30")


async def _http_error(exc: HTTPException) -> Response:
    return error(exc.code or 500, (exc.name or "error").lower(), exc.description)


async def _crash(exc: Exception) -> Response:
    log.error("request %s %s failed", request.method, request.path, exc_info=exc)
    return error(500, "internal error", "see the server log")
