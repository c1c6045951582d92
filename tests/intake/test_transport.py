"""SessionTransport over plain TCP: reads and writes through the descriptor.

Real connected sockets on 127.0.0.1 (a listener, a client, the accepted end wrapped as the
listener would). A read must stay a checkpoint, as the stream's methods are (a write the
kernel takes at once need not: the session reads next); no operation may lose bytes to a
cancellation or write after half a reply; a peer that went away or stopped reading becomes
:class:`SessionEnded`.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from dispatch.intake.transport import RECEIVE_BYTES, SessionEnded, SessionTransport


@pytest.fixture
async def pair() -> AsyncIterator[tuple[SessionTransport, trio.SocketStream]]:
    """The server side as a transport, and the client's stream."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    try:
        yield SessionTransport(server), client
    finally:
        await server.aclose()
        await client.aclose()
        await listeners[0].aclose()


async def test_bytes_already_there_are_read_at_a_checkpoint(
    pair: tuple[SessionTransport, trio.SocketStream],
) -> None:
    transport, client = pair
    await client.send_all(b"EHLO client.example\r\n")
    await trio.sleep(0.05)  # in the server's receive buffer before the read starts
    with trio.testing.assert_checkpoints():
        data = await transport.receive(trio.current_time() + 5)
    assert data == b"EHLO client.example\r\n"


async def test_a_read_waits_for_bytes_and_gives_up_at_the_deadline(
    pair: tuple[SessionTransport, trio.SocketStream],
) -> None:
    transport, client = pair
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"late\r\n")
        assert await transport.receive(trio.current_time() + 5) == b"late\r\n"
    assert await transport.receive(trio.current_time() + 0.05) is None
    with trio.testing.assert_checkpoints():  # a deadline already past is still a checkpoint
        assert await transport.receive(trio.current_time() - 1) is None


async def test_a_cancelled_read_consumes_nothing(
    pair: tuple[SessionTransport, trio.SocketStream],
) -> None:
    transport, client = pair
    await client.send_all(b"NOOP\r\n")
    await trio.sleep(0.05)
    with trio.CancelScope() as scope:
        scope.cancel()
        await transport.receive(trio.current_time() + 5)
    assert scope.cancelled_caught
    assert await transport.receive(trio.current_time() + 5) == b"NOOP\r\n"


async def test_the_end_of_stream_is_empty_bytes_and_a_reset_ends_the_session(
    pair: tuple[SessionTransport, trio.SocketStream],
) -> None:
    transport, client = pair
    await client.send_eof()
    assert await transport.receive(trio.current_time() + 5) == b""
    # SO_LINGER 0: closing sends a reset, which the next write or read runs into.
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
    await client.aclose()
    await trio.sleep(0.05)

    async def go_on_talking() -> None:
        for _ in range(10):
            transport.queue(b"250 ok\r\n")
            await transport.flush(5)
            await transport.receive(trio.current_time() + 5)

    with pytest.raises(SessionEnded):
        await go_on_talking()


async def test_replies_are_written_whole_and_at_once_the_reading_yields(
    pair: tuple[SessionTransport, trio.SocketStream],
) -> None:
    """What the kernel takes at once goes without a checkpoint; the read the session does
    next yields, even when the command is already there (no peer can starve the others)."""
    transport, client = pair
    transport.queue(b"250-first\r\n")
    transport.queue(b"250 second\r\n")
    with trio.testing.assert_no_checkpoints():
        await transport.flush(5)
        await transport.flush(5)  # nothing queued: nothing to do
    assert await client.receive_some(RECEIVE_BYTES) == b"250-first\r\n250 second\r\n"
    await client.send_all(b"NOOP\r\n")
    with trio.testing.assert_checkpoints():
        assert await transport.receive(trio.current_time() + 5) == b"NOOP\r\n"


async def test_a_peer_that_stops_reading_ends_the_session_after_stuck_after(
    pair: tuple[SessionTransport, trio.SocketStream],
) -> None:
    transport, client = pair
    transport.queue(b"x" * (64 << 20))  # far more than both sockets' buffers
    began = trio.current_time()
    with pytest.raises(SessionEnded):
        await transport.flush(0.2)
    assert trio.current_time() - began >= 0.2
    received = 0
    while received < 65536:  # what did go out arrives in order
        received += len(await client.receive_some(RECEIVE_BYTES))


async def test_nothing_is_written_after_half_a_reply(
    pair: tuple[SessionTransport, trio.SocketStream],
) -> None:
    """A shutdown that stops a write part-way (the peer not reading) leaves half a reply on
    the wire: the closing 421 must not be written after it, even once the peer reads."""
    transport, client = pair
    transport.queue(b"x" * (64 << 20))  # far more than both sockets' buffers
    with trio.move_on_after(0.2):  # the shutdown's cancellation, while the write waits
        await transport.flush(30)
    received = bytearray()

    async def drain() -> None:
        while chunk := await client.receive_some(RECEIVE_BYTES):
            received.extend(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        transport.queue(b"421 shutting down\r\n")
        await transport.goodbye(5)  # never raises; here it writes nothing
        await transport.stream.aclose()
    assert received
    assert set(received) == {ord("x")}


async def test_a_shielded_write_finishes_in_a_cancelled_session(
    pair: tuple[SessionTransport, trio.SocketStream],
) -> None:
    """The 250 of a durable message is written shielded: a shutdown that cancels the session
    while the write waits for the peer does not stop it (only ``stuck_after`` would)."""
    transport, client = pair
    reply = b"250 " + b"x" * (8 << 20) + b"\r\n"  # more than the sockets take at once
    received = bytearray()

    async def drain() -> None:
        while len(received) < len(reply):
            received.extend(await client.receive_some(RECEIVE_BYTES))

    written = False
    with trio.move_on_after(10):  # unshielded, the drain would wait for the rest forever
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            with trio.CancelScope() as session:
                session.cancel()  # the shutdown, before the write
                transport.queue(reply)
                await transport.flush(30, shield=True)
                written = True
    assert written
    assert bytes(received) == reply
