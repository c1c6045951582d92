"""Message data on the server: DATA, BDAT, transparency, smuggling, line and size limits."""

from __future__ import annotations

import pytest

from dispatch.smtp import Limits, replies
from dispatch.smtp.data import LineDiscipline
from dispatch.smtp.events import BareLineEnding, Bdat, CommandError, ConnectionClosed, DataChunk
from tests.smtp.smtp_echo import EchoApp, run

START = b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
OK = "250 2.0.0"


def deliver(body: bytes, limits: Limits | None = None) -> EchoApp:
    return run(START + b"DATA\r\n" + body, limits)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"hello\r\n.\r\n", b"hello\r\n"),
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"...\r\n.\r\n", b"..\r\n"),
        (b"a\r\n..b\r\n.c\r\n.\r\n", b"a\r\n.b\r\nc\r\n"),
        (b"a\r\n.. \r\n.\r\n", b"a\r\n. \r\n"),
        (b"8bit \xe9\xff\x01 ok\r\n.\r\n", b"8bit \xe9\xff\x01 ok\r\n"),
        (b"a.\r\n.\r\n", b"a.\r\n"),
    ],
)
def test_dot_unstuffing(wire: bytes, message: bytes) -> None:
    app = deliver(wire)
    assert app.messages == [message]
    assert app.reply_codes()[-1] == OK


@pytest.mark.parametrize(
    "smuggle",
    [
        b"\n.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\n.\r",
        b"\r\n\n.\n",
    ],
)
def test_smuggling_variants_are_never_the_end_of_data(smuggle: bytes) -> None:
    # The classic attack: what a lenient server takes as the end of data, followed by a second
    # transaction the attacker wants to inject. Dispatch rejects the message and closes.
    attack = (
        b"Subject: one\r\n\r\nbody" + smuggle + b"MAIL FROM:<ceo@victim.example>\r\n"
        b"RCPT TO:<all@victim.example>\r\nDATA\r\nforged\r\n.\r\n"
    )
    app = deliver(attack + b"QUIT\r\n")
    assert any(isinstance(e, BareLineEnding) for e in app.events)
    assert app.reply_codes()[-1] == "521 5.5.2"
    assert app.messages == []
    assert app.conn.closed
    assert isinstance(app.events[-1], ConnectionClosed)


@pytest.mark.parametrize("body", [b"a\nb\r\n.\r\n", b"a\rb\r\n.\r\n", b"ab\r\r\n.\r\n"])
def test_bare_cr_or_lf_anywhere_in_data(body: bytes) -> None:
    app = deliver(body)
    assert app.reply_codes()[-1] == "521 5.5.2"


def test_bare_lf_detected_byte_by_byte() -> None:
    app = EchoApp()
    for byte in START + b"DATA\r\nfine line\r\nbad\nline\r\n.\r\n":
        app.feed(bytes([byte]))
    assert app.reply_codes()[-1] == "521 5.5.2"
    chunks = b"".join(e.data for e in app.events if isinstance(e, DataChunk))
    assert chunks == b"fine line\r\n"  # up to the bad line, whatever the packet sizes


def test_text_line_limit() -> None:
    ok_line = b"x" * 998 + b"\r\n"
    assert deliver(ok_line + b".\r\n").messages == [ok_line]
    long_line = b"x" * 999 + b"\r\n"
    app = deliver(b"first\r\n" + long_line + b"after\r\n.\r\nNOOP\r\n")
    assert app.messages == []
    assert app.rejected == [replies.TEXT_LINE_TOO_LONG]
    assert app.reply_codes()[-2:] == ["500 5.5.6", OK]  # the session goes on


@pytest.mark.parametrize(
    "body",
    [
        b"a\x00b\r\n.\r\n",
        b"\x00\r\n.\r\n",
        b"first\r\nsecond\x00\r\n.\r\n",
        b"first\r\n\x00.\r\n.\r\n",  # a NUL in front of a would-be terminator
        b"end\r\n.\x00\r\n.\r\n",
    ],
)
def test_nul_in_data_refuses_the_message_and_the_session_goes_on(body: bytes) -> None:
    app = deliver(body + b"NOOP\r\n")
    assert app.messages == []
    assert app.rejected == [replies.NUL_IN_DATA]
    assert app.reply_codes()[-2:] == ["554 5.6.0", OK]
    assert not app.conn.closed


