"""The retention component against a real SQLite store and a real spool (SPEC §2, §7).

Rows and files are dated in the past; a run removes those older than their key, keeps the
younger ones, keeps everything of a kind whose key is ``0``, follows a reload at its next run
and survives a database that is down.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import pytest
import trio

from dispatch.config.live import LiveSettings
from dispatch.config.loader import load_settings
from dispatch.config.settings import RetentionSettings
from dispatch.config.types import NonNegativeInt
from dispatch.lifecycle import Shutdown
from dispatch.monitoring.stats import RETENTION_KINDS, Stats
from dispatch.retention import Retention, ages
from dispatch.spool.sweep import SpoolSweeper
from tests.retention.conftest import LOG_EVENTS, World, world
from tests.support.waiting import wait_until_async


def retention(w: World, settings: RetentionSettings, stats: Stats | None = None) -> Retention:
    return Retention(lambda: settings, w.store, SpoolSweeper(w.spool), stats or Stats())


def keys(**days: int) -> RetentionSettings:
    return RetentionSettings(**{key: NonNegativeInt(value) for key, value in days.items()})


def every(tag: str) -> set[str]:
    """The ids :meth:`World.log_rows` shows for the rows :meth:`World.rows` wrote."""
    return {f"{tag}-{event}" for event in LOG_EVENTS} | {f"audit:{tag}"}


async def test_each_kind_goes_when_older_than_its_key_and_stays_when_younger(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        await w.rows(days_ago=8, tag="old")
        await w.rows(days_ago=6, tag="young")
        old_failed = await w.failed_message(days_ago=8)
        young_failed = await w.failed_message(days_ago=6)
        old_captured = await w.captured_message(days_ago=8)
        young_captured = await w.captured_message(days_ago=6)
        stats = Stats()
        run = await retention(w, RetentionSettings(), stats).run_once()  # 7 days each

        assert run.ok, run.errors
        assert run.removed == {
            "delivered_log": 1,
            "failed_log": 1,
            "received_log": 1,
            "retried_log": 1,
            "denied_log": 1,
            "audit_log": 1,
            "failed_spool": 1,
            "captured": 1,
        }
        assert w.log_rows() == every("young")
        assert w.failed_ids() == {young_failed.id}
        assert w.captured_ids() == {young_captured}
        assert [e.id for e in w.spool.entries()] == [young_failed.id]  # the index follows
        assert w.spool.counts().failed == 1
        assert old_failed.id not in w.failed_ids()
        assert old_captured not in w.captured_ids()
    assert stats.retention_runs.values == {"ok": 1}
    assert dict(stats.retention_removed.values) == dict.fromkeys(RETENTION_KINDS, 1)
    assert stats.retention_last_run is run
    assert stats.retention_last_success is not None
    assert stats.retention_last_success >= run.started_at


async def test_each_key_governs_only_its_own_kind(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.rows(days_ago=5, tag="five")
        failed = await w.failed_message(days_ago=5)
        await w.captured_message(days_ago=5)
        # Only the audit log and captured mail are kept for less than five days.
        settings = keys(
            delivered_log_days=30,
            failed_log_days=30,
            audit_log_days=3,
            failed_spool_days=30,
            captured_days=3,
        )
        run = await retention(w, settings).run_once()
        assert run.removed["audit_log"] == 1
        assert run.removed["captured"] == 1
        assert sum(run.removed.values()) == 2
        assert w.log_rows() == every("five") - {"audit:five"}
        assert w.failed_ids() == {failed.id}
        assert w.captured_ids() == set()


async def test_received_retried_and_denied_rows_follow_the_longer_outcome_key(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        await w.rows(days_ago=10, tag="ten")
        run = await retention(w, keys(delivered_log_days=3, failed_log_days=20)).run_once()
        # delivered rows go after 3 days; the rest of a message's history stays 20 days,
        # as long as a failed message's log must stay whole.
        assert run.removed["delivered_log"] == 1
        assert w.log_rows() == every("ten") - {"ten-delivered", "audit:ten"}


async def test_zero_keeps_every_kind_forever(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.rows(days_ago=3000, tag="ancient")
        failed = await w.failed_message(days_ago=3000)
        captured = await w.captured_message(days_ago=3000)
        settings = keys(
            delivered_log_days=0,
            failed_log_days=0,
            audit_log_days=0,
            failed_spool_days=0,
            captured_days=0,
        )
        stats = Stats()
        run = await retention(w, settings, stats).run_once()
        assert run.ok
        assert set(run.removed.values()) == {0}
        assert w.log_rows() == every("ancient")
        assert w.failed_ids() == {failed.id}
        assert w.captured_ids() == {captured}
    assert stats.retention_runs.values == {"ok": 1}
    assert stats.retention_removed.values == {}


async def test_zero_for_one_outcome_keeps_the_history_rows_of_both(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.rows(days_ago=100, tag="old")
        run = await retention(w, keys(delivered_log_days=7, failed_log_days=0)).run_once()
        assert run.removed["delivered_log"] == 1
        assert w.log_rows() == every("old") - {"old-delivered", "audit:old"}
    assert ages(keys(delivered_log_days=7, failed_log_days=0))["received_log"] == 0


async def test_a_reload_changes_what_the_next_run_removes(tmp_path: Path) -> None:
    config = tmp_path / "dispatch.toml"
    month = "[retention]\n" + "".join(
        f"{key} = 30\n"
        for key in (
            "delivered_log_days",
            "failed_log_days",
            "failed_spool_days",
            "captured_days",
            "audit_log_days",
        )
    )
    config.write_text(month)
    live = LiveSettings(load_settings(config), config)
    async with world(tmp_path) as w:
        await w.rows(days_ago=10, tag="ten")
        await w.captured_message(days_ago=10)
        await w.failed_message(days_ago=10)
        component = Retention(
            lambda: live.current.retention, w.store, SpoolSweeper(w.spool), Stats()
        )

        first = await component.run_once()
        assert sum(first.removed.values()) == 0
        assert w.log_rows() == every("ten")

        config.write_text(month.replace("captured_days = 30", "captured_days = 7"))
        assert (await live.reload()).applied
        second = await component.run_once()
        assert second.removed["captured"] == 1
        assert sum(second.removed.values()) == 1
        assert w.captured_ids() == set()
        assert w.log_rows() == every("ten")  # still under their 30 days

        config.write_text(month.replace("= 30", "= 7"))
        assert (await live.reload()).applied
        third = await component.run_once()
        assert third.removed["delivered_log"] == third.removed["audit_log"] == 1
        assert third.removed["failed_spool"] == 1
        assert w.log_rows() == set()
        assert w.failed_ids() == set()


async def test_a_run_with_the_database_down_is_logged_and_the_next_run_finishes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dispatch.retention")
    async with world(tmp_path) as w:
        await w.rows(days_ago=8, tag="old")
        await w.captured_message(days_ago=8)
        locked, release, released = threading.Event(), threading.Event(), threading.Event()

        def hold_write_lock() -> None:
            # Held until the test says so: longer than the busy timeout (1 s) of every chunk.
            with sqlite3.connect(w.db, timeout=5, isolation_level=None) as other:
                other.execute("BEGIN EXCLUSIVE")
                locked.set()
                release.wait(30)
                other.execute("COMMIT")
            other.close()
            released.set()

        stats = Stats()
        component = Retention(
            lambda: RetentionSettings(), w.store, SpoolSweeper(w.spool), stats, interval=0.05
        )
        shutdown = Shutdown(grace_seconds=5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, hold_write_lock)
            await trio.to_thread.run_sync(locked.wait)
            await nursery.start(component.run, shutdown)
            await wait_until_async(lambda: stats.retention_runs["failed"] >= 1, within=20)
            failed = stats.retention_last_run
            release.set()
            await trio.to_thread.run_sync(released.wait)
            await wait_until_async(lambda: stats.retention_runs["ok"] >= 1, within=20)
            shutdown.request()
        assert w.log_rows() == set()

    assert failed is not None
    assert not failed.ok
    assert failed.errors[0].startswith("delivered_log: database unavailable")
    assert "locked" in failed.errors[0]
    assert failed.removed["captured"] == 1  # files do not wait for the database
    assert w.captured_ids() == set()
    assert stats.retention_removed["delivered_log"] == 1
    assert stats.retention_removed["audit_log"] == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, caplog.text
    assert "left for the next run" in warnings[0].getMessage()
    assert "database unavailable" in warnings[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)  # an outage is no bug: no traceback


async def test_each_run_is_one_log_line_with_what_it_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dispatch.retention")
    async with world(tmp_path) as w:
        await w.rows(days_ago=8, tag="old")
        await w.captured_message(days_ago=8)
        await retention(w, RetentionSettings()).run_once()
    lines = [r.getMessage() for r in caplog.records if r.name == "dispatch.retention"]
    assert len(lines) == 1
    assert lines[0].startswith("retention run removed delivered_log=1 failed_log=1")
    assert "audit_log=1 failed_spool=0 captured=1 in " in lines[0]


async def test_the_component_runs_at_start_then_every_interval(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        stats = Stats()
        component = Retention(
            lambda: RetentionSettings(), w.store, SpoolSweeper(w.spool), stats, interval=0.05
        )
        shutdown = Shutdown(grace_seconds=5)
        async with trio.open_nursery() as nursery:
            await nursery.start(component.run, shutdown)
            await wait_until_async(lambda: stats.retention_runs["ok"] >= 1)  # at start
            await w.captured_message(days_ago=8)  # something for a later run
            await wait_until_async(lambda: stats.retention_removed["captured"] == 1)
            assert stats.retention_runs["ok"] >= 2
            shutdown.request()
        assert w.captured_ids() == set()


async def test_a_stop_request_ends_the_wait_for_the_next_run(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        stats = Stats()
        component = retention(w, RetentionSettings(), stats)  # the next run is 6 h away
        shutdown = Shutdown(grace_seconds=5)
        with trio.fail_after(30):  # far less than the 6 h it would otherwise sleep
            async with trio.open_nursery() as nursery:
                await nursery.start(component.run, shutdown)
                await wait_until_async(lambda: stats.retention_runs["ok"] == 1)
                shutdown.request()
    assert stats.retention_runs.values == {"ok": 1}
