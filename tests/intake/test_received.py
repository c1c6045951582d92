"""The Received: header we prepend and mail-loop detection."""

from __future__ import annotations

import email
import email.policy

from hypothesis import given
from hypothesis import strategies as st

from dispatch.intake.received import LoopDetector, protocol_name, received_header


def test_received_header_is_a_valid_header_without_recipients() -> None:
    header = received_header(
        server_name="relay.example",
        helo="client (evil)\r\nBcc: x",
        peer_ip="127.0.0.1",
        protocol=protocol_name(esmtp=True, tls=True, authenticated=False),
        message_id="spl_01ABC",
        timestamp=0,
    )
    assert header.endswith(b"\r\n")
    message = email.message_from_bytes(
        header + b"Subject: hi\r\n\r\nbody\r\n", policy=email.policy.default
    )
    received = str(message["Received"])
    assert "relay.example" in received
    assert "with ESMTPS id spl_01ABC" in received
    assert "[127.0.0.1]" in received
    assert " for " not in received
    assert message["Bcc"] is None  # the hostile HELO could not inject a header
    assert "Thu, 01 Jan 1970 00:00:00 GMT" in received


def test_received_headers_carry_their_own_second() -> None:
    def date(timestamp: float) -> bytes:
        header = received_header(
            server_name="relay.example",
            helo="client",
            peer_ip="127.0.0.1",
            protocol="ESMTP",
            message_id="spl_01ABC",
            timestamp=timestamp,
        )
        return header.rsplit(b"\t", 1)[1].rstrip()

    # One second's text is remembered; the next second, and an earlier one again, are not it.
    assert date(1_764_000_000.2) == date(1_764_000_000.9) == b"Mon, 24 Nov 2025 16:00:00 GMT"
    assert date(1_764_000_001.0) == b"Mon, 24 Nov 2025 16:00:01 GMT"
    assert date(1_764_000_000.5) == b"Mon, 24 Nov 2025 16:00:00 GMT"


def test_protocol_names_follow_rfc_3848() -> None:
    assert protocol_name(esmtp=False, tls=False, authenticated=False) == "SMTP"
    assert protocol_name(esmtp=True, tls=False, authenticated=False) == "ESMTP"
    assert protocol_name(esmtp=True, tls=True, authenticated=True) == "ESMTPSA"
    assert protocol_name(esmtp=True, tls=False, authenticated=True) == "ESMTPA"


def _message(received: int) -> bytes:
    return b"".join([b"Received: from x by y; date\r\n"] * received) + (
        b"Subject: s\r\n\r\nReceived: in the body does not count\r\n"
    )


def test_loop_detection_counts_only_header_fields() -> None:
    for count, loop in ((50, False), (51, True)):
        detector = LoopDetector()
        detector.feed(_message(count))
        detector.finish()
        assert detector.received_count == count
        assert detector.is_loop is loop


@given(st.integers(0, 60), st.lists(st.integers(1, 40), max_size=200))
def test_loop_detection_is_independent_of_chunking(received: int, cuts: list[int]) -> None:
    data = _message(received)
    detector = LoopDetector()
    position = 0
    for cut in cuts:
        detector.feed(data[position : position + cut])
        position += cut
    detector.feed(data[position:])
    detector.finish()
    assert detector.received_count == received
