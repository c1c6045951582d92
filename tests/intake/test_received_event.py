"""A message's ``received`` event is recorded once it is durable, whether or not its ``250``
reaches the client."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import trio

from dispatch.config.loader import load_settings
from dispatch.spool import Spool
from dispatch.storage.records import MAX_FREE_TEXT, MessageEvent
from tests.intake.conftest import (
    Smtpd,
    at_data,
    in_thread,
    one_intake_worker,
    write_worker_config,
)
from tests.support.waiting import wait_until_async


def send_then_reset(port: int, header: bytes) -> None:
    """A message, then the connection reset at once: the server's commit (a thread hop and an
    fsync) is still under way, and its 250 finds the connection gone."""
    sock = at_data(port)
    sock.sendall(header + b"\r\n\r\nHello.\r\n.\r\n")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def test_a_committed_message_is_logged_when_its_250_cannot_be_written(
    smtpd: Smtpd,
) -> None:
    await in_thread(lambda: send_then_reset(smtpd.port, b"Subject: gone"))
    await wait_until_async(lambda: len(list(smtpd.spool.entries())) == 1, what="the message")
    (entry,) = smtpd.spool.entries()
    await wait_until_async(
        lambda: [(e.event, e.message_id) for e in smtpd.events] == [("received", entry.id)],
        what="its received event",
    )
    assert smtpd.events[0].subject == "gone"


async def test_so_is_one_a_worker_committed(tmp_path: Path) -> None:
    # The worker's path: the event rides in its Committed, and the main process records it.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    config = tmp_path / "dispatch.toml"
    write_worker_config(config, port)
    settings = load_settings(config)
    spool = await Spool.open(tmp_path / "spool")
    events: list[MessageEvent] = []
    async with one_intake_worker(
        listeners, lambda: settings, spool, record=events.append, audit=lambda entry: None
    ):
        folded = b"\r\n ".join([b"x" * 900] * 3)  # three lines folded: 2,702 characters
        await in_thread(lambda: send_then_reset(port, b"Subject: " + folded))
        await wait_until_async(lambda: bool(events), what="the worker's received event")
    (entry,) = spool.entries()
    [event] = events
    assert (event.event, event.message_id, event.source) == ("received", entry.id, "smtp")
    assert event.subject is not None
    assert len(event.subject) == MAX_FREE_TEXT  # as long as the message log keeps
