"""The HTTP ingestion API (SPEC §4): Mailgun-style sending, status lookups, the OpenAPI doc.

Theory of operation: every request passes the allow-list (``api.allowed_cidrs``, live:
``403``, logged with the IP, counted as denied), then ``api.enabled`` (``503`` when off),
then the bearer key (``401``; ``429`` when the source is throttled for bad keys; ``503`` when
the key store is unavailable and the key was never seen), then the per-key rate limit
(``429`` with ``Retry-After``). ``POST /api/v1/messages`` reads the body with
``api.max_message_bytes`` as the limit (``413`` as soon as it is exceeded, without buffering
an unbounded body), builds the MIME message (:mod:`dispatch.api.compose`), and writes it
through the same spool path as SMTP: ``202`` only after the fsync. Errors are JSON
``{"error": …, "detail": …}``. ``/health`` and ``/metrics`` are not served here (``404``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from functools import partial
from importlib import resources
from typing import Any, Final

import attrs
import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from dispatch.api.compose import ComposeRequest, UploadedFile, ValidationError, compose
from dispatch.api.ratelimit import KeyRateLimiter
from dispatch.api.status import message_status
from dispatch.config.settings import ApiSettings
from dispatch.intake import events
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.traces import Tracer
from dispatch.security.allowlist import is_allowed
from dispatch.security.api_keys import ApiKeyVerifier, Rejection, VerifiedKey
from dispatch.spool import Spool, SpoolFullError, SpoolWriteError
from dispatch.storage import DatabaseUnavailableError, LogQueries, MessageEvent

log = logging.getLogger("dispatch.api")

QUEUED: Final = "Queued. Thank you."
THREAD_COMPOSE_BYTES: Final = 256 * 1024
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


def create_api_app(sources: ApiSources) -> QuartTrio:
    app = QuartTrio("dispatch-api")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # BodyLimit (in front of this app) enforces api.max_message_bytes on the raw body; the
    # framework's own limits (16 MB body, 500 KB per form field) would contradict it.
    app.config.update(MAX_CONTENT_LENGTH=None, MAX_FORM_MEMORY_SIZE=None)
    limiter = KeyRateLimiter()

    @app.before_request
    async def gate() -> Response | None:
        settings = sources.settings()
        peer = request.remote_addr or ""
        if not is_allowed(peer, settings.allowed_cidrs):
            log.warning(
                "denied %s %s from %s: not in api.allowed_cidrs", request.method, request.path, peer
            )
            sources.stats.api_denied.add("allowlist")
            sources.record(events.denied("api", peer, "api.allowed_cidrs"))
            return error(403, "forbidden", f"{peer} is not in api.allowed_cidrs")
        if not settings.enabled:
            return error(503, "the API is disabled", "api.enabled is false on this server")
        return None

    async def authenticate() -> VerifiedKey | Response:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return error(
                401,
                "unauthorized",
                "send the key as 'Authorization: Bearer dsp_live_…'",
                WWW_Authenticate='Bearer realm="dispatch"',
            )
        outcome = await sources.verifier.verify(presented.strip(), request.remote_addr or "")
        if isinstance(outcome, Rejection):
            sources.stats.api_auth.add(outcome.kind)
            if outcome.kind == "throttled":
                return error(
                    429,
                    "too many failed authentications",
                    outcome.detail,
                    Retry_After=str(outcome.retry_after),
                )
            if outcome.kind == "unavailable":
                return error(503, "key store unavailable", outcome.detail, Retry_After="30")
            return error(
                401, "unauthorized", outcome.detail, WWW_Authenticate='Bearer realm="dispatch"'
            )
        wait = limiter.check(outcome.prefix, sources.settings().rate_limit_per_key)
        if wait:
            sources.stats.api_auth.add("rate_limited")
            return error(
                429,
                "rate limit exceeded",
                f"at most {sources.settings().rate_limit_per_key} requests per minute "
                "per key (api.rate_limit_per_key)",
                Retry_After=str(int(wait)),
            )
        sources.stats.api_auth.add("ok")
        return outcome

    async def read_request() -> ComposeRequest | Response:
        content_type = request.mimetype
        if content_type == "application/json":
            body = await request.get_data(cache=False)
            try:
                document = json.loads(body)
            except RecursionError:
                # Nesting deeper than the interpreter's stack, e.g. 100 KB of "[" (found by
                # tests/fuzz/fuzz_api_compose.py): a client error, not a 500 with a traceback.
                return error(400, "invalid JSON", "nested too deeply")
            except ValueError as exc:
                return error(400, "invalid JSON", str(exc))
            return ComposeRequest.from_json(document)
        if content_type == "multipart/form-data":
            form = await request.form
            files = await request.files
            fields = [(name, value) for name in form for value in form.getlist(name)]
            uploads = [
                UploadedFile(name, upload.filename or "", upload.mimetype or "", upload.read())
                for name in files
                for upload in files.getlist(name)
            ]
            return ComposeRequest.from_form(fields, uploads)
        return error(415, "unsupported media type", "send application/json or multipart/form-data")

    @app.post("/api/v1/messages")
    async def send() -> Response:
        with sources.tracer.trace("api.request", "POST /api/v1/messages") as trace:
            key = await authenticate()
            if isinstance(key, Response):
                trace.error(f"refused: {key.status_code}")
                return key
            try:
                parsed = await read_request()
                if isinstance(parsed, Response):
                    trace.error(f"refused: {parsed.status_code}")
                    return parsed
                build = partial(
                    compose, parsed, message_id_domain=MESSAGE_ID_DOMAIN, now=time.time()
                )
                # Quoted-printable is pure Python: big bodies are composed off the event loop.
                if int(request.headers.get("Content-Length") or 0) > THREAD_COMPOSE_BYTES:
                    composed = await trio.to_thread.run_sync(build)
                else:
                    composed = build()
            except ValidationError as exc:
                trace.error("validation failed")
                return error(400, "validation failed", exc.detail)
            limit = sources.settings().max_message_bytes
            if len(composed.message) > limit:
                return error(
                    413,
                    "message too large",
                    f"the composed message has {len(composed.message)} bytes; "
                    f"api.max_message_bytes is {limit}",
                )
            response = await _spool(sources, key, composed, trace)
            return response

    @app.get("/api/v1/messages/<message_id>")
    async def status(message_id: str) -> Response:
        key = await authenticate()
        if isinstance(key, Response):
            return key
        try:
            document = await message_status(sources.spool, sources.queries, message_id, key.prefix)
        except DatabaseUnavailableError:
            return error(503, "message log unavailable", "try again shortly", Retry_After="30")
        if document is None:
            return error(404, "not found", f"no message {message_id} sent with this key")
        return jsonify(document)

    @app.get("/api/v1/messages")
    async def listing() -> Response:
        key = await authenticate()
        if isinstance(key, Response):
            return key
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


async def _spool(sources: ApiSources, key: VerifiedKey, composed: Any, trace: Any) -> Response:
    try:
        async with sources.spool.begin() as message:
            await message.write(composed.message)
            envelope = await message.commit(
                mail_from=composed.mail_from,
                recipients=composed.recipients,
                source="api",
                peer_ip=request.remote_addr,
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
    sources.record(events.received(envelope, subject=composed.subject))
    trace.event(f"queued {envelope.id}")
    log.info(
        "queued %s from key %s: %d recipient(s)", envelope.id, key.prefix, len(envelope.recipients)
    )
    response = jsonify(id=envelope.id, message=QUEUED)
    response.status_code = 202
    return response
