"""The log journal: records the database could not take yet, durable on local disk.

File format
-----------
``<data_dir>/message-log.journal`` holds one JSON object per line (see
``events.to_journal``): ``{"type": "message", "event_id": "…", "message_id": …}`` or
``{"type": "audit", …}``. Lines are only ever appended, a batch at a time, each batch
flushed and fsynced before the records leave the writer's memory; the file is removed (and
its directory fsynced) once every line is in the database. The file exists exactly while
some record may be missing from the database.

Replay reads the file from an offset in chunks. Because every record carries its
``event_id`` and the database ignores an ``event_id`` it already has, a chunk replayed twice
— a crash after the database committed it but before the file was removed — adds nothing.

A crash in the middle of an append leaves a torn last line. The next append starts with a
newline if the file does not end with one, so the torn line stays alone; replay skips lines
that are not valid records (and counts them) rather than stopping there.

Everything here blocks: call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import attrs

from dispatch.durable import fsync_directory, write_all
from dispatch.storage.records import LogRecord, from_journal, to_journal

log = logging.getLogger("dispatch.storage")

JOURNAL_NAME: Final = "message-log.journal"
_MODE: Final = 0o600
_DIRECTORY_MODE: Final = 0o700


@attrs.frozen
class JournalChunk:
    """Records read from the journal, and where the next read starts."""

    records: tuple[LogRecord, ...]
    next_offset: int
    skipped: int  # lines that were not valid records (torn by a crash, or hand-edited)
    at_end: bool


class Journal:
    """The journal file of one data directory. Owns nothing open between calls."""

    def __init__(self, path: Path) -> None:
        self.path: Final = path

    def append(self, records: Sequence[LogRecord]) -> None:
        """Append ``records`` as lines and fsync them; on failure the file is as before.

        Raises :class:`OSError` (e.g. ENOSPC) when the records could not be made durable.
        """
        data = b"".join(to_journal(record) for record in records)
        self.path.parent.mkdir(mode=_DIRECTORY_MODE, parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _MODE)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # keep a torn line from a crash on a line of its own
            try:
                write_all(fd, data)
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                if created:
                    self.path.unlink(missing_ok=True)
                raise
        finally:
            os.close(fd)
        if created:
            fsync_directory(self.path.parent)

    def read(self, offset: int, max_records: int) -> JournalChunk:
        """Read up to ``max_records`` records starting at byte ``offset``."""
        records: list[LogRecord] = []
        skipped = 0
        try:
            file = self.path.open("rb")
        except FileNotFoundError:
            return JournalChunk((), offset, 0, at_end=True)
        with file:
            file.seek(offset)
            while True:
                if len(records) >= max_records:
                    position = file.tell()
                    at_end = not file.read(1)
                    return JournalChunk(tuple(records), position, skipped, at_end)
                line = file.readline()
                if not line:
                    return JournalChunk(tuple(records), file.tell(), skipped, at_end=True)
                if not line.strip():
                    continue
                try:
                    records.append(from_journal(line))
                except ValueError as exc:
                    skipped += 1
                    log.warning("%s: skipping a line that is not a log record (%s)", self.path, exc)

    def count(self) -> int:
        """Lines in the journal (records waiting for the database); 0 if there is none."""
        try:
            with self.path.open("rb") as file:
                return sum(1 for line in file if line.strip())
        except FileNotFoundError:
            return 0

    def remove(self) -> None:
        """Delete the journal once everything in it is in the database."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        fsync_directory(self.path.parent)
