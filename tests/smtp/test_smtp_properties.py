"""Property tests for the parser: chunking does not matter, nothing unexpected escapes."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.smtp import (
    NEED_DATA,
    ClientConnection,
    Limits,
    RemoteProtocolError,
    replies,
)
from dispatch.smtp.commands import parse_command
from dispatch.smtp.data import LineDiscipline
from dispatch.smtp.events import Command, Data, DataChunk, DataEnd, Ehlo, Event, Mail, Rcpt
from tests.smtp.smtp_echo import EchoApp, run

PROPERTY = settings(max_examples=200, deadline=None)
LIMITS = Limits(max_message_bytes=300, data_chunk_bytes=1000, max_recipients=3)

LINES = [
    b"EHLO c.example\r\n",
    b"HELO c.example\r\n",
    b"MAIL FROM:<a@b.example>\r\n",
    b"MAIL FROM:<> SIZE=100\r\n",
    b"MAIL FROM:<x@y.example> SIZE=100000\r\n",
    b"RCPT TO:<c@d.example>\r\n",
    b"DATA\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"HELP\r\n",
    b"VRFY x\r\n",
    b"QUIT\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH PLAIN AHVzZXIAc2VjcmV0\r\n",
    b"dXNlcg==\r\n",
    b"*\r\n",
    b"BDAT 5\r\n",
    b"BDAT 3 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"GET / HTTP/1.1\r\n",
    b".\r\n",
    b"..x\r\n",
    b"some text line\r\n",
    b"x" * 120 + b"\r\n",
    b"x" * 1100 + b"\r\n",
    b"\n.\n",
    b"\r.\r",
]
FRAGMENTS = [b"\r", b"\n", b"\r\n", b".", b"\r\n.\r\n", b" ", b"\x00", b"\xff"]

streams = st.lists(
    st.one_of(
        st.sampled_from(LINES),
        st.sampled_from(FRAGMENTS),
        st.binary(max_size=30),
    ),
    max_size=40,
).map(b"".join)


def normalised(events: list[Event]) -> list[Event]:
    """Merge consecutive DataChunks: their boundaries follow the packets, nothing else."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, DataChunk) and out and isinstance(out[-1], DataChunk):
            out[-1] = DataChunk(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def feed_in_pieces(stream: bytes, cuts: list[int]) -> EchoApp:
    app = EchoApp(LIMITS)
    last = 0
    for cut in [*sorted(cuts), len(stream)]:
        if cut > last:  # b"" would mean EOF
            app.feed(stream[last:cut])
            last = cut
    app.feed(b"")
    return app


@PROPERTY
@given(stream=streams, data=st.data())
def test_any_chunking_gives_the_same_events(stream: bytes, data: st.DataObject) -> None:
    whole = feed_in_pieces(stream, [])
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    pieces = feed_in_pieces(stream, cuts)
    assert normalised(pieces.events) == normalised(whole.events)
    assert pieces.out == whole.out


@PROPERTY
@given(stream=streams)
def test_byte_at_a_time_gives_the_same_events(stream: bytes) -> None:
    whole = feed_in_pieces(stream, [])
    single = feed_in_pieces(stream, list(range(len(stream))))
    assert normalised(single.events) == normalised(whole.events)
    assert single.out == whole.out


def _check_sizes(events: list[Event]) -> None:
    total = 0
    for event in events:
        if isinstance(event, Mail | Data):
            total = 0
        elif isinstance(event, DataChunk):
            total += len(event.data)
            assert total <= LIMITS.max_message_bytes
        elif isinstance(event, DataEnd) and (event.last or event.error is not None):
            total = 0


@PROPERTY
@given(stream=streams | st.binary(max_size=2000), starttls=st.booleans())
def test_server_never_raises_and_bounds_the_message(stream: bytes, starttls: bool) -> None:
    prefix = b"EHLO c.example\r\nSTARTTLS\r\n" if starttls else b""
    app = run(prefix + stream, LIMITS, eof=True)
    _check_sizes(app.events)
    assert app.conn.closed


@PROPERTY
@given(st.binary(max_size=300))
def test_parse_command_never_raises(line: bytes) -> None:
    parse_command(line.replace(b"\r\n", b""), LIMITS)


@PROPERTY
@given(
    st.lists(
        st.sampled_from([b"220 ok\r\n", b"250-x\r\n", b"250 y\r\n", b"421 bye\r\n"])
        | st.binary(min_size=1, max_size=200),
        max_size=10,
    )
)
def test_client_raises_only_protocol_errors(chunks: list[bytes]) -> None:
    client = ClientConnection()
    try:
        for chunk in chunks:
            client.receive_data(chunk)
            while client.next_event() is not NEED_DATA:
                if client.closed:
                    return
    except RemoteProtocolError:
        pass


def _wire_form(message: bytes) -> bytes:
    text = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    return text if not text or text.endswith(b"\r\n") else text + b"\r\n"


@PROPERTY
@given(
    message=st.lists(
        st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\xe9", b"\x00", b"..", b" "]),
        max_size=80,
    ).map(b"".join),
    data=st.data(),
)
def test_client_to_server_round_trip(message: bytes, data: st.DataObject) -> None:
    client = ClientConnection()
    app = EchoApp()
    client.receive_data(bytes(app.out))
    client.next_event()
    groups: list[list[Command]] = [
        [Ehlo("r.example")],
        [Mail("a@b.example"), Rcpt("c@d.example"), Data()],
    ]
    for group in groups:
        sent = len(app.out)
        app.feed(b"".join(client.send(command) for command in group))
        client.receive_data(bytes(app.out[sent:]))
        while client.next_event() is not NEED_DATA:
            pass
    cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=5)))
    last = 0
    for cut in [*cuts, len(message)]:
        wire = client.data_chunk(message[last:cut])
        if wire:
            app.feed(wire)
        last = cut
    app.feed(client.end_data())
    if b"\x00" in message:  # RFC 2045 §2.8: no NUL in 8bit text; the server refuses it
        assert app.messages == []
        assert app.rejected == [replies.NUL_IN_DATA]
    else:
        assert app.messages == [_wire_form(message)]


@PROPERTY
@given(
    st.lists(
        st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"aaaa"]), max_size=8).map(b"".join),
        max_size=6,
    )
)
def test_line_discipline_matches_a_reference(pieces: list[bytes]) -> None:
    lines = LineDiscipline(max_line=10)
    for piece in pieces:
        lines.feed(piece)
        if lines.bare_line_ending:
            break
    lines.end_of_message()
    text = b"".join(pieces)
    bare = re.search(rb"\r(?!\n)|(?<!\r)\n", text) is not None
    assert lines.bare_line_ending == bare
    if not bare:
        too_long = any(len(line) + 2 > 10 for line in text.split(b"\r\n"))
        assert lines.line_too_long == too_long


def test_replies_used_by_the_properties_are_stable() -> None:
    assert replies.MESSAGE_TOO_BIG.code == 552
