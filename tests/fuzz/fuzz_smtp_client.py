"""Fuzz target: the SMTP client core (`ClientConnection`) fed arbitrary server replies.

The input is what the server sends, cut in small pieces. The driver behaves like the relay:
EHLO after the greeting, then MAIL, two RCPTs and DATA pipelined, the message after a 354,
QUIT at the end; a 220 to STARTTLS (sent when the EHLO reply offers it) is followed by a
pretended handshake. Oracle: the only exception is `RemoteProtocolError` (the relay drops
the connection and retries later); reading the server's extensions and queue id never fails.
"""

from __future__ import annotations

import itertools

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["dispatch"]):
    from dispatch.relays.smtp_session import remote_id_of
    from dispatch.smtp import NEED_DATA, ClientConnection, RemoteProtocolError
    from dispatch.smtp.events import (
        ConnectionClosed,
        Data,
        DataEnd,
        Ehlo,
        Mail,
        Quit,
        Rcpt,
        ServerReply,
        StartTls,
    )

PIECES = (7, 1, 30, 3, 120)
MESSAGE = b"Subject: fuzz\r\n\r\n.leading dot\r\nbare\nline\r\n"


class Relay:
    """The relay's side of the dialogue, one step per reply."""

    def __init__(self) -> None:
        self.client = ClientConnection()
        self.step = "greeting"
        self.tls_done = False

    def on_reply(self, event: ServerReply) -> None:
        client, reply = self.client, event.reply
        remote_id_of(reply)
        request = event.request
        if isinstance(request, StartTls) and reply.code == 220:
            client.tls_established()
            self.tls_done = True
            client.send(Ehlo("relay.example"))
            return
        if isinstance(request, Data) and client.sending_data:
            client.send_data(MESSAGE)
            return
        if client.awaiting or client.closed:
            return
        if self.step == "greeting":
            self.step = "ehlo"
            client.send(Ehlo("relay.example"))
        elif self.step == "ehlo":
            extensions = client.extensions
            if extensions is not None:
                _ = (extensions.size, extensions.pipelining, extensions.auth, extensions.keywords)
                if extensions.starttls and not self.tls_done:
                    client.send(StartTls())
                    return
            self.step = "transaction"
            for command in (Mail("a@example.com"), Rcpt("b@example.org"), Rcpt("c@example.org")):
                client.send(command)
            client.send(Data())
        elif self.step == "transaction" and isinstance(request, DataEnd):
            self.step = "quit"
            client.send(Quit())


def TestOneInput(data: bytes) -> None:
    relay = Relay()
    client = relay.client
    start = 0
    try:
        for size in itertools.cycle(PIECES):
            chunk = data[start : start + size]
            start += size
            client.receive_data(chunk)  # b"" at the end: the server closed
            while (event := client.next_event()) is not NEED_DATA:
                if isinstance(event, ConnectionClosed):
                    return
                relay.on_reply(event)
                if client.closed:
                    return
            if not chunk:
                return
    except RemoteProtocolError:
        return


if __name__ == "__main__":
    from tests.fuzz._runner import fuzz

    fuzz(TestOneInput)
