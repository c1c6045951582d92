"""`ClientConnection`: the client side of one SMTP session, for the outbound relay; no I/O.

Commands go out with `send` (and `data_chunk`/`end_data`, `bdat` for message data), each
returning the bytes to write; replies come back from `next_event` as `ServerReply`, matched in
order with what they answer. A FIFO of requests awaiting replies (the greeting first) is what
makes PIPELINING work (RFC 2920): MAIL, every RCPT and DATA may go out in one write, and the
replies are paired with them as they arrive. Anything that breaks that pairing (a reply with
nothing awaiting it, a malformed or oversized reply, plaintext after the 220 to STARTTLS)
raises `RemoteProtocolError`: the relay drops the connection and retries the message later.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from .buffer import LINE_TOO_LONG, ReceiveBuffer
from .data import DataEncoder
from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    Bdat,
    Command,
    ConnectionClosed,
    Data,
    DataEnd,
    Ehlo,
    Flow,
    Greeting,
    Quit,
    ServerReply,
    StartTls,
)
from .extensions import Extensions
from .limits import ClientLimits
from .replies import ReplyLine, assemble_reply, parse_reply_line

__all__ = ["ClientConnection"]

_Request = Command | Greeting | DataEnd


class ClientConnection:
    """The client side of one SMTP session.

    Owns: the receive buffer and the lines of a reply being assembled; the FIFO of requests
    awaiting replies; the DATA encoder while a message is being sent; the server's
    `Extensions` once EHLO is answered. Raises `RemoteProtocolError` when the server breaks
    the protocol and `LocalProtocolError` when the caller sends out of turn.
    """

    def __init__(self, limits: ClientLimits | None = None) -> None:
        self.limits = limits or ClientLimits()
        self._buffer = ReceiveBuffer()
        self._awaiting: deque[_Request] = deque([Greeting()])
        self._lines: list[ReplyLine] = []
        self._reply_bytes = 0
        self._eof = False
        self._closed = False
        # DATA sent, its reply not yet seen: nothing else may be sent before it (RFC 2920 §3.1).
        self._data_requested = False
        self._encoder: DataEncoder | None = None  # set by a 354 until end_data()
        self._tls_pending = False  # 220 to STARTTLS received, handshake not yet done
        self.extensions: Extensions | None = None

    @property
    def awaiting(self) -> tuple[_Request, ...]:
        """Requests sent whose replies have not arrived, oldest first."""
        return tuple(self._awaiting)

    @property
    def closed(self) -> bool:
        """The server ended the session (221, 421) or closed the connection."""
        return self._closed

    @property
    def sending_data(self) -> bool:
        """A 354 was received: message data may be sent with `data_chunk`/`end_data`."""
        return self._encoder is not None

    # --- replies in -------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the server; b"" means it closed the connection."""
        if self._eof:
            raise LocalProtocolError("receive_data() after EOF")
        if data:
            self._buffer.append(data)
        else:
            self._eof = True

    def next_event(self) -> ServerReply | ConnectionClosed | Literal[Flow.NEED_DATA]:
        """The next complete reply, NEED_DATA, or ConnectionClosed once the server is gone."""
        if self._closed:
            return ConnectionClosed()
        while True:
            line = self._buffer.next_line(self.limits.max_reply_line)
            if line is None:
                if self._eof:
                    self._closed = True
                    return ConnectionClosed()
                return Flow.NEED_DATA
            if line is LINE_TOO_LONG:
                raise RemoteProtocolError("reply line too long")
            parsed = parse_reply_line(line)
            self._lines.append(parsed)
            self._reply_bytes += len(line)
            if len(self._lines) > self.limits.max_reply_lines:
                raise RemoteProtocolError("reply has too many lines")
            if self._reply_bytes > self.limits.max_reply_bytes:
                raise RemoteProtocolError("reply too large")
            if parsed.final:
                break
        reply = assemble_reply(self._lines)
        self._lines, self._reply_bytes = [], 0
        if not self._awaiting:
            # RFC 5321 §3.8: a server may announce 421 at any time before closing.
            if reply.code == 421:
                self._closed = True
                return ServerReply(reply, None)
            raise RemoteProtocolError(f"reply with no command awaiting it: {reply}")
        request = self._awaiting.popleft()
        self._on_reply(request, reply.code)
        if reply.code == 421 or (isinstance(request, Quit)):
            self._closed = True
        elif isinstance(request, Ehlo) and reply.is_positive:
            self.extensions = Extensions.from_ehlo_reply(reply)
        return ServerReply(reply, request)

    def _on_reply(self, request: _Request, code: int) -> None:
        if isinstance(request, Data):
            self._data_requested = False
            if code == 354:
                self._encoder = DataEncoder()
        elif isinstance(request, StartTls) and code == 220:
            if self._buffer:
                # The server's plaintext after 220 would be read as if it came over TLS
                # (STARTTLS response injection, the mirror of CVE-2011-0411).
                raise RemoteProtocolError("data after the 220 reply to STARTTLS")
            self._tls_pending = True

    # --- requests out -----------------------------------------------------------------------

    def send(self, command: Command) -> bytes:
        """The wire form of a command, which now awaits its reply."""
        self._check_can_send()
        if isinstance(command, Bdat):
            raise LocalProtocolError("send BDAT with bdat(), which adds the chunk")
        wire = command.serialise()
        self._awaiting.append(command)
        if isinstance(command, Data):
            self._data_requested = True
        return wire

    def data_chunk(self, data: bytes) -> bytes:
        """The wire form of the next piece of the message (after 354): dot-stuffed, bare CR
        and LF turned into CRLF (see `data.DataEncoder`)."""
        if self._encoder is None:
            raise LocalProtocolError("data_chunk() before a 354 reply to DATA")
        return self._encoder.encode(data)

    def end_data(self) -> bytes:
        """The end of the message: a final CRLF if needed, then `.` CRLF. Awaits the reply."""
        if self._encoder is None:
            raise LocalProtocolError("end_data() before a 354 reply to DATA")
        wire = self._encoder.end()
        self._encoder = None
        self._awaiting.append(DataEnd(last=True))
        return wire

    def send_data(self, message: bytes) -> bytes:
        """`data_chunk(message) + end_data()`: a whole message after the 354."""
        return self.data_chunk(message) + self.end_data()

    def bdat(self, chunk: bytes, *, last: bool) -> bytes:
        """`BDAT n [LAST]` and the chunk, sent as it is (RFC 3030 §2: no dot-stuffing)."""
        self._check_can_send()
        command = Bdat(len(chunk), last=last)
        self._awaiting.append(command)
        return command.serialise() + chunk

    def tls_established(self) -> None:
        """The TLS handshake after the 220 to STARTTLS succeeded: forget what EHLO said
        (RFC 3207 §4.2); send EHLO again."""
        if not self._tls_pending:
            raise LocalProtocolError("tls_established() without a 220 reply to STARTTLS")
        self._tls_pending = False
        self.extensions = None

    def _check_can_send(self) -> None:
        if self._closed:
            raise LocalProtocolError("the session is closed")
        if self._data_requested or self._encoder is not None:
            raise LocalProtocolError("a message is being sent: finish DATA first")
        if self._tls_pending or any(isinstance(r, StartTls) for r in self._awaiting):
            raise LocalProtocolError("STARTTLS is in progress: finish the handshake first")
