"""ClientConnection's state table: commands out of sequence are refused before any byte.

The client reads the server's table (`dispatch.smtp._state`) from the other end: a command the
session cannot take in the state it will be in once the awaited replies come back as hoped
raises `LocalProtocolError`, and nothing about the session changes, so the caller can go on
with a legal command. Replies of a class that makes no sense for their command raise
`UnexpectedReply`. The last test checks that the one reply rule (`awaits_reply`) is what the
server core keeps count of.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dispatch.smtp import (
    NEED_DATA,
    PAUSED,
    ClientConnection,
    LocalProtocolError,
    ServerConnection,
    State,
    UnexpectedReply,
    awaits_reply,
)
from dispatch.smtp.events import (
    AuthResponse,
    ConnectionClosed,
    Data,
    Ehlo,
    Helo,
    Mail,
    Noop,
    Quit,
    Rcpt,
    Rset,
    ServerReply,
    StartTls,
)
from tests.smtp.smtp_echo import EchoApp

EHLO_PIPELINING = b"250-mx.example\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
EHLO_PLAIN = b"250-mx.example\r\n250 8BITMIME\r\n"  # no PIPELINING


def answer(client: ClientConnection, wire: bytes) -> list[int]:
    """Feed the server's replies; the codes the client paired with its requests."""
    client.receive_data(wire)
    codes = []
    while (event := client.next_event()) is not NEED_DATA:
        if isinstance(event, ConnectionClosed):
            break
        assert isinstance(event, ServerReply)
        codes.append(event.reply.code)
    return codes


def greeted() -> ClientConnection:
    client = ClientConnection()
    assert answer(client, b"220 mx.example\r\n") == [220]
    return client


def ready(ehlo: bytes = EHLO_PIPELINING) -> ClientConnection:
    client = greeted()
    client.send(Ehlo("relay.example"))
    assert answer(client, ehlo) == [250]
    return client


def with_mail() -> ClientConnection:
    client = ready()
    client.send(Mail("a@b.example"))
    assert answer(client, b"250 ok\r\n") == [250]
    return client


def with_rcpt() -> ClientConnection:
    client = with_mail()
    client.send(Rcpt("c@d.example"))
    assert answer(client, b"250 ok\r\n") == [250]
    return client


def refused(
    client: ClientConnection, send: Callable[[ClientConnection], bytes], match: str
) -> None:
    """`send` raises before producing a byte and leaves the session as it was."""
    state, awaiting = client.state, client.awaiting
    with pytest.raises(LocalProtocolError, match=match):
        send(client)
    assert (client.state, client.awaiting) == (state, awaiting)


def test_nothing_before_the_greeting() -> None:
    refused(ClientConnection(), lambda c: c.send(Ehlo("relay.example")), "the greeting")


@pytest.mark.parametrize("command", [Mail("a@b.example"), Rcpt("c@d.example"), Data(), StartTls()])
def test_transaction_and_starttls_before_ehlo(command: Mail | Rcpt | Data | StartTls) -> None:
    client = greeted()
    refused(client, lambda c: c.send(command), "before EHLO/HELO")
    refused(client, lambda c: c.bdat(b"x", last=True), "before EHLO/HELO")
    client.send(Ehlo("relay.example"))  # the refusals changed nothing


def test_rcpt_before_mail() -> None:
    client = ready()
    refused(client, lambda c: c.send(Rcpt("c@d.example")), "RCPT before MAIL")
    client.send(Mail("a@b.example"))
    assert answer(client, b"550 5.7.1 sender refused\r\n") == [550]
    refused(client, lambda c: c.send(Rcpt("c@d.example")), "RCPT before MAIL")
    client.send(Rset())  # still in step: the session goes on


def test_data_and_bdat_before_an_accepted_recipient() -> None:
    client = with_mail()
    refused(client, lambda c: c.send(Data()), "before a recipient was accepted")
    refused(client, lambda c: c.bdat(b"x", last=True), "before a recipient was accepted")
    client.send(Rcpt("c@d.example"))
    assert answer(client, b"550 5.1.1 no such user\r\n") == [550]
    refused(client, lambda c: c.send(Data()), "before a recipient was accepted")
    refused(ready(), lambda c: c.send(Data()), "before a recipient was accepted")


