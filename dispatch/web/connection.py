"""One HTTP connection under Hypercorn's Trio machinery, corrected where a peer could hurt it.

:class:`Connection` is Hypercorn 0.18's ``TCPServer`` (the object that owns one accepted
stream: it reads, feeds the h11/h2 protocol, and writes what the protocol produces) with
three faults fixed (docs/upstream-notes.md has the upstream reports):

- **Two tasks sending at once.** ``TCPServer._close`` calls ``stream.send_eof()`` without the
  ``send_lock`` every other write takes, and Trio's ``SocketStream.send_eof`` holds the
  stream's send-conflict detector across a checkpoint. A request that ends the connection
  (HTTP/1.0, ``Connection: close``) followed in the same packet by one stray byte makes h11
  raise in the reader task, which then writes a ``400`` while the app task, having finished
  its response, is inside ``send_eof``: ``trio.BusyResourceError`` escaped the connection and
  took the whole listener down. Here closing takes the same lock as writing.
- **A write that never ends.** Every write ran in a shielded cancel scope with no deadline,
  so a peer that stops reading held its connection (and any shutdown) forever. Each write
  here gets ``config.read_timeout`` (:data:`WRITE_TIMEOUT_SECONDS` when unset): a peer that
  accepts nothing for that long is dropped, as one that sends nothing for that long is.
- **An app queue that can deadlock.** The ASGI ``receive`` queue holds
  ``max_app_queue_size`` messages and the reader blocks when it is full. An app that
  answers without reading the body (a refusal, a ``413``) then blocks in its *own* last
  ``send``: finishing the response delivers ``http.disconnect`` through the same full
  queue. :class:`AppQueue` never blocks for the disconnect, and drops what arrives after it
  or after the app has returned.

Two doors nothing here uses are closed: :class:`HttpOnlyH11` speaks HTTP/1.x only.

- No listener serves WebSockets, and Hypercorn's HTTP/1.1 WebSocket path had its own
  two-writers fault (a byte after an ``Upgrade: websocket`` request made the reader answer
  ``400`` while the app was answering too; h11's ``LocalProtocolError`` escaped the
  connection just the same). Such a request is served as the plain HTTP request it also is
  (RFC 9110 §7.8 lets a server ignore ``Upgrade``).
- No listener needs HTTP/2, and Hypercorn's HTTP/2 path waits for the client's flow-control
  window inside the app's (shielded) ``send``: a client that opens no window held its
  connection and every shutdown for ever. ``Upgrade: h2c`` is ignored like any upgrade, the
  prior-knowledge preface (``PRI * HTTP/2.0``) is answered ``505`` and the connection
  closed, and TLS offers only ``http/1.1`` by ALPN (:func:`dispatch.web.server.hypercorn_config`).

Whatever else goes wrong inside one connection stays there: :func:`dispatch.web.server`'s
accept loop catches it per connection.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import Any, Final

import h11
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.task_group import TaskGroup, _handle
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.typing import AppWrapper, ConnectionState
from hypercorn.utils import parse_socket_addr

WRITE_TIMEOUT_SECONDS: Final = 30.0  # when config.read_timeout is unset

Message = dict[str, Any]


class AppQueue:
    """The messages one ASGI app instance receives: bounded, and never a trap.

    ``put`` waits while ``size`` messages are queued (back-pressure on the reader), except
    for the disconnect, which is recorded at once; after it, or after :meth:`close` (the app
    returned), puts return without queueing. ``receive`` hands out queued messages first,
    then the disconnect, for as long as the app keeps asking.
    """

    def __init__(self, size: int) -> None:
        self._size = max(size, 1)
        self._items: collections.deque[Message] = collections.deque()
        self._disconnect: Message | None = None
        self._closed = False
        self._changed = trio.lowlevel.ParkingLot()

    async def put(self, message: Message) -> None:
        if str(message.get("type", "")).endswith(".disconnect"):
            if self._disconnect is None:
                self._disconnect = message
            self._changed.unpark_all()
            await trio.lowlevel.checkpoint()
            return
        while len(self._items) >= self._size and not self._done:
            await self._changed.park()
        if not self._done:
            self._items.append(message)
            self._changed.unpark_all()
        await trio.lowlevel.checkpoint()

    async def receive(self) -> Message:
        while True:
            if self._items:
                message = self._items.popleft()
                self._changed.unpark_all()
                break
            if self._disconnect is not None:
                message = self._disconnect
                break
            await self._changed.park()
        await trio.lowlevel.checkpoint()
        return message

    def close(self) -> None:
        """The app has returned: nothing will read again."""
        self._closed = True
        self._items.clear()
        self._changed.unpark_all()

    @property
    def _done(self) -> bool:
        return self._closed or self._disconnect is not None


class AppTaskGroup(TaskGroup):
    """Hypercorn's per-connection task group, spawning apps that receive from an AppQueue."""

    async def spawn_app(
        self,
        app: AppWrapper,
        config: Config,
        scope: Any,
        send: Callable[[Any], Awaitable[None]],
    ) -> Callable[[Any], Awaitable[None]]:
        queue = AppQueue(config.max_app_queue_size)

        async def run() -> None:
            try:
                await _handle(
                    app,
                    config,
                    scope,
                    queue.receive,  # type: ignore[arg-type]
                    send,
                    trio.to_thread.run_sync,
                    trio.from_thread.run,
                )
            finally:
                queue.close()

        assert self._nursery is not None
        self._nursery.start_soon(run)
        return queue.put


