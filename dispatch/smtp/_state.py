"""The session states of both sides, the one table of legal transitions, and which events take
a reply.

Theory of operation
-------------------
An SMTP session is a strict request/reply dialogue: every command line is answered by exactly
one reply (RFC 5321 §4.2), and pipelined commands are answered in the order they were sent
(RFC 2920 §3.1). The client's command decides what is *legal*; the server's reply decides what
*happens*: MAIL FROM opens a transaction only if the reply is positive. So the state does not
move when a command is parsed, but when the application sends the reply to it
(`ServerConnection.send`). One exception: BDAT is followed by its chunk whatever the server
thinks of it (RFC 3030 §2), so an accepted BDAT moves to the BDAT state at once and its reply
is owed at the end of the chunk.

`_TRANSITIONS[(state, step)]` maps each reply outcome (2xx / 3xx / 4xx-5xx) to the next state.
A command whose `(state, step)` pair is absent is out of sequence and becomes a 503; an outcome
that is absent (a 354 to MAIL) is a bug in the application: `LocalProtocolError`.

Because whether the next command is legal depends on the reply to this one, the connection
stops parsing (PAUSED) while a reply is owed that could change anything. Only replies to NOOP,
HELP, VRFY and to errors the core found itself cannot; a burst of those is parsed ahead and
may be answered in one write. (Every other reply is cheap to batch too: the application can
collect what `send` returns and write it when the connection next asks for data.)

Some states read something other than command lines: DATA and BDAT read message text, AUTH
reads one SASL response line, STARTTLS reads nothing (the next bytes must be a TLS handshake,
RFC 3207 §4), CLOSED reads nothing at all. After the TLS handshake the session starts over in
INITIAL, forgetting everything learnt before it (RFC 3207 §4.2).

Which events take a reply, and for which step, is `STEPS` (read through `awaits_reply` and
`AWAITS_REPLY`): the server owes one reply for each such event, in order, and the client
awaits one for each command it sends.

The client side (`ClientConnection`) reads the same table from the other end. It may send a
command only if the table allows it in the state the session will be in once every reply it
awaits has come back as hoped (`hoped_state`: 2xx, a 354 to DATA); a command the table does
not allow raises `LocalProtocolError` before any byte is produced. Under PIPELINING, replies
may still be awaited when the next command goes out, but only behind commands whose success
is assumed (`PIPELINABLE`, RFC 2920 §3.1); any other command ends its group: nothing follows
it before its reply. Without PIPELINING every command waits for the reply to the one before.
When a reply comes, the state moves as the table says from where the command was sent, or,
for a refusal of a command sent on a hope that did not come true (RCPT after a refused MAIL),
stays where it is. A reply whose class the table has no entry for (a 354 to MAIL, a 250 to
DATA) means the server is out of step: `UnexpectedReply`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from .errors import LocalProtocolError
from .events import (
    Auth,
    AuthResponse,
    BareLineEnding,
    Bdat,
    CommandError,
    Data,
    DataEnd,
    Ehlo,
    Event,
    Helo,
    Help,
    Mail,
    Noop,
    Quit,
    Rcpt,
    Rset,
    StartTls,
    UnknownCommand,
    UnsynchronisedPipelining,
    Vrfy,
    WrongProtocol,
)

__all__ = [
    "AWAITS_REPLY",
    "PIPELINABLE",
    "STEPS",
    "Outcome",
    "State",
    "Step",
    "awaits_reply",
    "blocks_parsing",
    "hoped",
    "hoped_state",
    "is_legal",
    "leads_to",
    "next_state",
    "outcome",
]


class _Members(enum.Enum):
    """An enum whose members hash by identity (they are singletons compared by identity) in
    C, not by :class:`enum.Enum`'s Python-level hash of the name: the transition table is
    looked up by (state, step) for every command."""

    __hash__ = object.__hash__


class State(_Members):
    """Where the server side of a session is."""

    CONNECTED = "connected"  # the greeting has not been sent yet
    INITIAL = "initial"  # greeted; no EHLO/HELO yet
    READY = "ready"  # EHLO/HELO done, no transaction open
    MAIL = "mail"  # MAIL accepted: reverse-path known
    RCPT = "rcpt"  # at least one RCPT accepted
    CHUNKING = "chunking"  # between BDAT chunks of one transaction
    DATA = "data"  # reading message text after 354
    BDAT = "bdat"  # reading the octets of one BDAT chunk
    AUTH = "auth"  # inside a SASL exchange: the next line is a response, not a command
    STARTTLS = "starttls"  # 220 sent to STARTTLS: waiting for the TLS handshake
    CLOSED = "closed"  # the session is over


class Step(_Members):
    """What a reply is owed for (a command, or something the core found)."""

    GREETING = "greeting"
    HELLO = "hello"  # EHLO, HELO
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    BDAT = "bdat"  # not answered itself: moves straight to State.BDAT
    DATA_END = "data end"
    CHUNK_END = "chunk end"
    LAST_CHUNK_END = "last chunk end"
    RSET = "rset"
    NEUTRAL = "neutral"  # NOOP, HELP, VRFY
    QUIT = "quit"
    STARTTLS = "starttls"
    AUTH = "auth"
    AUTH_RESPONSE = "auth response"
    ERROR = "error"  # CommandError, UnknownCommand
    FATAL = "fatal"  # WrongProtocol, BareLineEnding: the reply ends the session


class Outcome(_Members):
    """The class of a reply, which is all the state machine looks at."""

    OK = "2xx"
    MORE = "3xx"  # 354 to DATA, 334 to AUTH
    FAIL = "4xx/5xx"
    IMMEDIATE = "no reply"  # BDAT: the state moves when the command is parsed


def outcome(code: int) -> Outcome:
    """Classify a reply code (RFC 5321 §4.2.1)."""
    if code < 300:
        return Outcome.OK
    if code < 400:
        return Outcome.MORE
    return Outcome.FAIL


S = State
_OK, _MORE, _FAIL = Outcome.OK, Outcome.MORE, Outcome.FAIL
# States that read command lines.
_COMMAND_STATES: Final = (S.INITIAL, S.READY, S.MAIL, S.RCPT, S.CHUNKING)


def _build() -> dict[tuple[State, Step], dict[Outcome, State]]:
    t: dict[tuple[State, Step], dict[Outcome, State]] = {
        # A 554 (or any failure) as greeting means "go away" (RFC 5321 §3.1).
        (S.CONNECTED, Step.GREETING): {_OK: S.INITIAL, _FAIL: S.CLOSED},
        (S.READY, Step.MAIL): {_OK: S.MAIL, _FAIL: S.READY},
        (S.READY, Step.STARTTLS): {_OK: S.STARTTLS, _FAIL: S.READY},
        # RFC 4954 §4: not inside a transaction; 334 continues, 235 or a failure ends it.
        (S.READY, Step.AUTH): {_MORE: S.AUTH, _OK: S.READY, _FAIL: S.READY},
        (S.AUTH, Step.AUTH_RESPONSE): {_MORE: S.AUTH, _OK: S.READY, _FAIL: S.READY},
        # An over-long SASL line ends the exchange, whatever the reply.
        (S.AUTH, Step.ERROR): {_OK: S.READY, _MORE: S.READY, _FAIL: S.READY},
        (S.MAIL, Step.RCPT): {_OK: S.RCPT, _FAIL: S.MAIL},
        (S.RCPT, Step.RCPT): {_OK: S.RCPT, _FAIL: S.RCPT},
        (S.RCPT, Step.DATA): {_MORE: S.DATA, _FAIL: S.RCPT},
        # RFC 5321 §4.1.1.4: after the end of data the transaction is over, accepted or not.
        (S.DATA, Step.DATA_END): {_OK: S.READY, _FAIL: S.READY},
        # RFC 3030 §2-3: BDAT needs a recipient; DATA and BDAT never mix in one transaction;
        # a failed chunk fails the whole transaction.
        (S.RCPT, Step.BDAT): {Outcome.IMMEDIATE: S.BDAT},
        (S.CHUNKING, Step.BDAT): {Outcome.IMMEDIATE: S.BDAT},
        (S.BDAT, Step.CHUNK_END): {_OK: S.CHUNKING, _FAIL: S.READY},
        (S.BDAT, Step.LAST_CHUNK_END): {_OK: S.READY, _FAIL: S.READY},
    }
    for state in _COMMAND_STATES:
        t[(state, Step.NEUTRAL)] = {_OK: state, _MORE: state, _FAIL: state}
        t[(state, Step.ERROR)] = {_OK: state, _MORE: state, _FAIL: state}
        t[(state, Step.QUIT)] = {_OK: S.CLOSED, _MORE: S.CLOSED, _FAIL: S.CLOSED}
        # RFC 5321 §4.1.1.5: RSET is legal anywhere and drops the transaction.
        t[(state, Step.RSET)] = {_OK: S.INITIAL if state is S.INITIAL else S.READY, _FAIL: state}
        # RFC 5321 §4.1.4: a later EHLO/HELO is legal and resets like RSET.
        t[(state, Step.HELLO)] = {_OK: S.READY, _FAIL: state}
    for state in State:
        if state is not S.CLOSED:
            t[(state, Step.FATAL)] = {_OK: S.CLOSED, _MORE: S.CLOSED, _FAIL: S.CLOSED}
    return t


_TRANSITIONS: Final = _build()
# Steps whose reply never changes anything (see the theory of operation).
_NEUTRAL_STEPS: Final = frozenset({Step.NEUTRAL, Step.ERROR})


def is_legal(state: State, step: Step) -> bool:
    """May a command of this kind be issued in this state? (Otherwise: 503 5.5.1.)"""
    return (state, step) in _TRANSITIONS


def leads_to(state: State, step: Step, result: Outcome) -> State | None:
    """The state after a reply of class `result` to `step`, issued in `state`; None when the
    table has no such outcome (a 354 to MAIL)."""
    return _TRANSITIONS.get((state, step), {}).get(result)


def next_state(state: State, step: Step, result: Outcome) -> State:
    """`leads_to`, for the server application's own replies: no such outcome is a bug."""
    after = leads_to(state, step, result)
    if after is None:
        raise LocalProtocolError(
            f"a {result.value} reply makes no sense for {step.value} in state {state.value}"
        )
    return after


