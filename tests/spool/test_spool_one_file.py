"""One-file messages (the envelope an attribute of the ``.eml``) beside the older pairs.

Intake writes one file per message; spools written by earlier versions hold ``.eml`` +
``.json`` pairs, and both must be read, delivered, retried and removed alike.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from dispatch.spool import Envelope, MessageState, Spool
from dispatch.spool.layout import ENVELOPE_XATTR, MAX_XATTR_ENVELOPE
from dispatch.spool.testing import commit, envelope_ids, placed, tmp_files, write_pair
from dispatch.spool.writer import SpoolEntrance

INCOMING, PROCESSING, FAILED = (
    MessageState.INCOMING,
    MessageState.PROCESSING,
    MessageState.FAILED,
)


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    """A ramfs: a real file system without user extended attributes (setxattr: ENOTSUP).

    Mounting needs root, as the disk-full tests' tmpfs does; without it this fails.
    """
    mountpoint = tmp_path / "ramfs"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "ramfs", "-o", "mode=0700", "ramfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.fail(f"could not mount a ramfs at {mountpoint}: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)


def one_file(root: Path, state: MessageState, envelope: Envelope, body: bytes) -> Path:
    """Write a one-file message by hand, as intake (or a crash) leaves it."""
    path = root / state.value / f"{envelope.id}.eml"
    path.write_bytes(body)
    os.setxattr(path, ENVELOPE_XATTR, envelope.to_json())
    return path


async def test_a_spool_of_old_pairs_and_one_file_messages_is_read_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "spool"
    old_incoming = write_pair(root, INCOMING, b"old one")
    old_failed = write_pair(root, FAILED, b"old two", attempts=3, last_error="550")
    new_incoming = write_pair(root, INCOMING, b"new one", with_eml=False, with_json=False)
    one_file(root, INCOMING, new_incoming, b"new one")
    new_claimed = write_pair(
        root, INCOMING, b"new two", with_eml=False, with_json=False, attempts=1
    )
    one_file(root, PROCESSING, new_claimed, b"new two")
    # A one-file commit that never left tmp/, and a body whose attribute was dropped.
    unfinished = write_pair(root, INCOMING, with_eml=False, with_json=False)
    (root / "tmp").mkdir(exist_ok=True)
    one_file(root, MessageState.INCOMING, unfinished, b"x").rename(
        root / "tmp" / f"{unfinished.id}.eml"
    )
    stripped = write_pair(root, INCOMING, b"stripped", with_json=False)
    # An attribute that does not decode: left alone, not delivered.
    broken = write_pair(root, INCOMING, with_eml=False, with_json=False)
    broken_path = root / "incoming" / f"{broken.id}.eml"
    broken_path.write_bytes(b"broken")
    os.setxattr(broken_path, ENVELOPE_XATTR, b'{"v": 1, "id": tru')

    with caplog.at_level(logging.WARNING, logger="dispatch.spool"):
        spool = await Spool.open(root)

    assert {e.id: e.state for e in spool.entries()} == {
        old_incoming.id: INCOMING,
        old_failed.id: FAILED,
        new_incoming.id: INCOMING,
        new_claimed.id: INCOMING,
    }
    assert spool.get(new_claimed.id).envelope == new_claimed
    assert spool.get(old_failed.id).envelope == old_failed
    assert spool.message_path(new_claimed.id).read_bytes() == b"new two"
    assert not (root / "incoming" / f"{stripped.id}.eml").exists()
    assert (root / "orphaned" / f"{stripped.id}.eml").read_bytes() == b"stripped"
    assert broken_path.exists()
    assert tmp_files(root) == []
    report = spool.recovery_report
    assert (report.claims_returned, report.orphan_bodies_set_aside) == (1, 1)
    assert report.corrupt_envelopes == [broken_path]
    assert f"{broken_path}" in caplog.text


async def test_one_file_message_is_claimed_retried_and_removed(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool")
    root = spool.directory
    envelope = await commit(spool, b"hello\r\n")
    assert envelope_ids(root / "incoming") == {envelope.id}
    assert os.listdir(root / "incoming") == [f"{envelope.id}.eml"]

    await spool.claim(envelope.id)
    assert os.listdir(root / "processing") == [f"{envelope.id}.eml"]
    retry = envelope.after_attempt(next_attempt_at=0.0, error="421 later")
    await spool.release(retry)
    # A rewritten envelope makes a pair; the attribute goes, so the .json alone speaks.
    eml = root / "incoming" / f"{envelope.id}.eml"
    assert sorted(os.listdir(root / "incoming")) == [f"{envelope.id}.eml", f"{envelope.id}.json"]
    assert ENVELOPE_XATTR not in os.listxattr(eml)
    reopened = await Spool.open(root)
    assert reopened.get(envelope.id).envelope == retry

    second = await commit(spool, b"second\r\n")
    await spool.claim(second.id)
    await spool.remove(second.id)
    await spool.delete(envelope.id)
    assert placed(root) == {}
    assert os.listdir(root / "processing") == os.listdir(root / "incoming") == []


async def test_one_file_message_fails_and_is_retried_by_an_operator(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool")
    envelope = await commit(spool, b"x\r\n")
    await spool.claim(envelope.id)
    await spool.mark_failed(envelope.after_attempt(next_attempt_at=0.0, error="550 no"))
    await spool.retry_failed(envelope.id)
    assert placed(spool.directory) == {envelope.id: INCOMING}
    reopened = await Spool.open(spool.directory)
    assert reopened.get(envelope.id).envelope.attempts == 0


async def test_an_envelope_too_long_for_an_attribute_gets_a_json(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool")
    recipients = [f"recipient-{n}@example.test" for n in range(150)]
    envelope = await commit(spool, b"x\r\n", recipients=recipients)
    assert len(envelope.to_json()) > MAX_XATTR_ENVELOPE
    incoming = spool.directory / "incoming"
    assert sorted(os.listdir(incoming)) == [f"{envelope.id}.eml", f"{envelope.id}.json"]
    assert ENVELOPE_XATTR not in os.listxattr(incoming / f"{envelope.id}.eml")
    assert (await Spool.open(spool.directory)).get(envelope.id).envelope == envelope


async def test_a_worker_process_one_file_commit_is_adopted_after_it_ended(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool")
    announced: list[Envelope] = []
    entrance = SpoolEntrance(
        spool.directory,
        lambda envelope, _: announced.append(envelope),
        limiter=trio.CapacityLimiter(2),
    )
    async with entrance.begin() as message:
        await message.write(b"from a worker\r\n")
        unannounced = await message.commit(
            mail_from="a@example.test", recipients=["b@example.test"], source="smtp", peer_ip=None
        )
    assert announced == [unannounced]
    # The worker died before its announcement reached the main process.
    assert await spool.adopt_unannounced(settle_seconds=0.01) == 1
    assert spool.get(unannounced.id).envelope == unannounced
    assert await spool.adopt_unannounced(settle_seconds=0.01) == 0


async def test_without_user_attributes_every_message_is_a_pair(ramfs: Path) -> None:
    spool = await Spool.open(ramfs / "spool")
    incoming = spool.directory / "incoming"
    with pytest.raises(OSError, match="not supported"):
        os.setxattr(ramfs, ENVELOPE_XATTR, b"{}")
    envelope = await commit(spool, b"on ramfs\r\n")
    assert sorted(os.listdir(incoming)) == [f"{envelope.id}.eml", f"{envelope.id}.json"]
    await spool.claim(envelope.id)
    await spool.release(envelope.after_attempt(next_attempt_at=0.0, error="421 later"))
    reopened = await Spool.open(spool.directory)
    assert reopened.get(envelope.id).envelope.attempts == 1
    assert reopened.message_path(envelope.id).read_bytes() == b"on ramfs\r\n"
    await reopened.claim(envelope.id)
    await reopened.remove(envelope.id)
    assert placed(spool.directory) == {}
