"""Unsynchronised pipelining in the server core, with plain bytes (`forbid_unauth_pipelining`).

RFC 2920 §3.1: DATA ends a pipelined group, so nothing may follow it in the same flight;
RFC 5321 §4.3.1: the client waits for the greeting. Unauthenticated clients that do not wait
get `UnsynchronisedPipelining`, answered 554 5.5.0, and the session closes.
"""

from __future__ import annotations

import base64

from dispatch.smtp import PAUSED, ServerConnection, replies
from dispatch.smtp.events import ConnectionClosed, Data, DataChunk, Ehlo, UnsynchronisedPipelining
from tests.smtp.smtp_echo import EchoApp

START = b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
BODY = b"Subject: x\r\n\r\nhello\r\n.\r\n"


def strict() -> EchoApp:
    return EchoApp(forbid_unauth_pipelining=True)


def violations(app: EchoApp) -> list[UnsynchronisedPipelining]:
    return [e for e in app.events if isinstance(e, UnsynchronisedPipelining)]


def test_bytes_after_data_in_the_same_flight_are_refused_and_the_session_closes() -> None:
    app = strict()
    app.feed(START + b"DATA\r\n" + BODY + b"QUIT\r\n")
    assert violations(app) == [
        UnsynchronisedPipelining("DATA", len(BODY) + 6, replies.SYNC_AFTER_DATA)
    ]
    assert not any(isinstance(e, Data | DataChunk) for e in app.events)
    assert app.reply_codes()[-1] == "554 5.5.0"
    assert app.messages == []
    assert app.conn.closed
    assert isinstance(app.events[-1], ConnectionClosed)


def test_one_stray_byte_after_data_is_enough() -> None:
    app = strict()
    app.feed(START + b"DATA\r\nx")
    assert [v.octets for v in violations(app)] == [1]


def test_data_then_the_message_after_the_354_is_served() -> None:
    app = strict()
    app.feed(START + b"DATA\r\n")  # a whole pipelined group, DATA last
    assert app.reply_codes()[-1] == "354"
    app.feed(BODY + b"QUIT\r\n")
    assert app.messages == [b"Subject: x\r\n\r\nhello\r\n"]
    assert violations(app) == []


def test_a_refused_data_does_not_let_its_body_run_as_commands() -> None:
    app = strict()
    app.feed(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nDATA\r\nRCPT TO:<v@x.example>\r\n")
    assert [v.after for v in violations(app)] == ["DATA"]
    assert app.reply_codes()[-1] == "554 5.5.0"  # not 503 to DATA, then 250 to the RCPT


def test_bdat_is_exempt() -> None:
    chunk = b"Subject: x\r\n\r\nhi\r\n"
    app = strict()
    app.feed(START + b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"QUIT\r\n")
    assert app.messages == [chunk]
    assert violations(app) == []


def test_authenticated_clients_keep_the_lenient_behaviour() -> None:
    app = strict()
    plain = base64.b64encode(b"\0user\0secret")
    app.feed(b"EHLO c.example\r\nAUTH PLAIN " + plain + b"\r\n")
    assert app.reply_codes()[-1] == "235 2.7.0"
    app.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n" + BODY)
    assert app.messages == [b"Subject: x\r\n\r\nhello\r\n"]
    assert violations(app) == []


def test_without_the_option_the_core_is_lenient() -> None:
    app = EchoApp()
    app.feed(START + b"DATA\r\n" + BODY)
    assert app.messages == [b"Subject: x\r\n\r\nhello\r\n"]


def test_bytes_received_before_the_greeting_are_refused_in_its_place() -> None:
    conn = ServerConnection(forbid_unauth_pipelining=True)
    conn.receive_data(b"EHLO early.example\r\n")
    event = conn.next_event()
    assert event == UnsynchronisedPipelining("CONNECT", 20, replies.SYNC_BEFORE_GREETING)
    wire = conn.send(event.reply)
    assert wire.startswith(b"554 5.5.0 Error: SMTP protocol synchronization")
    assert conn.closed
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_a_lenient_application_may_still_greet_an_early_client() -> None:
    conn = ServerConnection(forbid_unauth_pipelining=True)
    conn.receive_data(b"EHLO early.example\r\n")
    assert isinstance(conn.next_event(), UnsynchronisedPipelining)
    assert conn.next_event() is PAUSED  # reported once; the greeting is still owed
    conn.send(replies.greeting("test.example"))
    assert conn.next_event() == Ehlo("early.example")


def test_nothing_before_the_greeting_is_fine() -> None:
    conn = ServerConnection(forbid_unauth_pipelining=True)
    assert conn.next_event() is PAUSED
    conn.send(replies.greeting("test.example"))
    conn.receive_data(b"EHLO c.example\r\n")
    assert conn.next_event() == Ehlo("c.example")
