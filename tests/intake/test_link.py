"""The framed link between the main process and an intake worker, over a real socket pair."""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from dispatch.intake.link import Link, LinkBroken
from dispatch.monitoring.stats import Stats


def pair() -> tuple[Link, trio.SocketStream]:
    a, b = socket.socketpair()
    link = Link(trio.SocketStream(trio.socket.from_stdlib_socket(a)))
    return link, trio.SocketStream(trio.socket.from_stdlib_socket(b))


async def test_objects_arrive_whole_and_in_order_then_none_at_the_end() -> None:
    ours, theirs_stream = pair()
    theirs = Link(theirs_stream)
    big = b"x" * 300_000  # more than the socket buffers: several reads
    messages = [("ready",), ("committed", big), ("stats", {"a": 1})]

    async def send_all() -> None:
        for message in messages:
            await ours.send(message)
        await ours.aclose()

    received = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all)
        while (message := await theirs.receive()) is not None:
            received.append(message)
    await theirs.aclose()
    assert received == messages


async def test_a_frame_cut_short_is_an_error() -> None:
    link, raw = pair()
    await raw.send_all(struct.pack(">I", 100) + b"only part")
    await raw.aclose()
    with pytest.raises(LinkBroken, match="middle of a frame"):
        await link.receive()
    await link.aclose()


async def test_an_absurd_length_is_an_error() -> None:
    link, raw = pair()
    await raw.send_all(struct.pack(">I", 0xFFFFFFFF))
    with pytest.raises(LinkBroken, match="frame of"):
        await link.receive()
    await raw.aclose()
    await link.aclose()


def test_stats_taken_in_a_worker_add_up_in_the_main_process() -> None:
    worker, main = Stats(), Stats()
    worker.smtp_commands.add("EHLO", 3)
    worker.smtp_loops.add()
    worker.smtp_session_seconds.observe(0.02)
    main.smtp_commands.add("EHLO", 1)
    main.merge(worker.take())
    assert main.smtp_commands["EHLO"] == 4
    assert main.smtp_loops.value == 1
    assert main.smtp_session_seconds.count == 1
    assert worker.smtp_commands["EHLO"] == 0  # taken: counting starts over
    assert worker.smtp_session_seconds.count == 0
    main.merge(worker.take())
    assert main.smtp_commands["EHLO"] == 4