def test_nul_in_data_emits_the_message_up_to_its_line_whatever_the_packets() -> None:
    wire = START + b"DATA\r\nfine line\r\nbad \x00 line\r\nmore\r\n.\r\n"
    whole = run(wire)
    single = EchoApp()
    for byte in wire:
        single.feed(bytes([byte]))
    for app in (whole, single):
        assert app.rejected == [replies.NUL_IN_DATA]
        chunks = b"".join(e.data for e in app.events if isinstance(e, DataChunk))
        assert chunks == b"fine line\r\n"


def test_the_first_of_nul_and_long_line_is_reported() -> None:
    long_line = b"x" * 999 + b"\r\n"
    app = deliver(b"a\x00\r\n" + long_line + b".\r\n")
    assert app.rejected == [replies.NUL_IN_DATA]
    app = deliver(long_line + b"a\x00\r\n.\r\n")
    assert app.rejected == [replies.TEXT_LINE_TOO_LONG]
    app = deliver(b"\x00" + long_line + b".\r\n")  # one line, both: the length wins
    assert app.rejected == [replies.TEXT_LINE_TOO_LONG]


def test_dot_stuffed_line_limit_counts_the_wire_octets() -> None:
    app = deliver(b"." + b"x" * 998 + b"\r\n.\r\n")
    assert app.rejected == [replies.TEXT_LINE_TOO_LONG]


def test_huge_line_is_streamed_not_buffered() -> None:
    app = EchoApp()
    app.feed(START + b"DATA\r\n")
    for _ in range(100):
        app.feed(b"y" * 10_000)
        assert len(app.conn._buffer) < 2000
    app.feed(b"\r\n.\r\n")
    assert app.rejected == [replies.TEXT_LINE_TOO_LONG]


def test_message_too_big_keeps_reading_to_the_terminator() -> None:
    limits = Limits(max_message_bytes=100)
    body = b"".join(b"line %03d of the message\r\n" % i for i in range(20))
    app = deliver(body + b".\r\nNOOP\r\n", limits)
    emitted = b"".join(e.data for e in app.events if isinstance(e, DataChunk))
    assert emitted == body[:100]
    assert app.rejected == [replies.MESSAGE_TOO_BIG]
    assert app.reply_codes()[-2:] == ["552 5.3.4", OK]


def test_message_exactly_at_the_limit() -> None:
    body = b"x" * 98 + b"\r\n"
    app = deliver(body + b".\r\n", Limits(max_message_bytes=100))
    assert app.messages == [body]


def test_chunks_are_bounded() -> None:
    limits = Limits(data_chunk_bytes=1000)
    body = (b"z" * 98 + b"\r\n") * 200
    app = deliver(body + b".\r\n", limits)
    sizes = [len(e.data) for e in app.events if isinstance(e, DataChunk)]
    assert max(sizes) <= 1000
    assert app.messages == [body]


def test_bdat_single_chunk() -> None:
    body = b"Subject: x\r\n\r\n.leading dot is not stuffed\r\n"
    app = run(START + b"BDAT %d LAST\r\n" % len(body) + body + b"NOOP\r\n")
    assert app.messages == [body]
    assert app.reply_codes()[-2:] == [OK, OK]
    assert Bdat(len(body), last=True) in app.events


def test_bdat_several_chunks_split_anywhere() -> None:
    body = b"a line\r\nanother line\r\n"
    parts = [body[:3], body[3:7], body[7:8], body[8:]]  # split inside a CRLF too
    stream = b"".join(b"BDAT %d\r\n" % len(p) + p for p in parts[:-1])
    stream += b"BDAT %d LAST\r\n" % len(parts[-1]) + parts[-1]
    app = run(START + stream)
    assert app.messages == [body]
    assert app.reply_codes()[-4:] == [
        "250 2.0.0",
        "250 2.0.0",
        "250 2.0.0",
        "250 2.0.0",
    ]
    assert app.out.count(b"octets received") == 3


def test_bdat_zero_last() -> None:
    app = run(START + b"BDAT 5\r\nabc\r\nBDAT 0 LAST\r\n")
    assert app.messages == [b"abc\r\n"]


