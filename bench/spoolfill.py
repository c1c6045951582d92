"""Fill a spool directory with valid waiting messages, fast, without a running Dispatch.

Each message is the pair Dispatch itself writes (``incoming/<id>.eml`` and
``incoming/<id>.json``), built with Dispatch's own :class:`~dispatch.spool.Envelope` and id
generator so that start-up accepts every one. The envelopes say one attempt was made and the
next is due in a day: the messages wait, as they would behind a relay that is down, and the
figure measures the size of the spool rather than a delivery backlog being worked off. No
fsync: this is set-up, and a crash of the benchmark only loses the benchmark's own files.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.load import MAIL_FROM, MESSAGE_BYTES, RCPT_TO
from bench.smtp_client import message_body
from dispatch.spool import Envelope, MessageState, new_id
from dispatch.spool.layout import EML, FILE_MODE, JSON, SpoolLayout

WAIT_SECONDS = 86_400.0
FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, FLAGS, FILE_MODE)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def fill(root: Path, count: int) -> float:
    """Write ``count`` waiting messages into the spool at ``root``; return the seconds taken."""
    began = time.monotonic()
    layout = SpoolLayout(root)
    layout.create_dirs()
    incoming = layout.state_dirs[MessageState.INCOMING]
    body = message_body(MESSAGE_BYTES, MAIL_FROM, RCPT_TO)
    now = time.time()
    for _ in range(count):
        envelope = Envelope(
            id=new_id(),
            mail_from=MAIL_FROM,
            recipients=(RCPT_TO,),
            source="smtp",
            peer_ip="127.0.0.1",
            auth_identity=None,
            tags=(),
            received_at=now,
            size=len(body),
            attempts=1,
            next_attempt_at=now + WAIT_SECONDS,
            last_error="relay down (benchmark filler)",
        )
        _write(incoming / f"{envelope.id}{EML}", body)
        _write(incoming / f"{envelope.id}{JSON}", envelope.to_json())  # the envelope last
    return time.monotonic() - began
