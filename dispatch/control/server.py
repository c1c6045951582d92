"""The control socket component: ``<data_dir>/control.sock``, JSON in, JSON out.

One request per connection: the client writes one JSON object and a newline
(``{"command": "spool.retry", "args": {"id": "spl_…"}}``), the server answers one JSON object
(``{"ok": true, "result": …}`` or ``{"ok": false, "error": "…"}``) and closes. The socket is
mode 600 in the private data directory: only the daemon's user can steer it.

Owns the listening socket and the per-request tasks; starts when bound, stops (removing the
socket file) on the stop request; a request in progress is cancelled with the component.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from dispatch.config import Settings
from dispatch.control import commands
from dispatch.delivery.attempt import DeliveryAttempt
from dispatch.spool import Spool
from dispatch.supervisor import Shutdown

log = logging.getLogger("dispatch.control")

SOCKET_NAME: Final = "control.sock"
MAX_REQUEST_BYTES: Final = 65_536
REQUEST_SECONDS: Final = 30.0


@attrs.frozen
class Operations:
    """What control commands act on. ``attempt`` is None outside the daemon."""

    spool: Spool
    settings: Callable[[], Settings]
    attempt: DeliveryAttempt | None = None

    async def send_test(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.attempt is None:
            raise commands.CommandError(
                "send-test needs the running daemon; start it with `python -m dispatch`"
            )
        return await commands.send_test(
            self.spool,
            self.attempt,
            self.settings(),
            args.get("relay"),
            args.get("to"),
            args.get("from", "dispatch-test@localhost"),
        )


async def handle(ops: Operations, request: Any) -> dict[str, Any]:
    """Run one request; every failure a user can cause becomes ``{"ok": false, …}``."""
    spool = ops.spool
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        return {"ok": False, "error": 'expected {"command": "...", "args": {...}}'}
    args = request.get("args") or {}
    if not isinstance(args, dict):
        return {"ok": False, "error": "args must be an object"}
    handlers: dict[str, Callable[[], Awaitable[Any] | Any]] = {
        "spool.list": lambda: commands.spool_list(
            spool, args.get("state"), args.get("limit", 1000)
        ),
        "spool.show": lambda: commands.spool_show(spool, args.get("id")),
        "spool.retry": lambda: commands.spool_retry(spool, args.get("id")),
        "spool.delete": lambda: commands.spool_delete(spool, args.get("id")),
        "send-test": lambda: ops.send_test(args),
    }
    handler = handlers.get(request["command"])
    if handler is None:
        return {"ok": False, "error": f"unknown command {request['command']!r}"}
    try:
        result = handler()
        if isinstance(result, Awaitable):
            result = await result
    except commands.CommandError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "result": result}


class ControlServer:
    """See the module docstring."""

    def __init__(self, data_dir: Path, ops: Operations) -> None:
        self.path = data_dir / SOCKET_NAME
        self._ops = ops

    async def run(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # left by a killed daemon; we hold the spool lock
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            sock.listen(16)
        except BaseException:
            sock.close()
            raise
        listener = trio.SocketListener(sock)
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._accept, listener, nursery)
                await shutdown.requested.wait()
                nursery.cancel_scope.cancel()
        finally:
            await listener.aclose()
            self.path.unlink(missing_ok=True)

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            stream = await listener.accept()
            nursery.start_soon(self._serve, stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(REQUEST_SECONDS):
                data = b""
                while b"\n" not in data and len(data) < MAX_REQUEST_BYTES:
                    chunk = await stream.receive_some(MAX_REQUEST_BYTES)
                    if not chunk:
                        break
                    data += chunk
                try:
                    request = json.loads(data.split(b"\n", 1)[0] or b"null")
                except ValueError:
                    answer: dict[str, Any] = {"ok": False, "error": "the request is not JSON"}
                else:
                    answer = await handle(self._ops, request)
                    log.info("control: %s -> %s", request.get("command"), answer["ok"])
                await stream.send_all(json.dumps(answer).encode() + b"\n")
