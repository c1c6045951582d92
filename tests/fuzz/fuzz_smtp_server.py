"""Fuzz target: the SMTP server core (`ServerConnection`) fed arbitrary client bytes.

The input is what a client sends. An echo-style application (`tests/smtp/smtp_echo.py`)
answers every event the way a permissive server would. Oracles:

- nothing but the documented events comes out: no exception of any kind;
- the bytes give the same replies and the same messages whether they arrive in one piece or
  cut into small pieces (framing never depends on packet boundaries) — except after
  STARTTLS, where what arrived in the same packet is discarded on purpose (command
  injection), so that session legitimately depends on the cut;
- no accepted message exceeds ``max_message_bytes``; after EOF the session is closed.
"""

from __future__ import annotations

import itertools

import atheris  # type: ignore[import-untyped]

from tests.support.sources import import_sources

import_sources()  # the SMTP core as Python, not its compiled build
with atheris.instrument_imports(include=["dispatch"]):
    from dispatch.smtp import Limits
    from dispatch.smtp.events import StartTls
    from tests.smtp.smtp_echo import EchoApp

LIMITS = Limits(max_message_bytes=4096)
PIECES = (1, 2, 3, 5, 8, 13, 64)


def run(data: bytes, pieces: tuple[int, ...] | None) -> EchoApp:
    app = EchoApp(LIMITS)
    if pieces is None:
        app.feed(data)
    else:
        start = 0
        for size in itertools.cycle(pieces):
            if start >= len(data):
                break
            app.feed(data[start : start + size])
            start += size
    app.feed(b"")
    return app


def TestOneInput(data: bytes) -> None:
    whole = run(data, None)
    cut = run(data, PIECES)
    if not any(isinstance(e, StartTls) for e in (*whole.events, *cut.events)):
        assert whole.out == cut.out, "replies depend on how the bytes were cut"
        assert whole.messages == cut.messages
    assert all(len(m) <= LIMITS.max_message_bytes for m in whole.messages)
    assert whole.conn.closed


if __name__ == "__main__":
    from tests.fuzz._runner import fuzz

    fuzz(TestOneInput)
