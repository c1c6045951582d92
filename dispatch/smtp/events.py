"""The events of an SMTP session, for both sides of the protocol core.

Small frozen dataclasses, as in h11. Command events (`Ehlo` ... `AuthResponse`) are what a
`ServerConnection` emits when a client sends a command, and what a `ClientConnection` sends:
each has `serialise()` giving its wire form. The other events describe message data, errors the
core detected itself, and the end of the session.

Which events take exactly one reply, in order, is defined once, in `_state.STEPS` (read it
through `dispatch.smtp.awaits_reply`): the server application answers those, and the client
awaits one reply for each command it sends.

Made per command: the classes made for every message (here `Mail`, `Rcpt`, `DataChunk`,
`DataEnd`; `Reply`, `ReplyLine`, `Path`, `MailDsn`, `RcptDsn` and the server's `_Owed`
elsewhere) write their `__init__` out (`init=False`), and those without fields (`Data`,
`Rset`, `Quit`) take `object`'s. Compiled (docs/architecture.md), a written `__init__` is
native code; the one `dataclasses` generates stays interpreted and took ten times as long
(0.38 against 0.04 µs per object).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from .errors import LocalProtocolError
from .replies import (
    BARE_LINE_ENDING,
    WRONG_PROTOCOL,
    Reply,
)

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "Auth",
    "AuthResponse",
    "BareLineEnding",
    "Bdat",
    "Command",
    "CommandError",
    "ConnectionClosed",
    "Data",
    "DataChunk",
    "DataEnd",
    "Ehlo",
    "Event",
    "Flow",
    "Greeting",
    "Helo",
    "Help",
    "Mail",
    "Noop",
    "PipelinedAfterStartTls",
    "Quit",
    "Rcpt",
    "Rset",
    "ServerReply",
    "StartTls",
    "UnknownCommand",
    "UnsynchronisedPipelining",
    "Vrfy",
    "WrongProtocol",
]


class Flow(enum.Enum):
    """What `next_event` returns when it has no event to give (as h11's sentinels)."""

    NEED_DATA = "need data"  # feed more bytes with receive_data()
    PAUSED = "paused"  # server only: send the reply that is owed (or finish STARTTLS) first


NEED_DATA: Final = Flow.NEED_DATA
PAUSED: Final = Flow.PAUSED

_EMPTY: Final[Mapping[str, str | None]] = MappingProxyType({})


def _line(text: str) -> bytes:
    # A CR or LF inside a value would let, say, a recipient address coming from the HTTP API
    # smuggle a second command onto the wire.
    if "\r" in text or "\n" in text or "\0" in text:
        raise LocalProtocolError(f"line break or NUL inside an SMTP command: {text!r}")
    return text.encode() + b"\r\n"


def _params(params: Mapping[str, str | None]) -> str:
    return "".join(f" {k}" if v is None else f" {k}={v}" for k, v in params.items())


# --- Commands (client → server) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ehlo:
    """EHLO: the client names itself and asks for the extension list (RFC 5321 §4.1.1.1)."""

    hostname: str

    def serialise(self) -> bytes:
        return _line(f"EHLO {self.hostname}")


@dataclass(frozen=True, slots=True)
class Helo:
    """HELO: the pre-ESMTP greeting; no extensions (RFC 5321 §4.1.1.1)."""

    hostname: str

    def serialise(self) -> bytes:
        return _line(f"HELO {self.hostname}")


# MAIL parameters the dataclass fields stand for; serialise() writes them from the fields.
_MAIL_FIELD_PARAMS: Final = frozenset({"SIZE", "BODY", "SMTPUTF8"})


@dataclass(frozen=True, slots=True, init=False)
class Mail:
    """MAIL FROM: opens a transaction (RFC 5321 §4.1.1.2).

    `reverse_path` is the sender mailbox, "" for the null path `<>` (bounces). `params` holds
    every ESMTP parameter as received, keyword upper-cased; `size` (RFC 1870), `body`
    (RFC 6152, "7BIT" or "8BITMIME") and `smtputf8` (RFC 6531) are the decoded well-known ones.
    On the client side, `serialise` writes those three from the fields and then any other
    entries of `params`.
    """

    reverse_path: str
    size: int | None
    body: str | None
    smtputf8: bool
    params: Mapping[str, str | None]

    def __init__(
        self,
        reverse_path: str,
        size: int | None = None,
        body: str | None = None,
        smtputf8: bool = False,
        params: Mapping[str, str | None] = _EMPTY,
    ) -> None:
        object.__setattr__(self, "reverse_path", reverse_path)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "smtputf8", smtputf8)
        object.__setattr__(self, "params", MappingProxyType(dict(params)))

    def serialise(self) -> bytes:
        known: dict[str, str | None] = {}
        if self.size is not None:
            known["SIZE"] = str(self.size)
        if self.body is not None:
            known["BODY"] = self.body
        if self.smtputf8:
            known["SMTPUTF8"] = None
        rest = {k: v for k, v in self.params.items() if k.upper() not in _MAIL_FIELD_PARAMS}
        return _line(f"MAIL FROM:<{self.reverse_path}>{_params(known)}{_params(rest)}")


