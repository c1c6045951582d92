"""Real peers for the relay tests: an aiosmtpd sink, a raw scripted TCP server, a tiny DNS.

- `start_sink` (fixture): an aiosmtpd `Controller` on 127.0.0.1 in its own thread that
  records every message as received (`decode_data=False`: the bytes after dot-unstuffing,
  nothing added), counts connections (distinct peers that said EHLO/HELO), offers PIPELINING,
  STARTTLS or implicit TLS with a trustme certificate, AUTH, and fails on demand: RCPT of
  "reject..." gets 550, of "later..." 451; the first `fail_data` messages get 451.
- `raw_server`: a Trio TCP server running a handler per connection, for peers that hang,
  talk nonsense, or follow a script (`ScriptedSmtp`).
- `dns_server` (fixture): a UDP DNS server on 127.0.0.1 answering from a dict; unknown names
  are NXDOMAIN. The relay tests never ask the system resolver.

The fixtures are registered for every test as a pytest plugin (``-p tests.relays.sinks`` in
pyproject.toml), so test modules use them by name without importing them.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any, Literal

import attrs
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import trio
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.conftest import free_port

DEFAULT_SIZE_LIMIT = 33_554_432


@attrs.frozen
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    mail_options: tuple[str, ...]
    tls: bool


class SinkHandler:
    """aiosmtpd hooks; runs in the sink's thread, the test reads what it recorded."""

    def __init__(self, *, pipelining: bool, data_delay: float) -> None:
        self.pipelining = pipelining
        self.data_delay = data_delay
        self.fail_data = 0
        self.desync_data = 0  # answer this many messages with one reply too many
        self.messages: list[Received] = []
        self.peers: list[Any] = []
        self.auth: list[tuple[str, str]] = []  # (mechanism, login) of successful AUTHs
        self.quits = 0
        self.data_started = threading.Event()

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if session.peer not in self.peers:
            self.peers.append(session.peer)
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        session.host_name = hostname
        if session.peer not in self.peers:
            self.peers.append(session.peer)
        return "250 sink.test"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.startswith("reject"):
            return "550 5.1.1 no such user"
        if address.startswith("later"):
            return "451 4.3.0 try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_started.set()
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.fail_data > 0:
            self.fail_data -= 1
            return "451 4.3.0 try later"
        self.messages.append(
            Received(
                envelope.mail_from,
                tuple(envelope.rcpt_tos),
                bytes(envelope.original_content),
                tuple(envelope.mail_options),
                session.ssl is not None,
            )
        )
        reply = f"250 2.0.0 Ok: queued as Q{len(self.messages)}"
        if self.desync_data > 0:
            self.desync_data -= 1
            return f"{reply}\r\n250 2.0.0 one reply too many"
        return reply

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.quits += 1
        return "221 Bye"

    def authenticate(
        self, users: dict[str, str], server: Any, session: Any, envelope: Any,
        mechanism: str, auth_data: Any,
    ) -> AuthResult:  # fmt: skip
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        if users.get(login) != password:
            return AuthResult(success=False, handled=False)
        self.auth.append((mechanism, login))
        return AuthResult(success=True)


@attrs.define
class Sink:
    controller: Any
    handler: SinkHandler
    port: int
    stopped: bool = False

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    @property
    def connections(self) -> int:
        return len(self.handler.peers)

    def stop(self) -> None:
        """Stop the sink (idempotent: the fixture stops it again at teardown)."""
        if not self.stopped:
            self.stopped = True
            self.controller.stop()


@attrs.frozen
class Pki:
    """A trustme CA, its PEM file (for ``ca_file``) and a server certificate context."""

    ca: trustme.CA
    ca_file: Path
    server: ssl.SSLContext

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1", "mx.example.test").configure_cert(server)
    return Pki(ca, ca_file, server)


StartSink = Callable[..., Sink]


@pytest.fixture
def start_sink(pki: Pki) -> Iterator[StartSink]:
    """``start_sink(tls=None|"starttls"|"implicit", users={...}, ...)`` → a running `Sink`."""
    started: list[Sink] = []

    def start(
        *,
        tls: Literal["starttls", "implicit"] | None = None,
        require_starttls: bool = False,
        users: dict[str, str] | None = None,
        auth_require_tls: bool = True,
        auth_exclude: tuple[str, ...] = (),
        pipelining: bool = True,
        smtputf8: bool = False,
        size_limit: int = DEFAULT_SIZE_LIMIT,
        data_delay: float = 0.0,
        idle_timeout: float = 300.0,
        tls_context: ssl.SSLContext | None = None,
        port: int | None = None,
    ) -> Sink:
        handler = SinkHandler(pipelining=pipelining, data_delay=data_delay)
        kwargs: dict[str, Any] = {
            "decode_data": False,
            "enable_SMTPUTF8": smtputf8,
            "data_size_limit": size_limit,
            "timeout": idle_timeout,
            "server_hostname": "sink.test",
        }
        if tls == "starttls":
            kwargs.update(tls_context=tls_context or pki.server, require_starttls=require_starttls)
        elif tls == "implicit":
            kwargs["ssl_context"] = tls_context or pki.server
        if users is not None:
            kwargs.update(
                authenticator=partial(handler.authenticate, users),
                auth_require_tls=auth_require_tls,
                auth_exclude_mechanism=list(auth_exclude),
            )
        port = port or free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        sink = Sink(controller, handler, port)
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()