def test_nested_mail() -> None:
    refused(with_rcpt(), lambda c: c.send(Mail("x@b.example")), "MAIL inside a transaction")


def test_data_and_bdat_do_not_mix() -> None:
    client = with_rcpt()
    client.bdat(b"part one", last=False)
    refused(client, lambda c: c.send(Data()), "DATA after BDAT")
    assert answer(client, b"250 2.0.0 8 octets\r\n") == [250]
    refused(client, lambda c: c.send(Data()), "DATA after BDAT")
    client.bdat(b"part two", last=True)


def test_nothing_but_the_message_after_354() -> None:
    client = with_rcpt()
    client.send(Data())
    assert answer(client, b"354 go ahead\r\n") == [354]
    refused(client, lambda c: c.send(Rset()), "end_data")
    refused(client, lambda c: c.bdat(b"x", last=True), "end_data")
    client.end_data()
    refused(client, lambda c: c.send(Mail("a@b.example")), "the end of data")
    refused(client, lambda c: c.data_chunk(b"more"), "before a 354")
    assert answer(client, b"250 2.0.0 queued\r\n") == [250]
    client.send(Mail("a@b.example"))  # the transaction is over: the next may start


def test_nothing_after_quit() -> None:
    client = ready()
    client.send(Quit())
    refused(client, lambda c: c.send(Noop()), "must wait for the reply to QUIT")
    assert answer(client, b"221 2.0.0 bye\r\n") == [221]
    assert client.closed
    refused(client, lambda c: c.send(Quit()), "after the session closed")
    refused(client, lambda c: c.send(Rset()), "after the session closed")


def test_nothing_after_421() -> None:
    client = with_mail()
    client.send(Rcpt("c@d.example"))
    assert answer(client, b"421 4.3.2 shutting down\r\n") == [421]
    refused(client, lambda c: c.send(Rset()), "after the session closed")


def test_a_refused_greeting_ends_the_session() -> None:
    client = ClientConnection()
    assert answer(client, b"554 5.7.1 go away\r\n") == [554]
    refused(client, lambda c: c.send(Ehlo("relay.example")), "after the session closed")


def test_group_enders_are_waited_for() -> None:
    """RFC 2920 §3.1: EHLO, DATA, NOOP, QUIT, STARTTLS... end a pipelined group."""
    client = greeted()
    client.send(Ehlo("relay.example"))
    refused(client, lambda c: c.send(Mail("a@b.example")), "wait for the reply to EHLO")
    assert answer(client, EHLO_PIPELINING) == [250]
    client.send(Noop())
    refused(client, lambda c: c.send(Mail("a@b.example")), "wait for the reply to NOOP")


def test_pipelining_needs_the_server_to_offer_it() -> None:
    client = ready(EHLO_PLAIN)
    client.send(Mail("a@b.example"))
    refused(client, lambda c: c.send(Rcpt("c@d.example")), "did not offer PIPELINING")
    assert answer(client, b"250 ok\r\n") == [250]
    client.send(Rcpt("c@d.example"))  # after the reply: fine
    helo = greeted()
    helo.send(Helo("relay.example"))
    assert answer(helo, b"250 mx.example\r\n") == [250]
    assert helo.extensions is None
    helo.send(Mail("a@b.example"))
    refused(helo, lambda c: c.send(Rcpt("c@d.example")), "did not offer PIPELINING")


def test_a_pipelined_refusal_is_counted_on() -> None:
    """MAIL and RCPT pipelined; MAIL refused: the RCPT will be refused too, so DATA may not
    follow it, and after both replies the session is where a refused MAIL leaves it."""
    client = ready()
    client.send(Mail("a@b.example"))
    client.send(Rcpt("c@d.example"))
    assert answer(client, b"550 5.7.1 no\r\n") == [550]
    refused(client, lambda c: c.send(Data()), "before a recipient was accepted")
    assert answer(client, b"503 5.5.1 need MAIL\r\n") == [503]
    assert client.state is State.READY


