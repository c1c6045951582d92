"""/health's ``delivery`` check end to end: the real daemon in-process, real upstreams on
loopback, /health over HTTPS with httpx (issue 14, item 10).

A relay that refuses connections while mail waits, a relay suspended after its upstream hung,
and a queue that no delivery worker can take from; the SIGHUP reload of
``health.queue_age_warning_seconds`` is in tests/web/test_health_reload.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.conftest import free_port
from tests.relays.peers import greet_then_hang, raw_server
from tests.support.config import smtp_relay
from tests.support.sink import Sink
from tests.support.waiting import WITHIN
from tests.web.test_health import dashboard

MESSAGE = b"Subject: waiting\r\n\r\nfor the relay\r\n"
EXISTING_FIELDS = ["status", "version", "uptimeSeconds", "database", "disk", "spool", "smtp"]


async def health_until(
    client: httpx.AsyncClient, wanted: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """GET /health until ``wanted(body)``; fail naming ``what`` after the usual bound."""
    with trio.move_on_after(WITHIN):
        while True:
            response = await client.get("/health")
            body: dict[str, Any] = response.json()
            if wanted(body):
                return body
            await trio.sleep(0.05)
    raise AssertionError(f"not reached within {WITHIN} s: {what}; last /health: {body}")


def relay_state(body: dict[str, Any], name: str = "upstream") -> str:
    return str(body["checks"]["delivery"]["relays"][name]["state"])


async def test_a_relay_down_with_mail_waiting_is_degraded_until_it_delivers(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens there yet: every connection is refused
    async with dashboard(
        tmp_path,
        default_relay="upstream",
        relays=[smtp_relay("upstream", port)],
        spool={"retry_delays_seconds": [0.2], "max_retries": 100_000},
    ) as (dispatch, client):
        before = (await client.get("/health")).json()
        await dispatch.submit("a@x.test", ["b@y.test"], MESSAGE)
        down = await health_until(
            client, lambda b: relay_state(b) == "failing", "the relay to be seen failing"
        )
        down_status = (await client.get("/health")).status_code
        sink = Sink(port=port)  # the upstream comes back
        try:
            up = await health_until(
                client,
                lambda b: b["status"] == "healthy",
                "/health healthy again after the relay recovered",
            )
            delivered = len(sink.messages)
        finally:
            sink.stop()
    assert before["status"] == "healthy"
    assert before["checks"]["delivery"]["status"] == "ok"
    assert relay_state(before) == "ok"

    assert down["status"] == "degraded"
    assert down_status == 200  # degraded is still 200, as before
    assert list(down)[: len(EXISTING_FIELDS)] == EXISTING_FIELDS  # the contract's fields
    delivery = down["checks"]["delivery"]
    assert delivery["status"] == "degraded"
    entry = delivery["relays"]["upstream"]
    assert entry["mailWaiting"] is True
    assert entry["failedAttempts"] >= 1
    assert entry["lastSuccessSecondsAgo"] is None
    assert entry["reason"].startswith("relay upstream: no attempt succeeded since start-up")
    assert "refused" in entry["reason"]
    assert f"127.0.0.1:{port}" in entry["reason"]
    assert entry["reason"] in delivery["error"]
    assert down["spool"]["incoming"] + down["spool"]["processing"] == 1

    assert delivered == 1
    assert up["checks"]["delivery"]["status"] == "ok"
    entry = up["checks"]["delivery"]["relays"]["upstream"]
    assert entry["state"] == "ok"
    assert entry["reason"] is None
    assert entry["failedAttempts"] == 0
    assert entry["lastSuccessSecondsAgo"] is not None
    assert entry["mailWaiting"] is False


async def test_a_suspended_relay_is_degraded(tmp_path: Path) -> None:
    async with (
        raw_server(greet_then_hang) as hung,
        dashboard(
            tmp_path,
            default_relay="upstream",
            relays=[smtp_relay("upstream", hung.port, timeout_seconds=0.5)],
            spool={"retry_delays_seconds": [60], "max_retries": 100_000},
        ) as (dispatch, client),
    ):
        await dispatch.submit("a@x.test", ["b@y.test"], MESSAGE)
        body = await health_until(
            client, lambda b: relay_state(b) == "suspended", "the relay to be suspended"
        )
    assert body["status"] == "degraded"
    entry = body["checks"]["delivery"]["relays"]["upstream"]
    assert entry["reason"].startswith("relay upstream is suspended: ")
    assert "timed out" in entry["reason"]


async def test_a_queue_no_worker_takes_from_is_degraded_over_the_key(tmp_path: Path) -> None:
    """One delivery worker, held by an upstream that accepts and never speaks; the scanner
    claims one more message for it, and the third waits in the due queue: the queue age."""
    release = trio.Event()

    async def hold(stream: trio.SocketStream) -> None:
        await release.wait()  # then the connection closes: the attempt fails at once

    async with (
        raw_server(hold) as silent,
        dashboard(
            tmp_path,
            default_relay="upstream",
            relays=[smtp_relay("upstream", silent.port, timeout_seconds=300)],
            spool={"worker_count": 1},
            health={"queue_age_warning_seconds": 0.5},
        ) as (dispatch, client),
    ):
        try:
            for _ in range(3):
                await dispatch.submit("a@x.test", ["b@y.test"], MESSAGE)
            body = await health_until(
                client, lambda b: b["status"] == "degraded", "the queue age to pass the key"
            )
            connections = silent.connections  # before the release lets the worker go on
        finally:
            release.set()
    delivery = body["checks"]["delivery"]
    assert delivery["status"] == "degraded"
    assert delivery["oldestDueSeconds"] > 0.5
    assert delivery["queueAgeWarningSeconds"] == 0.5
    assert "the oldest due message has waited" in delivery["error"]
    assert "over health.queue_age_warning_seconds (0.5 s)" in delivery["error"]
    assert relay_state(body) == "ok"  # no attempt has ended yet: only the queue is behind
    assert connections == 1
