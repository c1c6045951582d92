"""The webhook outbox: every call owed to a receiver, durable on local disk.

File format
-----------
``<data_dir>/webhooks/outbox.jsonl`` holds one JSON object per line, only ever appended:

- ``{"op": "add", "call": "<id>", "event_id": …, "url": …, "event": …, "message_id": …,
  "created": <Unix time of the event>, "body": "<the request body>"}`` — a call owed to one
  receiver for one event (an event heard by two receivers is two calls);
- ``{"op": "done", "call": "<id>", "result": "sent" | "gave up" | "dropped"}`` — that call
  is settled.

What is owed is every ``add`` without its ``done``. The file is emptied (truncated) whenever
nothing is owed, and rewritten with only the owed calls (a temporary file, fsynced, renamed
over it, the directory fsynced) when settled lines make up most of it, and at start-up.

Durability
----------
:meth:`Outbox.add` runs on the delivery path, so it does one thing: a single ``write(2)`` of
the new lines to the open file, into the kernel's page cache. From then on the calls survive
the process being killed (SIGKILL, OOM); :meth:`Outbox.sync` (the sender, in a worker thread,
before it posts them) makes them survive a power cut too. A write that fails (a full disk)
keeps the lines in memory and is tried again by :meth:`Outbox.flush`; the calls are still
made meanwhile, they only lack the disk copy.

A crash in the middle of a write leaves a torn last line: the next write starts with a
newline so the torn line stays alone, and :func:`read_owed` skips lines that are not valid
(and counts them). A ``done`` lost the same way only means the call is made again: receivers
get every event *at least once* and drop duplicates by its ``id``.

Threads: :meth:`add`, :meth:`done`, :meth:`begin_compaction`, :meth:`end_compaction` run on
the Trio thread (they are short and never wait); :meth:`sync`, :func:`read_owed` and
:func:`write_compacted` block and run in worker threads, one at a time (the sender's loop).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import attrs

from dispatch.durable import fsync_directory, write_all

log = logging.getLogger("dispatch.webhooks")

OUTBOX_NAME: Final = "outbox.jsonl"
_MODE: Final = 0o600
_DIRECTORY_MODE: Final = 0o700
COMPACT_AFTER_SETTLED: Final = 5000
"""Settled lines that make a rewrite worth it (when they also outnumber the owed ones): a few
MiB at most, so a long outage of one receiver never grows the file without bound."""


def new_call_id() -> str:
    return uuid.uuid4().hex


@attrs.define(kw_only=True)
class OwedCall:
    """A call owed to one receiver for one event. ``body`` is sent as it is at every attempt;
    ``created`` (the event's Unix time) starts the give-up clock. ``attempts`` and
    ``next_at`` (Unix time it is due) live in memory only: after a restart every owed call
    is due at once."""

    call_id: str
    event_id: str
    url: str
    event: str
    message_id: str | None
    created: float
    body: bytes
    attempts: int = 0
    next_at: float = 0.0
    in_flight: bool = False

    def line(self) -> bytes:
        document = {
            "op": "add",
            "call": self.call_id,
            "event_id": self.event_id,
            "url": self.url,
            "event": self.event,
            "message_id": self.message_id,
            "created": self.created,
            "body": self.body.decode("utf-8"),
        }
        return json.dumps(document, separators=(",", ":")).encode("ascii") + b"\n"


def done_line(call_id: str, result: str) -> bytes:
    return json.dumps({"op": "done", "call": call_id, "result": result}).encode("ascii") + b"\n"


@attrs.frozen
class OutboxContents:
    """What :func:`read_owed` found: the owed calls in file order, and the line counts."""

    owed: dict[str, OwedCall]
    lines: int
    skipped: int  # torn by a crash or not ours


def _owed_from(document: dict[str, Any]) -> OwedCall:
    return OwedCall(
        call_id=str(document["call"]),
        event_id=str(document["event_id"]),
        url=str(document["url"]),
        event=str(document["event"]),
        message_id=None if document["message_id"] is None else str(document["message_id"]),
        created=float(document["created"]),
        body=str(document["body"]).encode("utf-8"),
    )


def read_owed(path: Path) -> OutboxContents:
    """Every call ``path`` holds without its ``done`` (blocking; a missing file is empty)."""
    owed: dict[str, OwedCall] = {}
    lines = skipped = 0
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return OutboxContents({}, 0, 0)
    with file:
        for raw in file:
            if not raw.strip():
                continue
            lines += 1
            try:
                document = json.loads(raw)
                if document["op"] == "add":
                    call = _owed_from(document)
                    owed[call.call_id] = call
                elif document["op"] == "done":
                    owed.pop(str(document["call"]), None)
                else:
                    raise ValueError(f"unknown op {document['op']!r}")
            except (ValueError, KeyError, TypeError) as exc:
                skipped += 1
                log.warning("%s: skipping a line that is not an outbox entry (%r)", path, exc)
    return OutboxContents(owed, lines, skipped)


def write_compacted(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically and durably (blocking)."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _MODE)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fsync_directory(path.parent)


class Outbox:
    """The owed calls in memory (:attr:`owed`, oldest first) and the file that keeps them.

    Owns the file and its descriptor (opened at the first write, closed by :meth:`close`).
    """

    def __init__(self, directory: Path) -> None:
        self.path: Final = directory / OUTBOX_NAME
        self.owed: dict[str, OwedCall] = {}
        self.loaded = False
        self.write_errors = 0
        self.last_error: str | None = None
        self._fd: int | None = None
        self._dirty = False  # written since the last fsync
        self._torn = False  # a failed write may have left part of a line
        self._compacting = False
        self._held: list[bytes] = []  # lines for the file: waiting for a compaction, or failed
        self._held_lines = 0
        self._lines = 0  # lines in the file
        self._settled = 0  # "done" lines, and "add" lines they settle

    # -- the Trio thread ------------------------------------------------------------------

    def merge(self, contents: OutboxContents) -> None:
        """Take the calls read at start-up (calls added meanwhile stay, and stay first)."""
        for call_id, call in contents.owed.items():
            self.owed.setdefault(call_id, call)
        self._lines += contents.lines
        self._settled += contents.lines - len(contents.owed)
        self.loaded = True

    def add(self, calls: Iterable[OwedCall]) -> None:
        """Owe ``calls`` and write them to the file (kept in memory if that fails)."""
        data = []
        for call in calls:
            self.owed[call.call_id] = call
            data.append(call.line())
        self._write(b"".join(data), len(data))

    def done(self, call_id: str, result: str) -> None:
        """Settle a call (``sent``, ``gave up``, ``dropped``); the file is emptied once
        nothing is owed. A line that cannot be written only means the call may be made
        again after a restart."""
        if self.owed.pop(call_id, None) is None:
            return
        if not self.owed and not self._compacting and not self._held and self._truncate():
            return
        self._settled += 2
        self._write(done_line(call_id, result), 1)

    def flush(self) -> bool:
        """Write what a failed write kept in memory; True when nothing waits."""
        if not self._compacting:
            self._write_held()
        return not self._held

    @property
    def dirty(self) -> bool:
        """Whether lines were written since the last :meth:`sync`."""
        return self._dirty

    @property
    def wants_compaction(self) -> bool:
        return self._settled >= COMPACT_AFTER_SETTLED and self._settled > len(self.owed)

    def begin_compaction(self) -> bytes:
        """The file's new contents (the owed calls); writes wait in memory until
        :meth:`end_compaction`."""
        self._compacting = True
        return b"".join(call.line() for call in self.owed.values())

    def end_compaction(self, replaced: bool) -> None:
        """After :func:`write_compacted`: switch to the new file (``replaced``) or keep the
        old one, then write what waited."""
        self._compacting = False
        if replaced:
            self._close_fd()
            self._lines, self._settled, self._torn, self._dirty = len(self.owed), 0, False, False
        self._write_held()

    # -- worker threads -------------------------------------------------------------------

    def sync(self) -> None:
        """fsync what was written (blocking). Raises OSError."""
        fd = self._fd
        if fd is None or not self._dirty:
            return
        self._dirty = False
        try:
            os.fsync(fd)
        except OSError:
            self._dirty = True
            raise

    def close(self) -> None:
        self._close_fd()

    # -- inside ---------------------------------------------------------------------------

    def _write(self, data: bytes, lines: int) -> None:
        if data:
            self._held.append(data)
            self._held_lines += lines
        if not self._compacting:
            self._write_held()

    def _write_held(self) -> None:
        """One write(2) of every waiting line, in order; on failure they keep waiting (a
        part written before the failure is written again: duplicates are harmless)."""
        if not self._held:
            return
        data = b"".join(self._held)
        try:
            fd = self._open()
            write_all(fd, b"\n" + data if self._torn else data)
        except OSError as exc:
            self._torn = True
            self.write_errors += 1
            self.last_error = f"cannot write {self.path}: {exc.strerror or exc}"
            log.error("%s; the calls are kept in memory and written later", self.last_error)
            return
        self._held.clear()
        self._lines += self._held_lines
        self._held_lines = 0
        self._torn = False
        self._dirty = True

    def _truncate(self) -> bool:
        try:
            os.ftruncate(self._open(), 0)
        except OSError as exc:
            self.write_errors += 1
            self.last_error = f"cannot empty {self.path}: {exc.strerror or exc}"
            log.error("%s", self.last_error)
            return False
        self._lines = self._settled = 0
        self._torn = False
        self._dirty = True
        return True

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(mode=_DIRECTORY_MODE, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _MODE)
            size = os.fstat(fd).st_size
            self._torn = bool(size) and os.pread(fd, 1, size - 1) != b"\n"
            self._fd = fd
        return self._fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
