"""The API's gate: every decision that needs no body, taken before one body byte is read.

Theory of operation
-------------------
:class:`ApiGate` is the ASGI application Hypercorn serves on the API ports; the Quart app
(:mod:`dispatch.api.app`) sits behind it. Hypercorn hands a request body to the app through
a small bounded queue, so a body nobody receives stays in the client's socket: the gate
decides from the request line and the headers alone, in this order, and the first refusal
wins:

1. ``api.allowed_cidrs`` (``403``; logged with the IP, counted, written to the message log
   by the intake door, :meth:`dispatch.intake.door.IntakeDoor.denied`);
2. ``api.enabled`` (``503``);
3. ``api.max_concurrent_requests`` and ``api.max_concurrent_requests_per_ip``: requests in
   progress, across the API and from this address (``503`` with ``Retry-After``, counted in
   ``dispatch_api_busy_requests_total``); the request holds its two slots until it ends;
4. under ``/api/v1/messages`` and on the provider-compatible sending paths
   (:data:`MAILGUN_SEND`, :data:`POSTMARK_SEND`): the key — bearer, Basic ``api:KEY`` or
   ``X-Postmark-Server-Token`` — (``401``; ``429`` for a source throttled for
   bad keys; ``503`` when the key store cannot answer), then ``api.rate_limit_per_key``
   (``429`` with ``Retry-After``; a key's first refusal in a row is audited, see
   :meth:`~dispatch.api.ratelimit.KeyRateLimiter.newly_limited`);
5. for a sending ``POST`` (JSON or multipart; Mailgun's urlencoded forms too; Postmark's JSON
   only): the media type (``415``) and a declared
   ``Content-Length`` above ``api.max_message_bytes`` (``413``).

A refusal is answered at once with ``Connection: close``; the unread body is never read
into memory (see :func:`_refuse` for how the connection is released). An admitted
``POST /api/v1/messages`` body is then streamed into a file in the intake door's scratch
directory, the spool's ``tmp/`` (:func:`dispatch.api.body.receive_to_file`; ``413`` the
moment it passes
``api.max_message_bytes``); any other request's body may hold :data:`SMALL_BODY_BYTES`. The
app receives an empty body and finds what the gate established in the scope
(:func:`admitted`). The body file is removed when the request ends, whatever happened.

The gate owns the in-flight counts and the per-key rate limiter; it runs in Hypercorn's
per-request tasks and keeps no task of its own.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import trio

from dispatch.api.body import (
    BodyTooLarge,
    ClientGone,
    ReceivedBody,
    disk_refusal,
    media_type,
    receive_to_file,
)
from dispatch.api.ratelimit import KeyRateLimiter
from dispatch.config.settings import ApiSettings
from dispatch.intake.door import IntakeDoor
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.traces import Trace, Tracer
from dispatch.security.allowlist import is_allowed
from dispatch.security.api_keys import ApiKeyVerifier, Rejection, VerifiedKey
from dispatch.storage import AuditEntry
from dispatch.storage import audit as entries
from dispatch.web.server import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("dispatch.api")

MESSAGES_PATH: Final = "/api/v1/messages"
SMALL_BODY_BYTES: Final = 64 * 1024
"""Body a request other than ``POST /api/v1/messages`` may carry (they need none)."""
BUSY_RETRY_AFTER: Final = 1
DRAIN_SECONDS: Final = 5.0
"""How long a refusal keeps taking Hypercorn's queued body chunks while the connection closes."""
ADMITTED_SCOPE_KEY: Final = "dispatch.admitted"
BODY_TYPES: Final = ("application/json", "multipart/form-data")
MAILGUN_SEND: Final = re.compile(r"/v3/[^/]+/messages(\.mime)?")
"""The Mailgun-compatible sending paths (:mod:`dispatch.api.mailgun`): keyed like
``/api/v1/messages``, Basic ``api:KEY`` as Mailgun's SDKs send it, urlencoded forms too."""
FORM_TYPES: Final = ("multipart/form-data", "application/x-www-form-urlencoded")
POSTMARK_SEND: Final = frozenset({"/email", "/email/batch"})
"""The Postmark-compatible sending paths (:mod:`dispatch.api.postmark`): keyed like
``/api/v1/messages``, the key in ``X-Postmark-Server-Token`` as Postmark's SDKs send it."""
JSON_TYPES: Final = ("application/json",)


@attrs.frozen
class Admitted:
    """What the gate established about a request it let through to the app."""

    peer: str
    key: VerifiedKey | None = None
    body: ReceivedBody | None = None
    trace: Trace | None = None


def admitted(scope: Mapping[str, object]) -> Admitted:
    """The gate's findings for this request (the app is only ever reached through it)."""
    found = scope.get(ADMITTED_SCOPE_KEY)
    if not isinstance(found, Admitted):
        raise RuntimeError("the API app was called without its gate (dispatch.api.gate)")
    return found


@attrs.frozen
class GateSources:
    """What the gate reads; a subset of :class:`dispatch.api.app.ApiSources`."""

    settings: Callable[[], ApiSettings]
    door: IntakeDoor
    verifier: ApiKeyVerifier
    audit: Callable[[AuditEntry], None]
    stats: Stats
    tracer: Tracer


