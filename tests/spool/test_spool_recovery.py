"""Start-up recovery: crash leftovers made by hand end with every message in one state."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dispatch.spool import BODY_MISSING, Envelope, MessageState, Spool, SpoolWriteError
from dispatch.spool.testing import commit, disk_state, placed, tmp_files, write_pair

INCOMING, PROCESSING, FAILED = (
    MessageState.INCOMING,
    MessageState.PROCESSING,
    MessageState.FAILED,
)


async def test_open_creates_private_directories(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "a" / "spool")
    for name in ("incoming", "processing", "failed", "captured", "tmp"):
        assert (spool.directory / name).stat().st_mode & 0o777 == 0o700
    assert spool.counts().total == 0
    assert not spool.recovery_report.repaired_anything


async def test_every_kind_of_leftover_is_repaired(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "spool"
    intact_incoming = write_pair(root, INCOMING, b"one")
    intact_failed = write_pair(root, FAILED, b"two", attempts=5, last_error="550")
    claimed = write_pair(root, PROCESSING, b"three", attempts=1)
    # Interrupted moves: the envelope's directory is the state.
    claim_half_done = write_pair(root, INCOMING, b"four", eml_state=PROCESSING)
    fail_half_done = write_pair(root, FAILED, b"five", eml_state=PROCESSING)
    release_half_done = write_pair(root, PROCESSING, b"six", eml_state=INCOMING)
    # Bodies without envelopes: never acknowledged, or delivered while being removed.
    seven = write_pair(root, INCOMING, b"seven", with_json=False)
    eight = write_pair(root, FAILED, b"eight", with_json=False)
    # An envelope whose body is gone.
    bodiless = write_pair(root, INCOMING, with_eml=False)
    # An unfinished commit and other junk in tmp/.
    half_commit = write_pair(root, INCOMING, b"nine", with_json=False)
    (root / "tmp").mkdir()
    (root / "tmp" / f"{half_commit.id}.json").write_bytes(half_commit.to_json())
    (root / "tmp" / "junk.part").write_bytes(b"x")
    (root / "tmp" / "subdir").mkdir()
    (root / "tmp" / "subdir" / "deeper").write_bytes(b"y")

    with caplog.at_level(logging.WARNING, logger="dispatch.spool"):
        spool = await Spool.open(root)

    expected = {
        intact_incoming.id: INCOMING,
        intact_failed.id: FAILED,
        claimed.id: INCOMING,
        claim_half_done.id: INCOMING,
        fail_half_done.id: FAILED,
        release_half_done.id: INCOMING,
        bodiless.id: FAILED,
    }
    on_disk = disk_state(root)
    assert on_disk.pop(bodiless.id) == ({FAILED}, set())
    assert placed(root, ignore={bodiless.id}) == {
        k: v for k, v in expected.items() if k != bodiless.id
    }
    assert tmp_files(root) == []
    assert set(on_disk) == set(expected) - {bodiless.id}  # the orphans left the state dirs
    # ... but were set aside, never deleted: a copy that dropped attributes looks the same.
    assert {p.name: p.read_bytes() for p in (root / "orphaned").iterdir()} == {
        f"{seven.id}.eml": b"seven",
        f"{eight.id}.eml": b"eight",
        f"{half_commit.id}.eml": b"nine",
    }
    assert (root / "orphaned").stat().st_mode & 0o777 == 0o700
    set_aside = [r for r in caplog.records if "had no envelope" in r.getMessage()]
    assert len(set_aside) == 1
    assert f"3 message bodies had no envelope and were set aside in {root / 'orphaned'}" in (
        set_aside[0].getMessage()
    )

    assert {e.id: e.state for e in spool.entries()} == expected
    counts = spool.counts()
    assert (counts.incoming, counts.retrying, counts.processing, counts.failed) == (4, 1, 0, 3)
    bodiless_now = spool.get(bodiless.id).envelope
    assert bodiless_now.last_error == BODY_MISSING
    stored = Envelope.from_json((root / "failed" / f"{bodiless.id}.json").read_bytes())
    assert stored == bodiless_now
    assert "has no body" in caplog.text

    report = spool.recovery_report
    assert report.messages == 7
    assert report.tmp_files_removed == 3
    assert report.claims_returned == 2  # claimed + release_half_done (its .json in processing)
    assert report.split_pairs_repaired == 3
    assert report.orphan_bodies_set_aside == 3
    assert "orphan bodies set aside 3," in report.summary()
    assert report.bodiless_envelopes_failed == 1

    # A second start finds nothing to repair and the same messages; the set-aside bodies
    # stay where they are.
    again = await Spool.open(root)
    assert not again.recovery_report.repaired_anything
    assert {e.id: e.state for e in again.entries()} == expected
    assert len(list((root / "orphaned").iterdir())) == 3


async def test_corrupt_envelope_is_left_for_an_operator(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "spool"
    good = write_pair(root, INCOMING)
    broken = write_pair(root, INCOMING)
    (root / "incoming" / f"{broken.id}.json").write_bytes(b'{"v": 1, "id": tru')
    foreign = write_pair(root, FAILED)  # an envelope copied under another id's name
    other = write_pair(root, INCOMING, with_eml=False, with_json=False)
    (root / "failed" / f"{foreign.id}.json").rename(root / "failed" / f"{other.id}.json")
    (root / "failed" / f"{foreign.id}.eml").rename(root / "failed" / f"{other.id}.eml")
    (root / "incoming" / "README").write_text("not mine")

    with caplog.at_level(logging.WARNING, logger="dispatch.spool"):
        spool = await Spool.open(root)

    assert [e.id for e in spool.entries()] == [good.id]
    assert len(spool.recovery_report.corrupt_envelopes) == 2
    assert spool.recovery_report.unknown_files == [root / "incoming" / "README"]
    assert (root / "incoming" / f"{broken.id}.eml").exists()  # nothing deleted
    assert (root / "incoming" / "README").exists()
    assert "not valid JSON" in caplog.text
    assert f"envelope is for {foreign.id}" in caplog.text


async def test_envelope_in_two_states_keeps_one(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    envelope = write_pair(root, FAILED)
    (root / "incoming" / f"{envelope.id}.json").write_bytes(envelope.to_json())
    spool = await Spool.open(root)
    assert placed(root) == {envelope.id: FAILED}
    assert spool.recovery_report.duplicate_envelopes_removed == 1


async def test_bodiless_claim_goes_to_failed_not_incoming(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    envelope = write_pair(root, PROCESSING, with_eml=False)
    spool = await Spool.open(root)
    assert spool.get(envelope.id).state is FAILED
    assert disk_state(root) == {envelope.id: ({FAILED}, set())}
    with pytest.raises(SpoolWriteError, match="could not retry"):
        await spool.retry_failed(envelope.id)
    await spool.delete(envelope.id)  # what an operator does with it
    assert disk_state(root) == {}
    assert spool.counts().total == 0


async def test_committed_messages_survive_reopening_with_their_bytes(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool")
    bodies = {(await commit(spool, b"body %d" % i)).id: b"body %d" % i for i in range(20)}
    for message_id in list(bodies)[:5]:
        await spool.claim(message_id)
    del spool  # the process dies: nothing to close
    reopened = await Spool.open(tmp_path / "spool")
    assert reopened.counts().incoming == 20
    assert reopened.recovery_report.claims_returned == 5
    for message_id, body in bodies.items():
        assert reopened.message_path(message_id).read_bytes() == body
