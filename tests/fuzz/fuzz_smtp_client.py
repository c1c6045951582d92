"""Fuzz target: the SMTP client core (`ClientConnection`) fed arbitrary server replies.

The input is what the server sends, cut in small pieces. The driver behaves like the relay
(`dispatch.relays.smtp_session`): EHLO after the greeting (HELO if EHLO gets a 5xx), STARTTLS
once when offered, followed by a pretended handshake and EHLO again; then MAIL, two RCPTs and
DATA, pipelined when the server offers PIPELINING and one by one otherwise (no RCPT after a
refused MAIL, no DATA without an accepted recipient); the message after a 354, QUIT after the
reply to its end. Oracle: the only exception is `RemoteProtocolError` (the relay drops the
connection and retries later; a `LocalProtocolError` would mean the client's state table
refuses what the relay does); reading the server's extensions and queue id never fails.
"""

from __future__ import annotations

import itertools

import atheris  # type: ignore[import-untyped]

from tests.support.sources import import_sources

import_sources()  # the SMTP core as Python, not its compiled build
with atheris.instrument_imports(include=["dispatch"]):
    from dispatch.relays.smtp_transaction import remote_id_of
    from dispatch.smtp import NEED_DATA, ClientConnection, RemoteProtocolError
    from dispatch.smtp.events import (
        Command,
        ConnectionClosed,
        Data,
        DataEnd,
        Ehlo,
        Greeting,
        Helo,
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
        self.tls_tried = False
        self.pending: list[Command] = []  # the rest of a transaction sent one by one
        self.accepted = 0

    def on_reply(self, event: ServerReply) -> None:
        client, reply, request = self.client, event.reply, event.request
        remote_id_of(reply)
        if client.closed:
            return
        if isinstance(request, Greeting) and reply.code == 220:
            client.send(Ehlo("relay.example"))
        elif isinstance(request, Ehlo) and reply.is_permanent:
            client.send(Helo("relay.example"))
        elif isinstance(request, Ehlo | Helo) and reply.is_positive:
            self.greeted()
        elif isinstance(request, StartTls):
            if reply.code == 220:
                client.tls_established()
                client.send(Ehlo("relay.example"))
            else:
                self.begin()
        elif isinstance(request, Mail | Rcpt) and self.pending:
            self.next_command(request, reply.is_positive)
        elif isinstance(request, Data) and client.sending_data:
            client.send_data(MESSAGE)
        elif isinstance(request, DataEnd):
            client.send(Quit())

    def greeted(self) -> None:
        extensions = self.client.extensions
        if extensions is not None:
            _ = (extensions.size, extensions.pipelining, extensions.auth, extensions.keywords)
            if extensions.starttls and not self.tls_tried:
                self.tls_tried = True
                self.client.send(StartTls())
                return
        self.begin()

    def begin(self) -> None:
        extensions = self.client.extensions
        commands: list[Command] = [
            Mail("a@example.com"),
            Rcpt("b@example.org"),
            Rcpt("c@example.org"),
            Data(),
        ]
        if extensions is not None and extensions.pipelining:
            for command in commands:
                self.client.send(command)
        else:
            self.client.send(commands[0])
            self.pending = commands[1:]

    def next_command(self, answered: Mail | Rcpt, positive: bool) -> None:
        if isinstance(answered, Mail) and not positive:
            self.pending = []
            return
        self.accepted += isinstance(answered, Rcpt) and positive
        command = self.pending.pop(0)
        if isinstance(command, Data) and not self.accepted:
            return
        self.client.send(command)


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