class _Refused(Exception):
    postmark = False  # answered in Postmark's shape too (ErrorCode, Message): its SDKs read it
    mailgun = False  # answered with Mailgun's `message` too: its SDKs show that text

    def __init__(self, status: int, error: str, detail: object, **headers: str) -> None:
        super().__init__(status, error)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


class ApiGate:
    """ASGI middleware in front of the API app; see the module docstring."""

    def __init__(self, app: ASGIApp, sources: GateSources) -> None:
        self.app = app
        self.sources = sources
        self.limiter = KeyRateLimiter()
        self.in_flight = 0
        self.in_flight_by_ip: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan
            return
        peer = str((scope.get("client") or ("",))[0])
        settings = self.sources.settings()
        try:
            self._check_address(scope, peer, settings)
            self._check_capacity(peer, settings)
        except _Refused as refused:
            await _refuse(send, receive, refused)
            return
        self.in_flight += 1
        self.in_flight_by_ip[peer] = self.in_flight_by_ip.get(peer, 0) + 1
        try:
            await self._admitted(scope, receive, send, peer, settings)
        finally:
            self.in_flight -= 1
            left = self.in_flight_by_ip[peer] - 1
            if left:
                self.in_flight_by_ip[peer] = left
            else:
                del self.in_flight_by_ip[peer]

    def _check_address(self, scope: Scope, peer: str, settings: ApiSettings) -> None:
        if not is_allowed(peer, settings.allowed_cidrs):
            log.warning(
                "denied %s %s from %s: not in api.allowed_cidrs",
                scope["method"],
                scope["path"],
                peer,
            )
            self.sources.stats.api_denied.add("allowlist")
            self.sources.door.denied(peer, "api.allowed_cidrs")
            raise _Refused(403, "forbidden", f"{peer} is not in api.allowed_cidrs")
        if not settings.enabled:
            raise _Refused(503, "the API is disabled", "api.enabled is false on this server")

    def _check_capacity(self, peer: str, settings: ApiSettings) -> None:
        if self.in_flight >= settings.max_concurrent_requests:
            self.sources.stats.api_busy.add("max_concurrent_requests")
            raise _Refused(
                503,
                "too many requests in progress",
                f"this server handles at most {settings.max_concurrent_requests} API requests "
                "at once (api.max_concurrent_requests); try again shortly",
                Retry_After=str(BUSY_RETRY_AFTER),
            )
        if self.in_flight_by_ip.get(peer, 0) >= settings.max_concurrent_requests_per_ip:
            self.sources.stats.api_busy.add("max_concurrent_requests_per_ip")
            raise _Refused(
                503,
                "too many requests in progress from this address",
                f"at most {settings.max_concurrent_requests_per_ip} API requests at once from "
                "one address (api.max_concurrent_requests_per_ip); try again when one ends",
                Retry_After=str(BUSY_RETRY_AFTER),
            )

    async def _admitted(
        self, scope: Scope, receive: Receive, send: Send, peer: str, settings: ApiSettings
    ) -> None:
        path: str = scope["path"]
        mailgun = MAILGUN_SEND.fullmatch(path) is not None
        postmark = path in POSTMARK_SEND
        sending = scope["method"] == "POST" and (path == MESSAGES_PATH or mailgun or postmark)
        trace = (
            self.sources.tracer.trace("api.request", f"POST {path} from {peer}")
            if sending
            else None
        )
        body: ReceivedBody | None = None
        try:
            try:
                key = None
                if path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/") or mailgun:
                    key = await self._authenticate(scope, peer, settings)
                elif postmark:
                    key = await self._authenticate(scope, peer, settings, postmark=True)
                if sending:
                    types = FORM_TYPES if mailgun else JSON_TYPES if postmark else BODY_TYPES
                    body = await self._receive_message_body(scope, receive, settings, types)
                    replay = b""
                else:
                    replay = await _small_body(receive)
            except _Refused as refused:
                if trace is not None:
                    trace.error(f"refused: {refused.status}")
                refused.postmark = postmark
                refused.mailgun = mailgun
                await _refuse(send, receive, refused)
                return
            except ClientGone:
                if trace is not None:
                    trace.event("the client disconnected before its body was complete")
                return
            if trace is not None and body is not None:
                trace.event(f"body of {body.size} bytes received")
            scope = {**scope, ADMITTED_SCOPE_KEY: Admitted(peer, key, body, trace)}
            await self.app(scope, _replaying(replay, receive), send)
        finally:
            if body is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(body.discard)
            if trace is not None:
                trace.finish()

    async def _authenticate(
        self, scope: Scope, peer: str, settings: ApiSettings, *, postmark: bool = False
    ) -> VerifiedKey:
        stats = self.sources.stats
        scheme, _, presented = _header(scope, b"authorization").partition(" ")
        if postmark:  # Postmark's SDKs send the server token in their own header
            scheme, presented = "bearer", _header(scope, b"x-postmark-server-token")
        if scheme.lower() == "basic":
            presented = _basic_api_key(presented)
        elif scheme.lower() != "bearer":
            presented = ""
        if not presented.strip():
            raise _Refused(
                401,
                "unauthorized",
                "send the key in 'X-Postmark-Server-Token: dsp_live_…', as Postmark's SDKs do"
                if postmark
                else "send the key as 'Authorization: Bearer dsp_live_…' "
                "(or Basic auth with user 'api' and the key as password, as Mailgun's SDKs do)",
                WWW_Authenticate='Bearer realm="dispatch"',
            )
        outcome = await self.sources.verifier.verify(presented.strip(), peer)
        if isinstance(outcome, Rejection):
            stats.api_auth.add(outcome.kind)
            if outcome.kind == "throttled":
                raise _Refused(
                    429,
                    "too many failed authentications",
                    outcome.detail,
                    Retry_After=str(outcome.retry_after),
                )
            if outcome.kind == "unavailable":
                raise _Refused(503, "key store unavailable", outcome.detail, Retry_After="30")
            raise _Refused(
                401, "unauthorized", outcome.detail, WWW_Authenticate='Bearer realm="dispatch"'
            )
        limit = settings.rate_limit_per_key
        wait = self.limiter.check(outcome.prefix, limit)
        if wait:
            stats.api_auth.add("rate_limited")
            if self.limiter.newly_limited(outcome.prefix, wait):
                log.warning("API key %s reached api.rate_limit_per_key (%d)", outcome.prefix, limit)
                self.sources.audit(entries.api_key_rate_limited(outcome.prefix, limit, wait, peer))
            raise _Refused(
                429,
                "rate limit exceeded",
                f"at most {limit} requests per minute per key (api.rate_limit_per_key)",
                Retry_After=str(int(wait)),
            )
        stats.api_auth.add("ok")
        return outcome

    async def _receive_message_body(
        self, scope: Scope, receive: Receive, settings: ApiSettings, types: tuple[str, ...]
    ) -> ReceivedBody:
        if media_type(_header(scope, b"content-type")) not in types:
            raise _Refused(415, "unsupported media type", f"send {' or '.join(types)}")
        limit = settings.max_message_bytes
        too_large = _Refused(413, "request too large", f"api.max_message_bytes is {limit} bytes")
        declared = _header(scope, b"content-length")
        if declared.strip().isdigit() and int(declared) > limit:
            raise too_large
        directory = self.sources.door.scratch_directory
        try:
            return await receive_to_file(receive, directory, limit)
        except BodyTooLarge:
            raise too_large from None
        except OSError as exc:  # the spool's disk: full, or failing
            refusal = disk_refusal(exc, "store the body of an API request")
            full = refusal.status == 507
            self.sources.stats.spool_writes.add("full" if full else "error")
            raise _Refused(
                refusal.status,
                refusal.error,
                refusal.detail,
                Retry_After=str(refusal.retry_after),
            ) from None


