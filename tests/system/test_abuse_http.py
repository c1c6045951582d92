"""Hostile HTTP clients against every HTTP listener of a real daemon (issue 11, item 10).

- A request that ends its connection (HTTP/1.0) followed, in the same write, by one stray
  byte made Hypercorn write an error reply while the response was still being written;
  ``trio.BusyResourceError`` escaped and the API listener crashed ("api crashed; restarting",
  every connection in flight dropped, the port refused connections while it restarted). The
  dashboard port logged the same race as an ``ERROR`` traceback. A WebSocket upgrade request
  followed by any byte did the same through Hypercorn's WebSocket path. Each port now gets
  the reproducers in a loop, with an ordinary request after each one that must be answered.
- A body dripped one byte at a time held an API connection for as long as the client liked;
  ``api.request_timeout_seconds`` now ends it with ``408``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Daemon, free_port
from tests.support.config import Ports, base_config, write_config
from tests.support.waiting import wait_until
from tests.system.faults import create_api_key, log_so_far

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]
ROUNDS = 200
REPRODUCER = b"GET /api/v1/openapi.json HTTP/1.0\r\n\r\nX"
# The same two-writers fault on Hypercorn's WebSocket path: any byte after an upgrade request.
WEBSOCKET_REPRODUCER = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: upgrade, close\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nX"
)
# What a contained or uncontained connection fault, or an early disconnect, used to log.
FAULT_MARKS = (
    "crashed",
    "Traceback",
    "BusyResourceError",
    "Error in ASGI Framework",
    "failed and was closed",
)


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False  # the subject of this test is the server, not its name
    context.verify_mode = ssl.CERT_NONE
    return context


def exchange(port: int, data: bytes, *, tls: ssl.SSLContext | None = None) -> bytes:
    """Connect, send ``data`` in one write, read until the server closes; what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        if tls is None:
            return talk(raw, data)
        with tls.wrap_socket(raw) as wrapped:
            return talk(wrapped, data)


def talk(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    with contextlib.suppress(ConnectionResetError, ssl.SSLError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def status(response: bytes) -> int:
    line = response.split(b"\r\n", 1)[0].split()
    assert len(line) >= 2, response[:200]
    assert line[0].startswith(b"HTTP/1."), response[:200]
    return int(line[1])


def test_a_stray_byte_after_a_closing_request_never_takes_a_listener_down(
    start_daemon: Start, tmp_path: Path
) -> None:
    ports = Ports.pick()
    monitoring = free_port()
    config = base_config(tmp_path, ports, monitoring={"address": f"127.0.0.1:{monitoring}"})
    daemon = start_daemon(write_config(tmp_path / "dispatch.toml", config))
    daemon.wait_for("all components ready")
    tls = tls_context()

    def ordinary(path: str, port: int) -> bytes:
        host = f"Host: 127.0.0.1:{port}\r\n"
        return f"GET {path} HTTP/1.1\r\n{host}Connection: close\r\n\r\n".encode()

    listeners = [
        ("api", ports.api, None, ordinary("/api/v1/openapi.json", ports.api)),
        ("dashboard", ports.webui, tls, ordinary("/metrics", ports.webui)),
        ("monitoring", monitoring, None, ordinary("/metrics", monitoring)),
    ]
    unanswered: list[str] = []

    def attack(name: str, port: int, context: ssl.SSLContext | None, request: bytes) -> None:
        for i in range(ROUNDS):
            exchange(port, WEBSOCKET_REPRODUCER if i % 4 == 3 else REPRODUCER, tls=context)
            try:
                answer = exchange(port, request, tls=context)
            except OSError as error:  # refused or cut: the listener was down
                unanswered.append(f"{name}: {error}")
                continue
            if not answer.startswith(b"HTTP/1.1 200 "):
                unanswered.append(f"{name}: {answer[:100]!r}")

    # The three listeners at once, so each also has other connections in flight.
    threads = [threading.Thread(target=attack, args=listener) for listener in listeners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    log = log_so_far(daemon)
    assert unanswered == [], unanswered[:10]
    faults = [line for line in log.splitlines() if any(mark in line for mark in FAULT_MARKS)]
    assert faults == [], "\n".join(faults[:20])
    # One reproducer more, and the API still serves a normal client.
    assert status(exchange(ports.api, ordinary("/api/v1/openapi.json", ports.api))) == 200
    # HTTP/2 is not offered (dispatch/web/connection.py says why).
    alpn = tls_context()
    alpn.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", ports.webui), timeout=10) as raw,
        alpn.wrap_socket(raw) as sock,
    ):
        assert sock.selected_alpn_protocol() == "http/1.1"


def test_an_api_body_dripped_past_the_request_timeout_gets_408_and_the_connection_closes(
    start_daemon: Start, tmp_path: Path
) -> None:
    ports = Ports.pick()
    timeout = 2.0
    config = base_config(
        tmp_path, ports, api={"request_timeout_seconds": timeout, "rate_limit_per_key": 1000}
    )
    path = tmp_path / "dispatch.toml"
    write_config(path, config)
    key = create_api_key(path)
    daemon = start_daemon(path.read_text())
    daemon.wait_for("all components ready")

    stop = threading.Event()
    with socket.create_connection(("127.0.0.1", ports.api), timeout=30) as sock:
        sock.sendall(
            (
                "POST /api/v1/messages HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{ports.api}\r\n"
                f"Authorization: Bearer {key}\r\n"
                "Content-Type: application/json\r\n"
                "Content-Length: 1000\r\n\r\n{"
            ).encode()
        )
        started = time.monotonic()

        def drip() -> None:  # one byte per second, as the attack did
            with contextlib.suppress(OSError):
                while not stop.wait(1.0):
                    sock.sendall(b" ")

        dripper = threading.Thread(target=drip)
        dripper.start()
        received = b""
        try:
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                while chunk := sock.recv(65536):  # until the server closes
                    received += chunk
        finally:
            stop.set()
            dripper.join()
        took = time.monotonic() - started

    assert status(received) == 408, received
    body = json.loads(received.split(b"\r\n\r\n", 1)[1])
    assert "api.request_timeout_seconds" in body["detail"]
    # Closed at the deadline: the body would have needed 1000 s; 30 s is the socket timeout.
    assert took < 30
    daemon.wait_for("api.request_timeout_seconds (2 s) passed; answered 408", timeout=10)
    # The part of the body that had arrived (spooled to tmp/ as it came) is gone with it.
    leftovers = tmp_path / "spool" / "tmp"
    wait_until(lambda: not list(leftovers.glob("api-*")), within=10, what="tmp/ emptied")
