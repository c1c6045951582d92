"""Every way a session can abandon a mail transaction discards its spool message.

A BDAT chunk larger than the spool's spill threshold puts the message into ``tmp/<id>.eml``
and keeps a descriptor open on it. Then the session abandons the transaction one way or
another; afterwards no descriptor of this process (the listener runs in it) may point into
``tmp/`` and no file may be left there.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from dispatch.spool import SPILL_THRESHOLD
from tests.intake.conftest import Smtpd, in_thread
from tests.support.waiting import wait_until_async

CHUNK = (b"x" * 998 + b"\r\n") * (SPILL_THRESHOLD // 1000 + 100)  # spills to tmp/


def tmp_descriptors(tmp_dir: Path) -> list[str]:
    """Paths in ``tmp_dir`` that this process holds open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listdir descriptor itself)
        if target.startswith(f"{tmp_dir}/"):
            found.append(target)
    return found


class Client:
    """A raw-socket SMTP client (blocking: run its calls with `in_thread`)."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            ("127.0.0.1", port), timeout=10
        )
        self.pending = b""
        self.reply()  # the greeting

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One whole reply (all its lines)."""
        while True:
            lines = self.pending.split(b"\r\n")
            for n, line in enumerate(lines[:-1]):
                if line[3:4] != b"-":
                    answer = b"\r\n".join(lines[: n + 1]) + b"\r\n"
                    self.pending = self.pending[len(answer) :]
                    return answer
            data = self.sock.recv(65536)
            if not data:
                return b""
            self.pending += data

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def read_to_eof(self) -> bytes:
        data = self.pending
        while chunk := self.sock.recv(65536):
            data += chunk
        return data

    def open_transaction(self) -> None:
        assert self.command(b"EHLO client.example").startswith(b"250")
        assert self.command(b"MAIL FROM:<a@example.test>").startswith(b"250")
        assert self.command(b"RCPT TO:<b@example.test>").startswith(b"250")
        self.send(b"BDAT %d\r\n" % len(CHUNK) + CHUNK)
        assert self.reply().startswith(b"250")

    def starttls(self, context: ssl.SSLContext) -> None:
        assert self.command(b"EHLO client.example").startswith(b"250")
        assert self.command(b"STARTTLS").startswith(b"220")
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def close(self) -> None:
        self.sock.close()


def rset(client: Client) -> None:
    assert client.command(b"RSET").startswith(b"250")


def ehlo(client: Client) -> None:
    assert client.command(b"EHLO again.example").startswith(b"250")


def helo(client: Client) -> None:
    assert client.command(b"HELO again.example").startswith(b"250")


def quit_(client: Client) -> None:
    assert client.command(b"QUIT").startswith(b"221")
    client.read_to_eof()


def disconnect(client: Client) -> None:
    client.close()


def reset(client: Client) -> None:
    # SO_LINGER 0: close with a TCP RST instead of a FIN.
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def timeout(client: Client) -> None:
    assert client.reply().startswith(b"421 4.4.2")  # after connection_timeout_seconds


def error_budget(client: Client) -> None:
    for _ in range(2):
        assert client.command(b"XYZZY").startswith(b"500")
    assert client.command(b"XYZZY").startswith(b"500")
    assert client.reply().startswith(b"421")
    client.read_to_eof()


def starttls_refused_then_eof(client: Client) -> None:
    # STARTTLS inside a transaction is out of sequence (RFC 3207 §4: only before MAIL).
    assert client.command(b"STARTTLS").startswith(b"503")
    client.close()


def tls_failure(client: Client) -> None:
    # A broken TLS record on the upgraded connection: the session ends on a TLS error.
    assert isinstance(client.sock, ssl.SSLSocket)
    raw = socket.socket(fileno=client.sock.detach())
    raw.sendall(b"\x17\x03\x03\x00\x05garbage")
    with contextlib.suppress(OSError):
        raw.recv(1024)
    raw.close()


Path_ = Callable[[Client], None]
PATHS: dict[str, Path_] = {
    "rset": rset,
    "ehlo": ehlo,
    "helo": helo,
    "quit": quit_,
    "disconnect": disconnect,
    "reset": reset,
    "timeout": timeout,
    "error_budget": error_budget,
    "starttls_refused_then_eof": starttls_refused_then_eof,
    "tls_failure": tls_failure,
    "shutdown": lambda client: None,  # the listener stops: see the test
}
# Paths after which the session is still open: the discard must not wait for its end.
SESSION_STAYS_OPEN = {"rset", "ehlo", "helo"}


@pytest.mark.parametrize("path", list(PATHS))
async def test_abandoning_a_transaction_leaves_no_descriptor_and_no_file(
    smtpd: Smtpd, path: str
) -> None:
    if path == "timeout":
        smtpd.configure(connection_timeout_seconds=0.5)
    tmp_dir = smtpd.root / "tmp"
    client: Client = await in_thread(lambda: Client(smtpd.port))
    try:
        if path == "tls_failure":
            await in_thread(lambda: client.starttls(smtpd.client_context()))
        await in_thread(client.open_transaction)
        # The transaction really holds a spilled message (else this test could not fail).
        assert len(tmp_descriptors(tmp_dir)) == 1
        assert len(list(tmp_dir.iterdir())) == 1

        if path == "shutdown":
            smtpd.shutdown.request()
            goodbye = await in_thread(client.read_to_eof)
            assert goodbye.startswith(b"421 4.3.2"), goodbye
        else:
            await in_thread(lambda: PATHS[path](client))
        if path not in SESSION_STAYS_OPEN:
            await wait_until_async(lambda: not smtpd.listener.open_sessions, within=5)

        assert tmp_descriptors(tmp_dir) == []
        assert list(tmp_dir.iterdir()) == []
        if path in SESSION_STAYS_OPEN:  # and the session goes on normally
            await in_thread(client.open_transaction)
            assert (await in_thread(lambda: client.command(b"BDAT 0 LAST"))).startswith(b"250")
            assert list((smtpd.root / "incoming").glob("*.eml"))
    finally:
        client.close()
