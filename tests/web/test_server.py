"""Hypercorn + Quart-Trio regression (STACK.md): idle keep-alive connections must not hold
up shutdown for the whole grace period."""

from __future__ import annotations

import socket

import trio
from quart_trio import QuartTrio

from dispatch.supervisor import Shutdown
from dispatch.web.server import bind_spec, hypercorn_config, serve_app
from tests.conftest import free_port

GRACE = 30.0  # long on purpose: a shutdown that waits for it misses the deadline below


def tiny_app() -> QuartTrio:
    app = QuartTrio("tiny")

    @app.get("/")
    async def index() -> str:
        return "ok"

    return app


async def test_idle_keep_alive_connection_does_not_delay_shutdown() -> None:
    port = free_port()
    config = hypercorn_config([bind_spec("127.0.0.1", port)])
    config.graceful_timeout = GRACE
    shutdown = Shutdown(GRACE)

    def keep_alive_request() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        return sock  # left open and idle

    idle: socket.socket | None = None
    try:
        with trio.fail_after(GRACE / 3):  # semantic: the stop must not wait out the grace
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_app, tiny_app(), config, shutdown)
                idle = await trio.to_thread.run_sync(keep_alive_request)
                shutdown.request()
    finally:
        if idle is not None:
            idle.close()