@dataclass(frozen=True, slots=True, init=False)
class Rcpt:
    """RCPT TO: adds one recipient to the open transaction (RFC 5321 §4.1.1.3)."""

    forward_path: str
    params: Mapping[str, str | None]

    def __init__(self, forward_path: str, params: Mapping[str, str | None] = _EMPTY) -> None:
        object.__setattr__(self, "forward_path", forward_path)
        object.__setattr__(self, "params", MappingProxyType(dict(params)))

    def serialise(self) -> bytes:
        return _line(f"RCPT TO:<{self.forward_path}>{_params(self.params)}")


@dataclass(frozen=True, slots=True, init=False)
class Data:
    """DATA: the client asks to send the message (RFC 5321 §4.1.1.4); 354 lets it."""

    def serialise(self) -> bytes:
        return b"DATA\r\n"


@dataclass(frozen=True, slots=True)
class Bdat:
    """BDAT: announces a chunk of exactly `size` octets of message (RFC 3030 §2).

    Not answered by itself: the server emits the chunk as `DataChunk`s and then a `DataEnd`,
    which the application answers. `serialise` gives only the command line; the client side's
    `ClientConnection.bdat` adds the chunk.
    """

    size: int
    last: bool = False

    def serialise(self) -> bytes:
        return _line(f"BDAT {self.size}{' LAST' if self.last else ''}")


@dataclass(frozen=True, slots=True, init=False)
class Rset:
    """RSET: abort the transaction (RFC 5321 §4.1.1.5)."""

    def serialise(self) -> bytes:
        return b"RSET\r\n"


@dataclass(frozen=True, slots=True)
class Noop:
    """NOOP (RFC 5321 §4.1.1.9); an argument, if any, is ignored."""

    def serialise(self) -> bytes:
        return b"NOOP\r\n"


@dataclass(frozen=True, slots=True, init=False)
class Quit:
    """QUIT: the client ends the session (RFC 5321 §4.1.1.10); answer 221."""

    def serialise(self) -> bytes:
        return b"QUIT\r\n"


@dataclass(frozen=True, slots=True)
class Help:
    """HELP [topic] (RFC 5321 §4.1.1.8)."""

    arg: str | None = None

    def serialise(self) -> bytes:
        return _line("HELP" if self.arg is None else f"HELP {self.arg}")


@dataclass(frozen=True, slots=True)
class Vrfy:
    """VRFY string (RFC 5321 §4.1.1.6); Dispatch answers 252."""

    arg: str

    def serialise(self) -> bytes:
        return _line(f"VRFY {self.arg}")


@dataclass(frozen=True, slots=True)
class StartTls:
    """STARTTLS (RFC 3207): answer 220, then do the TLS handshake."""

    def serialise(self) -> bytes:
        return b"STARTTLS\r\n"


@dataclass(frozen=True, slots=True)
class Auth:
    """AUTH mechanism [initial-response] (RFC 4954 §4); the mechanism is upper-cased.

    `initial_response` is the base64 text as sent ("=" means an empty response), or None.
    Decode it with `dispatch.smtp.auth`. Left out of repr: it holds credentials.
    """

    mechanism: str
    initial_response: str | None = field(default=None, repr=False)

    def serialise(self) -> bytes:
        if self.initial_response is None:
            return _line(f"AUTH {self.mechanism}")
        return _line(f"AUTH {self.mechanism} {self.initial_response}")


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """One client line inside a SASL exchange, after a 334 challenge (RFC 4954 §4).

    "*" means the client cancels: answer `replies.AUTH_CANCELLED`. Left out of repr: it holds
    credentials.
    """

    line: str = field(repr=False)

    @property
    def cancelled(self) -> bool:
        return self.line == "*"

    def serialise(self) -> bytes:
        return _line(self.line)


Command = (
    Ehlo
    | Helo
    | Mail
    | Rcpt
    | Data
    | Bdat
    | Rset
    | Noop
    | Quit
    | Help
    | Vrfy
    | StartTls
    | Auth
    | AuthResponse
)

# --- Message data (server side) ------------------------------------------------------------


