"""The journal: what a crash leaves behind is replayed once, and replaying it again adds nothing."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import trio

from dispatch.storage import AuditEntry, MessageEvent
from dispatch.storage.journal import Journal
from tests.conftest import fill
from tests.storage.conftest import (
    DbRef,
    Outage,
    assert_exactly_once,
    make_store,
    received,
    row_count,
    running,
)
from tests.support.waiting import wait_until_async


async def test_crash_leaves_a_journal_that_is_replayed_once_even_twice(
    tmp_path: Path, outage: Outage
) -> None:
    data = tmp_path / "data"
    events = [received(i) for i in range(1200)]  # more than one replay chunk
    audit = AuditEntry(category="System", level="Warning", message="database down")

    crashed = make_store(outage.db, data)
    async with trio.open_nursery() as nursery:
        await nursery.start(crashed.run, _NeverStop())
        for event in events:
            crashed.log.record(event)
        crashed.log.audit(audit)
        await wait_until_async(lambda: crashed.log.journaled_total == 1201)
        nursery.cancel_scope.cancel()  # the "crash": no stop request, no flush
    crashed.log.record(received(9999))  # queued after the crash: never written anywhere
    journal = crashed.log.journal_path
    saved = tmp_path / "journal.copy"
    shutil.copy(journal, saved)

    outage.end()
    db = outage.db
    for attempt in range(2):  # the second time: a crash after the replay, before the delete
        if attempt:
            shutil.copy(saved, journal)
        restarted = make_store(db, data)
        async with running(restarted):
            assert restarted.log.pending == 1201
            with trio.fail_after(10):
                await restarted.log.wait_until_written()
        assert not journal.exists()
        assert restarted.log.written_total == (1201 if attempt == 0 else 0)
        assert_exactly_once(db, events)
        assert row_count(db, "audit_log") == 1


async def test_cancelled_writer_journals_what_it_still_held(db: DbRef, tmp_path: Path) -> None:
    events = [received(i) for i in range(3000)]
    store = make_store(db, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run, _NeverStop())
        for event in events:
            store.log.record(event)
        nursery.cancel_scope.cancel()  # before the writer could take anything
    assert store.log.pending == 3000
    assert len(store.log.journal_path.read_bytes().splitlines()) == 3000

    restarted = make_store(db, tmp_path)
    async with running(restarted):
        await restarted.log.wait_until_written()
    assert_exactly_once(db, events)


def test_journal_lines_chunks_and_a_torn_line(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "data" / "message-log.journal")
    first = [received(i) for i in range(3)]
    entry = AuditEntry(category="Config", level="Info", message="reloaded")
    journal.append(first)
    with journal.path.open("ab") as file:  # a crash in the middle of an append
        file.write(b'{"type":"message","event_id":"abc","mess')
    journal.append([entry])
    lines = journal.path.read_bytes().splitlines()
    assert len(lines) == 5
    assert json.loads(lines[0])["type"] == "message"
    assert json.loads(lines[4]) == {
        "type": "audit",
        "category": "Config",
        "level": "Info",
        "message": "reloaded",
        "actor": None,
        "at": entry.at,
        "event_id": entry.event_id,
    }
    assert journal.count() == 5

    read: list[MessageEvent | AuditEntry] = []
    offset, skipped = 0, 0
    for _ in range(10):
        chunk = journal.read(offset, 2)
        read.extend(chunk.records)
        offset, skipped = chunk.next_offset, skipped + chunk.skipped
        if chunk.at_end:
            break
    assert read == [*first, entry]
    assert skipped == 1
    assert journal.read(offset, 2).records == ()

    journal.remove()
    assert not journal.path.exists()
    assert journal.count() == 0
    assert journal.read(0, 10).at_end


def test_a_line_with_a_field_of_the_wrong_type_is_skipped(tmp_path: Path) -> None:
    """A record whose text field holds a number is not a record: skipped like a torn line."""
    journal = Journal(tmp_path / "data" / "message-log.journal")
    before, after = received(0), received(1)
    journal.append([before])
    with journal.path.open("ab") as file:
        file.write(b'{"type":"message","message_id":5,"event":"received"}\n')
        file.write(b'{"type":"audit","category":"Config","level":"Info","message":7}\n')
    journal.append([after])
    chunk = journal.read(0, 10)
    assert chunk.records == (before, after)
    assert chunk.skipped == 2


def test_failed_append_leaves_the_journal_as_it_was(tmpfs: Path) -> None:
    journal = Journal(tmpfs / "message-log.journal")
    journal.append([received(0)])
    before = journal.path.read_bytes()
    fill(tmpfs / "filler", leave_pages=0)
    with pytest.raises(OSError, match="No space left") as full:
        journal.append([received(i, subject="x" * 900) for i in range(1, 200)])
    assert full.value.errno == errno.ENOSPC
    assert journal.path.read_bytes() == before


def test_nothing_is_left_behind_when_the_first_append_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    journal = Journal(blocker / "message-log.journal")
    with pytest.raises(OSError, match=r"File exists|Not a directory"):
        journal.append([received(0)])


class _NeverStop:
    """A stop request that never comes: the tests end these writers by cancelling them."""

    def __init__(self) -> None:
        self.requested = trio.Event()
