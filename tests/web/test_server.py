"""Hypercorn + Quart-Trio regression (STACK.md): idle keep-alive connections must not hold
up shutdown for the whole grace period."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from functools import partial
from typing import Any

import h2.config
import h2.connection
import h2.settings
import pytest
import trio
from hypercorn.config import Config
from quart import request
from quart_trio import QuartTrio

from dispatch.lifecycle import Shutdown
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


# --- hostile clients (issue 11, item 10) -------------------------------------------------------


class ServerThread:
    """``serve_app`` in its own thread and Trio run, so a server that hangs fails the test
    (``stop`` returns False) instead of hanging it; the thread is a daemon and dies with us."""

    def __init__(self, app: Any, config: Config, **serve: Any) -> None:
        self.shutdown = Shutdown(config.graceful_timeout)
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self.errors: list[BaseException] = []

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(serve_app, **serve), app, config, self.shutdown)
                self._ready.set()

        def run() -> None:
            try:
                trio.run(main)
            except BaseException as error:  # reported by the test through .errors
                self.errors.append(error)
                self._ready.set()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the server did not start"
        assert not self.errors, self.errors

    def stop(self, within: float) -> bool:
        """Request shutdown; True if the server returned within ``within`` seconds."""
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self.shutdown.request, trio_token=self._token)
        self._thread.join(within)
        return not self._thread.is_alive()


def short_config(port: int, *, read_timeout: int = 30, keep_alive: float = 5.0) -> Config:
    config = hypercorn_config([bind_spec("127.0.0.1", port)])
    config.graceful_timeout = 1.0
    config.read_timeout = read_timeout
    config.keep_alive_timeout = keep_alive
    return config


def read_response(sock: socket.socket, limit: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``limit`` passes)."""
    sock.settimeout(limit)
    received = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def slow_app() -> QuartTrio:
    app = QuartTrio("slow")

    @app.post("/upload")
    async def upload() -> str:
        data = await request.get_data()
        return f"{len(data)} bytes"

    @app.get("/stuck")
    async def stuck() -> str:
        await trio.sleep(60)
        return "late"

    return app


def drip(sock: socket.socket, stop: threading.Event, every: float = 0.2) -> None:
    """One body byte every ``every`` seconds until told to stop or the server closes."""
    with contextlib.suppress(OSError):
        while not stop.wait(every):
            sock.sendall(b"x")


def test_a_dripped_body_gets_408_at_the_request_deadline_and_the_connection_closes() -> None:
    port = free_port()
    server = ServerThread(
        slow_app(),
        short_config(port),
        request_timeout=lambda: 1.0,
        request_timeout_setting="api.request_timeout_seconds",
    )

    def client() -> tuple[bytes, float]:
        stop = threading.Event()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            started = time.monotonic()
            dripper = threading.Thread(target=drip, args=(sock, stop))
            dripper.start()
            try:
                received = read_response(sock, 15)  # returns when the server closes
            finally:
                stop.set()
                dripper.join()
            return received, time.monotonic() - started

    received, took = client()
    assert server.stop(10)
    assert received.startswith(b"HTTP/1.1 408"), received
    assert b"api.request_timeout_seconds" in received
    assert b"connection: close" in received.lower()
    # The 1000-byte body would have needed 200 s; the server closed long before that.
    assert took < 15


def test_an_app_still_working_at_the_request_deadline_answers_503() -> None:
    port = free_port()
    server = ServerThread(slow_app(), short_config(port), request_timeout=lambda: 1.0)

    def client() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
            return read_response(sock, 15)

    received = client()
    assert server.stop(10)
    assert received.startswith(b"HTTP/1.1 503"), received
    assert b"retry-after: 1" in received.lower()


