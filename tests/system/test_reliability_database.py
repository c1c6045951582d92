"""Scenario 4, the database fails under traffic: removed, locked, then read-only.

SMTP and API senders keep pushing mail, delivered to an upstream, while the SQLite database
is (A) deleted with its WAL and shared-memory files, (B) write-locked by another process for
a few seconds, and (C) made read-only. What must hold:

- intake and delivery never notice: no refusal, acknowledgements and deliveries in every
  phase (the database is never on the acceptance or delivery path, SPEC §5);
- ``/health`` always answers within its deadline and reports the locked and read-only
  database (``degraded``, ``database.reachable: false``);
- afterwards the log catches up from its journal: every acknowledged message has exactly one
  ``received`` row and exactly one ``delivered`` row.

Making a database read-only under a running writer: Linux refuses to remount a file system
read-only while a process holds a file open for writing on it, and permission bits do not stop
root. So the database path goes through a symlink; under an exclusive lock (no row in flight)
the database is copied and the symlink switched to a read-only bind mount of the copy. The
daemon notices the different file, reopens it and meets SQLITE_READONLY on every write, exactly
as after a read-only remount. Remounting the view read-write ends the outage.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.conftest import Daemon
from tests.storage.conftest import mount, unmount
from tests.support.config import Ports, base_config, smtp_relay, write_config
from tests.support.sink import Sink
from tests.support.waiting import wait_until
from tests.system.faults import (
    UNLIMITED_API,
    Ops,
    Senders,
    assert_spool_whole,
    create_api_key,
    log_rows,
    metric,
    report,
    sample,
    spool_busy,
)

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]

OUTAGE_SECONDS = 4.0
HEALTH_DEADLINE = 2.0


@attrs.frozen
class HealthSample:
    at: float
    took: float
    status: str
    reachable: bool


class HealthWatch:
    """Probes /health every 0.25 s in a thread; keeps every answer and how long it took."""

    def __init__(self, ops: Ops) -> None:
        self.ops = ops
        self.samples: list[HealthSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            _, body = self.ops.health()
            took = time.monotonic() - started
            reachable = bool(body["database"]["reachable"])
            self.samples.append(HealthSample(started, took, body["status"], reachable))
            self._stop.wait(0.25)

    def between(self, start: float, end: float) -> list[HealthSample]:
        return [s for s in self.samples if start <= s.at <= end]


@pytest.fixture
def database_dirs(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(first, copy, view): the database's two homes and the read-only view of the copy."""
    first, copy, view = tmp_path / "db-first", tmp_path / "db-copy", tmp_path / "db-view"
    for directory in (first, copy, view):
        directory.mkdir(mode=0o700)
    mount("--bind", str(copy), str(view))
    try:
        yield first, copy, view
    finally:
        unmount(view)


def switch_symlink(link: Path, target: Path) -> None:
    staging = link.with_name(link.name + ".new")
    staging.symlink_to(target)
    os.replace(staging, link)


