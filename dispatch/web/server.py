"""Serving an ASGI app over HTTP(S) inside a supervisor component, safe against its clients.

The listener is Hypercorn's Trio machinery with our own accept loop (:func:`serve_app`) and
our own per-connection object (:class:`dispatch.web.connection.Connection`), because two
things must hold whatever a client sends (docs/operations.md, "HTTP listeners under hostile
clients"):

- **A connection's fault stays in that connection.** Hypercorn's ``worker_serve`` runs every
  connection in the nursery of ``trio.serve_listeners``, so one exception escaping one
  connection ended the whole listener (and the supervisor restarted it, dropping every other
  connection). Here each connection runs under :func:`_contained`, which logs the fault in
  one line and closes only that connection.
- **Nothing a client does holds a connection for ever:** header bytes dripped get
  ``keep_alive_timeout`` (Hypercorn counts a connection as idle until its request line and
  headers are complete), a silent client ``read_timeout``, a client that stops reading
  ``read_timeout`` as well, and an API request ``api.request_timeout_seconds`` from its
  headers to its answer (:class:`dispatch.web.middleware.RequestDeadline`).

Also from STACK.md: the server stops through ``shutdown.requested`` (stop accepting, let
idle keep-alive connections close, give the rest ``graceful_timeout``), never by cancelling
the nursery it runs in; ``tests/web/test_server.py`` keeps those regressions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import repr_socket_addr, wrap_app

from dispatch.lifecycle import Shutdown
from dispatch.web.connection import Connection
from dispatch.web.middleware import (
    ASGIApp,
    Message,
    QuietDisconnect,
    Receive,
    RequestDeadline,
    Scope,
    Send,
    ShieldedSend,
)

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send", "bind_spec", "hypercorn_config"]

log = logging.getLogger("dispatch.web")

GRACEFUL_SECONDS: Final = 5.0
READ_TIMEOUT_SECONDS: Final = 30  # a client silent this long in mid-request is dropped
KEEP_ALIVE_SECONDS: Final = 5.0  # also bounds a request line and headers sent slowly
TLS_HANDSHAKE_SECONDS: Final = 10.0  # Hypercorn's default is 60
HEADER_BYTES: Final = 16 * 1024  # request line and headers (h11_max_incomplete_size)
APP_QUEUE_MESSAGES: Final = 4  # body chunks (up to 64 KiB each) queued for a slow app
SEND_BOUND_SECONDS: Final = 2 * READ_TIMEOUT_SECONDS  # see ShieldedSend


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
    config.ssl_handshake_timeout = TLS_HANDSHAKE_SECONDS
    config.h11_max_incomplete_size = HEADER_BYTES
    config.max_app_queue_size = APP_QUEUE_MESSAGES
    config.alpn_protocols = ["http/1.1"]  # no HTTP/2: dispatch.web.connection says why
    config.accesslog = None
    config.errorlog = logging.getLogger("dispatch.web.hypercorn")
    return config


async def serve_app(
    app: ASGIApp,
    config: Config,
    shutdown: Shutdown,
    *,
    request_timeout: Callable[[], float] | None = None,
    request_timeout_setting: str = "the request deadline",
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown.requested``; ready (with the bound URLs) once listening.

    Owns the listening sockets and every connection. A port that cannot be bound fails the
    start (``OSError``), which the supervisor reports with its reason. ``request_timeout``
    (read per request; ``request_timeout_setting`` names it to clients and in the log)
    bounds each HTTP request from its headers to its answer. On shutdown: accepting stops
    and the ports close, idle keep-alive connections close, the rest get
    ``config.graceful_timeout`` and are then cancelled.
    """
    inner = app
    if request_timeout is not None:
        inner = RequestDeadline(inner, request_timeout, request_timeout_setting)
    outer = ShieldedSend(QuietDisconnect(inner), SEND_BOUND_SECONDS)
    wrapped = wrap_app(outer, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        listeners, binds = _listeners(config)

        async def handle(stream: trio.abc.Stream) -> None:
            connection = Connection(
                wrapped,
                config,
                context,
                ConnectionState(lifespan_state.copy()),
                stream,  # type: ignore[arg-type]
            )
            await _contained(connection, stream, _peer(stream))

        async with trio.open_nursery() as connections:
            try:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(
                        partial(
                            trio.serve_listeners, handle, listeners, handler_nursery=connections
                        )
                    )
                    task_status.started(binds)
                    await shutdown.requested.wait()
                    accepting.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    for listener in listeners:
                        await listener.aclose()
            await context.terminated.set()  # idle keep-alive connections close now
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


Listener = trio.SocketListener | trio.SSLListener[trio.SocketStream]


def _listeners(config: Config) -> tuple[list[Listener], list[str]]:
    """Bind and listen on ``config.bind`` (TLS when a certificate is set) and
    ``config.insecure_bind`` (plain); the listeners and their URLs."""
    sockets = config.create_sockets()
    ssl_context = config.create_ssl_context()
    listeners: list[Listener] = []
    binds: list[str] = []
    for sock in sockets.secure_sockets:
        assert ssl_context is not None  # secure sockets exist only with a certificate
        sock.listen(config.backlog)
        plain = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        listeners.append(trio.SSLListener(plain, ssl_context, https_compatible=True))
        binds.append(f"https://{repr_socket_addr(sock.family, sock.getsockname())}")
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
    return listeners, binds


def _peer(stream: trio.abc.Stream) -> str:
    transport: Any = getattr(stream, "transport_stream", stream)
    try:
        return str(transport.socket.getpeername()[0])
    except (AttributeError, OSError):
        return "an unknown peer"


async def _contained(connection: Connection, stream: trio.abc.Stream, client: str) -> None:
    """Run one connection; whatever it raises ends that connection and nothing else."""
    try:
        await connection.run()
    except* Exception as group:
        # A fault inside Hypercorn or the app machinery, triggered by what one peer sent:
        # worth an operator's attention, but never worth the other connections.
        faults = "; ".join(f"{type(e).__name__}: {e}" for e in group.exceptions)
        log.error("HTTP connection from %s failed and was closed: %s", client, faults)
        log.debug("HTTP connection from %s: traceback", client, exc_info=group)
        await trio.aclose_forcefully(stream)
