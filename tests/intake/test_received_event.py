"""A message's ``received`` event is recorded once it is durable, whether or not its ``250``
reaches the client."""

from __future__ import annotations

import socket
import struct

from tests.intake.conftest import Smtpd, at_data, in_thread
from tests.support.waiting import wait_until_async


async def test_a_committed_message_is_logged_when_its_250_cannot_be_written(
    smtpd: Smtpd,
) -> None:
    def send_then_reset() -> None:
        sock = at_data(smtpd.port)
        sock.sendall(b"Subject: gone\r\n\r\nHello.\r\n.\r\n")
        # Closed with a reset at once: the server's commit (a thread hop and an fsync) is
        # still under way, and its 250 finds the connection gone.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    await in_thread(send_then_reset)
    await wait_until_async(lambda: len(list(smtpd.spool.entries())) == 1, what="the message")
    (entry,) = smtpd.spool.entries()
    await wait_until_async(
        lambda: [(e.event, e.message_id) for e in smtpd.events] == [("received", entry.id)],
        what="its received event",
    )
    assert smtpd.events[0].subject == "gone"