def test_database_outages_stop_neither_intake_nor_delivery(
    start_daemon: Start, tmp_path: Path, database_dirs: tuple[Path, Path, Path]
) -> None:
    first, copy, view = database_dirs
    link = tmp_path / "db"
    link.symlink_to(first)
    db = link / "dispatch.db"
    sink = Sink(pipelining=False)
    ports = Ports.pick()
    config = base_config(
        tmp_path,
        ports,
        database={"url": f"sqlite:///{db}"},
        default_relay="upstream",
        relays=[smtp_relay("upstream", sink.port)],
        health={"timeout_seconds": HEALTH_DEADLINE},
        api=UNLIMITED_API,
    )
    text = write_config(tmp_path / "dispatch.toml", config)
    api_key = create_api_key(tmp_path / "dispatch.toml")
    daemon = start_daemon(text)
    daemon.wait_for("all components ready")
    ops = Ops(ports.webui, tmp_path / "data")
    journal = tmp_path / "data" / "message-log.journal"
    phases: dict[str, tuple[float, float]] = {}

    def caught_up() -> None:
        """The database is written again and the journal replayed into it."""
        wait_until(
            lambda: (
                metric(ops.metrics(), "dispatch_database_reachable") == 1 and not journal.exists()
            ),
            within=30,
            what="the log to catch up",
        )

    try:
        with Senders(ports, api_key, pause=0.02) as senders, HealthWatch(ops) as health:
            time.sleep(1)

            began = time.monotonic()  # (A) deleted, with its WAL and shared memory
            for suffix in ("", "-wal", "-shm"):
                (first / f"dispatch.db{suffix}").unlink(missing_ok=True)
            time.sleep(OUTAGE_SECONDS)
            phases["removed"] = (began, time.monotonic())
            caught_up()

            began = time.monotonic()  # (B) write-locked by another process
            blocker = sqlite3.connect(db, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")
            time.sleep(OUTAGE_SECONDS)
            blocker.execute("ROLLBACK")
            phases["locked"] = (began, time.monotonic())
            caught_up()

            began = time.monotonic()  # (C) read-only (see the module docstring)
            blocker.execute("BEGIN EXCLUSIVE")  # in WAL mode: no writer, readers welcome
            reader, target = sqlite3.connect(db), sqlite3.connect(copy / "dispatch.db")
            reader.backup(target)
            reader.close()
            target.close()
            mount("-o", "remount,bind,ro", str(view))
            switch_symlink(link, view)
            blocker.execute("ROLLBACK")
            blocker.close()
            time.sleep(OUTAGE_SECONDS)
            mount("-o", "remount,bind,rw", str(view))
            phases["read-only"] = (began, time.monotonic())
            caught_up()
        wait_until(lambda: spool_busy(tmp_path / "spool") == 0, what="the spool to drain")
        caught_up()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0, daemon.log
    finally:
        sink.stop()
    assert_spool_whole(tmp_path / "spool")
    assert not journal.exists()
    outages = [line for line in daemon.lines if "database unreachable" in line]
    assert len(outages) == 2, outages  # a deleted database is restored without an outage
    assert "database is locked" in outages[0]
    assert "is read-only" in outages[1]

    # Intake and delivery went on in every phase.
    assert not senders.figures.refused, senders.figures.refused
    acks = list(senders.acks.values())
    deliveries = [d.at for d in sink.deliveries]
    per_phase: dict[str, dict[str, Any]] = {}
    for name, (start, end) in phases.items():
        samples = health.between(start, end)
        per_phase[name] = {
            "acknowledged": sum(start <= a.at <= end for a in acks),
            "deliveries": sum(start <= t <= end for t in deliveries),
            "health": dict(Counter(s.status for s in samples)),
            "slowest health answer (s)": round(max(s.took for s in samples), 2),
        }
        assert per_phase[name]["acknowledged"] > 10, (name, per_phase[name])
        assert per_phase[name]["deliveries"] > 10, (name, per_phase[name])
        if name != "removed":  # a deleted database is copied back within one write
            assert any(s.status == "degraded" and not s.reachable for s in samples), samples
    assert max(s.took for s in health.samples) < HEALTH_DEADLINE + 0.5
    assert health.samples[-1].status == "healthy"

    # The log caught up: exactly one received and one delivered row per acknowledged message.
    rows = log_rows(copy / "dispatch.db")
    received = Counter(r.message_id for r in rows if r.event == "received")
    delivered = Counter(r.message_id for r in rows if r.event == "delivered")
    acked_ids = {a.message_id for a in acks}
    assert set(received) == acked_ids, sample(set(received) ^ acked_ids)
    assert set(delivered) == acked_ids, sample(set(delivered) ^ acked_ids)
    doubled = [i for i, n in (received + delivered).items() if n != 2]
    assert not doubled, f"rows not exactly once: {sample(doubled)}"
    report(
        "database outages",
        {
            "acknowledged": dict(senders.figures.acknowledged),
            "log rows": len(rows),
            "health probes": len(health.samples),
            "phases": per_phase,
        },
    )
