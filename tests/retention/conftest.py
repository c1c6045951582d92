"""Helpers for retention tests: a real SQLite store, a real spool, things dated in the past.

Rows are written through the store's own API (``store.log.record`` / ``store.log.audit``) with
an ``at`` in the past; files are made by the spool's own operations (a failed delivery, a
capture by the ``local`` relay) and then dated with ``os.utime``, the only thing a test can set
of a file's times.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs

from dispatch.spool import Envelope, Spool
from dispatch.spool.testing import commit
from dispatch.storage import AuditEntry, MessageEvent, Store, open_store
from dispatch.storage.records import EventKind
from tests.storage.conftest import query, running

DAY = 86_400.0
LOG_EVENTS: tuple[EventKind, ...] = ("received", "delivered", "failed", "retried", "denied")


@attrs.define
class World:
    """A running store and an open spool under one test directory."""

    root: Path
    store: Store
    spool: Spool

    @property
    def db(self) -> Path:
        return self.root / "data" / "dispatch.db"

    @property
    def captured(self) -> Path:
        return self.spool.directory / "captured"

    @property
    def failed(self) -> Path:
        return self.spool.directory / "failed"

    async def rows(self, *, days_ago: float, tag: str) -> None:
        """One row of every message-log event and one audit row, ``days_ago`` old, written."""
        at = time.time() - days_ago * DAY
        for event in LOG_EVENTS:
            self.store.log.record(MessageEvent(message_id=f"{tag}-{event}", event=event, at=at))
        self.store.log.audit(AuditEntry(category="System", level="Info", message=tag, at=at))
        await self.store.log.wait_until_written()

    def log_rows(self) -> set[str]:
        """Message ids left in ``message_log`` (``<tag>-<event>``) plus ``audit:<tag>`` rows."""
        messages = {row[0] for row in query(self.db, "SELECT message_id FROM message_log")}
        audit = {f"audit:{row[0]}" for row in query(self.db, "SELECT message FROM audit_log")}
        return messages | audit

    async def failed_message(self, *, days_ago: float) -> Envelope:
        """A message delivery gave up on, its envelope last written ``days_ago`` days ago."""
        envelope = await commit(self.spool)
        await self.spool.claim(envelope.id)
        final = envelope.after_attempt(next_attempt_at=0.0, error="550 5.1.1 no such user")
        await self.spool.mark_failed(final)
        date(self.failed / f"{envelope.id}.json", days_ago=days_ago)
        date(self.failed / f"{envelope.id}.eml", days_ago=days_ago)
        return final

    async def captured_message(self, *, days_ago: float) -> str:
        """A message the ``local`` relay captured ``days_ago`` days ago (then delivered)."""
        envelope = await commit(self.spool)
        await self.spool.claim(envelope.id)
        await self.spool.capture(envelope.id)
        await self.spool.remove(envelope.id)
        date(self.captured / f"{envelope.id}.json", days_ago=days_ago)
        date(self.captured / f"{envelope.id}.eml", days_ago=days_ago)
        return envelope.id

    def captured_ids(self) -> set[str]:
        return {path.stem for path in self.captured.iterdir()}

    def failed_ids(self) -> set[str]:
        return {path.stem for path in self.failed.iterdir()}


def date(path: Path, *, days_ago: float) -> None:
    """Set ``path``'s access and modification times to ``days_ago`` days before now."""
    at = time.time() - days_ago * DAY
    os.utime(path, (at, at))


@asynccontextmanager
async def world(root: Path) -> AsyncIterator[World]:
    """A store running as the supervisor runs it, and a spool, under ``root``."""
    store = open_store(f"sqlite:///{root / 'data' / 'dispatch.db'}", root / "data")
    spool = await Spool.open(root / "spool")
    async with running(store):
        yield World(root, store, spool)