def _basic_api_key(credentials: str) -> str:
    """The key of HTTP Basic credentials ``api:KEY`` (RFC 7617), or "" for any others."""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    user, _, key = decoded.partition(":")
    return key if user == "api" else ""


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


async def _small_body(receive: Receive) -> bytes:
    body = bytearray()
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body += message.get("body", b"")
        more = bool(message.get("more_body", False))
        if len(body) > SMALL_BODY_BYTES:
            raise _Refused(
                413,
                "request too large",
                f"only POST {MESSAGES_PATH} takes a body; at most {SMALL_BODY_BYTES} bytes here",
            )
    return bytes(body)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """The body already taken, as one message; then Hypercorn's own (the disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(send: Send, receive: Receive, refused: _Refused) -> None:
    """Answer ``refused`` with ``Connection: close`` without reading the body into memory.

    Hypercorn queues at most a few body chunks for the app; once that queue is full, its
    reader waits, and so does the "disconnect" it queues when the response ends, which
    would hold the connection and this task forever. So while the answer is sent, whatever
    was queued is taken and dropped (a few chunks: Hypercorn closes the connection right
    after the answer), for at most :data:`DRAIN_SECONDS`.
    """
    payload: dict[str, Any] = {"error": refused.error, "detail": refused.detail}
    if refused.mailgun:
        payload["message"] = f"{refused.error}: {refused.detail}"
    if refused.postmark:  # Postmark's code for a bad token is 10; otherwise the status
        payload["ErrorCode"] = 10 if refused.status == 401 else refused.status
        payload["Message"] = f"{refused.error}: {refused.detail}"
    content = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        (b"connection", b"close"),
    ]
    headers += [
        (name.replace("_", "-").lower().encode(), value.encode("latin-1"))
        for name, value in refused.headers.items()
    ]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drop_until_disconnect, receive)
        await send({"type": "http.response.start", "status": refused.status, "headers": headers})
        await send({"type": "http.response.body", "body": content, "more_body": False})


async def _drop_until_disconnect(receive: Receive) -> None:
    with trio.move_on_after(DRAIN_SECONDS):
        while (await receive())["type"] != "http.disconnect":
            pass
