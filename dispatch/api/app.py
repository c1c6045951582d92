"""The HTTP ingestion API (SPEC §4): Mailgun-style sending, status lookups, the OpenAPI doc.

Theory of operation: :func:`build_api` returns the ASGI application the API ports serve:
the gate (:mod:`dispatch.api.gate`) in front of the Quart app made here. The gate decides
everything that needs no body — allow-list, ``api.enabled``, the concurrency caps, the
bearer key, the rate limit, the media type — before one body byte is read, and streams an
admitted ``POST /api/v1/messages`` body into the spool's ``tmp/``. The handlers here find
its findings with :func:`~dispatch.api.gate.admitted`. Sending parses, validates and
composes the body in a worker thread (:mod:`dispatch.api.body`; ``400`` lists at most
:data:`~dispatch.api.compose.MAX_PROBLEMS` problems and counts the rest), re-checks the
composed size against ``api.max_message_bytes`` (``413``) and writes the message through
the same spool path as SMTP: ``202`` only after the fsync. Errors are JSON
``{"error": …, "detail": …}``. ``/health`` and ``/metrics`` are not served here (``404``).
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
from dispatch.api.gate import ApiGate, GateSources, admitted
from dispatch.api.status import message_status
from dispatch.config.settings import ApiSettings
from dispatch.intake import records
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.traces import Trace, Tracer
from dispatch.security.api_keys import ApiKeyVerifier, VerifiedKey
from dispatch.spool import Spool, SpoolFullError, SpoolWriteError
from dispatch.storage import DatabaseUnavailableError, LogQueries, MessageEvent

log = logging.getLogger("dispatch.api")

QUEUED: Final = "Queued. Thank you."
MESSAGE_ID_DOMAIN: Final = "dispatch.invalid"


@attrs.frozen
class ApiSources:
    """What the API reads and writes; owned by the daemon."""

    settings: Callable[[], ApiSettings]
    server_name: Callable[[], str]
    spool: Spool
    verifier: ApiKeyVerifier
    queries: LogQueries
    record: Callable[[MessageEvent], None]
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
        spool=sources.spool,
        verifier=sources.verifier,
        record=sources.record,
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
    large_bodies = trio.CapacityLimiter(LARGE_BODY_THREADS)

    def key_of_request() -> VerifiedKey:
        key = admitted(request.scope).key
        if key is None:
            raise RuntimeError(f"{request.path} was routed without a key check")
        return key

    @app.post("/api/v1/messages")
    async def send() -> Response:
        found = admitted(request.scope)
        key, body, trace = found.key, found.body, found.trace
        if key is None or body is None or trace is None:
            raise RuntimeError("POST /api/v1/messages passed the gate without key or body")
        outcome = await prepare_in_thread(
            body,
            request.headers.get("Content-Type", ""),
            message_id_domain=MESSAGE_ID_DOMAIN,
            large_bodies=large_bodies,
        )
        if isinstance(outcome, BodyRefusal):
            trace.error(f"refused: {outcome.status} {outcome.error}")
            if outcome.retry_after is None:
                return error(outcome.status, outcome.error, outcome.detail)
            if outcome.status == 507:
                sources.stats.spool_writes.add("full")
            return error(
                outcome.status,
                outcome.error,
                outcome.detail,
                Retry_After=str(outcome.retry_after),
            )
        limit = sources.settings().max_message_bytes
        if len(outcome.message) > limit:
            trace.error("refused: 413 composed message too large")
            return error(
                413,
                "message too large",
                f"the composed message has {len(outcome.message)} bytes; "
                f"api.max_message_bytes is {limit}",
            )
        return await _spool(sources, key, outcome, trace, found.peer)

    @app.get("/api/v1/messages/<message_id>")
    async def status(message_id: str) -> Response:
        key = key_of_request()
        try:
            document = await message_status(sources.spool, sources.queries, message_id, key.prefix)
        except DatabaseUnavailableError:
            return error(503, "message log unavailable", "try again shortly", Retry_After="30")
        if document is None:
            return error(404, "not found", f"no message {message_id} sent with this key")
        return jsonify(document)

    @app.get("/api/v1/messages")
    async def listing() -> Response:
        key = key_of_request()
        try:
            limit = int(request.args.get("limit", "50"))
        except ValueError:
            return error(
                400,
                "validation failed",
                [{"field": "limit", "problem": "must be a whole number from 1 to 500"}],
            )
        if not 1 <= limit <= 500:
            return error(
                400,
                "validation failed",
                [{"field": "limit", "problem": "must be a whole number from 1 to 500"}],
            )
        try:
            received = await sources.queries.received_for_key(key.prefix, limit)
            documents = [
                doc
                for event in received
                if event.message_id is not None
                and (
                    doc := await message_status(
                        sources.spool, sources.queries, event.message_id, key.prefix
                    )
                )
                is not None
            ]
        except DatabaseUnavailableError:
            return error(503, "message log unavailable", "try again shortly", Retry_After="30")
        return jsonify(items=documents)

    @app.get("/api/v1/openapi.json")
    async def openapi() -> Response:
        return jsonify(openapi_document())

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return error(exc.code or 500, (exc.name or "error").lower(), exc.description)

    @app.errorhandler(Exception)
    async def crash(exc: Exception) -> Response:
        log.error("request %s %s failed", request.method, request.path, exc_info=exc)
        return error(500, "internal error", "see the server log")

    return app


async def _spool(
    sources: ApiSources, key: VerifiedKey, composed: Composed, trace: Trace, peer: str
) -> Response:
    try:
        async with sources.spool.begin() as message:
            await message.write(composed.message)
            envelope = await message.commit(
                mail_from=composed.mail_from,
                recipients=composed.recipients,
                source="api",
                peer_ip=peer,
                auth_identity=key.prefix,
                tags=composed.tags,
            )
    except SpoolFullError:
        sources.stats.spool_writes.add("full")
        trace.error("spool full")
        return error(
            507, "insufficient storage", "the spool is full; try again later", Retry_After="60"
        )
    except SpoolWriteError as exc:
        sources.stats.spool_writes.add("error")
        log.error("spool write failed: %s", exc)
        trace.error("spool write failed")
        return error(503, "temporarily unable to queue", "try again later", Retry_After="30")
    sources.stats.spool_writes.add("ok")
    sources.stats.messages_received.add("api")
    sources.record(records.received(envelope, subject=composed.subject))
    trace.event(f"queued {envelope.id}")
    log.info(
        "queued %s from key %s: %d recipient(s)", envelope.id, key.prefix, len(envelope.recipients)
    )
    response = jsonify(id=envelope.id, message=QUEUED)
    response.status_code = 202
    return response
