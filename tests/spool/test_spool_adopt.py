"""Messages committed by an intake worker process: announced, or found on disk after it died."""

from __future__ import annotations

from pathlib import Path

import trio

from dispatch.spool import Envelope, MessageState, Spool, SpoolEntrance
from dispatch.spool.testing import commit


async def commit_elsewhere(root: Path) -> Envelope:
    """Commit a message as a worker process does: straight to disk, no index."""
    announced: list[Envelope] = []
    entrance = SpoolEntrance(
        root, lambda envelope, _: announced.append(envelope), limiter=trio.CapacityLimiter(1)
    )
    async with entrance.begin() as message:
        await message.write(b"Subject: from a worker\r\n\r\nhi\r\n")
        await message.commit(
            mail_from="a@example.test", recipients=["b@example.test"], source="smtp", peer_ip=None
        )
    (envelope,) = announced
    return envelope


async def test_an_announced_message_is_indexed_and_due(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path)
    envelope = await commit_elsewhere(tmp_path)
    assert spool.counts().incoming == 0
    spool.adopt(envelope)
    assert spool.get(envelope.id).state is MessageState.INCOMING
    with trio.fail_after(1):
        await spool.wait_until_due()
    assert [e.id for e in await spool.claim_due(10)] == [envelope.id]


async def test_unannounced_messages_are_found_on_disk_once(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path)
    known = await commit(spool)  # committed here: indexed already
    orphan = await commit_elsewhere(tmp_path)
    assert await spool.adopt_unannounced(settle_seconds=0) == 1
    assert spool.get(orphan.id).envelope == orphan
    assert spool.counts().incoming == 2
    assert spool.get(known.id).state is MessageState.INCOMING
    assert await spool.adopt_unannounced(settle_seconds=0) == 0  # nothing new


async def test_a_late_announcement_of_a_found_message_is_ignored(tmp_path: Path) -> None:
    """Found on disk, claimed and delivered, then announced: it must not come back."""
    spool = await Spool.open(tmp_path)
    envelope = await commit_elsewhere(tmp_path)
    assert await spool.adopt_unannounced(settle_seconds=0) == 1
    (claimed,) = await spool.claim_due(10)
    await spool.remove(claimed.id)
    spool.adopt(envelope)  # the announcement arrives late
    assert spool.counts().incoming == 0
    assert envelope.id not in {e.id for e in spool.entries()}


async def test_an_announcement_during_the_settle_time_wins(tmp_path: Path) -> None:
    """A live worker's fresh commit is announced while the dead one's leftovers settle."""
    spool = await Spool.open(tmp_path)
    envelope = await commit_elsewhere(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(spool.adopt_unannounced, 0.2)
        await trio.sleep(0.05)
        spool.adopt(envelope)
    assert spool.counts().incoming == 1
    (claimed,) = await spool.claim_due(10)
    await spool.remove(claimed.id)
    assert spool.counts().incoming == 0


async def test_a_commit_made_during_the_settle_time_is_left_to_its_announcement(
    tmp_path: Path,
) -> None:
    """Only ids unknown in both listings are adopted: a fresh commit is a live worker's."""
    spool = await Spool.open(tmp_path)
    orphan = await commit_elsewhere(tmp_path)
    fresh: list[Envelope] = []

    async def commit_meanwhile() -> None:
        await trio.sleep(0.05)
        fresh.append(await commit_elsewhere(tmp_path))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(commit_meanwhile)
        assert await spool.adopt_unannounced(settle_seconds=0.2) == 1
    assert spool.get(orphan.id).state is MessageState.INCOMING
    assert fresh[0].id not in {e.id for e in spool.entries()}
    spool.adopt(fresh[0])  # its announcement
    assert spool.counts().incoming == 2
