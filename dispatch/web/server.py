"""Serving an ASGI app with Hypercorn's Trio worker inside a supervisor component.

Two things found the hard way (STACK.md):

- Hypercorn must be stopped through its ``shutdown_trigger``, never by cancelling the
  nursery it runs in.
- Quart-Trio cancels its request task on ``http.disconnect`` while Hypercorn's ``send()`` is
  still doing connection bookkeeping inside it, so idle keep-alive (and ``Connection: close``)
  connections were never closed and every shutdown waited out the whole grace period.
  :class:`ShieldedSend` runs every ``send`` inside a shielded cancel scope; ``read_timeout``
  bounds a client that stops talking. ``tests/web/test_server.py`` keeps the regression.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from dispatch.supervisor import Shutdown

log = logging.getLogger("dispatch.web")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

GRACEFUL_SECONDS: Final = 5.0
READ_TIMEOUT_SECONDS: Final = 30  # a client silent this long in mid-request is dropped
KEEP_ALIVE_SECONDS: Final = 5.0


class ShieldedSend:
    """ASGI middleware: Hypercorn's ``send`` always completes, even in a cancelled task."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def shielded(message: Message) -> None:
            with trio.CancelScope(shield=True):
                await send(message)

        await self.app(scope, receive, shielded)


def bind_spec(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def hypercorn_config(
    binds: list[str], *, certfile: Path | None = None, keyfile: Path | None = None
) -> Config:
    """A config for ``host:port`` binds; TLS when a certificate is given (TLS 1.2+ only)."""
    config = Config()
    config.bind = binds
    if certfile is not None and keyfile is not None:
        config.certfile = str(certfile)
        config.keyfile = str(keyfile)
    config.graceful_timeout = GRACEFUL_SECONDS
    config.read_timeout = READ_TIMEOUT_SECONDS
    config.keep_alive_timeout = KEEP_ALIVE_SECONDS
    config.accesslog = None
    config.errorlog = logging.getLogger("dispatch.web.hypercorn")
    return config


async def serve_app(
    app: ASGIApp,
    config: Config,
    shutdown: Shutdown,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown.requested``; ready (with the bound URLs) once listening.

    Owns the listening sockets through Hypercorn. A port that cannot be bound fails the
    start (``OSError``), which the supervisor reports with its reason.
    """
    await serve(
        ShieldedSend(app),  # type: ignore[arg-type]
        config,
        shutdown_trigger=shutdown.requested.wait,
        task_status=task_status,
    )