def test_starttls_handshake_must_come_first() -> None:
    client = ready(b"250-mx.example\r\n250 STARTTLS\r\n")
    client.send(StartTls())
    assert answer(client, b"220 2.0.0 go ahead\r\n") == [220]
    refused(client, lambda c: c.send(Ehlo("relay.example")), "STARTTLS is in progress")
    client.tls_established()
    assert client.state is State.INITIAL
    refused(client, lambda c: c.send(Mail("a@b.example")), "before EHLO/HELO")


def test_auth_response_needs_a_challenge() -> None:
    refused(ready(), lambda c: c.send(AuthResponse("dXNlcg==")), "334 challenge")


def test_the_server_may_accept_data_after_every_recipient_failed() -> None:
    """RFC 2920 §3.1 asks a server to refuse DATA then; one that says 354 anyway gets the
    message ended at once, and the client follows it."""
    client = ready()
    for command in (Mail("a@b.example"), Rcpt("c@d.example"), Data()):
        client.send(command)
    assert answer(client, b"250 ok\r\n550 no such user\r\n354 go\r\n") == [250, 550, 354]
    assert client.sending_data
    client.end_data()
    assert answer(client, b"554 5.5.1 no valid recipients\r\n") == [554]
    assert client.state is State.READY


@pytest.mark.parametrize(
    ("steps", "reply", "command"),
    [
        ([Mail("a@b.example")], b"354 go ahead\r\n", "MAIL"),
        (
            [Mail("a@b.example"), Rcpt("c@d.example"), Data()],
            b"250 ok\r\n" * 2 + b"250 fine\r\n",
            "DATA",
        ),
        (
            [Mail("a@b.example"), Rcpt("c@d.example"), Data()],
            b"250 ok\r\n" * 2 + b"334 what\r\n",
            "DATA",
        ),
        ([StartTls()], b"250 sure\r\n", "STARTTLS"),
        ([Ehlo("again.example")], b"354 hm\r\n", "EHLO"),
    ],
)
def test_a_reply_that_makes_no_sense_for_its_command(
    steps: list[Mail | Rcpt | Data | StartTls | Ehlo], reply: bytes, command: str
) -> None:
    client = ready(b"250-mx.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
    for step in steps:
        client.send(step)
    with pytest.raises(UnexpectedReply) as caught:
        answer(client, reply)
    assert caught.value.command == command
    assert str(caught.value.reply) == reply.split(b"\r\n")[-2].decode()


def test_a_3xx_to_the_end_of_data() -> None:
    client = with_rcpt()
    client.send(Data())
    answer(client, b"354 go\r\n")
    client.send_data(b"hello\r\n")
    with pytest.raises(UnexpectedReply, match="the end of data"):
        answer(client, b"354 again?\r\n")


@pytest.mark.parametrize(
    "transcript",
    [
        b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"
        b"hi\r\n.\r\nQUIT\r\n",
        b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
        b"BDAT 3\r\nabcBDAT 2 LAST\r\nde",
        b"RCPT TO:<x@y.example>\r\nGET / HTTP/1.1\r\n",
        b"HELO c.example\r\nNOOP\r\nVRFY x\r\nHELP\r\nXYZZY\r\nRSET\r\nAUTH LOGIN\r\n*\r\n",
    ],
)
def test_awaits_reply_is_what_the_server_counts(transcript: bytes) -> None:
    """One rule for both sides: an event takes a reply exactly when `awaits_reply` says."""
    app = EchoApp()
    conn: ServerConnection = app.conn
    conn.receive_data(transcript)
    seen = 0
    while True:
        owed_before = conn.replies_owed
        event = conn.next_event()
        if event is NEED_DATA or event is PAUSED or isinstance(event, ConnectionClosed):
            break
        seen += 1
        assert conn.replies_owed - owed_before == int(awaits_reply(event)), event
        reply = app.answer(event)
        if reply is not None:
            conn.send(reply)
    assert seen >= 2
