"""ClientConnection: reply assembly, pipelining, extensions, dot-stuffing, desync."""

from __future__ import annotations

import pytest

from dispatch.smtp import (
    NEED_DATA,
    ClientConnection,
    ClientLimits,
    Extensions,
    LocalProtocolError,
    RemoteProtocolError,
    Reply,
)
from dispatch.smtp.events import (
    Bdat,
    ConnectionClosed,
    Data,
    DataEnd,
    Ehlo,
    Greeting,
    Mail,
    Quit,
    Rcpt,
    ServerReply,
    StartTls,
)

EHLO_REPLY = (
    b"250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n"
    b"250-STARTTLS\r\n250-AUTH LOGIN PLAIN XOAUTH2\r\n250-ENHANCEDSTATUSCODES\r\n"
    b"250-CHUNKING\r\n250 SMTPUTF8\r\n"
)


def reply_of(client: ClientConnection) -> ServerReply:
    event = client.next_event()
    assert isinstance(event, ServerReply), event
    return event


def greeted() -> ClientConnection:
    client = ClientConnection()
    client.receive_data(b"220 mx.example ESMTP\r\n")
    assert reply_of(client).request == Greeting()
    return client


def ready() -> ClientConnection:
    """Greeted and answered EHLO with `EHLO_REPLY` (PIPELINING, CHUNKING): a transaction may
    open."""
    client = greeted()
    client.send(Ehlo("relay.example"))
    client.receive_data(EHLO_REPLY)
    assert reply_of(client).reply.code == 250
    return client


def in_data() -> ClientConnection:
    """MAIL, RCPT and DATA answered 250, 250, 354: the message may be sent."""
    client = ready()
    client.send(Mail("a@b.example"))
    client.send(Rcpt("c@d.example"))
    client.send(Data())
    client.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    for _ in range(3):
        reply_of(client)
    assert client.sending_data
    return client


def test_ehlo_reply_to_extensions() -> None:
    client = greeted()
    client.send(Ehlo("relay.example"))
    client.receive_data(EHLO_REPLY[:50])
    assert client.next_event() is NEED_DATA
    client.receive_data(EHLO_REPLY[50:])
    event = reply_of(client)
    assert event.reply.code == 250
    assert len(event.reply.lines) == 9
    ext = client.extensions
    assert ext is not None
    assert ext.pipelining
    assert ext.starttls
    assert ext.eightbitmime
    assert ext.chunking
    assert ext.smtputf8
    assert ext.enhancedstatuscodes
    assert ext.size == 35882577
    assert ext.auth == frozenset({"LOGIN", "PLAIN", "XOAUTH2"})
    assert ext.has("chunking")
    assert not ext.has("DSN")


def test_extensions_edge_cases() -> None:
    ext = Extensions.from_ehlo_reply(Reply(250, ("hi", "SIZE", "AUTH=LOGIN", "auth plain")))
    assert ext.size is None
    assert "SIZE" in ext.keywords
    assert ext.auth == frozenset({"LOGIN", "PLAIN"})
    assert Extensions.from_ehlo_reply(Reply(250, ("hi", "SIZE 0"))).size is None
    assert Extensions.from_ehlo_reply(Reply(250, ("hi",))) == Extensions()


def test_pipelined_replies_matched_in_order() -> None:
    client = ready()
    wire = client.send(Mail("a@b.example", size=10))
    wire += client.send(Rcpt("c@d.example"))
    wire += client.send(Rcpt("e@f.example"))
    wire += client.send(Data())
    assert wire.count(b"\r\n") == 4  # one write
    with pytest.raises(LocalProtocolError):
        client.send(Rcpt("late@x.example"))  # nothing may follow DATA before its reply
    client.receive_data(
        b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 No such user\r\n354 Go ahead\r\n"
    )
    events = [reply_of(client) for _ in range(4)]
    assert [(e.reply.code, type(e.request).__name__) for e in events] == [
        (250, "Mail"),
        (250, "Rcpt"),
        (550, "Rcpt"),
        (354, "Data"),
    ]
    assert events[1].reply.enhanced == "2.1.5"
    assert events[1].reply.lines == ("Ok",)
    assert events[2].request == Rcpt("e@f.example")
    assert client.sending_data
    body = client.send_data(b"Subject: x\r\n\r\n.hidden\r\n..two\r\nend")
    assert body == b"Subject: x\r\n\r\n..hidden\r\n...two\r\nend\r\n.\r\n"
    client.receive_data(b"250 2.0.0 queued\r\n")
    assert reply_of(client).request == DataEnd()
    assert client.next_event() is NEED_DATA


