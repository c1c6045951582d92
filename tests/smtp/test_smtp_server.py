"""Transcripts: client bytes in, replies out, through ServerConnection and the echo app."""

from __future__ import annotations

import pytest

from dispatch.smtp import (
    NEED_DATA,
    PAUSED,
    Limits,
    LocalProtocolError,
    ServerConnection,
    State,
    replies,
)
from dispatch.smtp import auth as sasl
from dispatch.smtp.events import (
    Auth,
    AuthResponse,
    CommandError,
    ConnectionClosed,
    Ehlo,
    Helo,
    Help,
    Mail,
    Noop,
    PipelinedAfterStartTls,
    Rcpt,
    UnknownCommand,
    Vrfy,
    WrongProtocol,
)
from tests.smtp.smtp_echo import EchoApp, run

EHLO = b"EHLO client.example\r\n"
MAIL = b"MAIL FROM:<alice@example.org>\r\n"
RCPT = b"RCPT TO:<bob@example.net>\r\n"
MSG = b"DATA\r\nSubject: hi\r\n\r\nhello\r\n.\r\n"
OK = "250 2.0.0"
BAD_SEQ = "503 5.5.1"

TRANSCRIPTS = [
    ("every simple command", EHLO + b"HELP\r\nHELP MAIL\r\nVRFY bob\r\nNOOP\r\nNOOP x\r\n"
     b"RSET\r\nHELO client.example\r\nQUIT\r\n",
     ["250", "214 2.0.0", "214 2.0.0", "252 2.5.0", OK, OK, OK, "250", "221 2.0.0"]),
    ("whole transaction", EHLO + MAIL + RCPT + MSG + b"QUIT\r\n",
     ["250", OK, OK, "354", OK, "221 2.0.0"]),
    ("two transactions", EHLO + MAIL + RCPT + MSG + MAIL + RCPT + RCPT + MSG,
     ["250", OK, OK, "354", OK, OK, OK, OK, "354", OK]),
    ("verbs are case-insensitive", b"ehlo client.example\r\nmail from:<a@b.example>\r\n"
     b"rcpt to:<c@d.example>\r\nRsEt\r\n", ["250", OK, OK, OK]),
    ("space after the colon", EHLO + b"MAIL FROM: <a@b.example>\r\nRCPT TO: <c@d.example>\r\n",
     ["250", OK, OK]),
    ("null reverse path", EHLO + b"MAIL FROM:<>\r\n" + RCPT, ["250", OK, OK]),
    ("postmaster without domain", EHLO + MAIL + b"RCPT TO:<Postmaster>\r\n", ["250", OK, OK]),
    ("RCPT before MAIL", EHLO + RCPT, ["250", BAD_SEQ]),
    ("DATA before RCPT", EHLO + MAIL + b"DATA\r\n", ["250", OK, BAD_SEQ]),
    ("DATA before MAIL", EHLO + b"DATA\r\n", ["250", BAD_SEQ]),
    ("MAIL twice", EHLO + MAIL + MAIL, ["250", OK, BAD_SEQ]),
    ("MAIL before EHLO", MAIL, [BAD_SEQ]),
    ("RCPT before EHLO", RCPT, [BAD_SEQ]),
    ("STARTTLS before EHLO", b"STARTTLS\r\n", [BAD_SEQ]),
    ("AUTH before EHLO", b"AUTH PLAIN\r\n", [BAD_SEQ]),
    ("AUTH inside a transaction", EHLO + MAIL + b"AUTH PLAIN\r\n", ["250", OK, BAD_SEQ]),
    ("NOOP, HELP, VRFY, RSET before EHLO", b"NOOP\r\nHELP\r\nVRFY x\r\nRSET\r\n",
     [OK, "214 2.0.0", "252 2.5.0", OK]),
    ("RSET ends the transaction", EHLO + MAIL + RCPT + b"RSET\r\n" + RCPT,
     ["250", OK, OK, OK, BAD_SEQ]),
    ("EHLO ends the transaction", EHLO + MAIL + EHLO + RCPT, ["250", OK, "250", BAD_SEQ]),
    ("null forward path", EHLO + MAIL + b"RCPT TO:<>\r\n", ["250", OK, "501 5.1.3"]),
    ("no angle brackets", EHLO + b"MAIL FROM:alice@example.org\r\n", ["250", "501 5.1.7"]),
    ("bad domain", EHLO + b"MAIL FROM:<a@-bad-.example>\r\n", ["250", "501 5.1.7"]),
    ("MAIL without FROM", EHLO + b"MAIL <a@b.example>\r\n", ["250", "501 5.5.4"]),
    ("unknown MAIL parameter", EHLO + b"MAIL FROM:<a@b.example> MT-PRIORITY=3\r\n",
     ["250", "555 5.5.4"]),
    ("unknown RCPT parameter", EHLO + MAIL + b"RCPT TO:<c@d.example> RRVS=2030-01-01T00:00Z\r\n",
     ["250", OK, "555 5.5.4"]),
    ("DSN parameters accepted (RFC 3461)",
     EHLO + b"MAIL FROM:<a@b.example> RET=HDRS ENVID=x+2By\r\n"
     + b"RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c+40d.example\r\n",
     ["250", OK, OK]),
    ("NOTIFY=NEVER with another keyword", EHLO + MAIL
     + b"RCPT TO:<c@d.example> NOTIFY=NEVER,DELAY\r\n", ["250", OK, "501 5.5.4"]),
    ("RET of an unknown kind", EHLO + b"MAIL FROM:<a@b.example> RET=BODY\r\n",
     ["250", "501 5.5.4"]),
    ("ENVID not xtext", EHLO + b"MAIL FROM:<a@b.example> ENVID=a+zz\r\n", ["250", "501 5.5.4"]),
    ("ORCPT without an address type", EHLO + MAIL + b"RCPT TO:<c@d.example> ORCPT=c@d\r\n",
     ["250", OK, "501 5.5.4"]),
    ("SIZE, BODY, SMTPUTF8, AUTH accepted",
     EHLO + b"MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME SMTPUTF8 AUTH=<>\r\n",
     ["250", OK]),
    ("bad SIZE", EHLO + b"MAIL FROM:<a@b.example> SIZE=big\r\n", ["250", "501 5.5.4"]),
    ("bad BODY", EHLO + b"MAIL FROM:<a@b.example> BODY=BINARYMIME\r\n", ["250", "501 5.5.4"]),
    ("SIZE over the limit", EHLO + b"MAIL FROM:<a@b.example> SIZE=26214401\r\n",
     ["250", "552 5.3.4"]),
    ("non-ASCII without SMTPUTF8", EHLO + "MAIL FROM:<jörg@b.example>\r\n".encode(),
     ["250", "553 5.6.7"]),
    ("non-ASCII with SMTPUTF8", EHLO + "MAIL FROM:<jörg@bü.example> SMTPUTF8\r\n".encode()
     + "RCPT TO:<zoë@d.example>\r\n".encode(), ["250", OK, OK]),
    ("non-ASCII recipient needs SMTPUTF8 on MAIL", EHLO + MAIL
     + "RCPT TO:<zoë@d.example>\r\n".encode(), ["250", OK, "553 5.6.7"]),
    ("invalid UTF-8", EHLO + b"MAIL FROM:<\xff@b.example>\r\n", ["250", "501 5.5.2"]),
    ("local part over 64 octets", EHLO + b"MAIL FROM:<" + b"a" * 65 + b"@b.example>\r\n",
     ["250", "553 5.1.7"]),
    ("local part of 64 octets", EHLO + b"MAIL FROM:<" + b"a" * 64 + b"@b.example>\r\n",
     ["250", OK]),
    ("path over 256 octets", EHLO + MAIL + b"RCPT TO:<" + b"c" * 60 + b"@" + b"d" * 50 + b"."
     + b"e" * 50 + b"." + b"f" * 50 + b"." + b"g" * 50 + b".example>\r\n",
     ["250", OK, "501 5.1.3"]),
    ("domain label over 63 octets", EHLO + b"MAIL FROM:<a@" + b"b" * 64 + b".example>\r\n",
     ["250", "501 5.1.7"]),
    ("address literal", EHLO + b"MAIL FROM:<a@[192.0.2.1]>\r\nRCPT TO:<c@[IPv6:2001:db8::1]>\r\n",
     ["250", OK, OK]),
    ("bad address literal", EHLO + b"MAIL FROM:<a@[192.0.2.300]>\r\n", ["250", "501 5.1.7"]),
    ("source route is accepted and dropped", EHLO + b"MAIL FROM:<@relay.example:a@b.example>\r\n",
     ["250", OK]),
    ("quoted local part", EHLO + b'MAIL FROM:<"john doe>"@b.example>\r\n', ["250", OK]),
    ("EHLO without argument", b"EHLO\r\n", ["501 5.5.4"]),
    ("EHLO address literal", b"EHLO [127.0.0.1]\r\n", ["250"]),
    ("EHLO bad literal", b"EHLO [example]\r\n", ["501 5.5.4"]),
    ("DATA with argument", EHLO + MAIL + RCPT + b"DATA now\r\n", ["250", OK, OK, "501 5.5.4"]),
    ("VRFY without argument", b"VRFY\r\n", ["501 5.5.4"]),
    ("unknown verb", b"FOO bar\r\n", ["500 5.5.2"]),
    ("known but not offered", b"EXPN list\r\n", ["502 5.5.1"]),
    ("empty line", b"\r\n", ["500 5.5.2"]),
    ("HTTP request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ["502 5.5.1"]),
    ("HTTP method alone", b"CONNECT mail.example:25\r\nNOOP\r\n", ["502 5.5.1"]),
    ("HTTP request line shape", b"BREW /pot HTTP/1.1\r\n", ["502 5.5.1"]),
    ("command line too long", b"NOOP " + b"x" * 600 + b"\r\nNOOP\r\n", ["500 5.5.6", OK]),
    ("MAIL line within the extension allowance",
     EHLO + b"MAIL FROM:<a@b.example> AUTH=" + b"x" * 700 + b"\r\n", ["250", OK]),
    ("MAIL line over the allowance",
     EHLO + b"MAIL FROM:<a@b.example> AUTH=" + b"x" * 1100 + b"\r\n", ["250", "500 5.5.6"]),
    ("line over every limit", b"X" * 20000 + b"\r\nNOOP\r\n", ["500 5.5.6", OK]),
    ("bare LF does not end a command", b"NOOP\nNOOP\r\n", ["500 5.5.2"]),
    ("STARTTLS with argument", EHLO + b"STARTTLS now\r\n", ["250", "501 5.5.4"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("stream", "expected"), [t[1:] for t in TRANSCRIPTS], ids=[t[0] for t in TRANSCRIPTS]
)
def test_transcript(stream: bytes, expected: list[str]) -> None:
    app = run(stream)
    assert app.reply_codes() == ["220", *expected]


@pytest.mark.parametrize(("stream", "expected"), [t[1:] for t in TRANSCRIPTS[:12]])
def test_transcript_byte_by_byte(stream: bytes, expected: list[str]) -> None:
    app = EchoApp()
    for i in range(len(stream)):
        app.feed(stream[i : i + 1])
    assert app.reply_codes() == ["220", *expected]


def test_events_carry_the_parsed_command() -> None:
    app = run(
        EHLO + b"MAIL FROM:<a@b.example> SIZE=42 BODY=8bitmime SMTPUTF8\r\n"
        b"RCPT TO:<c@d.example>\r\nHELP DATA\r\nVRFY bob\r\nHELO other.example\r\n"
    )
    assert app.events[0] == Ehlo("client.example")
    mail = app.events[1]
    assert isinstance(mail, Mail)
    assert (mail.reverse_path, mail.size, mail.body, mail.smtputf8) == (
        "a@b.example",
        42,
        "8BITMIME",
        True,
    )
    assert dict(mail.params) == {"SIZE": "42", "BODY": "8bitmime", "SMTPUTF8": None}
    assert app.events[2:] == [
        Rcpt("c@d.example"),
        Help("DATA"),
        Vrfy("bob"),
        Helo("other.example"),
    ]


def test_101st_recipient_gets_452() -> None:
    rcpts = b"".join(b"RCPT TO:<r%d@d.example>\r\n" % i for i in range(101))
    app = run(EHLO + MAIL + rcpts + b"DATA\r\nx\r\n.\r\n")
    codes = app.reply_codes()
    assert codes[3:103] == [OK] * 100
    assert codes[103] == "452 4.5.3"
    assert codes[104:] == ["354", OK]
    error = app.events[-4]
    assert error == CommandError("RCPT", replies.TOO_MANY_RECIPIENTS)
    assert app.conn.recipients == 0  # the transaction is over


def test_rejected_recipients_do_not_count() -> None:
    conn = ServerConnection(Limits(max_recipients=1))
    conn.send(replies.greeting("x"))
    conn.receive_data(EHLO + MAIL)
    assert isinstance(conn.next_event(), Ehlo)
    conn.send(replies.ehlo("x", "y", []))
    assert isinstance(conn.next_event(), Mail)
    conn.send(replies.OK)
    no_such_user = replies.Reply.of(550, "No such user", enhanced="5.1.1")
    for _ in range(3):
        conn.receive_data(RCPT)
        assert isinstance(conn.next_event(), Rcpt)
        conn.send(no_such_user)
    conn.receive_data(RCPT)
    assert isinstance(conn.next_event(), Rcpt)
    conn.send(replies.OK)
    conn.receive_data(RCPT)
    assert conn.next_event() == CommandError("RCPT", replies.TOO_MANY_RECIPIENTS)


def test_rejected_mail_keeps_state() -> None:
    conn = ServerConnection()
    conn.send(replies.greeting("x"))
    conn.receive_data(EHLO + MAIL + RCPT)
    assert isinstance(conn.next_event(), Ehlo)
    conn.send(replies.ehlo("x", "y", []))
    assert isinstance(conn.next_event(), Mail)
    assert conn.next_event() is PAUSED  # the RCPT's legality depends on this reply
    conn.send(replies.AUTH_REQUIRED)
    assert conn.state is State.READY
    assert conn.next_event() == CommandError("RCPT", replies.NEED_MAIL)


def test_pipelined_group_with_body_in_the_same_packet() -> None:
    conn = ServerConnection()
    conn.send(replies.greeting("x"))
    conn.receive_data(EHLO)
    conn.next_event()
    conn.send(replies.ehlo("x", "y", ["PIPELINING"]))
    # RFC 2920: MAIL, RCPT, RCPT, DATA and (wrongly early) the body and QUIT, in one packet.
    conn.receive_data(MAIL + RCPT + RCPT + b"DATA\r\nMAIL FROM:<evil@x.example>\r\n.\r\nQUIT\r\n")
    events = []
    out = b""
    for reply in (replies.OK, replies.OK, replies.OK):
        events.append(conn.next_event())
        assert conn.next_event() is PAUSED
        out += conn.send(reply)
    events.append(conn.next_event())
    # Until 354 is sent the body is not read: not as commands, not as data.
    assert conn.next_event() is PAUSED
    assert conn.next_event() is PAUSED
    out += conn.send(replies.START_DATA)
    chunk = conn.next_event()
    end = conn.next_event()
    assert [type(e).__name__ for e in events] == ["Mail", "Rcpt", "Rcpt", "Data"]
    assert chunk is not NEED_DATA
    assert chunk is not PAUSED
    assert getattr(chunk, "data", None) == b"MAIL FROM:<evil@x.example>\r\n"
    assert type(end).__name__ == "DataEnd"
    assert out.count(b"\r\n") == 4  # one write can carry all four replies


def test_neutral_commands_are_parsed_ahead() -> None:
    conn = ServerConnection()
    conn.send(replies.greeting("x"))
    conn.receive_data(b"NOOP\r\nHELP\r\nFOO\r\nVRFY x\r\nQUIT\r\nNOOP\r\n")
    events = [conn.next_event() for _ in range(5)]
    assert [type(e).__name__ for e in events] == [
        "Noop",
        "Help",
        "UnknownCommand",
        "Vrfy",
        "Quit",
    ]
    assert conn.next_event() is PAUSED  # QUIT's reply ends the session
    assert conn.replies_owed == 5
    wire = b"".join(
        conn.send(r) for r in (replies.OK, replies.HELP, replies.SYNTAX_ERROR, replies.CANNOT_VRFY)
    )
    assert wire.count(b"\r\n") == 4
    conn.send(replies.SERVICE_CLOSING)
    assert conn.closed
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_unknown_verb_is_sanitised() -> None:
    app = run(b"X\x01Y zz\r\n" + b"A" * 500 + b"\r\nfoo99\r\n" + b"\x80\xff\r\n")
    verbs = [e.verb for e in app.events if isinstance(e, UnknownCommand | CommandError)]
    assert verbs == ["unknown", "unknown", "FOO99", "unknown"]
    # A 1000-character verb is unknown whatever its length; its name never leaks.
    assert run(b"Q" * 1000 + b"\r\n").events == [UnknownCommand("unknown", replies.SYNTAX_ERROR)]
    # A known verb on an over-long line is a line-length error.
    assert run(b"VRFY " + b"q" * 1000 + b"\r\n").events == [
        CommandError("VRFY", replies.LINE_TOO_LONG)
    ]


def test_http_is_wrong_protocol_and_closes() -> None:
    app = run(b"POST /api HTTP/1.1\r\nHost: x\r\n\r\n")
    assert app.events[0] == WrongProtocol("POST")
    assert app.conn.closed
    assert isinstance(app.events[-1], ConnectionClosed)
    assert app.reply_codes() == ["220", "502 5.5.1"]


def test_http_verb_sanitised() -> None:
    assert run(b"get /\r\n").events[0] == WrongProtocol("GET")
    assert run(b"PROPPATCH / HTTP/1.0\r\n").events[0] == WrongProtocol("PROPPATCH")
    assert run(b"G\x00T-" + b"X" * 30 + b" / HTTP/1.0\r\n").events[0] == UnknownCommand(
        "unknown", replies.SYNTAX_ERROR
    )
    assert run(b"X-" + b"X" * 30 + b" / HTTP/1.0\r\n").events[0] == WrongProtocol("unknown")


def test_starttls_resets_the_session() -> None:
    app = run(EHLO + b"STARTTLS\r\n")
    assert app.conn.tls_active
    assert app.conn.state is State.INITIAL
    app.feed(MAIL)
    assert app.reply_codes()[-1] == BAD_SEQ  # RFC 3207 §4.2: EHLO again first
    app.feed(EHLO + MAIL)
    assert app.reply_codes()[-1] == OK


def test_starttls_twice() -> None:
    app = run(EHLO + b"STARTTLS\r\n")
    app.feed(EHLO + b"STARTTLS\r\n")
    assert app.reply_codes() == ["220", "250", "220 2.0.0", "250", BAD_SEQ]
    assert app.events[-1] == CommandError("STARTTLS", replies.TLS_ALREADY_ACTIVE)


def test_starttls_with_pipelined_plaintext_is_detected() -> None:
    app = run(EHLO + b"STARTTLS\r\nMAIL FROM:<evil@x.example>\r\n")
    assert app.events[-1] == PipelinedAfterStartTls(len(b"MAIL FROM:<evil@x.example>\r\n"))
    assert app.conn.closed
    assert not app.conn.tls_active
    assert app.reply_codes() == ["220", "250", "220 2.0.0"]


def test_starttls_refused_keeps_plaintext_commands() -> None:
    conn = ServerConnection()
    conn.send(replies.greeting("x"))
    conn.receive_data(EHLO + b"STARTTLS\r\nNOOP\r\n")
    conn.next_event()
    conn.send(replies.ehlo("x", "y", []))
    conn.next_event()
    conn.send(replies.TLS_NOT_AVAILABLE)
    assert isinstance(conn.next_event(), Noop)


def test_tls_established_refuses_buffered_plaintext() -> None:
    conn = ServerConnection()
    conn.send(replies.greeting("x"))
    conn.receive_data(EHLO + b"STARTTLS\r\nNOOP\r\n")
    conn.next_event()
    conn.send(replies.ehlo("x", "y", []))
    conn.next_event()
    conn.send(replies.READY_TO_START_TLS)
    with pytest.raises(LocalProtocolError):
        conn.tls_established()


def test_starttls_paused_until_handshake() -> None:
    conn = ServerConnection()
    conn.send(replies.greeting("x"))
    conn.receive_data(EHLO + b"STARTTLS\r\n")
    conn.next_event()
    conn.send(replies.ehlo("x", "y", []))
    conn.next_event()
    conn.send(replies.READY_TO_START_TLS)
    assert conn.state is State.STARTTLS
    assert conn.next_event() is PAUSED
    conn.tls_established()
    assert conn.next_event() is NEED_DATA


def test_auth_plain_with_initial_response() -> None:
    good = sasl.plain_response("user", "secret")
    app = run(EHLO + b"AUTH PLAIN " + good.encode() + b"\r\n" + MAIL)
    assert app.reply_codes() == ["220", "250", "235 2.7.0", OK]
    assert app.conn.authenticated
    assert app.events[1] == Auth("PLAIN", good)
    assert "secret" not in repr(app.events[1])
    assert good not in repr(app.events[1])


def test_auth_plain_after_empty_challenge() -> None:
    bad = sasl.plain_response("user", "wrong")
    app = run(EHLO + b"AUTH PLAIN\r\n" + bad.encode() + b"\r\n")
    assert app.reply_codes() == ["220", "250", "334", "535 5.7.8"]
    assert isinstance(app.events[-1], AuthResponse)
    assert not app.conn.authenticated
    assert app.conn.state is State.READY


def test_auth_login_exchange() -> None:
    user, password = sasl.login_response("user"), sasl.login_response("secret")
    app = run(EHLO + b"AUTH LOGIN\r\n" + f"{user}\r\n{password}\r\n".encode() + b"AUTH LOGIN\r\n")
    assert app.reply_codes() == ["220", "250", "334", "334", "235 2.7.0", BAD_SEQ]
    assert app.out.count(b"334 VXNlcm5hbWU6\r\n") == 1


def test_auth_cancel_and_bad_base64() -> None:
    app = run(EHLO + b"AUTH LOGIN\r\n*\r\nAUTH LOGIN\r\n!!!\r\nNOOP\r\n")
    assert app.reply_codes() == ["220", "250", "334", "501 5.7.0", "334", "501 5.5.2", OK]
    app = run(EHLO + b"AUTH PLAIN %%%\r\nAUTH FOO!\r\nAUTH CRAM-MD5\r\n")
    assert app.reply_codes() == ["220", "250", "501 5.5.2", "501 5.5.4", "504 5.5.4"]


def test_auth_response_too_long_ends_the_exchange() -> None:
    app = run(EHLO + b"AUTH LOGIN\r\n" + b"A" * 13000 + b"\r\nNOOP\r\n")
    assert app.reply_codes() == ["220", "250", "334", "500 5.5.6", OK]


def test_quit_closes_and_ignores_the_rest() -> None:
    app = run(b"QUIT\r\nNOOP\r\n")
    assert app.reply_codes() == ["220", "221 2.0.0"]
    assert isinstance(app.events[-1], ConnectionClosed)
    app.feed(b"NOOP\r\n")  # after close: ignored
    assert app.reply_codes() == ["220", "221 2.0.0"]


def test_eof_gives_connection_closed() -> None:
    app = run(EHLO + MAIL + RCPT + b"DATA\r\npartial message", eof=True)
    assert isinstance(app.events[-1], ConnectionClosed)
    assert app.messages == []
    with pytest.raises(LocalProtocolError):
        app.conn.send(replies.OK)


def test_failed_greeting_closes() -> None:
    conn = ServerConnection()
    conn.receive_data(EHLO)
    assert conn.next_event() is PAUSED  # nothing is read before the greeting
    conn.send(replies.ACCESS_DENIED)
    assert conn.closed


def test_421_may_be_sent_at_any_time() -> None:
    conn = ServerConnection()
    conn.send(replies.greeting("x"))
    conn.receive_data(EHLO + MAIL + RCPT + b"DATA\r\nabc")
    conn.next_event()
    conn.send(replies.TIMEOUT)
    assert conn.closed
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_local_misuse_raises() -> None:
    conn = ServerConnection()
    conn.send(replies.greeting("x"))
    with pytest.raises(LocalProtocolError):
        conn.send(replies.OK)  # nothing awaits a reply
    conn.receive_data(EHLO + MAIL)
    conn.next_event()
    conn.send(replies.ehlo("x", "y", []))
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(replies.START_DATA)  # 354 to MAIL
    with pytest.raises(LocalProtocolError):
        conn.tls_established()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")