def test_bdat_bare_lf_rejected() -> None:
    app = run(START + b"BDAT 7 LAST\r\nab\n.\ncd")
    assert app.reply_codes()[-1] == "521 5.5.2"
    app = run(START + b"BDAT 3 LAST\r\nab\r")  # ends in a bare CR
    assert app.reply_codes()[-1] == "521 5.5.2"


def test_bdat_nul_refuses_the_message() -> None:
    # In the last chunk, in a middle chunk, and split across chunks with a CRLF.
    for stream in (
        b"BDAT 5 LAST\r\na\x00b\r\n",
        b"BDAT 5\r\na\x00b\r\nBDAT 4 LAST\r\nok\r\n",
        b"BDAT 3\r\nab\rBDAT 2 LAST\r\n\n\x00",
    ):
        app = run(START + stream + b"NOOP\r\n")
        assert app.messages == []
        assert app.rejected == [replies.NUL_IN_DATA], stream
        assert app.reply_codes()[-1] == OK  # the session goes on
        assert "554 5.6.0" in app.reply_codes()


def test_bdat_size_limit_across_chunks() -> None:
    limits = Limits(max_message_bytes=10)
    app = run(START + b"BDAT 6\r\nabcd\r\nBDAT 6\r\nefgh\r\nBDAT 2 LAST\r\n\r\nNOOP\r\n", limits)
    # The second chunk overflows: 552, the transaction fails, the pipelined LAST chunk is
    # read and thrown away with a 503 (RFC 3030 §3), and the session goes on.
    assert app.reply_codes()[-4:] == [OK, "552 5.3.4", "503 5.5.1", OK]
    assert app.messages == []


def test_bdat_out_of_sequence_still_consumes_its_chunk() -> None:
    app = run(b"EHLO c.example\r\nBDAT 12\r\nNOOP\r\nNOOP\r\nNOOP\r\n")
    # The 12 octets "NOOP\r\nNOOP\r\n" are chunk data, not commands.
    assert app.reply_codes() == ["220", "250", "503 5.5.1", OK]
    assert app.events[1] == CommandError("BDAT", replies.NEED_RCPT)


def test_bdat_and_data_do_not_mix() -> None:
    app = run(START + b"BDAT 3\r\nabcDATA\r\n")
    assert app.reply_codes()[-2:] == [OK, "503 5.5.1"]
    app = run(START + b"DATA\r\nx\r\n.\r\nBDAT 1 LAST\r\nx")
    assert app.reply_codes()[-2:] == [OK, "503 5.5.1"]  # a new transaction needs MAIL


def test_bdat_after_last_is_out_of_sequence() -> None:
    app = run(START + b"BDAT 1 LAST\r\nxBDAT 1\r\ny")
    assert app.reply_codes()[-2:] == [OK, "503 5.5.1"]


def test_bdat_syntax() -> None:
    app = run(START + b"BDAT\r\nBDAT x\r\nBDAT 1 FIRST\r\nBDAT -1\r\n")
    assert app.reply_codes()[-4:] == ["501 5.5.4"] * 4


# --- LineDiscipline: the fast path agrees with the line-by-line one --------------------------


def _reference(pieces: list[bytes], max_line: int) -> tuple[bool, bool]:
    text = b"".join(pieces)
    bare = any(
        (c == 0x0D and text[i + 1 : i + 2] != b"\n") or (c == 0x0A and text[i - 1 : i] != b"\r")
        for i, c in enumerate(text)
        if i < len(text) - 1 or c == 0x0A
    )
    too_long = any(len(line) + 2 > max_line for line in text.split(b"\r\n"))
    return bare, too_long


@pytest.mark.parametrize(
    "pieces",
    [
        [b"abc\r\n", b"def\r\n"],
        [b"abc\r", b"\ndef\r\n"],
        [b"abc\r", b"def\r\n"],
        [b"abc\n"],
        [b"a" * 8, b"\r\n"],
        [b"a" * 9, b"\r\n"],
        [b"a" * 5, b"a" * 4, b"\r", b"\n"],
        [b"ok\r\nok\r\n" + b"b" * 9 + b"\r\nok\r\n"],
        [b"\r", b"", b"\n"],
    ],
)
def test_line_discipline(pieces: list[bytes]) -> None:
    lines = LineDiscipline(max_line=10)
    for piece in pieces:
        lines.feed(piece)
    assert (lines.bare_line_ending, lines.line_too_long) == _reference(pieces, 10)
