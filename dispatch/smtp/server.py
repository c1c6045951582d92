"""`ServerConnection`: the server side of one SMTP session, bytes in, events out, no I/O.

The listener (written on top of this) owns the socket, the TLS handshake, timeouts, the error
budget and every policy decision; this object owns the protocol: framing, syntax, sequencing,
limits, and the order of replies. A typical loop::

    conn = ServerConnection(limits)
    out = conn.send(replies.greeting(name))          # the greeting is the first reply owed
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            write(out); out = b""; conn.receive_data(await read())   # b"" on EOF
        elif event is PAUSED:
            # With every event answered at once, only after the 220 to STARTTLS:
            write(out); out = b""; handshake(); conn.tls_established()
        elif isinstance(event, ConnectionClosed):      # EOF, or a reply that ends the session
            write(out); close(); break
        elif isinstance(event, PipelinedAfterStartTls):
            close(); break                             # no reply: STARTTLS injection
        elif awaits_reply(event):                    # see _state.STEPS
            out += conn.send(decide(event))
        else:
            ...                                        # DataChunk, Bdat: no reply

Writing `out` only when the connection needs data answers a pipelined group in one write
(RFC 2920 §3.2).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

from . import _state, replies
from ._state import State, Step
from .buffer import LINE_TOO_LONG, ReceiveBuffer
from .commands import parse_command
from .data import BodyReader
from .errors import LocalProtocolError
from .events import (
    NEED_DATA,
    PAUSED,
    Auth,
    AuthResponse,
    BareLineEnding,
    Bdat,
    CommandError,
    ConnectionClosed,
    Data,
    DataEnd,
    Event,
    Flow,
    Mail,
    PipelinedAfterStartTls,
    Rcpt,
    StartTls,
    UnsynchronisedPipelining,
)
from .limits import Limits
from .replies import Reply

__all__ = ["ServerConnection"]


# Replies that end the session whatever they answer: RFC 5321 §3.8 (421, "may be sent at any
# time") and RFC 7504 (521, "does not accept mail").
_CLOSING_CODES: Final = frozenset({421, 521})


@dataclass(frozen=True, slots=True, init=False)
class _Owed:
    """One entry of the FIFO of replies owed: what it answers and in which state."""

    step: Step
    state: State
    event: Event | None
    blocks: bool

    def __init__(self, step: Step, state: State, event: Event | None, blocks: bool) -> None:
        object.__setattr__(self, "step", step)  # written out: see events.py, "Made per command"
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "event", event)
        object.__setattr__(self, "blocks", blocks)


class ServerConnection:
    """The server side of one SMTP session.

    Owns: the receive buffer; the session state (`state`, see `_state`); the FIFO of events
    awaiting a reply, which makes replies go out in command order; whether TLS is active and
    the client authenticated; and the open transaction (recipients accepted, SMTPUTF8, the
    DATA/BDAT reader). Raises only `LocalProtocolError`, for misuse by the caller; whatever the
    client sends becomes an event.

    Unsynchronised pipelining (as Postfix's ``smtpd_forbid_unauth_pipelining``): with
    `forbid_unauth_pipelining`, while the client is not authenticated, bytes that were already
    buffered when the greeting is owed (fed before it was sent) or that follow a DATA line in
    the buffer become `UnsynchronisedPipelining` instead of being served. The verdict depends
    on what had arrived when the core looked, i.e. on packet boundaries: a client that sends
    DATA and its message in separate flights close together may get through; one that sends
    them in one write never does. Correct clients are never refused. BDAT is exempt (its
    data is framed by its length, RFC 3030), as is everything after a 235 to AUTH.
    """

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        tls_active: bool = False,
        forbid_unauth_pipelining: bool = False,
    ) -> None:
        """`tls_active`: the connection is already TLS (implicit TLS, port 465).
        `forbid_unauth_pipelining`: see the class docstring."""
        self.limits = limits or Limits()
        self._forbid_unauth_pipelining = forbid_unauth_pipelining
        self._early_reported = False  # the "CONNECT" violation was reported
        self._buffer = ReceiveBuffer()
        self._state = State.CONNECTED
        self._owed: deque[_Owed] = deque([_Owed(Step.GREETING, State.CONNECTED, None, True)])
        self._eof = False
        self._tls_active = tls_active
        self._authenticated = False
        self._recipients = 0
        self._smtputf8 = False
        self._reader: BodyReader | None = None
        # Octets of a rejected BDAT chunk still to be thrown away (RFC 3030 §3: the chunk
        # follows its command whatever the reply).
        self._discard = 0

    # --- what the application may look at -----------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def closed(self) -> bool:
        """True once the session is over: close the socket after writing what `send` gave."""
        return self._state is State.CLOSED

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def authenticated(self) -> bool:
        """True after a 235 reply to AUTH, until STARTTLS resets the session."""
        return self._authenticated

    @property
    def recipients(self) -> int:
        """Recipients accepted in the open transaction."""
        return self._recipients

    @property
    def replies_owed(self) -> int:
        """Events answered by nobody yet (the FIFO's length)."""
        return len(self._owed)

    @property
    def buffered_octets(self) -> int:
        """Octets received and not yet parsed (e.g. to spot a client that talks before the
        greeting)."""
        return len(self._buffer)

    # --- bytes in, events out ------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the client; b"" means the client closed its side (EOF)."""
        if self._eof:
            raise LocalProtocolError("receive_data() after EOF")
        if not data:
            self._eof = True
        elif self._state is not State.CLOSED:
            self._buffer.append(data)

    def next_event(self) -> Event | Literal[Flow.NEED_DATA, Flow.PAUSED]:
        """The next event, NEED_DATA, or PAUSED while a reply that matters is owed."""
        if self._state is State.CLOSED:
            return ConnectionClosed()
        if self._talked_before_greeting():
            # Answered by the reply owed for the greeting (a failure closes, RFC 5321 §3.1).
            self._early_reported = True
            return UnsynchronisedPipelining(
                "CONNECT", len(self._buffer), replies.SYNC_BEFORE_GREETING
            )
        if self._owed and self._owed[-1].blocks:
            return PAUSED
        if self._state is State.STARTTLS:
            return self._after_starttls()
        event = self._read_event()
        if event is not None:
            return event
        if self._eof:
            self._close()
            return ConnectionClosed()
        return NEED_DATA

    def send(self, reply: Reply) -> bytes:
        """Record the reply to the oldest event awaiting one; return its wire form.

        The state moves here (see `_state`). A 421 or 521 may be sent at any time, even with
        nothing owed, and ends the session.
        """
        if self._state is State.CLOSED:
            raise LocalProtocolError("the session is closed")
        wire = reply.serialise()
        if reply.code in _CLOSING_CODES:
            self._owed.clear()
            self._close()
            return wire
        if not self._owed:
            raise LocalProtocolError(f"no command is awaiting a reply (sending {reply})")
        owed = self._owed[0]
        after = _state.next_state(owed.state, owed.step, _state.outcome(reply.code))
        self._owed.popleft()
        self._enter(after, owed, reply)
        return wire

    def tls_established(self) -> None:
        """The TLS handshake after STARTTLS succeeded: the session starts over in INITIAL,
        unauthenticated, with no transaction (RFC 3207 §4.2). The client sends EHLO next."""
        if self._state is not State.STARTTLS:
            raise LocalProtocolError(f"tls_established() in state {self._state.value}")
        if self._buffer:
            raise LocalProtocolError(
                "plaintext arrived after STARTTLS: call next_event() after the 220 and close "
                "the connection on PipelinedAfterStartTls"
            )
        self._tls_active = True
        self._authenticated = False
        self._state = State.INITIAL
        self._end_transaction()

    # --- internals -----------------------------------------------------------------------

    def _read_event(self) -> Event | None:
        if self._discard:
            dropped = min(self._discard, len(self._buffer))
            self._buffer.drop(dropped)
            self._discard -= dropped
            if self._discard:
                return None
        if self._state in (State.DATA, State.BDAT):
            assert self._reader is not None
            body_event = self._reader.next_event(self._buffer)
            if isinstance(body_event, DataEnd):
                step = self._chunk_end_step(body_event)
                self._owe(step, body_event)
            elif isinstance(body_event, BareLineEnding):
                self._owe(Step.FATAL, body_event)
            return body_event
        line = self._buffer.next_line(
            self.limits.max_auth_line if self._state is State.AUTH else self.limits.max_line
        )
        if line is None:
            return None
        if self._state is State.AUTH:
            if line is LINE_TOO_LONG:
                return self._owe(Step.ERROR, CommandError("AUTH", replies.LINE_TOO_LONG))
            # A SASL response is base64 (RFC 4954 §4); anything else fails to decode later.
            return self._owe(Step.AUTH_RESPONSE, AuthResponse(line[:-2].decode("ascii", "replace")))
        if line is LINE_TOO_LONG:
            return self._owe(Step.ERROR, CommandError("unknown", replies.LINE_TOO_LONG))
        command = parse_command(line[:-2], self.limits, smtputf8=self._smtputf8)
        if isinstance(command, Data) and self._buffer and self._forbids_pipelining():
            # RFC 2920 §3.1: DATA ends a pipelined group, accepted or not. If it is refused
            # (no valid recipient), what follows would otherwise be read as commands.
            violation = UnsynchronisedPipelining("DATA", len(self._buffer), replies.SYNC_AFTER_DATA)
            return self._owe(Step.FATAL, violation)
        return self._sequence(command)

    def _forbids_pipelining(self) -> bool:
        return self._forbid_unauth_pipelining and not self._authenticated

    def _talked_before_greeting(self) -> bool:
        return (
            self._state is State.CONNECTED
            and bool(self._buffer)
            and not self._early_reported
            and self._forbids_pipelining()
        )

    def _sequence(self, event: Event) -> Event:
        """Check a parsed command against the state; turn it into an error if it cannot be
        accepted now. Registers the reply it is owed."""
        step = _state.STEPS[type(event)]
        refusal = self._refusal(event, step)
        if refusal is not None:
            if isinstance(event, Bdat):
                self._discard = event.size
            return self._owe(Step.ERROR, CommandError(_verb(event), refusal))
        if isinstance(event, Bdat):
            if self._reader is None:
                self._reader = BodyReader(self.limits, chunked=True)
            self._reader.start_chunk(event.size, last=event.last)
            self._state = _state.next_state(self._state, step, _state.Outcome.IMMEDIATE)
            return event
        return self._owe(step, event)

    def _refusal(self, event: Event, step: Step) -> Reply | None:
        if step in (Step.ERROR, Step.FATAL):
            return None
        state = self._state
        if not _state.is_legal(state, step):
            return _sequence_reply(state, step)
        if isinstance(event, Rcpt) and self._recipients >= self.limits.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        if isinstance(event, Mail) and (event.size or 0) > self.limits.max_message_bytes:
            return replies.MESSAGE_TOO_BIG  # RFC 1870 §6.1
        if isinstance(event, StartTls) and self._tls_active:
            return replies.TLS_ALREADY_ACTIVE
        if isinstance(event, Auth) and self._authenticated:
            return replies.ALREADY_AUTHENTICATED  # RFC 4954 §4
        return None

    def _owe(self, step: Step, event: Event) -> Event:
        blocks = _state.blocks_parsing(self._state, step)
        self._owed.append(_Owed(step, self._state, event, blocks))
        return event

    def _chunk_end_step(self, end: DataEnd) -> Step:
        if self._state is State.DATA:
            return Step.DATA_END
        return Step.LAST_CHUNK_END if end.last else Step.CHUNK_END

    def _enter(self, after: State, owed: _Owed, reply: Reply) -> None:
        if owed.step is Step.RCPT and reply.is_positive:
            self._recipients += 1
        elif owed.step is Step.MAIL and reply.is_positive and isinstance(owed.event, Mail):
            self._smtputf8 = owed.event.smtputf8
        elif owed.step in (Step.AUTH, Step.AUTH_RESPONSE) and reply.code == 235:
            self._authenticated = True
        if after is State.DATA:
            self._reader = BodyReader(self.limits, chunked=False)
        if after in (State.INITIAL, State.READY):
            self._end_transaction()
        if after is State.CLOSED:
            self._close()
        self._state = after

    def _after_starttls(self) -> Event | Literal[Flow.PAUSED]:
        # RFC 3207 §4 / CVE-2011-0411: nothing may follow STARTTLS before the handshake.
        if self._buffer:
            octets = len(self._buffer)
            self._close()
            return PipelinedAfterStartTls(octets)
        if self._eof:
            self._close()
            return ConnectionClosed()
        return PAUSED

    def _end_transaction(self) -> None:
        self._recipients = 0
        self._smtputf8 = False
        self._reader = None

    def _close(self) -> None:
        self._state = State.CLOSED
        self._buffer.drop(len(self._buffer))
        self._reader = None


def _verb(event: Event) -> str:
    return type(event).__name__.upper() if not isinstance(event, StartTls) else "STARTTLS"


def _sequence_reply(state: State, step: Step) -> Reply:
    """The most helpful 503 for a command out of sequence (RFC 5321 §4.1.4)."""
    if state is State.INITIAL and step in (Step.MAIL, Step.STARTTLS, Step.AUTH):
        return replies.EHLO_FIRST
    if step is Step.MAIL:
        return replies.NESTED_MAIL
    if step is Step.RCPT and state in (State.INITIAL, State.READY):
        return replies.NEED_MAIL
    if step in (Step.DATA, Step.BDAT) and state in (State.INITIAL, State.READY, State.MAIL):
        return replies.NEED_RCPT
    if step is Step.DATA and state is State.CHUNKING:
        return replies.DATA_AFTER_BDAT
    return replies.BAD_SEQUENCE
