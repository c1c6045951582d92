"""Reading and writing a connected plain TCP socket through its descriptor, under Trio.

``trio.SocketStream`` puts several layers between a caller and ``recv``/``send`` (a
conflict detector, an error-translating context manager, the socket wrapper's ``_try_sync``
context manager); for an SMTP session, which moves a few dozen bytes per command, they cost
more than the system call itself (docs/intake-cpu.md, round 3). These two functions do what
``receive_some`` and ``send_all`` do for a plain socket, with ``os.read``/``os.write`` and
``trio.lowlevel.wait_readable``/``wait_writable`` only when the kernel has nothing, or no
room. TLS is not for here: an ``SSLStream`` does that work.

Checkpoints are where trio's socket methods put them: a cancellation is seen before the
system call; once bytes have moved, the yield that follows cannot be cancelled (nothing read
or written is forgotten); and there is a yield even when the kernel answered at once, so a
peer that never pauses cannot starve the other tasks. :func:`receive_now` and
:func:`send_now` are the system call alone, for a caller that places the checkpoints and the
deadline itself (intake's ``SessionTransport``: only a wait needs a deadline's cancel scope,
docs/intake-cpu.md, round 7). Errors are the stream's:
``trio.BrokenResourceError`` for a connection the peer broke (reset, broken pipe), and
``trio.ClosedResourceError`` if the socket was closed while a task waited on it. Deadlines
are the caller's cancel scopes.

The descriptor stays owned by the stream it came from (``stream.socket.fileno()``); nothing
here closes it.
"""

from __future__ import annotations

import os

import trio


def receive_now(fd: int, max_bytes: int) -> bytes | None:
    """What ``fd`` has now (at most ``max_bytes``; ``b""`` at end of stream), or None if it
    has nothing yet. Neither waits nor yields."""
    try:
        return os.read(fd, max_bytes)
    except BlockingIOError:
        return None
    except OSError as exc:
        raise trio.BrokenResourceError(str(exc)) from exc


async def receive_some(fd: int, max_bytes: int) -> bytes:
    """The next bytes from ``fd`` (at most ``max_bytes``; ``b""`` at end of stream)."""
    await trio.lowlevel.checkpoint_if_cancelled()
    data = receive_now(fd, max_bytes)
    if data is not None:
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data
    return await receive_when_readable(fd, max_bytes)


async def receive_when_readable(fd: int, max_bytes: int) -> bytes:
    """Wait until ``fd`` is readable, then read: :func:`receive_some` for a caller whose
    :func:`receive_now` just found nothing."""
    while True:
        await trio.lowlevel.wait_readable(fd)
        data = receive_now(fd, max_bytes)
        if data is not None:
            return data


def send_now(fd: int, data: bytes | memoryview) -> int:
    """Write what the kernel takes of ``data`` at once; the number of bytes written.

    Neither waits nor yields: for a caller about to wait for the peer's answer anyway (an
    SMTP reply, then the next command), which then needs neither a deadline's cancel scope
    nor :func:`send_all`'s checkpoints when the kernel took everything, as it nearly always
    does for a few dozen bytes. The rest, if any, goes through :func:`send_all`.
    """
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise trio.BrokenResourceError(str(exc)) from exc


async def send_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, waiting for room as long as it takes."""
    await trio.lowlevel.checkpoint_if_cancelled()
    sent = send_now(fd, data)
    if sent == len(data):
        await trio.lowlevel.cancel_shielded_checkpoint()
        return
    rest = memoryview(data)[sent:]
    while rest:
        await trio.lowlevel.wait_writable(fd)
        rest = rest[send_now(fd, rest) :]


def plain_fd(stream: trio.abc.Stream) -> int | None:
    """The descriptor of ``stream`` if it is a plain TCP ``SocketStream``; None otherwise."""
    return stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None


async def receive(stream: trio.abc.Stream, fd: int | None, max_bytes: int) -> bytes:
    """From ``fd``, the stream's :func:`plain_fd`, when it has one; else from ``stream``."""
    if fd is not None:
        return await receive_some(fd, max_bytes)
    return bytes(await stream.receive_some(max_bytes))  # SSLStream hands out bytearrays


async def send(stream: trio.abc.Stream, fd: int | None, data: bytes) -> None:
    """To ``fd``, the stream's :func:`plain_fd`, when it has one; else to ``stream``."""
    if fd is not None:
        await send_all(fd, data)
    else:
        await stream.send_all(data)
