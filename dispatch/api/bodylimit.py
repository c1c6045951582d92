"""``api.max_message_bytes`` enforced on the wire, before the framework sees the body.

Quart-Trio collects a request body completely before comparing it with its limit (a chunked
upload without ``Content-Length`` could grow without bound), so this ASGI middleware stands in
front: a declared ``Content-Length`` above the limit is answered ``413`` at once, unread; an
undeclared body is read up to the limit and answered ``413`` the moment it goes over. A body
within the limit is handed to the app unchanged. Memory per request is therefore bounded by
the limit, never by what the client sends.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from dispatch.web.server import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Owns nothing but the wrapped app; ``limit()`` is read per request (a live key)."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _too_large(send, limit)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = bool(message.get("more_body"))
            if len(body) > limit:
                await _too_large(send, limit)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as ASGI says

        await self.app(scope, replay, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Send, limit: int) -> None:
    payload: dict[str, Any] = {
        "error": "request too large",
        "detail": f"api.max_message_bytes is {limit} bytes",
    }
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"connection", b"close"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
