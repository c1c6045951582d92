"""The bytes of one inbound SMTP connection: reads and writes under deadlines, and TLS.

:class:`SessionTransport` owns a session's stream — plain TCP, or the TLS stream that
STARTTLS (RFC 3207) or an implicit-TLS port (RFC 8314) puts over it — and the replies queued
for it. The session decides what to say and when a wait has lasted too long; the transport
does the waiting and the writing, and turns a peer that went away into :class:`SessionEnded`.
It closes nothing: the listener closes the stream it accepted, and the TLS layer over it
(``SessionTransport.stream`` is the outermost one).

:func:`tls_handshake` is the one server-side handshake, for STARTTLS here and for the
implicit-TLS ports in the listener: bounded by :data:`TLS_HANDSHAKE_SECONDS`, so a client that
starts one and goes quiet does not hold its connection slot.
"""

from __future__ import annotations

import contextlib
import contextvars
import ssl
from typing import Final

import trio

from dispatch import fd_io
from dispatch.monitoring.dialogue import TlsFacts
from dispatch.monitoring.traces import Trace

RECEIVE_BYTES: Final = 65_536
TLS_HANDSHAKE_SECONDS: Final = 10.0
GOODBYE_SECONDS: Final = 2.0  # a peer that does not read its 421 is not waited for


class SessionEnded(Exception):
    """The peer went away or broke the transport; nothing more can be said to it."""


class HandshakeFailed(Exception):
    """The TLS handshake did not complete in time (the message says why); nothing is closed:
    whoever owns the stream under it closes that."""


# The name the client asked for (SNI, RFC 6066 §3), set by the context's servername callback
# during the handshake. The callback runs inside do_handshake, in the handshaking task's own
# context, so each session reads its own client's name; the server-side SSLObject keeps none.
_requested_name: Final[contextvars.ContextVar[str | None]] = contextvars.ContextVar(
    "dispatch_tls_server_name", default=None
)


def _note_requested_name(
    _ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _context: ssl.SSLContext
) -> None:
    _requested_name.set(server_name)  # None: go on with the same context and certificate


async def tls_handshake(
    stream: trio.abc.Stream, context: ssl.SSLContext, trace: Trace | None = None
) -> trio.SSLStream[trio.abc.Stream]:
    """Server side of a TLS handshake over ``stream``, under :data:`TLS_HANDSHAKE_SECONDS`.

    ``trace`` gets what was agreed (version, cipher, the SNI the client sent) or why it failed.
    """
    if context.sni_callback is None:  # once per context; a callback set elsewhere is kept
        context.sni_callback = _note_requested_name
    _requested_name.set(None)
    tls_stream = trio.SSLStream(stream, context, server_side=True, https_compatible=True)
    try:
        with trio.fail_after(TLS_HANDSHAKE_SECONDS):
            await tls_stream.do_handshake()
    except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        why: object = exc.__cause__ or exc
        if isinstance(exc, trio.TooSlowError):
            why = f"not completed within {TLS_HANDSHAKE_SECONDS:g} s"
        failure = HandshakeFailed(why)
        if trace is not None:
            trace.event(f"TLS handshake failed: {failure}")
        raise failure from exc
    if trace is not None:
        trace.event(TlsFacts.of(tls_stream, _requested_name.get()).text())
    return tls_stream


class SessionTransport:
    """One session's stream and the replies not yet written to it (see the module doc)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._out = bytearray()
        # Plain TCP is read and written through its descriptor (dispatch/fd_io.py): per
        # command the stream's layers cost more than the system call. None over TLS.
        self._fd = fd_io.plain_fd(stream)
        self._torn = False  # a write stopped part-way: nothing may follow its bytes

    def queue(self, data: bytes) -> None:
        """Queue serialised replies; :meth:`flush` writes everything queued in one go."""
        self._out += data

    def receive_ready(self) -> bytes | None:
        """What a plain TCP peer has sent already (``b""``: it closed), or None: nothing yet.

        One ``read(2)`` that never waits. Always None over TLS: what is readable there is
        TLS records, not commands. Raises :class:`SessionEnded` if the peer broke the
        connection.
        """
        if self._fd is None:
            return None
        try:
            return fd_io.receive_now(self._fd, RECEIVE_BYTES)
        except trio.BrokenResourceError as exc:
            raise SessionEnded from exc

    async def receive(self, deadline: float) -> bytes | None:
        """The next bytes from the peer, or ``None`` if none came by ``deadline`` (trio time).

        Raises :class:`SessionEnded` if the peer broke the connection.
        """
        # Bytes already there need no deadline: read first, and open the deadline's cancel
        # scope (which costs more than the read) only to wait. Most commands are there by
        # the time the session looks: the client wrote them while our reply went out. (A
        # deadline already past is met by the next read that has to wait: the deadline
        # moves only with a complete command, so a dripping client still runs into it.)
        fd = self._fd
        try:
            if fd is not None:
                await trio.lowlevel.checkpoint_if_cancelled()
                data = fd_io.receive_now(fd, RECEIVE_BYTES)  # b"": EOF
                if data is not None:
                    await trio.lowlevel.cancel_shielded_checkpoint()  # a fast peer yields too
                    return data
            with trio.CancelScope(deadline=deadline):
                if fd is not None:
                    return await fd_io.receive_when_readable(fd, RECEIVE_BYTES)
                return bytes(await self.stream.receive_some(RECEIVE_BYTES))  # TLS: bytearray
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise SessionEnded from exc
        return None

    async def flush(self, stuck_after: float, *, shield: bool = False) -> None:
        """Write what is queued; :class:`SessionEnded` if the peer is gone, or stopped reading
        (the write took more than ``stuck_after`` seconds). With ``shield`` a cancellation
        does not stop the write (``stuck_after`` still does).

        A write that a cancellation or the deadline stopped part-way leaves half a reply on
        the wire; every later flush (the ``421`` of a shutdown, say) then raises
        :class:`SessionEnded` instead of writing after it.
        """
        if not self._out:
            return
        if self._torn:
            raise SessionEnded
        data, self._out = bytes(self._out), bytearray()
        if self._fd is not None:  # what the kernel takes at once needs no deadline
            try:
                data = data[fd_io.send_now(self._fd, data) :]
            except trio.BrokenResourceError as exc:
                raise SessionEnded from exc
            if not data:
                return  # no checkpoint: the session reads (and yields) next
        self._torn = True  # until the rest is out
        with trio.CancelScope(deadline=trio.current_time() + stuck_after, shield=shield) as stuck:
            try:
                await fd_io.send(self.stream, self._fd, data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise SessionEnded from exc
        if stuck.cancelled_caught:
            raise SessionEnded  # the peer stopped reading
        self._torn = False

    async def goodbye(self, stuck_after: float) -> None:
        """Write what is queued (a closing reply) if the peer takes it within ``stuck_after``
        seconds, and at most :data:`GOODBYE_SECONDS`; never raises."""
        with contextlib.suppress(SessionEnded):
            await self.flush(min(stuck_after, GOODBYE_SECONDS))

    async def start_tls(self, context: ssl.SSLContext, trace: Trace | None = None) -> None:
        """Put TLS over the stream (after the ``220`` for STARTTLS has been flushed); the
        handshake's facts go to ``trace``.

        Raises :class:`HandshakeFailed`; the session then ends.
        """
        self.stream = await tls_handshake(self.stream, context, trace)
        self._fd = None