@dataclass(frozen=True, slots=True, init=False)
class DataChunk:
    """A piece of the message, transparency already undone (RFC 5321 §4.5.2).

    Concatenated, the chunks of one message are exactly the message; no chunk is larger than
    `Limits.data_chunk_bytes`. Once a message is known to be bad (too big, line too long) no
    further chunks come: the chunks then hold the message up to the first bad line, cut at
    `max_message_bytes`, and `DataEnd.error` says what went wrong.
    """

    data: bytes = field(repr=False)

    def __init__(self, data: bytes) -> None:
        object.__setattr__(self, "data", data)

    def __repr__(self) -> str:
        return f"DataChunk(<{len(self.data)} bytes>)"


@dataclass(frozen=True, slots=True, init=False)
class DataEnd:
    """The end of the message (DATA's `<CRLF>.<CRLF>`) or of one BDAT chunk.

    `last` is True at the end of DATA and of `BDAT ... LAST`: the message is complete. If
    `error` is None the application spools it and answers `replies.queued(id)` (or, for a
    BDAT chunk that is not the last, `replies.chunk_received(n)`); otherwise it discards
    what it received and answers `error` (552 too big, 500 line too long, 554 NUL in the
    data).
    """

    last: bool
    error: Reply | None

    def __init__(self, last: bool = True, error: Reply | None = None) -> None:
        object.__setattr__(self, "last", last)
        object.__setattr__(self, "error", error)


# --- Errors found by the core (server side) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandError:
    """A command that cannot be accepted as sent: syntax, sequence, or a limit.

    `verb` is the upper-cased verb if it was a known one, else "unknown"; `reply` is what to
    send (500/501/503/552/553/555, 452 for the recipient after the limit).
    """

    verb: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class UnknownCommand:
    """A verb the server does not know. `verb` is sanitised: only A-Z and 0-9, at most 16
    characters, else "unknown", so it is safe in logs and as a metric label."""

    verb: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class WrongProtocol:
    """The client speaks HTTP to the SMTP port (`GET / HTTP/1.1`, `CONNECT`, ...).

    Answer `reply` (502 5.5.1); the session then closes (SPEC §3). `verb` is sanitised.
    """

    verb: str
    reply: Reply = WRONG_PROTOCOL


@dataclass(frozen=True, slots=True)
class BareLineEnding:
    """A bare CR or LF inside message data (RFC 5321 §2.3.8): answer `reply` (521); the
    session then closes. Rejecting these, instead of guessing, is what makes SMTP smuggling
    (`<LF>.<LF>`, `<CR>.<CR>`, `<CRLF>.<LF>` ...) impossible through Dispatch."""

    reply: Reply = BARE_LINE_ENDING


@dataclass(frozen=True, slots=True)
class UnsynchronisedPipelining:
    """The client did not wait for a reply it must wait for; reported only when the
    connection forbids it (`forbid_unauth_pipelining`) and the client is not authenticated.

    `after` is what the client should have waited after, in Postfix's words: "CONNECT" (bytes
    arrived before the greeting was sent, RFC 5321 §4.3.1) or "DATA" (bytes followed the DATA
    line in the same flight instead of waiting for the 354, RFC 2920 §3.1). `octets` is how
    many were waiting. Answer `reply` (554 5.5.0; for "CONNECT" it takes the place of the
    greeting); the session then closes. Without this, a body pipelined after a DATA that is
    refused (no valid recipient) would be read as commands.
    """

    after: str
    octets: int
    reply: Reply


@dataclass(frozen=True, slots=True)
class PipelinedAfterStartTls:
    """Plaintext followed the STARTTLS command before the TLS handshake.

    Those bytes would otherwise be read as if they came over TLS (STARTTLS command injection,
    CVE-2011-0411). They are discarded; the application closes the connection without a reply.
    """

    octets: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The session is over: the peer closed its side (EOF), or a reply that ends the session
    (221, 421, 521, a failed greeting, the answer to `WrongProtocol`/`BareLineEnding`) was
    sent. Anything unfinished (a message without its terminator) must be discarded."""


Event = (
    Command
    | DataChunk
    | DataEnd
    | CommandError
    | UnknownCommand
    | WrongProtocol
    | BareLineEnding
    | UnsynchronisedPipelining
    | PipelinedAfterStartTls
    | ConnectionClosed
)

# --- Client side ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Greeting:
    """Stands for "the connection was opened" in the client's queue of awaited replies."""


@dataclass(frozen=True, slots=True)
class ServerReply:
    """A complete reply received by the client, with the request it answers.

    `request` is the command sent, `Greeting()` for the banner, `DataEnd()` for the end of
    the message data, or None for an unsolicited 421 (the server is closing, RFC 5321 §3.8).
    """

    reply: Reply
    request: Command | Greeting | DataEnd | None
