"""`ClientConnection`: the client side of one SMTP session, for the outbound relay; no I/O.

Commands go out with `send` (and `data_chunk`/`end_data`, `bdat` for message data), each
returning the bytes to write; replies come back from `next_event` as `ServerReply`, matched in
order with what they answer. A FIFO of requests awaiting replies (the greeting first) is what
makes PIPELINING work (RFC 2920): MAIL, every RCPT and DATA may go out in one write, and the
replies are paired with them as they arrive.

The session state and what may be sent in it come from the table in `_state`, read from the
client's end (see its theory of operation): a command out of sequence (RCPT before MAIL, DATA
before RCPT, MAIL before EHLO, anything after QUIT, a command behind one whose reply decides
what may follow, pipelining to a server that did not offer it) raises `LocalProtocolError`
before any byte is produced. Anything that breaks the pairing of replies (a reply with nothing
awaiting it, a malformed or oversized reply, a reply of a class that makes no sense for its
command, plaintext after the 220 to STARTTLS) raises `RemoteProtocolError`: the relay drops
the connection and retries the message later.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Literal, NamedTuple

from . import _state
from ._state import Outcome, State, Step
from .buffer import LINE_TOO_LONG, ReceiveBuffer
from .data import DataEncoder
from .errors import LocalProtocolError, RemoteProtocolError, UnexpectedReply
from .events import (
    AuthResponse,
    Bdat,
    Command,
    ConnectionClosed,
    DataEnd,
    Ehlo,
    Flow,
    Greeting,
    ServerReply,
)
from .extensions import Extensions
from .limits import ClientLimits
from .replies import Reply, ReplyLine, assemble_reply, parse_reply_line

__all__ = ["ClientConnection"]

_Request = Command | Greeting | DataEnd

# States entered only by one exact code: 354 to DATA (RFC 5321 §4.3.2), 220 to STARTTLS
# (RFC 3207 §4). Another code of the same class leaves the client unsure what follows.
_ENTRY_CODES: Final = {State.DATA: 354, State.STARTTLS: 220}
# How requests are named in errors; the rest by their verb (type name, upper-cased).
_NAMES: Final[dict[type, str]] = {
    Greeting: "the greeting",
    DataEnd: "the end of data",
    AuthResponse: "the AUTH response",
}


def _name(request: _Request) -> str:
    return _NAMES.get(type(request)) or type(request).__name__.upper()


class _Awaited(NamedTuple):
    """A request whose reply has not arrived yet.

    `sent_in` is the state the session was hoped to be in when it went out (earlier replies
    may still have been on their way); `answered_in` is where its reply's transition starts,
    the same except for a BDAT chunk, whose reply answers the BDAT state it is read in.
    """

    request: _Request
    step: Step
    sent_in: State
    answered_in: State


class ClientConnection:
    """The client side of one SMTP session.

    Owns: the receive buffer and the lines of a reply being assembled; the FIFO of requests
    awaiting replies; the session state as confirmed by replies (`state`) and as hoped once
    the awaited replies are in; the DATA encoder while a message is being sent; the server's
    `Extensions` once EHLO is answered. Raises `RemoteProtocolError` when the server breaks
    the protocol and `LocalProtocolError` when the caller sends out of turn.
    """

    def __init__(self, limits: ClientLimits | None = None) -> None:
        self.limits = limits or ClientLimits()
        self._buffer = ReceiveBuffer()
        greeting = _Awaited(Greeting(), Step.GREETING, State.CONNECTED, State.CONNECTED)
        self._awaiting: deque[_Awaited] = deque([greeting])
        self._lines: list[ReplyLine] = []
        self._reply_bytes = 0
        self._eof = False
        self._state = State.CONNECTED  # as the replies received so far say
        self._hoped = State.CONNECTED  # once every awaited reply has come as hoped
        self._encoder: DataEncoder | None = None  # set by a 354 until end_data()
        self.extensions: Extensions | None = None

    @property
    def state(self) -> State:
        """Where the session is, as the replies received so far say (see `_state`)."""
        return self._state

    @property
    def awaiting(self) -> tuple[_Request, ...]:
        """Requests sent whose replies have not arrived, oldest first."""
        return tuple(awaited.request for awaited in self._awaiting)

    @property
    def closed(self) -> bool:
        """The session is over: the server ended it (221, 421, a failed greeting) or closed
        the connection."""
        return self._state is State.CLOSED

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
        if self._state is State.CLOSED:
            return ConnectionClosed()
        reply = self._next_reply()
        if reply is None:
            if self._eof:
                self._close()
                return ConnectionClosed()
            return Flow.NEED_DATA
        if not self._awaiting:
            # RFC 5321 §3.8: a server may announce 421 at any time before closing.
            if reply.code == 421:
                self._close()
                return ServerReply(reply, None)
            raise RemoteProtocolError(f"reply with no command awaiting it: {reply}")
        awaited = self._awaiting.popleft()
        self._on_reply(awaited, reply)
        return ServerReply(reply, awaited.request)

    def _next_reply(self) -> Reply | None:
        """The next complete reply in the buffer, or None until more bytes arrive."""
        while True:
            line = self._buffer.next_line(self.limits.max_reply_line)
            if line is None:
                return None
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
        return reply

    def _on_reply(self, awaited: _Awaited, reply: Reply) -> None:
        """Move the state as the table says (see `_state`'s theory of operation)."""
        result = _state.outcome(reply.code)
        if reply.code == 421:  # RFC 5321 §3.8: closing, whatever it answers
            after = State.CLOSED
        elif result is Outcome.FAIL and self._state is not awaited.sent_in:
            after = self._state  # a refusal of a command sent on a hope that did not come true
        else:
            leads = _state.leads_to(awaited.answered_in, awaited.step, result)
            entry_code = _ENTRY_CODES.get(leads) if leads is not None else None
            if leads is None or (entry_code is not None and reply.code != entry_code):
                raise UnexpectedReply(_name(awaited.request), reply)
            after = leads
        if awaited.step is Step.HELLO and reply.is_positive:
            ehlo = isinstance(awaited.request, Ehlo)
            self.extensions = Extensions.from_ehlo_reply(reply) if ehlo else None
        if after is State.STARTTLS and self._buffer:
            # The server's plaintext after 220 would be read as if it came over TLS
            # (STARTTLS response injection, the mirror of CVE-2011-0411).
            raise RemoteProtocolError("data after the 220 reply to STARTTLS")
        if after is State.DATA and self._state is not State.DATA:
            self._encoder = DataEncoder()
        as_hoped = self._state is awaited.sent_in and result is _state.hoped(awaited.step)
        self._state = after
        if not self._awaiting:
            self._hoped = after
        elif not as_hoped:  # what was counted on for the commands behind it has changed
            self._hoped = self._replay()

    def _replay(self) -> State:
        """The state once every awaited reply has come as hoped, from the confirmed one."""
        state = self._state
        for awaited in self._awaiting:
            if state is awaited.sent_in:  # else it will be refused and change nothing
                state = _state.hoped_state(awaited.answered_in, awaited.step)
        return state

    def _close(self) -> None:
        self._state = self._hoped = State.CLOSED
        self._encoder = None

    # --- requests out -----------------------------------------------------------------------

    def send(self, command: Command) -> bytes:
        """The wire form of a command, which now awaits its reply."""
        if isinstance(command, Bdat):
            raise LocalProtocolError("send BDAT with bdat(), which adds the chunk")
        step = _state.STEPS[type(command)]
        self._check_can_send(step, _name(command))
        wire = command.serialise()
        self._await(command, step, self._hoped)
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
        self._await(DataEnd(last=True), Step.DATA_END, State.DATA)
        return wire

    def send_data(self, message: bytes) -> bytes:
        """`data_chunk(message) + end_data()`: a whole message after the 354."""
        return self.data_chunk(message) + self.end_data()

    def bdat(self, chunk: bytes, *, last: bool) -> bytes:
        """`BDAT n [LAST]` and the chunk, sent as it is (RFC 3030 §2: no dot-stuffing)."""
        self._check_can_send(Step.BDAT, "BDAT")
        command = Bdat(len(chunk), last=last)
        wire = command.serialise() + chunk
        reading = _state.next_state(self._hoped, Step.BDAT, Outcome.IMMEDIATE)
        self._await(command, Step.LAST_CHUNK_END if last else Step.CHUNK_END, reading)
        return wire

    def tls_established(self) -> None:
        """The TLS handshake after the 220 to STARTTLS succeeded: the session starts over in
        INITIAL and forgets what EHLO said (RFC 3207 §4.2); send EHLO again."""
        if self._state is not State.STARTTLS:
            raise LocalProtocolError("tls_established() without a 220 reply to STARTTLS")
        self._state = self._hoped = State.INITIAL
        self.extensions = None

    def _await(self, request: _Request, step: Step, answered_in: State) -> None:
        self._awaiting.append(_Awaited(request, step, self._hoped, answered_in))
        self._hoped = _state.hoped_state(answered_in, step)

    def _check_can_send(self, step: Step, name: str) -> None:
        """Raise `LocalProtocolError` unless `name` (of `step`) may go out now."""
        if self._state is State.CLOSED:
            raise LocalProtocolError(f"{name} after the session closed")
        if self._state is State.STARTTLS:
            raise LocalProtocolError(f"{name} before the TLS handshake: STARTTLS is in progress")
        if self._awaiting:
            before = self._awaiting[-1]
            if before.step not in _state.PIPELINABLE:
                raise LocalProtocolError(
                    f"{name} must wait for the reply to {_name(before.request)}, which decides "
                    "what may follow"
                )
            if self.extensions is None or not self.extensions.pipelining:
                raise LocalProtocolError(
                    f"{name} must wait for the reply to {_name(before.request)}: the server "
                    "did not offer PIPELINING (RFC 2920 §2)"
                )
        if self._encoder is not None:
            raise LocalProtocolError(f"{name} while a message is being sent: end_data() first")
        if not _state.is_legal(self._hoped, step):
            raise LocalProtocolError(_out_of_sequence(name, self._hoped, step))


def _out_of_sequence(name: str, state: State, step: Step) -> str:
    """What is wrong with sending `name` (of `step`) in `state`, and what to do instead."""
    if state is State.INITIAL:
        return f"{name} before EHLO/HELO: greet the server first (RFC 5321 §4.1.4)"
    in_transaction = state in (State.MAIL, State.RCPT, State.CHUNKING)
    if step is Step.MAIL and in_transaction:
        return "MAIL inside a transaction: finish it or send RSET first (RFC 5321 §4.1.4)"
    if step is Step.RCPT:
        return "RCPT before MAIL: open a transaction first (RFC 5321 §4.1.4)"
    if step in (Step.DATA, Step.BDAT) and state in (State.READY, State.MAIL):
        return f"{name} before a recipient was accepted: send MAIL and RCPT first"
    if step is Step.DATA and state is State.CHUNKING:
        return "DATA after BDAT: a transaction uses one or the other (RFC 3030 §3)"
    if step is Step.AUTH_RESPONSE:
        return "an AUTH response without a 334 challenge to answer (RFC 4954 §4)"
    if in_transaction:
        return f"{name} inside a transaction: finish it or send RSET first"
    return f"{name} is out of sequence in state {state.value}"
