"""ReceiveBuffer: CRLF framing, over-long lines, bounded memory."""

from __future__ import annotations

from dispatch.smtp.buffer import LINE_TOO_LONG, ReceiveBuffer


def test_only_crlf_ends_a_line() -> None:
    buf = ReceiveBuffer()
    buf.append(b"one\ntwo\rthree\r")
    assert buf.next_line(100) is None
    buf.append(b"\nfour")
    assert buf.next_line(100) == b"one\ntwo\rthree\r\n"
    assert buf.next_line(100) is None
    assert bytes(buf) == b"four"


def test_line_at_the_limit_and_over() -> None:
    buf = ReceiveBuffer()
    buf.append(b"x" * 8 + b"\r\n" + b"y" * 9 + b"\r\nz\r\n")
    assert buf.next_line(10) == b"x" * 8 + b"\r\n"
    assert buf.next_line(10) is LINE_TOO_LONG
    assert buf.next_line(10) == b"z\r\n"


def test_megabyte_without_crlf_one_byte_at_a_time() -> None:
    # Memory stays bounded by the limit, and the line is reported once it ends. The search
    # position is remembered, so each byte is looked at a bounded number of times.
    buf = ReceiveBuffer()
    for _ in range(1_000_000):
        buf.append(b"a")
        assert buf.next_line(512) is None
        assert len(buf) < 512
    assert buf.discarding
    buf.append(b"\r")
    assert buf.next_line(512) is None
    buf.append(b"\nNOOP\r\n")
    assert buf.next_line(512) is LINE_TOO_LONG
    assert not buf.discarding
    assert buf.next_line(512) == b"NOOP\r\n"


def test_crlf_split_across_appends_while_discarding() -> None:
    buf = ReceiveBuffer()
    buf.append(b"a" * 20 + b"\r")
    assert buf.next_line(10) is None
    assert bytes(buf) == b"\r"  # the CR is kept: it may be half of the CRLF
    buf.append(b"\n")
    assert buf.next_line(10) is LINE_TOO_LONG


def test_complete_lines_end_and_partial_lines() -> None:
    buf = ReceiveBuffer()
    buf.append(b"ab\r\ncd\r\nef")
    assert buf.complete_lines_end(100) == 8
    assert buf.complete_lines_end(5) == 4  # only whole lines inside the window
    buf.drop(8)
    assert buf.complete_lines_end(100) == 0
    buf.append(b"gh\r")
    assert buf.take_partial_line(100) == b"efgh"  # the trailing CR stays
    assert bytes(buf) == b"\r"
    buf.append(b"\nij")
    assert buf.complete_lines_end(100) == 2


def test_take_and_peek() -> None:
    buf = ReceiveBuffer()
    buf.append(b"0123456789")
    assert buf.peek(3) == b"012"
    assert buf.take(4) == b"0123"
    assert len(buf) == 6
    assert buf.take(100) == b"456789"
    assert not buf