async def refuse_unread(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers 413 after a moment, never reading the body (as a refusal at the gate does)."""
    if scope["type"] != "http":
        raise RuntimeError("no lifespan support")  # Hypercorn then runs without it
    await trio.sleep(0.5)  # long enough for the body to fill the app's receive queue
    await send({"type": "http.response.start", "status": 413, "headers": []})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def test_an_answer_without_reading_the_body_ends_the_connection() -> None:
    """Before the fix the response finished, but delivering ``http.disconnect`` to the app
    blocked on the full receive queue, inside a shielded send: the connection (and every
    shutdown after it) hung for ever."""
    port = free_port()
    server = ServerThread(refuse_unread, short_config(port))

    def client() -> bytes:
        stop = threading.Event()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
            pusher = threading.Thread(target=push, args=(sock, stop))
            pusher.start()
            try:
                return read_response(sock, 10)
            finally:
                stop.set()
                pusher.join()

    received = client()
    stopped = server.stop(10)
    assert received.startswith(b"HTTP/1.1 413"), received
    assert stopped, "the server did not stop: a connection hung after its answer"


def push(sock: socket.socket, stop: threading.Event) -> None:
    with contextlib.suppress(OSError):
        while not stop.is_set():
            sock.sendall(b"x" * 65536)


def big_app() -> QuartTrio:
    app = QuartTrio("big")

    @app.get("/big")
    async def big() -> bytes:
        return b"x" * (4 << 20)

    return app


def test_a_client_that_stops_reading_is_dropped_after_the_read_timeout() -> None:
    """Pipelined requests for large answers, never read: the server's writes block. Each
    write is shielded (so a cancelled task cannot cut a frame in half); before the fix it
    also had no deadline, so the connection, and any shutdown, waited for ever."""
    port = free_port()
    server = ServerThread(big_app(), short_config(port, read_timeout=2))

    def client() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 8)
        return sock

    sock = client()
    try:
        time.sleep(1)  # the server is now blocked writing
        # The grace (1 s) ends, then the blocked write reaches its 2 s deadline.
        stopped = server.stop(15)
    finally:
        sock.close()
    assert stopped, "shutdown waited for a client that never reads"


def test_dripped_request_headers_are_dropped_after_the_keep_alive_time() -> None:
    port = free_port()
    server = ServerThread(tiny_app(), short_config(port, keep_alive=1.0))

    def client() -> tuple[bytes, float]:
        stop = threading.Event()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            started = time.monotonic()
            dripper = threading.Thread(target=drip, args=(sock, stop))
            dripper.start()
            try:
                received = read_response(sock, 15)
            finally:
                stop.set()
                dripper.join()
            return received, time.monotonic() - started

    received, took = client()
    assert server.stop(10)
    assert received == b""  # closed without an answer: the request never completed
    assert took < 15


WEBSOCKET_UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_a_websocket_upgrade_followed_by_more_bytes_is_served_as_plain_http(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Hypercorn's WebSocket path answered 400 from the reader while the app answered too;
    h11's LocalProtocolError escaped the connection and, before containment, the listener.
    No listener here serves WebSockets: the request is answered as the GET it also is."""
    port = free_port()
    server = ServerThread(tiny_app(), short_config(port))
    caplog.set_level(logging.INFO)
    follow_up = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(WEBSOCKET_UPGRADE + follow_up)
        received = read_response(sock, 10)
    assert server.stop(10)
    assert server.errors == []
    assert received.count(b"HTTP/1.1 200 ") == 2, received
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def test_http2_is_not_spoken_so_a_client_opening_no_window_cannot_hold_a_shutdown() -> None:
    """Hypercorn's HTTP/2 path waits inside the app's shielded send until the client's
    flow-control window opens; a client that opens none held its connection and every
    shutdown for ever. No listener here speaks HTTP/2: prior knowledge gets 505."""
    port = free_port()
    server = ServerThread(big_app(), short_config(port))
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    stream = client.get_next_available_stream_id()
    headers = [(":method", "GET"), (":scheme", "http"), (":path", "/big"), (":authority", "x")]
    client.send_headers(stream, headers, end_stream=True)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(client.data_to_send())
        time.sleep(0.5)  # the request is in
        stopped = server.stop(10)
        received = read_response(sock, 5)
    assert stopped, "shutdown waited for an HTTP/2 client that opens no window"
    assert received.startswith(b"HTTP/1.1 505 "), received[:100]


def test_an_h2c_upgrade_is_answered_in_http_1_1() -> None:
    port = free_port()
    server = ServerThread(tiny_app(), short_config(port))
    upgrade = (
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(upgrade)
        received = read_response(sock, 10)
    assert server.stop(10)
    assert received.startswith(b"HTTP/1.1 200 "), received[:100]
    assert b"101" not in received.split(b"\r\n", 1)[0]