def blocks_parsing(state: State, step: Step) -> bool:
    """Must parsing wait for the reply to `step` before reading the next line?"""
    return step not in _NEUTRAL_STEPS or any(
        after is not state for after in _TRANSITIONS[(state, step)].values()
    )


# --- Which events take a reply (both sides) ---------------------------------------------------

STEPS: Final[Mapping[type[Event], Step]] = MappingProxyType({
    Ehlo: Step.HELLO, Helo: Step.HELLO, Mail: Step.MAIL, Rcpt: Step.RCPT, Data: Step.DATA,
    Bdat: Step.BDAT, Rset: Step.RSET, Noop: Step.NEUTRAL, Help: Step.NEUTRAL,
    Vrfy: Step.NEUTRAL, Quit: Step.QUIT, StartTls: Step.STARTTLS, Auth: Step.AUTH,
    AuthResponse: Step.AUTH_RESPONSE, CommandError: Step.ERROR, UnknownCommand: Step.ERROR,
    WrongProtocol: Step.FATAL, BareLineEnding: Step.FATAL, UnsynchronisedPipelining: Step.FATAL,
})  # fmt: skip
"""The step each event is answered for. Absent: events never answered (`DataChunk`,
`PipelinedAfterStartTls`, `ConnectionClosed`) and `DataEnd`, answered as the end of DATA or
of a BDAT chunk depending on the state."""


