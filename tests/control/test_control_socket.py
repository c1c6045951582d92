"""The control socket against malformed requests: explicit cases over a real Unix socket.

Regression (issue 11, item 8): an empty connection made the server log
``'NoneType' object has no attribute 'get'`` and crash the whole control component; repeated,
its restart back-off reached 30 s and the CLI said the daemon did not answer. Each case below
must get an error answer and leave the server serving the next request at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from dispatch.config import parse_settings
from dispatch.control.protocol import MAX_REQUEST_BYTES
from dispatch.control.server import SOCKET_NAME, ControlServer, Operations
from dispatch.lifecycle import Shutdown
from dispatch.spool import Spool
from dispatch.storage import AuditEntry


@attrs.frozen
class Served:
    path: Path
    server: ControlServer
    audited: list[AuditEntry]


@asynccontextmanager
async def control_server(
    tmp_path: Path, *, read_seconds: float | None = None
) -> AsyncIterator[Served]:
    """A real ControlServer on ``tmp_path/data/control.sock`` over a real spool."""
    settings = parse_settings({"data_dir": str(tmp_path / "data")})
    spool = await Spool.open(tmp_path / "spool")
    audited: list[AuditEntry] = []
    ops = Operations(spool, lambda: settings, audit=audited.append)
    if read_seconds is None:
        server = ControlServer(tmp_path / "data", ops)
    else:
        server = ControlServer(tmp_path / "data", ops, read_seconds=read_seconds)
    shutdown = Shutdown(1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, shutdown)
        yield Served(tmp_path / "data" / SOCKET_NAME, server, audited)
        shutdown.request()


def exchange(path: Path, data: bytes, *, half_close: bool = False, timeout: float = 10) -> bytes:
    """Send ``data`` (then optionally shut down writing); return everything answered."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        if data:
            sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def connect_and_close(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))


async def ask(path: Path, data: bytes, *, half_close: bool = False) -> dict[str, Any]:
    raw = await trio.to_thread.run_sync(lambda: exchange(path, data, half_close=half_close))
    assert raw.endswith(b"\n"), raw
    answer: dict[str, Any] = json.loads(raw)
    return answer


async def spool_list_works(path: Path) -> None:
    answer = await ask(path, b'{"command": "spool.list", "args": {}}\n')
    assert answer["ok"] is True, answer
    assert answer["result"]["counts"]["incoming"] == 0


MALFORMED: list[tuple[bytes, str]] = [
    (b"\n", "empty request"),
    (b"   \r\n", "empty request"),
    (b"null\n", "is null, not an object"),
    (b"[]\n", "is an array, not an object"),
    (b'"spool.list"\n', "is a string, not an object"),
    (b"42\n", "is an integer, not an object"),
    (b"{not json\n", "not JSON"),
    (b"\xff\xfe\x00garbage\n", "not JSON"),
    (b"[" * 50_000 + b"\n", "nested too deeply"),
    (b"1" * 5000 + b"\n", "not JSON"),
    (b"{}\n", "command must be a string, not null"),
    (b'{"command": 7}\n', "command must be a string, not an integer"),
    (b'{"command": "rm -rf"}\n', "unknown command 'rm -rf'"),
    (b'{"command": "spool.list", "args": []}\n', "args must be an object, not an array"),
    (b'{"command": "spool.list", "args": "x"}\n', "args must be an object, not a string"),
    (b'{"command": "spool.list", "extra": 1}\n', "unknown key 'extra'"),
    (b'{"command": "spool.list", "args": {"limit": "5"}}\n', "'limit' of spool.list must be"),
    (b'{"command": "spool.list", "args": {"limit": true}}\n', "not a boolean"),
    (b'{"command": "spool.list", "args": {"limit": 1e9}}\n', "not a number"),
    (b'{"command": "spool.list", "args": {"limit": -1}}\n', "limit must be between"),
    (b'{"command": "spool.list", "args": {"state": ["a"]}}\n', "not an array"),
    (b'{"command": "spool.list", "args": {"state": "gone"}}\n', "'gone' is not a spool state"),
    (b'{"command": "spool.list", "args": {"bogus": 1}}\n', "unknown argument 'bogus'"),
    (b'{"command": "spool.show", "args": {}}\n', "needs the argument 'id'"),
    (b'{"command": "spool.show", "args": {"id": {"a": 1}}}\n', "not an object"),
    (b'{"command": "spool.show", "args": {"id": "../../etc"}}\n', "is not a message id"),
    (b'{"command": "spool.delete", "args": {"id": null}}\n', "not null"),
    (b'{"command": "send-test", "args": {"relay": 1, "to": "a@b"}}\n', "must be a string"),
    (b'{"command": "send-test", "args": {"relay": "local", "to": "a@b"}}\n', "running daemon"),
]


@pytest.mark.parametrize(("request_bytes", "expected"), MALFORMED)
async def test_malformed_request_gets_an_error_and_the_server_goes_on(
    tmp_path: Path, request_bytes: bytes, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with control_server(tmp_path) as served:
        answer = await ask(served.path, request_bytes)
        await spool_list_works(served.path)
    assert answer["ok"] is False
    assert expected in answer["error"], answer["error"]
    assert len(answer["error"]) < 400  # quotes what was sent, cut short
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_empty_and_half_closed_connections(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with control_server(tmp_path) as served:
        for _ in range(20):  # the reported crash: connect, send nothing, close
            await trio.to_thread.run_sync(connect_and_close, served.path)
        empty = await ask(served.path, b"", half_close=True)
        partial = await ask(served.path, b'{"command": "spo', half_close=True)
        # A complete request without its newline, then EOF: still a request.
        whole = await ask(served.path, b'{"command": "spool.list"}', half_close=True)
        await spool_list_works(served.path)
    assert empty["ok"] is False
    assert "empty request" in empty["error"]
    assert partial["ok"] is False
    assert "not JSON" in partial["error"]
    assert whole["ok"] is True
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_huge_line_is_refused_without_waiting_for_its_end(tmp_path: Path) -> None:
    huge = b'{"command": "spool.list", "args": {"state": "' + b"x" * (4 * MAX_REQUEST_BYTES)

    def send_huge() -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(served.path))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(huge)  # the server may close before it has taken it all
            answer = b""
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except ConnectionResetError:
                pass
            return answer

    async with control_server(tmp_path) as served:
        raw = await trio.to_thread.run_sync(send_huge)
        await spool_list_works(served.path)
    answer = json.loads(raw)
    assert answer["ok"] is False
    assert f"longer than {MAX_REQUEST_BYTES} bytes" in answer["error"]


async def test_a_slow_drip_is_cut_off_and_does_not_block_others(tmp_path: Path) -> None:
    read_seconds = 0.5

    def drip() -> bytes:
        """One byte every 0.1 s, never a newline, until the server answers."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(served.path))
            for byte in b'{"command": "spool.list", "args": {}}' * 10:
                if select.select([sock], [], [], 0.1)[0]:
                    break  # the server has answered (and closed)
                sock.sendall(bytes([byte]))
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return answer

    async with control_server(tmp_path, read_seconds=read_seconds) as served:
        async with trio.open_nursery() as nursery:
            results: list[bytes] = []

            async def dripper() -> None:
                results.append(await trio.to_thread.run_sync(drip))

            nursery.start_soon(dripper)
            await trio.sleep(0.1)
            await spool_list_works(served.path)  # served while the drip goes on
        answer = json.loads(results[0])
        await spool_list_works(served.path)
    assert answer["ok"] is False
    assert "no complete request line within" in answer["error"]