class HttpOnlyH11(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol without its switches to WebSocket and HTTP/2."""

    async def _check_protocol(self, event: h11.Request) -> None:
        # Hypercorn switches to HTTP/2 here (h2c upgrade, prior knowledge); we do not.
        if event.http_version != b"1.1" and event.http_version != b"1.0":
            raise h11.RemoteProtocolError(
                f"HTTP/{event.http_version.decode()} is not spoken here",
                error_status_hint=505,
            )

    async def _create_stream(self, request: h11.Request) -> None:
        headers = [(n, v) for n, v in request.headers.raw_items() if n.lower() != b"upgrade"]
        plain = h11.Request(
            method=request.method,
            target=request.target,
            headers=headers,
            http_version=request.http_version,
        )
        await super()._create_stream(plain)

    async def _handle_events(self) -> None:
        try:
            await super()._handle_events()
        except h11.RemoteProtocolError as error:
            # Raised by _check_protocol, past the point where Hypercorn answers h11's own
            # errors: answer it the same way (status, Connection: close) and close.
            if self.connection.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
                await self._send_error_response(error.error_status_hint)
            await self.send(Closed())


class HttpOnlyProtocol(ProtocolWrapper):
    """Hypercorn's protocol switch, always speaking :class:`HttpOnlyH11` (ALPN never selects
    ``h2`` here, and HttpOnlyH11 never raises the errors that switch to it)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        if isinstance(self.protocol, H11Protocol):
            self.protocol = HttpOnlyH11(
                self.app,
                self.config,
                self.context,
                self.task_group,
                self.state,
                self.ssl,
                self.client,
                self.server,
                self.send,
            )


class Connection(TCPServer):
    """Owns one accepted stream from the TLS handshake (if any) to its close.

    Started by the accept loop in :mod:`dispatch.web.server` as ``await Connection(...).run()``
    in the server's connection nursery; it ends when the peer or the protocol closes the
    connection, the keep-alive idle time passes, or the nursery is cancelled (the end of the
    shutdown grace). Cancellation closes the stream; a write under way finishes first, within
    its timeout.
    """

    async def run(self) -> None:
        # TCPServer.run with AppTaskGroup and HttpOnlyProtocol in place of Hypercorn's own.
        try:
            try:
                with trio.fail_after(self.config.ssl_handshake_timeout):
                    await self.stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                return
            alpn_protocol = self.stream.selected_alpn_protocol()
            socket = self.stream.transport_stream.socket
            ssl = True
        except AttributeError:  # plain TCP: no handshake
            alpn_protocol = "http/1.1"
            socket = self.stream.socket
            ssl = False

        try:
            client = parse_socket_addr(socket.family, socket.getpeername())
            server = parse_socket_addr(socket.family, socket.getsockname())
            async with AppTaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = HttpOnlyProtocol(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    ssl,
                    client,
                    server,
                    self.protocol_send,
                    alpn_protocol,
                )
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            if not await self._write(event.data):
                await self.protocol.handle(Closed())
        elif isinstance(event, Closed):
            await self._close()
            await self.protocol.handle(Closed())
        else:
            await super().protocol_send(event)

    async def _write(self, data: bytes) -> bool:
        """Send ``data`` whole, one writer at a time; False if the connection is gone.

        Shielded, so a cancelled app task cannot leave half a frame behind, but bounded:
        past the deadline the stream is closed at once and the peer loses the connection.
        """
        async with self.send_lock:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + (
                    self.config.read_timeout or WRITE_TIMEOUT_SECONDS
                )
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return False
            if scope.cancelled_caught:
                await trio.aclose_forcefully(self.stream)
                return False
            return True

    async def _close(self) -> None:
        if self.send_lock.locked():
            # A write is under way (in another task, or further up this one: a failed write
            # reports Closed while it holds the lock). Waiting for it could take the whole
            # write timeout and cannot deadlock-free take the lock here; the connection is
            # ending, so end it now and let that write fail.
            await trio.aclose_forcefully(self.stream)
            return
        async with self.send_lock:
            await super()._close()
