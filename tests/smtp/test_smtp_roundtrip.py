"""ClientConnection and ServerConnection wired together in memory."""

from __future__ import annotations

from dispatch.smtp import NEED_DATA, ClientConnection
from dispatch.smtp.events import ConnectionClosed, Data, Ehlo, Mail, Quit, Rcpt, ServerReply
from tests.smtp.smtp_echo import EchoApp

MESSAGE = (
    b"From: a@b.example\r\nTo: c@d.example\r\nSubject: dots\r\n\r\n"
    b".\r\n..\r\n.leading\r\n...\r\n"
    b"8-bit: \xc3\xa9\xff\x80 and DEL \x7f\r\n"
    b"trailing dot.\r\n"
    b"\r\n.\r\nnot the end\r\n"
)


class Wire:
    """Carries bytes between a client and a server, as a socket pair would."""

    def __init__(self) -> None:
        self.server = EchoApp()
        self.client = ClientConnection()
        self._sent = 0

    def to_server(self, data: bytes) -> None:
        self.server.feed(data)

    def replies(self) -> list[ServerReply]:
        fresh = bytes(self.server.out[self._sent :])
        self._sent = len(self.server.out)
        if fresh:
            self.client.receive_data(fresh)
        result = []
        while (event := self.client.next_event()) is not NEED_DATA:
            if isinstance(event, ConnectionClosed):
                break
            assert isinstance(event, ServerReply)
            result.append(event)
        return result


def test_pipelined_delivery_with_dots_and_8bit() -> None:
    wire = Wire()
    assert [r.reply.code for r in wire.replies()] == [220]
    wire.to_server(wire.client.send(Ehlo("relay.example")))
    assert [r.reply.code for r in wire.replies()] == [250]
    extensions = wire.client.extensions
    assert extensions is not None
    assert extensions.pipelining
    assert extensions.eightbitmime
    group = wire.client.send(Mail("a@b.example", size=len(MESSAGE), body="8BITMIME"))
    group += wire.client.send(Rcpt("c@d.example"))
    group += wire.client.send(Rcpt("e@f.example"))
    group += wire.client.send(Data())
    wire.to_server(group)
    assert [r.reply.code for r in wire.replies()] == [250, 250, 250, 354]
    # Stream the message in awkward pieces: split inside CRLFs and before dots.
    pieces = [MESSAGE[i : i + 7] for i in range(0, len(MESSAGE), 7)]
    for piece in pieces:
        wire.to_server(wire.client.data_chunk(piece))
    wire.to_server(wire.client.end_data())
    final = wire.replies()
    assert [r.reply.code for r in final] == [250]
    assert final[0].reply.text == "Ok: queued as Q1"
    assert wire.server.messages == [MESSAGE]
    wire.to_server(wire.client.send(Quit()))
    assert [r.reply.code for r in wire.replies()] == [221]
    assert wire.client.closed
    assert wire.server.conn.closed


def test_bdat_delivery() -> None:
    wire = Wire()
    wire.replies()
    wire.to_server(wire.client.send(Ehlo("relay.example")))
    wire.replies()
    assert wire.client.extensions is not None
    assert wire.client.extensions.chunking
    stream = wire.client.send(Mail("a@b.example")) + wire.client.send(Rcpt("c@d.example"))
    stream += wire.client.bdat(MESSAGE[:50], last=False)
    stream += wire.client.bdat(MESSAGE[50:], last=True)
    wire.to_server(stream)
    assert [r.reply.code for r in wire.replies()] == [250, 250, 250, 250]
    assert wire.server.messages == [MESSAGE]


def test_message_without_final_crlf_gets_one() -> None:
    wire = Wire()
    wire.replies()
    wire.to_server(wire.client.send(Ehlo("r.example")))
    wire.replies()
    stream = wire.client.send(Mail("a@b.example"))
    stream += wire.client.send(Rcpt("c@d.example")) + wire.client.send(Data())
    wire.to_server(stream)
    wire.replies()
    wire.to_server(wire.client.send_data(b"no newline at the end"))
    wire.replies()
    assert wire.server.messages == [b"no newline at the end\r\n"]
