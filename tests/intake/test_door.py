"""The intake door (``dispatch/intake/door.py``) on a real spool: what committing a message
through it leaves on disk, in the counters and in the message log, including when the disk is
full, when a write fails and when the caller is cancelled during the commit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio
import trio.testing

from dispatch.intake.door import IntakeDoor, SpoolFullError, SpoolWriteError
from dispatch.monitoring.stats import Stats
from dispatch.spool import MessageState, Spool
from dispatch.spool.testing import placed, tmp_files
from dispatch.storage.records import MessageEvent
from tests.conftest import fill

MESSAGE = b"From: ann@example.test\r\nSubject: Hello\r\n\r\nHi.\r\n"


async def open_door(
    directory: Path, limiter: trio.CapacityLimiter | None = None
) -> tuple[IntakeDoor, Spool, Stats, list[MessageEvent]]:
    spool = await Spool.open(directory, limiter=limiter)
    stats, events = Stats(), list[MessageEvent]()
    return IntakeDoor("api", spool, stats, events.append), spool, stats, events


async def commit(door: IntakeDoor) -> str:
    envelope = await door.commit(
        MESSAGE,
        mail_from="ann@example.test",
        recipients=("bob@example.test", "cy@example.test"),
        peer_ip="127.0.0.1",
        auth_identity="dsp_live_ABCDEFGH",
        tags=("welcome",),
        subject="Hello",
    )
    return envelope.id


async def test_a_commit_is_spooled_counted_and_logged_as_received(tmp_path: Path) -> None:
    door, spool, stats, events = await open_door(tmp_path / "spool")
    message_id = await commit(door)
    assert placed(spool.directory) == {message_id: MessageState.INCOMING}
    assert spool.message_path(message_id).read_bytes() == MESSAGE
    envelope = spool.get(message_id).envelope
    assert (envelope.source, envelope.peer_ip, envelope.tags) == ("api", "127.0.0.1", ("welcome",))
    assert stats.spool_writes["ok"] == 1
    assert stats.messages_received["api"] == 1
    [event] = events
    assert (event.event, event.message_id, event.source) == ("received", message_id, "api")
    assert event.sender == "ann@example.test"
    assert event.recipients == ("bob@example.test", "cy@example.test")
    assert (event.subject, event.size, event.tags) == ("Hello", len(MESSAGE), ("welcome",))
    assert event.api_key_prefix == "dsp_live_ABCDEFGH"
    assert door.scratch_directory == spool.directory / "tmp"
    assert door.scratch_directory.is_dir()


async def test_a_full_disk_leaves_nothing_and_counts_a_full_write(small_fs: Path) -> None:
    door, spool, stats, events = await open_door(small_fs / "spool")
    fill(small_fs / "filler", leave_pages=0)
    with pytest.raises(SpoolFullError):
        await commit(door)
    assert spool.counts().total == 0
    assert placed(spool.directory) == {}
    assert tmp_files(spool.directory) == []
    assert (stats.spool_writes["full"], stats.spool_writes["ok"]) == (1, 0)
    assert stats.messages_received["api"] == 0
    assert events == []


async def test_a_failed_write_counts_an_error_and_logs_nothing(tmp_path: Path) -> None:
    door, spool, stats, events = await open_door(tmp_path / "spool")
    shutil.rmtree(spool.directory / "tmp")  # the commit cannot create its files
    with pytest.raises(SpoolWriteError) as failed:
        await commit(door)
    assert not isinstance(failed.value, SpoolFullError)
    assert spool.counts().total == 0
    assert (stats.spool_writes["error"], stats.spool_writes["ok"]) == (1, 0)
    assert events == []


async def test_a_caller_cancelled_during_the_commit_still_leaves_the_event(tmp_path: Path) -> None:
    """A request deadline may cancel the caller while the commit's thread works: the message is
    then durable, so its count and its ``received`` event must be there too."""
    limiter = trio.CapacityLimiter(1)
    door, spool, stats, events = await open_door(tmp_path / "spool", limiter)
    scope = trio.CancelScope()

    async def send() -> None:
        with scope:
            await commit(door)

    # Holding the spool's only thread makes the commit wait for it, shielded.
    async with trio.open_nursery() as nursery, limiter:
        nursery.start_soon(send)
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.statistics().tasks_waiting == 1
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
    assert scope.cancelled_caught  # the caller did see its cancellation
    [message_id] = [entry.envelope.id for entry in spool.entries()]
    assert placed(spool.directory) == {message_id: MessageState.INCOMING}
    assert stats.spool_writes["ok"] == 1
    assert [(e.event, e.message_id) for e in events] == [("received", message_id)]


async def test_denied_logs_the_refused_peer(tmp_path: Path) -> None:
    door, spool, stats, events = await open_door(tmp_path / "spool")
    door.denied("192.0.2.9", "api.allowed_cidrs")
    [event] = events
    assert (event.event, event.source, event.peer_ip) == ("denied", "api", "192.0.2.9")
    assert event.message_id is None
    assert event.response == "peer not in api.allowed_cidrs"
    assert spool.counts().total == 0
    assert stats.messages_received["api"] == 0
