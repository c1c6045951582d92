"""A tiny answering application for driving `ServerConnection` in tests.

`EchoApp` answers every event with the reply the core suggests, or with a plain positive reply
when the event is a well-formed command: the policy of a server that accepts everything the
protocol allows. Shared by the transcript, data, round-trip and property tests.
"""

from __future__ import annotations

from dispatch.smtp import NEED_DATA, PAUSED, Limits, Reply, ServerConnection, State, replies
from dispatch.smtp import auth as sasl
from dispatch.smtp.events import (
    Auth,
    AuthResponse,
    BareLineEnding,
    Bdat,
    CommandError,
    ConnectionClosed,
    Data,
    DataChunk,
    DataEnd,
    Ehlo,
    Event,
    Helo,
    Help,
    Mail,
    Noop,
    PipelinedAfterStartTls,
    Quit,
    Rcpt,
    Rset,
    StartTls,
    UnknownCommand,
    UnsynchronisedPipelining,
    Vrfy,
    WrongProtocol,
)
from dispatch.smtp.replies import assemble_reply, parse_reply_line

KEYWORDS = (
    "PIPELINING",
    "SIZE 1000000",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
    "CHUNKING",
    "STARTTLS",
    "AUTH PLAIN LOGIN",
)


class EchoApp:
    """Drives one ServerConnection: feeds bytes, answers events, collects output and messages.

    `handshake`: when the connection pauses after the 220 to STARTTLS, pretend the TLS
    handshake succeeded (call `tls_established`).
    """

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        handshake: bool = True,
        forbid_unauth_pipelining: bool = False,
    ) -> None:
        self.conn = ServerConnection(limits, forbid_unauth_pipelining=forbid_unauth_pipelining)
        self.handshake = handshake
        self.out = bytearray(self.conn.send(replies.greeting("test.example")))
        self.events: list[Event] = []
        self.messages: list[bytes] = []
        self.rejected: list[Reply] = []  # errors given at DataEnd
        self._message = bytearray()
        self._login_step = 0
        self.finished = False

    def feed(self, data: bytes) -> None:
        """Give bytes to the connection (b"" for EOF) and answer every event that results.

        Once the session has ended the app stops listening, as a listener closes its socket.
        """
        if self.finished:
            return
        self.conn.receive_data(data)
        self.drain()

    def drain(self) -> None:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                return
            if event is PAUSED:
                if self.conn.state is State.STARTTLS and self.handshake:
                    self.conn.tls_established()
                    continue
                return
            self.events.append(event)
            if isinstance(event, ConnectionClosed | PipelinedAfterStartTls):
                self.finished = True
                return
            reply = self.answer(event)
            if reply is not None:
                self.out += self.conn.send(reply)

    def answer(self, event: Event) -> Reply | None:
        match event:
            case Ehlo(hostname):
                return replies.ehlo("test.example", hostname, KEYWORDS)
            case Helo():
                return replies.helo("test.example")
            case Mail() | Rcpt() | Rset() | Noop():
                return replies.OK
            case Data():
                return replies.START_DATA
            case Quit():
                return replies.SERVICE_CLOSING
            case Help():
                return replies.HELP
            case Vrfy():
                return replies.CANNOT_VRFY
            case StartTls():
                return replies.READY_TO_START_TLS
            case Auth(mechanism="PLAIN", initial_response=None):
                return sasl.PLAIN_CHALLENGE
            case Auth(mechanism="PLAIN", initial_response=str(response)):
                return self._check_plain(response)
            case Auth(mechanism="LOGIN", initial_response=None):
                self._login_step = 1
                return sasl.LOGIN_USERNAME_CHALLENGE
            case Auth():
                return replies.AUTH_MECHANISM_UNSUPPORTED
            case AuthResponse() as response:
                return self._auth_response(response)
            case DataChunk(data):
                self._message += data
                return None
            case DataEnd(last=last, error=error):
                if error is not None:
                    self.rejected.append(error)
                    self._message.clear()
                    return error
                if not last:
                    return replies.chunk_received(len(self._message))
                self.messages.append(bytes(self._message))
                self._message.clear()
                return replies.queued(f"Q{len(self.messages)}")
            case Bdat():
                return None
            case CommandError(reply=reply) | UnknownCommand(reply=reply):
                return reply
            case (
                WrongProtocol(reply=reply)
                | BareLineEnding(reply=reply)
                | UnsynchronisedPipelining(reply=reply)
            ):
                return reply
        raise AssertionError(f"unexpected event {event!r}")

    def _check_plain(self, response: str) -> Reply:
        try:
            creds = sasl.decode_plain(response)
        except sasl.AuthDecodeError as exc:
            return exc.reply
        ok = (creds.username, creds.password) == ("user", "secret")
        return replies.AUTH_SUCCEEDED if ok else replies.AUTH_FAILED

    def _auth_response(self, response: AuthResponse) -> Reply:
        if response.cancelled:
            self._login_step = 0
            return replies.AUTH_CANCELLED
        if self._login_step == 0:  # PLAIN after an empty challenge
            return self._check_plain(response.line)
        try:
            text = sasl.decode_login(response.line)
        except sasl.AuthDecodeError as exc:
            self._login_step = 0
            return exc.reply
        if self._login_step == 1:
            self._login_step, self._user = 2, text
            return sasl.LOGIN_PASSWORD_CHALLENGE
        self._login_step = 0
        ok = (self._user, text) == ("user", "secret")
        return replies.AUTH_SUCCEEDED if ok else replies.AUTH_FAILED

    _user = ""

    def reply_codes(self) -> list[str]:
        """Every reply sent, as "code" or "code enhanced", greeting included."""
        return [
            f"{r.code} {r.enhanced}" if r.enhanced else str(r.code)
            for r in parse_replies(bytes(self.out))
        ]


def parse_replies(wire: bytes) -> list[Reply]:
    """Split a server's output into replies (the test's own independent reading)."""
    result: list[Reply] = []
    pending = []
    for raw in wire.split(b"\r\n")[:-1]:
        line = parse_reply_line(raw + b"\r\n")
        pending.append(line)
        if line.final:
            result.append(assemble_reply(pending))
            pending = []
    assert not pending, "output ends inside a multi-line reply"
    return result


def run(stream: bytes, limits: Limits | None = None, *, eof: bool = False) -> EchoApp:
    """Feed a whole client stream in one piece."""
    app = EchoApp(limits)
    app.feed(stream)
    if eof:
        app.feed(b"")
    return app
