"""ASGI middleware every HTTP listener runs its app behind (:func:`dispatch.web.server.serve_app`).

- :class:`ShieldedSend`: Hypercorn's ``send`` always completes, even in a cancelled task
  (Quart-Trio cancels its request task on ``http.disconnect`` while Hypercorn's ``send`` is
  still doing connection bookkeeping inside it; STACK.md), but never takes for ever: each
  write underneath is bounded by the connection's write timeout
  (:mod:`dispatch.web.connection`), and the shield itself by a backstop.
- :class:`QuietDisconnect`: a client that goes away before its answer is written is an
  ordinary event, one debug line, not an ``ERROR`` with a traceback.
- :class:`RequestDeadline`: an HTTP request is answered within a deadline counted from its
  headers, or ends: ``408`` if its body had not all arrived (a client dripping it), ``503``
  if the app was still working; then the connection closes.

Each wraps one app and owns nothing else; none starts tasks of its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
from quart.wrappers.base import ClientDisconnectedError

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("dispatch.web")


def peer(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown peer"


class ShieldedSend:
    """Hypercorn's ``send`` always completes, even in a cancelled task; within ``bound`` s.

    The bound is a backstop: every wait under ``send`` has a deadline of its own (writes get
    the read timeout). Should one ever be missing, the send is abandoned after ``bound``
    seconds with a warning and :class:`ConnectionAbortedError` (which Quart turns into a
    client disconnect), rather than holding its connection and every shutdown for ever.
    """

    def __init__(self, app: ASGIApp, bound: float) -> None:
        self.app = app
        self.bound = bound

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def shielded(message: Message) -> None:
            with trio.CancelScope(shield=True) as guard:
                guard.deadline = trio.current_time() + self.bound
                await send(message)
            if guard.cancelled_caught:
                log.warning(
                    "answer to %s %s from %s: a send took over %g s; connection abandoned",
                    scope.get("method", scope["type"]),
                    scope.get("path", ""),
                    peer(scope),
                    self.bound,
                )
                raise ConnectionAbortedError(f"send took over {self.bound:g} s")

        await self.app(scope, receive, shielded)


class QuietDisconnect:
    """A client gone before its answer: logged at debug, in one line, and otherwise ignored."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except* ClientDisconnectedError:
            log.debug(
                "%s went away before the answer to %s %s was sent",
                peer(scope),
                scope.get("method", scope["type"]),
                scope.get("path", ""),
            )


@attrs.define
class _Progress:
    body_complete: bool = False
    response_started: bool = False


class RequestDeadline:
    """Each HTTP request ends within ``seconds()`` (read per request) of its headers.

    The app runs in a cancel scope with that deadline. When it passes before a response has
    started, the client gets ``408`` (its body was still arriving) or ``503`` (the app was
    still working on a complete request), with ``Connection: close``; after a response has
    started, the connection is cut (nothing valid can follow half a response). ``setting``
    names the configuration key in the answer and the log line.
    """

    def __init__(self, app: ASGIApp, seconds: Callable[[], float], setting: str) -> None:
        self.app = app
        self.seconds = seconds
        self.setting = setting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.seconds()
        progress = _Progress()

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                progress.body_complete = True
            return message

        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                progress.response_started = True
            await send(message)

        with trio.move_on_after(limit) as deadline:
            await self.app(scope, watched_receive, watched_send)
        if not deadline.cancelled_caught:
            return
        request = f"{scope.get('method', '')} {scope.get('path', '')} from {peer(scope)}"
        if progress.response_started:
            log.info(
                "%s: %s (%g s) passed mid-answer; connection cut", request, self.setting, limit
            )
            return
        status = 503 if progress.body_complete else 408
        log.info("%s: %s (%g s) passed; answered %d, closing", request, self.setting, limit, status)
        if progress.body_complete:
            error, detail = (
                "timed out",
                f"the request took longer than {self.setting} ({limit:g} s)",
            )
        else:
            error = "request timeout"
            detail = f"the request was not complete within {self.setting} ({limit:g} s)"
        await _answer(scope, send, status, {"error": error, "detail": detail})


async def _answer(scope: Scope, send: Send, status: int, payload: dict[str, str]) -> None:
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if scope.get("http_version") in ("1.0", "1.1"):
        headers.append((b"connection", b"close"))  # a connection-specific header: not in h2
    if status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