def test_data_before_354_is_refused() -> None:
    client = ready()
    with pytest.raises(LocalProtocolError):
        client.data_chunk(b"x")
    client.send(Mail("a@b.example"))
    client.send(Rcpt("c@d.example"))
    client.send(Data())
    client.receive_data(b"250 ok\r\n250 ok\r\n554 5.5.1 No valid recipients\r\n")
    for _ in range(3):
        reply_of(client)
    with pytest.raises(LocalProtocolError):
        client.end_data()


@pytest.mark.parametrize(
    ("pieces", "wire"),
    [
        ([b".start"], b"..start\r\n.\r\n"),
        ([b"a\r\n", b".b\r\n"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\r", b"\n.b"], b"a\r\n..b\r\n.\r\n"),
        ([b"bare\nlf\rcr\r"], b"bare\r\nlf\r\ncr\r\n.\r\n"),
        ([b"x\r", b""], b"x\r\n.\r\n"),
        ([b"\n.\n"], b"\r\n..\r\n.\r\n"),  # a smuggling attempt leaves as harmless text
        ([], b".\r\n"),
        ([b"ends\r\n"], b"ends\r\n.\r\n"),
    ],
)
def test_data_encoding(pieces: list[bytes], wire: bytes) -> None:
    client = in_data()
    out = b"".join(client.data_chunk(p) for p in pieces) + client.end_data()
    assert out == wire


def test_bdat() -> None:
    client = ready()
    client.send(Mail("a@b.example"))
    client.send(Rcpt("c@d.example"))
    client.receive_data(b"250 ok\r\n250 ok\r\n")
    reply_of(client)
    reply_of(client)
    assert client.bdat(b"abc", last=False) == b"BDAT 3\r\nabc"
    assert client.bdat(b".x\n", last=True) == b"BDAT 3 LAST\r\n.x\n"
    client.receive_data(b"250 2.0.0 3 octets\r\n250 2.0.0 queued\r\n")
    assert reply_of(client).request == Bdat(3)
    assert reply_of(client).request == Bdat(3, last=True)
    with pytest.raises(LocalProtocolError):
        client.send(Bdat(3))


def test_reply_without_command_is_desync() -> None:
    client = greeted()
    client.receive_data(b"250 surprise\r\n")
    with pytest.raises(RemoteProtocolError):
        client.next_event()


def test_unsolicited_421_closes() -> None:
    client = greeted()
    client.receive_data(b"421 4.4.2 idle timeout\r\n")
    event = reply_of(client)
    assert event.request is None
    assert event.reply.code == 421
    assert client.closed
    assert isinstance(client.next_event(), ConnectionClosed)


@pytest.mark.parametrize(
    "wire", [b"hello\r\n", b"2500 x\r\n", b"250-a\r\n251 b\r\n", b"220\tx\r\n"]
)
def test_malformed_reply_is_desync(wire: bytes) -> None:
    client = ClientConnection()
    client.receive_data(wire)
    with pytest.raises(RemoteProtocolError):
        client.next_event()


def test_reply_caps() -> None:
    client = ClientConnection(ClientLimits(max_reply_line=100, max_reply_lines=5))
    client.receive_data(b"220 " + b"x" * 200 + b"\r\n")
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    client = ClientConnection(ClientLimits(max_reply_lines=5))
    client.receive_data(b"220-x\r\n" * 6 + b"220 x\r\n")
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    client = ClientConnection(ClientLimits(max_reply_bytes=1000))
    client.receive_data(b"220-" + b"x" * 500 + b"\r\n" + b"220 " + b"x" * 500 + b"\r\n")
    with pytest.raises(RemoteProtocolError):
        client.next_event()


def test_starttls_flow_and_response_injection() -> None:
    client = greeted()
    client.send(Ehlo("relay.example"))
    client.receive_data(EHLO_REPLY)
    reply_of(client)
    client.send(StartTls())
    with pytest.raises(LocalProtocolError):
        client.send(Ehlo("too.early"))
    client.receive_data(b"220 2.0.0 go ahead\r\n")
    reply_of(client)
    with pytest.raises(LocalProtocolError):
        client.send(Ehlo("before.handshake"))
    client.tls_established()
    assert client.extensions is None  # RFC 3207 §4.2: forget the plaintext EHLO
    client.send(Ehlo("relay.example"))

    injected = ready()
    injected.send(StartTls())
    injected.receive_data(b"220 go ahead\r\n250 injected\r\n")
    with pytest.raises(RemoteProtocolError):
        injected.next_event()


def test_quit_and_eof() -> None:
    client = greeted()
    client.send(Quit())
    client.receive_data(b"221 2.0.0 Bye\r\n")
    assert reply_of(client).request == Quit()
    assert client.closed
    with pytest.raises(LocalProtocolError):
        client.send(Quit())
    eof = ready()
    eof.send(Mail("a@b.example"))
    eof.receive_data(b"")
    assert isinstance(eof.next_event(), ConnectionClosed)
    assert eof.awaiting == (Mail("a@b.example"),)