def awaits_reply(event: Event) -> bool:
    """Does `event` take exactly one reply, in order (RFC 5321 §4.2, RFC 2920 §3.1)?

    Every command except BDAT, whose one reply is owed at the `DataEnd` closing its chunk
    (RFC 3030 §2); `DataEnd`; and the errors the server core found itself.
    """
    if isinstance(event, DataEnd):
        return True
    step = STEPS.get(type(event))
    return step is not None and step is not Step.BDAT


AWAITS_REPLY: Final[tuple[type[Event], ...]] = (
    *(kind for kind, step in STEPS.items() if step is not Step.BDAT),
    DataEnd,
)
"""The event types of `awaits_reply`, for ``isinstance``."""

# RFC 2920 §3.1: these may be followed by more commands before their reply arrives (RSET,
# MAIL and RCPT "can appear anywhere in a pipelined command group"; RFC 3030 §4.2 adds BDAT
# chunks). Every other command's reply decides what may follow it, so it ends its group.
PIPELINABLE: Final = frozenset({Step.MAIL, Step.RCPT, Step.RSET, Step.CHUNK_END})


def hoped(step: Step) -> Outcome:
    """The reply a client hopes for: a 354 to DATA, a 2xx to anything else."""
    return Outcome.MORE if step is Step.DATA else Outcome.OK


def hoped_state(state: State, step: Step) -> State:
    """Where `step`, issued in `state`, leads if its reply is the one hoped for: what a
    pipelining client counts on while the reply is on its way."""
    return next_state(state, step, hoped(step))
