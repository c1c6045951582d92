"""``/health`` on a shared PostgreSQL database (issue 17, item 3): the real daemon in-process
on a real PostgreSQL 15, httpx over HTTPS, mail in with smtplib.

The database check takes the lock a log write takes on ``message_log`` on a connection of
its own. Wedged two ways (a session holding a conflicting lock; the whole server stopped with
SIGSTOP, by the PIDs the test cluster started), the answer is ``degraded`` inside the
deadline every time, mail is still accepted, and the log catches up once the server is back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio

from tests.delivery.harness import Running
from tests.support.postgres import Cluster
from tests.support.waiting import wait_until_async
from tests.web.test_health import dashboard

DEADLINE = 0.8
MESSAGE = b"Subject: health\r\n\r\nbody\r\n"


@contextmanager
def message_log_locked(url: str) -> Iterator[None]:
    """Another session holds ACCESS EXCLUSIVE on ``message_log`` (as ``VACUUM FULL`` would)."""
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(url) as connection:
            connection.execute("LOCK TABLE message_log IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(60)
            connection.rollback()

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(10)
    try:
        yield
    finally:
        release.set()
        thread.join()


async def answers(client: httpx.AsyncClient, count: int) -> list[tuple[float, dict[str, Any]]]:
    found = []
    for _ in range(count):
        started = time.monotonic()
        response = await client.get("/health")
        found.append((time.monotonic() - started, response.json()))
    return found


def assert_degraded_in_time(found: list[tuple[float, dict[str, Any]]]) -> None:
    for elapsed, body in found:
        assert elapsed < DEADLINE, f"/health took {elapsed:.2f} s, past its {DEADLINE} s deadline"
        assert body["status"] == "degraded", body
        assert body["database"] == {"reachable": False, "latencyMs": None}
        assert body["checks"]["database"]["status"] in ("timeout", "error"), body
        assert body["checks"]["spool"]["status"] == "ok"


async def mail_goes_on(dispatch: Running, number: int) -> str:
    with trio.fail_after(10):  # accepted although the database does not answer
        return await dispatch.submit("app@example.test", [f"rcpt{number}@example.test"], MESSAGE)


async def test_healthy_with_a_latency_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    async with dashboard(tmp_path, database={"url": postgres_url}) as (dispatch, client):
        await dispatch.parts.store.log.wait_until_written()
        body = (await client.get("/health")).json()
    assert body["status"] == "healthy", body
    assert body["database"]["reachable"] is True
    assert 0 < body["database"]["latencyMs"] < 1000
    assert body["checks"]["database"]["status"] == "ok"


async def test_a_lock_held_on_the_log_is_degraded_in_time_and_intake_goes_on(
    tmp_path: Path, postgres_url: str
) -> None:
    health = {"timeout_seconds": DEADLINE}
    async with dashboard(tmp_path, database={"url": postgres_url}, health=health) as (
        dispatch,
        client,
    ):
        await dispatch.parts.store.log.wait_until_written()
        with message_log_locked(postgres_url):
            found = await answers(client, 5)
            queue_id = await mail_goes_on(dispatch, 1)
        after = (await client.get("/health")).json()
        history = await dispatch.history(queue_id)
    assert_degraded_in_time(found)
    assert after["status"] == "healthy"
    assert [event.event for event in history][:1] == ["received"]


async def test_a_stopped_server_is_degraded_in_time_and_the_log_catches_up(
    tmp_path: Path, postgres_url: str, postgres_cluster: Cluster
) -> None:
    health = {"timeout_seconds": DEADLINE}
    database = {"url": postgres_url, "statement_timeout_seconds": 1.0}
    async with dashboard(tmp_path, database=database, health=health) as (dispatch, client):
        log = dispatch.parts.store.log
        await log.wait_until_written()
        with postgres_cluster.paused():
            found = await answers(client, 5)
            queued = [await mail_goes_on(dispatch, n) for n in range(3)]
        with trio.fail_after(30):
            await log.wait_until_written()
        back = [(await client.get("/health")).json() for _ in range(2)]
        histories = [await dispatch.history(queue_id) for queue_id in queued]
    assert_degraded_in_time(found)
    assert back[-1]["status"] == "healthy", back
    for history in histories:
        assert "received" in [event.event for event in history]


async def test_a_node_starts_without_its_database_and_catches_up(
    tmp_path: Path, postgres_cluster: Cluster
) -> None:
    """Started while its database does not exist yet (as after a failed restore): the node
    is ready, accepts mail, says ``degraded``; once the database exists it is migrated and
    the journaled log lands in it."""
    name = f"late_{tmp_path.name}".replace("-", "_")[:60]
    url = postgres_cluster.url(name)
    async with dashboard(tmp_path, database={"url": url}) as (dispatch, client):
        queue_id = await mail_goes_on(dispatch, 1)
        before = (await client.get("/health")).json()
        log = dispatch.parts.store.log
        await wait_until_async(lambda: log.journaled_total > 0)
        with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        with trio.fail_after(30):
            await log.wait_until_written()
        history = await dispatch.history(queue_id)
        after = (await client.get("/health")).json()
    assert before["status"] == "degraded"
    assert before["database"]["reachable"] is False
    assert "received" in [event.event for event in history]
    assert after["database"]["reachable"] is True
