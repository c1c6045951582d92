"""A minimal SMTP client on Trio for the load the benchmark generates itself.

Only what the figures need: read the banner, EHLO, and plain transactions (MAIL, RCPT, DATA,
the body) one command at a time, no PIPELINING, so that the time to the final ``250`` is
the server's and not the client's batching. The reply reader keeps its search position, so a
long multi-line reply costs one pass.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

import trio

from bench.procs import LOOPBACK

READ_SIZE = 65536
CLIENT_NAME = b"bench-client.example.test"


class SmtpError(Exception):
    """The server answered something else than the command expects (or hung up)."""


def message_body(size: int, mail_from: str, rcpt_to: str) -> bytes:
    """A plain message of about ``size`` bytes, with CRLF line ends and no leading dots."""
    header = (
        f"From: <{mail_from}>\r\nTo: <{rcpt_to}>\r\nSubject: benchmark\r\n"
        "Message-ID: <bench@example.test>\r\n\r\n"
    ).encode()
    line = b"x" * 78 + b"\r\n"
    lines = max(1, (size - len(header)) // len(line))
    return header + line * lines


class SmtpConnection:
    """One client connection; owns its stream. Not for concurrent use by two tasks."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._scanned = 0

    @classmethod
    async def open(cls, port: int, *, ehlo: bool = True) -> Self:
        """Connect, read the banner (220 expected) and optionally say EHLO."""
        stream = await trio.open_tcp_stream(LOOPBACK, port)
        connection = cls(stream)
        try:
            code, line = await connection.reply()
            if code != 220:
                raise SmtpError(f"banner {line!r}")
            if ehlo:
                await connection.expect(b"EHLO " + CLIENT_NAME, 250)
        except BaseException:
            await stream.aclose()
            raise
        return connection

    async def reply(self) -> tuple[int, bytes]:
        """Read one (possibly multi-line) reply; return its code and last line."""
        while True:
            end = self._buffer.find(b"\r\n", self._scanned)
            if end < 0:
                self._scanned = max(0, len(self._buffer) - 1)
                data = await self._stream.receive_some(READ_SIZE)
                if not data:
                    raise SmtpError("connection closed by the server")
                self._buffer += data
                continue
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self._scanned = 0
            if len(line) < 3 or not line[:3].isdigit():
                raise SmtpError(f"not a reply: {line!r}")
            if len(line) == 3 or line[3:4] == b" ":
                return int(line[:3]), line

    async def expect(self, command: bytes, code: int) -> None:
        await self._stream.send_all(command + b"\r\n")
        got, line = await self.reply()
        if got != code:
            raise SmtpError(f"{command[:20]!r} got {line!r}")

    async def transaction(self, mail_from: str, rcpt_to: str, body: bytes) -> None:
        """Send one message; return when it is accepted (``250`` after the final dot)."""
        await self.expect(f"MAIL FROM:<{mail_from}>".encode(), 250)
        await self.expect(f"RCPT TO:<{rcpt_to}>".encode(), 250)
        await self.expect(b"DATA", 354)
        await self._stream.send_all(body + b".\r\n")
        got, line = await self.reply()
        if got != 250:
            raise SmtpError(f"end of data got {line!r}")

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