# --- a raw TCP peer -------------------------------------------------------------------------

Handler = Callable[[trio.SocketStream], Awaitable[None]]


@attrs.define
class RawServer:
    port: int
    connections: int = 0


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[RawServer]:
    """Serve ``handler`` on 127.0.0.1 (a free port) until the block ends."""
    server = RawServer(0)

    async def serve(stream: trio.SocketStream) -> None:
        server.connections += 1
        async with stream:
            with suppress(trio.BrokenResourceError):
                await handler(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        server.port = listeners[0].socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()


class ScriptedSmtp:
    """A minimal SMTP server as a `raw_server` handler, for what aiosmtpd will not do.

    ``ehlo`` is the whole reply to EHLO; ``data_reply`` the reply to DATA (354 unless told);
    ``replies`` overrides the reply to a verb (after a 421 the server hangs up).
    With ``hold_until_data`` the replies to MAIL and RCPT are held back until DATA arrives:
    a client that waits for each reply (no PIPELINING) then never gets one. With
    ``hang_up_after_message`` the server closes the connection, without a word, right after
    its reply to a message.
    """

    def __init__(
        self,
        *,
        ehlo: bytes = b"250-mini.test\r\n250 PIPELINING\r\n",
        data_reply: bytes = b"354 go ahead\r\n",
        hold_until_data: bool = False,
        replies: dict[bytes, bytes] | None = None,
        hang_up_after_message: bool = False,
    ) -> None:
        self.replies = replies or {}
        self.hang_up_after_message = hang_up_after_message
        self.ehlo = ehlo
        self.data_reply = data_reply
        self.hold_until_data = hold_until_data
        self.commands: list[bytes] = []
        self.messages: list[bytes] = []

    async def __call__(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()

        async def until(marker: bytes) -> bytes:
            while marker not in buffer:
                data = await stream.receive_some()
                if not data:
                    raise trio.BrokenResourceError
                buffer.extend(data)
            head, _, rest = bytes(buffer).partition(marker)
            buffer[:] = rest
            return head

        await stream.send_all(b"220 mini.test ESMTP\r\n")
        held = b""
        while True:
            line = await until(b"\r\n")
            self.commands.append(line)
            verb = line.split(b" ", 1)[0].upper()
            if verb in self.replies:
                await stream.send_all(held + self.replies[verb])
                held = b""
                if self.replies[verb].startswith(b"421"):
                    return
                continue
            if verb == b"EHLO":
                reply = self.ehlo
            elif verb == b"QUIT":
                await stream.send_all(held + b"221 bye\r\n")
                return
            elif verb == b"DATA":
                await stream.send_all(held + self.data_reply)
                held = b""
                if not self.data_reply.startswith(b"354"):
                    continue
                self.messages.append(await until(b"\r\n.\r\n") + b"\r\n")
                if self.hang_up_after_message:
                    await stream.send_all(b"250 ok id=mini-1\r\n")
                    return
                reply = b"250 ok id=mini-1\r\n"
            else:
                reply = b"250 ok\r\n"
            if self.hold_until_data and verb in (b"MAIL", b"RCPT"):
                held += reply
            else:
                await stream.send_all(held + reply)
                held = b""


async def greet_then_hang(stream: trio.SocketStream) -> None:
    """Send the greeting, then read and never answer."""
    await stream.send_all(b"220 hang.test ESMTP\r\n")
    while await stream.receive_some():
        pass


async def greet_then_garbage(stream: trio.SocketStream) -> None:
    """Send the greeting, then answer anything with a line that is not an SMTP reply."""
    await stream.send_all(b"220 odd.test ESMTP\r\n")
    await stream.receive_some()
    await stream.send_all(b"hello there\r\n")
    await stream.receive_some()


# --- a tiny DNS server ----------------------------------------------------------------------


class DnsServer:
    """Answers UDP queries on 127.0.0.1 from ``records`` in a thread.

    ``records`` maps a name (no final dot, lower case) to {type: [rdata text]}; a known name
    without records of the asked type gets an empty NOERROR answer (NoAnswer), an unknown
    name NXDOMAIN. Names in ``servfail`` get SERVFAIL; names in ``silent`` no answer at all.
    """

    def __init__(self) -> None:
        self.records: dict[str, dict[str, list[str]]] = {}
        self.servfail: set[str] = set()
        self.silent: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def add(self, name: str, rdtype: str, *texts: str) -> None:
        self.records.setdefault(name.lower(), {}).setdefault(rdtype, []).extend(texts)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            reply = self._answer(dns.message.from_wire(wire))
            if reply is not None:
                self._sock.sendto(reply.to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message | None:
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if name in self.silent:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif texts := self.records[name].get(rdtype):
            response.answer.append(dns.rrset.from_text(question.name, 60, "IN", rdtype, *texts))
        return response

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer()
    yield server
    server.stop()
