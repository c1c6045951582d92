"""Reply: serialisation, parsing on the client side, validation."""

from __future__ import annotations

import pytest

from dispatch.smtp import RemoteProtocolError, Reply, replies
from dispatch.smtp.replies import assemble_reply, parse_reply_line


def test_single_line_with_enhanced_code() -> None:
    assert replies.BAD_SEQUENCE.serialise() == b"503 5.5.1 Bad sequence of commands\r\n"


def test_multi_line() -> None:
    reply = Reply(250, ("mx.example greets you", "PIPELINING", "SIZE 100"))
    assert reply.serialise() == b"250-mx.example greets you\r\n250-PIPELINING\r\n250 SIZE 100\r\n"
    multi = Reply.of(550, "first", "second", enhanced="5.7.1")
    assert multi.serialise() == b"550-5.7.1 first\r\n550 5.7.1 second\r\n"


def test_empty_challenge_keeps_its_space() -> None:
    # RFC 4954 §4: continue-req = "334" SP [base64] CRLF.
    assert Reply.of(334).serialise() == b"334 \r\n"


@pytest.mark.parametrize(
    ("code", "lines", "enhanced"),
    [
        (199, ("x",), None),
        (600, ("x",), None),
        (250, (), None),
        (250, ("a\r\n250 injected",), None),
        (250, ("nul\x00",), None),
        (250, ("x",), "5.0.0"),
        (354, ("x",), "3.0.0"),
        (250, ("x",), "2.0"),
    ],
)
def test_invalid_replies_are_refused(
    code: int, lines: tuple[str, ...], enhanced: str | None
) -> None:
    with pytest.raises(ValueError, match=r"."):
        Reply(code, lines, enhanced)


def test_parse_and_assemble_round_trip() -> None:
    for reply in (replies.OK, replies.START_DATA, replies.ehlo("a", "b", ["X", "Y Z"])):
        wire = reply.serialise()
        lines = [parse_reply_line(line + b"\r\n") for line in wire.split(b"\r\n")[:-1]]
        assert assemble_reply(lines) == reply


def test_parse_bare_code_and_utf8() -> None:
    line = parse_reply_line(b"250\r\n")
    assert (line.code, line.final, line.text) == (250, True, "")
    assert parse_reply_line("550 5.1.1 Zoë unknown\r\n".encode()).text == "5.1.1 Zoë unknown"
    assert parse_reply_line(b"550 caf\xe9\r\n").text == "caf\ufffd"


@pytest.mark.parametrize(
    "line",
    [b"25 ok\r\n", b"250ok\r\n", b"650 no\r\n", b"abc def\r\n", b"250_x\r\n", b"250 a\tb\x01\r\n"],
)
def test_malformed_reply_lines(line: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_reply_line(line)


def test_mixed_codes_in_multi_line_reply() -> None:
    lines = [parse_reply_line(b"250-a\r\n"), parse_reply_line(b"251 b\r\n")]
    with pytest.raises(RemoteProtocolError):
        assemble_reply(lines)


def test_enhanced_code_only_when_it_fits() -> None:
    assert assemble_reply([parse_reply_line(b"250 2.1.0 Ok\r\n")]).enhanced == "2.1.0"
    assert assemble_reply([parse_reply_line(b"250 5.1.0 Ok\r\n")]).enhanced is None
    assert assemble_reply([parse_reply_line(b"250 2.1.0x\r\n")]).enhanced is None
    assert assemble_reply([parse_reply_line(b"452 4.5.3\r\n")]) == Reply(452, ("",), "4.5.3")


def test_predicates() -> None:
    assert replies.OK.is_positive
    assert not replies.OK.is_permanent
    assert replies.START_DATA.is_intermediate
    assert replies.TOO_MANY_RECIPIENTS.is_transient
    assert replies.MESSAGE_TOO_BIG.is_permanent
    assert str(replies.OK) == "250 2.0.0 Ok"


def test_the_wire_form_is_made_once_and_is_not_part_of_the_value() -> None:
    reply = Reply.of(250, "first", "last", enhanced="2.0.0")
    twin = Reply.of(250, "first", "last", enhanced="2.0.0")
    wire = reply.serialise()
    assert wire == b"250-2.0.0 first\r\n250 2.0.0 last\r\n"
    assert reply.serialise() is wire  # remembered, not made again
    assert reply == twin  # one serialised, the other not
    assert hash(reply) == hash(twin)
    assert repr(reply) == repr(twin)
