"""Bodies without any envelope are set aside in ``orphaned/``, never deleted.

The case that matters: a spool restored or moved by a tool that drops extended attributes
(plain ``cp``, ``tar`` without ``--xattrs``, ``rsync -a`` without ``-X``) turns every waiting
one-file message into such a body. Those are acknowledged messages; start-up must keep them.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from dispatch.dashboard.settings_facts import spool_usage
from dispatch.spool import MessageState, Spool
from dispatch.spool.layout import ENVELOPE_XATTR
from dispatch.spool.sweep import SpoolSweeper
from dispatch.spool.testing import commit, placed, write_pair

INCOMING, FAILED = MessageState.INCOMING, MessageState.FAILED


def copy_dropping_xattrs(source: Path, target: Path) -> None:
    """Copy a tree by reading and writing bytes, as a tool that ignores attributes does."""
    for directory, _, names in os.walk(source):
        here = target / Path(directory).relative_to(source)
        here.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in names:
            (here / name).write_bytes((Path(directory) / name).read_bytes())


async def waiting_spool(root: Path) -> dict[str, bytes]:
    """A spool with one-file messages waiting (incoming and claimed) and one failed pair."""
    spool = await Spool.open(root)
    bodies = {}
    for n in range(5):
        body = f"Subject: {n}\r\n\r\nmessage {n}\r\n".encode()
        bodies[(await commit(spool, body)).id] = body
    claimed = await spool.claim(next(iter(bodies)))
    await spool.mark_failed(claimed.after_attempt(next_attempt_at=0.0, error="550 no"))
    return bodies


async def test_a_copy_without_extended_attributes_keeps_every_body_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    original = tmp_path / "spool"
    bodies = await waiting_spool(original)
    failed_id = next(iter(bodies))
    one_file_ids = set(bodies) - {failed_id}
    # The precondition: intake wrote these as one file each, envelope in the attribute.
    for message_id in one_file_ids:
        assert ENVELOPE_XATTR in os.listxattr(original / "incoming" / f"{message_id}.eml")

    copy = tmp_path / "copy"
    copy_dropping_xattrs(original, copy)
    with caplog.at_level(logging.WARNING, logger="dispatch.spool"):
        spool = await Spool.open(copy)

    # The failed pair has its .json: still a message. The others cannot be delivered
    # (their envelopes are gone), but not one body is lost.
    assert {e.id for e in spool.entries()} == {failed_id}
    orphaned = copy / "orphaned"
    assert {p.name: p.read_bytes() for p in orphaned.iterdir()} == {
        f"{message_id}.eml": bodies[message_id] for message_id in one_file_ids
    }
    assert placed(copy) == {failed_id: FAILED}
    assert spool.recovery_report.orphan_bodies_set_aside == len(one_file_ids)
    assert spool.recovery_report.repaired_anything
    warnings = [r for r in caplog.records if "had no envelope" in r.getMessage()]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert f"{len(one_file_ids)} message bodies had no envelope" in text
    assert str(orphaned) in text
    assert "tar --xattrs" in text
    assert "rsync -aX" in text
    assert "may be deleted" in text
    # The dashboard's folder sizes show them.
    usage = {folder.name: folder.messages for folder in spool_usage(copy)}
    assert usage["orphaned"] == len(one_file_ids)

    # The same spool copied keeping attributes (copy2 copies them) loses nothing at all.
    kept = tmp_path / "kept"
    shutil.copytree(original, kept, copy_function=shutil.copy2)
    whole = await Spool.open(kept)
    assert {e.id for e in whole.entries()} == set(bodies)
    assert not (kept / "orphaned").exists()
    assert whole.recovery_report.orphan_bodies_set_aside == 0


async def test_a_name_already_taken_in_orphaned_is_never_overwritten(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    first = write_pair(root, INCOMING, b"first", with_json=False)
    await Spool.open(root)
    # The same id again (a second bad copy restored over the first), in two states at once.
    (root / "incoming" / f"{first.id}.eml").write_bytes(b"second")
    (root / "failed").mkdir(exist_ok=True)
    (root / "failed" / f"{first.id}.eml").write_bytes(b"third")
    spool = await Spool.open(root)
    assert spool.recovery_report.orphan_bodies_set_aside == 2
    assert {p.name: p.read_bytes() for p in (root / "orphaned").iterdir()} == {
        f"{first.id}.eml": b"first",
        f"{first.id}.1.eml": b"third",  # failed/ is looked at first
        f"{first.id}.2.eml": b"second",
    }


async def test_retention_removes_set_aside_bodies_older_than_failed_spool_days(
    tmp_path: Path,
) -> None:
    root = tmp_path / "spool"
    old = write_pair(root, INCOMING, b"old", with_json=False)
    spool = await Spool.open(root)
    orphaned = root / "orphaned"
    (orphaned / "README").write_text("an operator's note")  # not a name recovery gives
    set_aside_at = time.time()
    sweeper = SpoolSweeper(spool)

    before = await sweeper.remove_failed(set_aside_at - 60)
    assert before.removed == 0
    assert (orphaned / f"{old.id}.eml").exists()

    after = await sweeper.remove_failed(set_aside_at + 60)
    assert (after.removed, after.error) == (1, None)
    assert sorted(p.name for p in orphaned.iterdir()) == ["README"]


async def test_retention_without_an_orphaned_directory_finds_nothing(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool")
    result = await SpoolSweeper(spool).remove_failed(time.time() + 60)
    assert (result.removed, result.error) == (0, None)
    assert not (tmp_path / "spool" / "orphaned").exists()
