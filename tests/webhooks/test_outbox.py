"""The outbox file: what it owes after a restart, torn lines, emptying and rewriting."""

from __future__ import annotations

from pathlib import Path

from dispatch.webhooks import outbox as outbox_module
from dispatch.webhooks.outbox import Outbox, OwedCall, new_call_id, read_owed, write_compacted
from tests.conftest import fill


def owed(n: int, url: str = "http://127.0.0.1:9/hooks") -> OwedCall:
    return OwedCall(
        call_id=new_call_id(),
        event_id=f"event{n}",
        url=url,
        event="delivered",
        message_id=f"spl_{n}",
        created=1_700_000_000.0 + n,
        body=f'{{"id":"event{n}","to":"ü{n}@example.org"}}'.encode(),
    )


def reopened(path: Path) -> Outbox:
    """What a new process finds: a fresh outbox that read the file."""
    fresh = Outbox(path.parent)
    fresh.merge(read_owed(path))
    return fresh


def test_owed_calls_survive_a_restart_and_settled_ones_do_not(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    calls = [owed(n) for n in range(5)]
    box.add(calls[:3])
    box.add(calls[3:])
    box.done(calls[1].call_id, "sent")
    box.done(calls[3].call_id, "gave up")
    box.sync()
    again = reopened(box.path)
    assert [c.event_id for c in again.owed.values()] == ["event0", "event2", "event4"]
    assert again.owed[calls[2].call_id].body == calls[2].body  # non-ASCII kept exactly
    assert again.owed[calls[2].call_id].created == calls[2].created
    box.close()


def test_the_file_is_emptied_when_nothing_is_owed(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    calls = [owed(n) for n in range(3)]
    box.add(calls)
    for call in calls:
        box.done(call.call_id, "sent")
    assert box.path.read_bytes() == b""
    box.add([owed(9)])  # appends after the truncation start at 0
    assert reopened(box.path).owed.keys() == box.owed.keys()
    box.close()


def test_a_torn_last_line_is_skipped_and_the_next_write_starts_a_new_line(
    tmp_path: Path,
) -> None:
    box = Outbox(tmp_path)
    kept = owed(1)
    box.add([kept])
    box.close()
    with box.path.open("ab") as file:  # a crash in the middle of a write
        file.write(owed(2).line()[:40])
    contents = read_owed(box.path)
    assert list(contents.owed) == [kept.call_id]
    assert contents.skipped == 1
    after = Outbox(tmp_path)
    after.merge(contents)
    later = owed(3)
    after.add([later])
    assert list(reopened(box.path).owed) == [kept.call_id, later.call_id]
    after.close()


def test_a_rewrite_keeps_only_what_is_owed_and_writes_made_meanwhile(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    calls = [owed(n) for n in range(10)]
    box.add(calls)
    for call in calls[:8]:
        box.done(call.call_id, "sent")
    data = box.begin_compaction()
    during = owed(99)
    box.add([during])  # waits in memory while the new file is written
    box.done(calls[8].call_id, "sent")
    write_compacted(box.path, data)
    box.end_compaction(replaced=True)
    assert list(reopened(box.path).owed) == [calls[9].call_id, during.call_id]
    assert box.path.read_bytes().count(b'"op": "done"') == 1
    assert not box.path.with_name(box.path.name + ".tmp").exists()
    box.close()


def test_a_full_disk_keeps_the_calls_in_memory_and_they_are_written_later(
    small_fs: Path,
) -> None:
    box = Outbox(small_fs)
    first = owed(1)
    box.add([first])
    filler = small_fs / "filler"
    fill(filler, leave_pages=0)
    more = [owed(n) for n in range(2, 50)]  # past the file's first page: a new one is needed
    box.add(more)  # never raises: delivery goes on
    assert box.write_errors == 1
    assert "No space left on device" in (box.last_error or "")
    assert more[0].call_id in box.owed  # still owed (and called) meanwhile
    assert not box.flush()
    filler.unlink()
    assert box.flush()
    assert list(reopened(box.path).owed) == [first.call_id, *(c.call_id for c in more)]
    box.close()


def test_settled_lines_ask_for_a_rewrite_once_they_dominate(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    keep = owed(0)
    box.add([keep])
    for n in range(1, outbox_module.COMPACT_AFTER_SETTLED // 2 + 1):
        call = owed(n)
        box.add([call])
        box.done(call.call_id, "sent")
    assert box.wants_compaction
    write_compacted(box.path, box.begin_compaction())
    box.end_compaction(replaced=True)
    assert not box.wants_compaction
    assert box.path.read_bytes() == keep.line()
    box.close()
