"""Command syntax: parse_command on single lines, and the client-side serialisation."""

from __future__ import annotations

import pytest

from dispatch.smtp import Limits, LocalProtocolError, replies
from dispatch.smtp.commands import parse_command, sanitise_verb
from dispatch.smtp.events import (
    Auth,
    AuthResponse,
    Bdat,
    Command,
    CommandError,
    Data,
    Ehlo,
    Event,
    Helo,
    Help,
    Mail,
    Noop,
    Quit,
    Rcpt,
    Rset,
    StartTls,
    Vrfy,
)

LIMITS = Limits()


def parse(line: bytes, *, smtputf8: bool = False) -> Event:
    return parse_command(line, LIMITS, smtputf8=smtputf8)


@pytest.mark.parametrize(
    ("command", "wire"),
    [
        (Ehlo("relay.example"), b"EHLO relay.example\r\n"),
        (Helo("relay.example"), b"HELO relay.example\r\n"),
        (Mail("a@b.example"), b"MAIL FROM:<a@b.example>\r\n"),
        (Mail("", size=123), b"MAIL FROM:<> SIZE=123\r\n"),
        (
            Mail("zoë@b.example", size=5, body="8BITMIME", smtputf8=True, params={"AUTH": "<>"}),
            "MAIL FROM:<zoë@b.example> SIZE=5 BODY=8BITMIME SMTPUTF8 AUTH=<>\r\n".encode(),
        ),
        (Rcpt("c@d.example"), b"RCPT TO:<c@d.example>\r\n"),
        (Rcpt("c@d.example", {"NOTIFY": "NEVER"}), b"RCPT TO:<c@d.example> NOTIFY=NEVER\r\n"),
        (Data(), b"DATA\r\n"),
        (Bdat(10), b"BDAT 10\r\n"),
        (Bdat(0, last=True), b"BDAT 0 LAST\r\n"),
        (Rset(), b"RSET\r\n"),
        (Noop(), b"NOOP\r\n"),
        (Quit(), b"QUIT\r\n"),
        (Help(), b"HELP\r\n"),
        (Help("MAIL"), b"HELP MAIL\r\n"),
        (Vrfy("bob"), b"VRFY bob\r\n"),
        (StartTls(), b"STARTTLS\r\n"),
        (Auth("PLAIN"), b"AUTH PLAIN\r\n"),
        (Auth("PLAIN", "AHVAcA=="), b"AUTH PLAIN AHVAcA==\r\n"),
        (AuthResponse("dXNlcg=="), b"dXNlcg==\r\n"),
    ],
)
def test_serialise(command: Command, wire: bytes) -> None:
    assert command.serialise() == wire


@pytest.mark.parametrize(
    "command",
    [
        Ehlo("relay.example"),
        Helo("relay.example"),
        Mail("a@b.example", size=1, body="7BIT"),
        Mail("", smtputf8=True),
        Rcpt("c@d.example"),
        Data(),
        Bdat(7, last=True),
        Rset(),
        Noop(),
        Quit(),
        Help("x"),
        Vrfy("y"),
        StartTls(),
        Auth("LOGIN", "dXNlcg=="),
    ],
)
def test_parse_what_the_client_serialises(command: Command) -> None:
    event = parse(command.serialise()[:-2])
    if isinstance(command, Mail):
        assert isinstance(event, Mail)
        assert (event.reverse_path, event.size, event.body, event.smtputf8) == (
            command.reverse_path,
            command.size,
            command.body,
            command.smtputf8,
        )
    else:
        assert event == command


def test_serialise_refuses_line_breaks() -> None:
    # An address coming from the HTTP API must not smuggle a second command.
    with pytest.raises(LocalProtocolError):
        Rcpt("a@b.example>\r\nRCPT TO:<c@d.example").serialise()
    with pytest.raises(LocalProtocolError):
        Ehlo("x\nDATA").serialise()


def test_credentials_stay_out_of_repr() -> None:
    assert "secret" not in repr(Auth("PLAIN", "secret"))
    assert "secret" not in repr(AuthResponse("secret"))


@pytest.mark.parametrize(
    ("raw", "verb"),
    [
        (b"mail", "MAIL"),
        (b"X-Y", "unknown"),
        (b"A" * 16, "A" * 16),
        (b"A" * 17, "unknown"),
        (b"", "unknown"),
        (b"\x1b[31m", "unknown"),
        ("ÄÖ".encode(), "unknown"),
    ],
)
def test_sanitise_verb(raw: bytes, verb: str) -> None:
    assert sanitise_verb(raw) == verb


def test_parse_details() -> None:
    assert parse(b"MAIL FROM:<a@b.example>  ") == Mail("a@b.example")  # trailing spaces
    assert parse(b"RCPT TO:<C@D.example>") == Rcpt("C@D.example")  # case is kept
    assert parse(b"AUTH plain =") == Auth("PLAIN", "=")
    assert parse(b"BDAT 1000 last") == Bdat(1000, last=True)
    assert parse(b"MAIL FROM:<a@b.example> SIZE=1 SIZE=2") == CommandError(
        "MAIL", replies.PARAMETER_SYNTAX
    )
    assert parse(b"MAIL FROM:<a@b.example>SIZE=1") == CommandError("MAIL", replies.PARAMETER_SYNTAX)
    assert parse(b"NOOP \x01") == CommandError("NOOP", replies.PARAMETER_SYNTAX)
    assert parse(b"RCPT TO:<a..b@c.example>") == CommandError("RCPT", replies.BAD_RECIPIENT_SYNTAX)
    assert parse(b"RCPT TO:<a@b.example,c@d.example>") == CommandError(
        "RCPT", replies.BAD_RECIPIENT_SYNTAX
    )
    # RFC 6531: SMTPUTF8 on MAIL lets RCPT carry UTF-8.
    assert parse("RCPT TO:<zoë@d.example>".encode(), smtputf8=True) == Rcpt("zoë@d.example")
