"""Retention in the real daemon: a ``python -m dispatch`` subprocess purges at start.

Before the daemon starts, the test leaves old and young things where the daemon will find
them: log and audit rows written through the store's API with an ``at`` 8 days back, a failed
message and a captured copy made by the spool's own operations and dated 8 days back with
``os.utime``. With the default keys (7 days) the run at start removes the old ones, keeps the
young ones, logs one line, and shows in ``/metrics`` and ``/debug/vars`` of the monitoring
server.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import Daemon, free_port
from tests.retention.conftest import world
from tests.support.config import base_config, write_config
from tests.system.faults import metric

pytestmark = pytest.mark.slow


async def test_the_run_at_start_removes_old_rows_and_files(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    async with world(tmp_path) as w:
        await w.rows(days_ago=8, tag="old")
        await w.rows(days_ago=6, tag="young")
        old_captured = await w.captured_message(days_ago=8)
        young_captured = await w.captured_message(days_ago=6)
        old_failed = await w.failed_message(days_ago=8)
        young_failed = await w.failed_message(days_ago=6)
    monitoring = free_port()
    config = base_config(tmp_path, monitoring={"address": f"127.0.0.1:{monitoring}"})
    daemon = start_daemon(write_config(tmp_path / "dispatch.toml", config))

    line = await trio.to_thread.run_sync(daemon.wait_for, "retention run removed")
    for removed in ("delivered_log=1", "failed_log=1", "received_log=1", "audit_log=1"):
        assert removed in line, line
    assert "failed_spool=1 captured=1 in " in line, line
    await trio.to_thread.run_sync(daemon.wait_for, "all components ready")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{monitoring}", timeout=30) as client:
        scraped = (await client.get("/metrics")).text
        debug_vars = (await client.get("/debug/vars")).json()
    daemon.signal(signal.SIGTERM)
    assert await trio.to_thread.run_sync(daemon.wait_exit) == 0

    assert w.captured_ids() == {young_captured}
    assert old_captured not in w.captured_ids()
    assert w.failed_ids() == {young_failed.id}
    assert old_failed.id not in w.failed_ids()
    left = w.log_rows()
    assert not {row for row in left if row.startswith(("old-", "audit:old"))}
    assert {f"young-{e}" for e in ("received", "delivered", "failed")} <= left
    assert "audit:young" in left

    removed = "dispatch_retention_removed_total"
    assert metric(scraped, removed, kind="captured") == 1
    assert metric(scraped, removed, kind="failed_spool") == 1
    assert metric(scraped, removed, kind="delivered_log") == 1
    assert metric(scraped, "dispatch_retention_runs_total", result="ok") == 1
    assert metric(scraped, "dispatch_retention_last_success_timestamp_seconds") > 1.7e9
    last = debug_vars["dispatch/retention/lastRun"]
    assert last["result"] == "ok"
    assert last["errors"] == []
    assert last["removed"]["captured"] == 1
    assert last["removed"]["audit_log"] == 1
    assert debug_vars["dispatch/retention/removedCount"]["failed_spool"] == 1
    assert debug_vars["dispatch/retention/runCount"] == {"ok": 1}
