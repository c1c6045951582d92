"""Real peers for the relay tests besides the SMTP sink: a raw scripted TCP server, a tiny DNS.

- `raw_server`: a Trio TCP server running a handler per connection, for peers that hang,
  talk nonsense, or follow a script (`ScriptedSmtp`).
- `dns_server` (fixture): a UDP DNS server on 127.0.0.1 answering from a dict; unknown names
  are NXDOMAIN. The relay tests never ask the system resolver.

The well-behaved (or on-demand failing) upstream is `tests.support.sink.Sink`. The fixture is
registered for every test as a pytest plugin (``-p tests.relays.peers`` in pyproject.toml), so
test modules use it by name without importing it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from functools import partial

import attrs
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import trio

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
