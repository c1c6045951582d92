"""The control socket component: ``<data_dir>/control.sock``, JSON in, JSON out.

One request per connection: the client writes one JSON object and a newline
(``{"command": "spool.retry", "args": {"id": "spl_…"}}``), the server answers one JSON object
(``{"ok": true, "result": …}`` or ``{"ok": false, "error": "…"}``) and closes. The socket is
mode 600 in the private data directory: only the daemon's user can steer it.

A malformed request (empty, not JSON, not an object, an unknown command or argument, a line
too long or too slow, a client that half-closes early) gets ``{"ok": false, "error": …}``
like any refused command; no connection can stop the server (see :meth:`ControlServer._serve`
and :mod:`dispatch.control.protocol`).

Owns the listening socket and the per-request tasks; starts when bound, stops (removing the
socket file) on the stop request; a request in progress is cancelled with the component.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from dispatch.config import Settings
from dispatch.control import commands
from dispatch.control.protocol import (
    MAX_REQUEST_BYTES,
    BadRequestError,
    Request,
    check_request,
    encode_answer,
    parse_line,
)
from dispatch.delivery.attempt import DeliveryAttempt
from dispatch.lifecycle import Shutdown
from dispatch.monitoring.webhook_activity import RECENT_CALLS, WebhookActivity
from dispatch.spool import Spool
from dispatch.storage import AuditEntry
from dispatch.storage import audit as entries

log = logging.getLogger("dispatch.control")

SOCKET_NAME: Final = "control.sock"
LOCAL_CLIENT: Final = "cli"
"""Who acts when the command line runs a command itself (no daemon): as ``api-key`` does."""
READ_SECONDS: Final = 10.0
"""How long a client has to send its request line: the CLI writes it at once, so only a
stuck or hostile client takes longer, and it must not hold a connection slot for long."""
SEND_SECONDS: Final = 10.0
MAX_CONNECTIONS: Final = 32
"""Requests served at once; beyond, a client is told to try again (only the daemon's own user
can connect at all, so this bounds mistakes and runaway scripts, not strangers)."""


@attrs.frozen
class Operations:
    """What control commands act on. ``attempt`` is None outside the daemon. ``audit``
    receives an entry for every retry, flush and delete (``MessageLog.audit`` in the daemon;
    the CLI collects them and writes them itself)."""

    spool: Spool
    settings: Callable[[], Settings]
    attempt: DeliveryAttempt | None = None
    audit: Callable[[AuditEntry], None] = attrs.field(kw_only=True)
    webhooks: WebhookActivity | None = attrs.field(default=None, kw_only=True)

    def webhooks_recent(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.webhooks is None:
            raise commands.CommandError(
                "webhooks recent needs the running daemon (its recent calls are kept in its "
                "memory); start it with `python -m dispatch`"
            )
        calls = self.webhooks.recent(args.get("limit", RECENT_CALLS))
        return {
            "outbox_depth": self.webhooks.outbox_depth,
            "oldest_pending_at": self.webhooks.oldest_pending_at,
            "calls": [call.as_json() for call in calls],
        }

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

    async def flush(self, args: dict[str, Any], who: str) -> dict[str, Any]:
        if self.attempt is None:
            raise commands.CommandError(
                "spool retry --all needs the running daemon (it makes mail due for the "
                "daemon's delivery); start it with `python -m dispatch`, or retry one failed "
                "message with `spool retry ID`"
            )
        relay, state = args.get("relay"), args.get("state")
        result = await commands.spool_flush(self.spool, self.settings(), relay, state, who=who)
        self.audit(entries.spool_flushed(result["made_due"], relay, state, actor=who))
        return result

    async def retry(self, args: dict[str, Any], who: str) -> dict[str, Any]:
        result = await commands.spool_retry(self.spool, args["id"])
        self.audit(entries.spool_retried(result["id"], actor=who))
        return result

    async def delete(self, args: dict[str, Any], who: str) -> dict[str, Any]:
        result = await commands.spool_delete(self.spool, args["id"])
        self.audit(entries.spool_deleted(result["id"], result["state"], actor=who))
        return result


async def handle(ops: Operations, request: Any, *, who: str = LOCAL_CLIENT) -> dict[str, Any]:
    """Run one decoded request; every failure a user can cause becomes ``{"ok": false, …}``."""
    try:
        checked = check_request(request)
    except BadRequestError as exc:
        return {"ok": False, "error": str(exc)}
    return await run(ops, checked, who=who)


async def run(ops: Operations, request: Request, *, who: str = LOCAL_CLIENT) -> dict[str, Any]:
    """Run a checked request (see :mod:`dispatch.control.protocol` for its arguments);
    ``who`` names the client in the audit entries and log lines of commands that change
    messages."""
    spool, args = ops.spool, request.args
    handlers: dict[str, Callable[[], Awaitable[Any] | Any]] = {
        "spool.list": lambda: commands.spool_list(
            spool, args.get("state"), args.get("limit", 1000)
        ),
        "spool.show": lambda: commands.spool_show(spool, args["id"]),
        "spool.retry": lambda: ops.retry(args, who),
        "spool.flush": lambda: ops.flush(args, who),
        "spool.delete": lambda: ops.delete(args, who),
        "send-test": lambda: ops.send_test(args),
        "webhooks.recent": lambda: ops.webhooks_recent(args),
    }
    try:
        result = handlers[request.command]()
        if isinstance(result, Awaitable):
            result = await result
    except commands.CommandError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "result": result}


class ControlServer:
    """See the module docstring."""

    def __init__(
        self, data_dir: Path, ops: Operations, *, read_seconds: float = READ_SECONDS
    ) -> None:
        self.path = data_dir / SOCKET_NAME
        self._ops = ops
        self._read_seconds = read_seconds
        self._connections = 0

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
                # serve_listeners rides out EMFILE and friends instead of crashing.
                nursery.start_soon(
                    partial(trio.serve_listeners, self._serve, [listener], handler_nursery=nursery)
                )
                await shutdown.requested.wait()
                nursery.cancel_scope.cancel()
        finally:
            await listener.aclose()
            self.path.unlink(missing_ok=True)

    async def _serve(self, stream: trio.SocketStream) -> None:
        """One connection: read one request line, answer it, close.

        Whatever the client sends (or fails to send), it gets one answer line and the
        connection ends; no exception leaves this task, so one connection can never take the
        component down. Reading is bounded in size (:data:`MAX_REQUEST_BYTES`) and time
        (:data:`READ_SECONDS` by default); the command itself is not cut short (send-test
        waits for its relay), and cancellation (the component stopping) ends it unanswered.
        """
        async with stream:
            self._connections += 1
            try:
                if self._connections > MAX_CONNECTIONS:
                    answer: dict[str, Any] = {
                        "ok": False,
                        "error": f"{MAX_CONNECTIONS} control requests are running; try again",
                    }
                else:
                    answer = await self._answer(stream)
                with trio.move_on_after(SEND_SECONDS):
                    await stream.send_all(encode_answer(answer))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.debug("the client left before its answer")
            except Exception:
                log.exception("a request failed")
            finally:
                self._connections -= 1

    async def _answer(self, stream: trio.SocketStream) -> dict[str, Any]:
        line = b""
        try:
            line = await _read_line(stream, self._read_seconds)
            request = parse_line(line)
        except BadRequestError as exc:
            # A connection that sends nothing is a CLI asking whether a daemon runs here.
            log.log(logging.INFO if line else logging.DEBUG, "bad request: %s", exc)
            return {"ok": False, "error": str(exc)}
        try:
            who = peer_of(stream)
            answer = await run(self._ops, request, who=who)
        except Exception as exc:
            # A fault of ours (or of the disk), not of the request: answer, and log it once
            # with its traceback; the server goes on serving.
            log.exception("%s failed", request.command)
            return {
                "ok": False,
                "error": f"{request.command} failed: {type(exc).__name__}; see the daemon log",
            }
        if not answer["ok"]:
            log.info("%s from %s refused: %s", request.command, who, answer["error"])
        else:
            log.info("%s from %s done", request.command, who)
        return answer


def peer_of(stream: trio.SocketStream) -> str:
    """The client's process and user as the kernel reports them (SO_PEERCRED)."""
    try:
        data = stream.socket.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
        )
    except OSError:
        return "a local client"
    pid, uid, _gid = struct.unpack("3i", data)
    return f"uid {uid} (pid {pid})"


async def _read_line(stream: trio.SocketStream, read_seconds: float) -> bytes:
    """The first line the client sends (or all it sent before half-closing).

    Raises :class:`BadRequestError` for a line longer than :data:`MAX_REQUEST_BYTES` or one
    not complete within ``read_seconds``.
    """
    data = bytearray()
    with trio.move_on_after(read_seconds):
        while True:
            end = data.find(b"\n")
            if end >= 0:
                data = data[:end]
                break
            if len(data) > MAX_REQUEST_BYTES:
                break
            chunk = await stream.receive_some(MAX_REQUEST_BYTES)
            if not chunk:  # end of file: the client half-closed (or sent nothing)
                break
            data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise BadRequestError(
                f"the request is longer than {MAX_REQUEST_BYTES} bytes; send one short JSON line"
            )
        return bytes(data)
    raise BadRequestError(
        f"no complete request line within {read_seconds:g} s; send one JSON line ending in \\n"
    )
