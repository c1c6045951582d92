"""A message holding a NUL is refused over DATA and BDAT, never stored, and counted."""

from __future__ import annotations

import socket

import pytest

from tests.intake.conftest import Smtpd, in_thread

ENVELOPE = b"EHLO c.example\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n"
BODY = b"Subject: nul\r\n\r\nbefore\r\nthe NUL \x00 here\r\n"


def converse(port: int, transcript: list[tuple[bytes, int]]) -> list[bytes]:
    """Send each piece, read as many replies as it expects; return the last lines of them."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()  # greeting
        for piece, replies in transcript:
            sock.sendall(piece)
            for _ in range(replies):
                line = reader.readline()
                while line[3:4] == b"-":
                    line = reader.readline()
                answers.append(line)
    return answers


@pytest.mark.parametrize("command", ["DATA", "BDAT"])
async def test_nul_in_the_data_is_refused_and_the_session_goes_on(
    smtpd: Smtpd, command: str
) -> None:
    if command == "DATA":
        message = [(b"DATA\r\n", 1), (BODY + b".\r\n", 1)]
    else:
        message = [(b"BDAT %d LAST\r\n" % len(BODY) + BODY, 1)]
    good = b"Subject: fine\r\n\r\nno NUL\r\n"
    answers = await in_thread(
        lambda: converse(
            smtpd.port,
            [
                (ENVELOPE, 3),
                *message,
                (b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n", 2),
                (b"BDAT %d LAST\r\n" % len(good) + good, 1),
                (b"QUIT\r\n", 1),
            ],
        )
    )
    if command == "DATA":
        assert answers[3].startswith(b"354")
        del answers[3]
    assert answers[3].startswith(b"554 5.6.0"), answers
    assert answers[6].startswith(b"250 2.0.0"), answers  # the next message is accepted
    stored = [path.read_bytes() for path in (smtpd.root / "incoming").glob("*.eml")]
    assert len(stored) == 1
    assert b"no NUL" in stored[0]
    assert not any(b"\x00" in body for body in stored)
    assert smtpd.stats.smtp_violations["nul_in_data"] == 1
    assert smtpd.stats.smtp_replies["554"] == 1
