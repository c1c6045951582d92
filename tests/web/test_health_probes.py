"""``/health/live`` and ``/health/ready`` (issue 14, item 11): the real daemon in-process,
httpx over HTTPS on the dashboard port and plain HTTP on the monitoring server.

Ready means start-up finished, SMTP listening and the spool writable; each answer comes
within ``health.timeout_seconds`` whatever the spool does, and behind the same allow-list
(and, on the monitoring server, the same ``Host`` check) as ``/health``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from dispatch.config import parse_settings
from dispatch.config.live import LiveSettings
from dispatch.daemon import assemble, open_spool
from dispatch.lifecycle import Component, Shutdown
from dispatch.monitoring.health import PROBE_THREADS
from dispatch.supervisor import Supervisor
from tests.conftest import free_port
from tests.delivery.harness import Running
from tests.support.config import base_config
from tests.support.waiting import WITHIN
from tests.web.test_health import client_for, dashboard

PROBES = ("/health/live", "/health/ready")


async def timed_get(client: httpx.AsyncClient, path: str) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = await client.get(path)
    return time.monotonic() - started, response


async def test_live_and_ready_answer_200_on_both_servers(tmp_path: Path) -> None:
    monitoring = f"127.0.0.1:{free_port()}"
    async with (
        dashboard(tmp_path, monitoring={"address": monitoring}) as (dispatch, client),
        httpx.AsyncClient(base_url=f"http://{monitoring}", timeout=10) as plain,
    ):
        answers = {path: await timed_get(client, path) for path in PROBES}
        on_monitoring = {path: (await plain.get(path)).status_code for path in PROBES}
    deadline = dispatch.parts.settings.current.health.timeout_seconds
    for path, (elapsed, _) in answers.items():
        assert elapsed < deadline, f"{path} took {elapsed:.2f} s, past its {deadline} s deadline"
    live = answers["/health/live"][1]
    assert live.status_code == 200
    assert live.json()["status"] == "live"
    assert live.json()["reason"] == "the event loop answered"
    assert live.json()["uptimeSeconds"] > 0
    ready = answers["/health/ready"][1]
    assert ready.status_code == 200
    body = ready.json()
    port = dispatch.smtp_port
    assert body["status"] == "ready"
    assert body["reason"] == f"accepting mail on SMTP port(s) {port}"
    assert body["startupDone"] is True
    assert body["smtp"] == {"configuredPorts": [port], "listeningPorts": [port]}
    assert body["spoolWritable"] is True
    assert body["checks"]["spool"]["status"] == "ok"
    assert on_monitoring == {"/health/live": 200, "/health/ready": 200}


async def test_the_probes_pass_the_allow_lists_and_the_host_check(tmp_path: Path) -> None:
    monitoring = f"127.0.0.1:{free_port()}"
    async with (
        dashboard(
            tmp_path,
            webui={"allowed_cidrs": ["127.0.0.2/32"]},
            monitoring={"address": monitoring, "allowed_cidrs": ["127.0.0.2/32"]},
        ) as (_, client),
        httpx.AsyncClient(base_url=f"http://{monitoring}", timeout=10) as plain,
    ):
        denied = {path: await client.get(path) for path in PROBES}
        monitoring_denied = {path: await plain.get(path) for path in PROBES}
    (tmp_path / "second").mkdir()
    async with (
        dashboard(tmp_path / "second", monitoring={"address": monitoring}),
        httpx.AsyncClient(base_url=f"http://{monitoring}", timeout=10) as plain,
    ):
        rebound = {
            path: await plain.get(path, headers={"Host": "rebound.example"}) for path in PROBES
        }
    for response in denied.values():
        assert response.status_code == 403
        assert "not in webui.allowed_cidrs" in response.json()["detail"]
    for response in monitoring_denied.values():
        assert response.status_code == 403
        assert "not in monitoring.allowed_cidrs" in response.json()["detail"]
    for response in rebound.values():
        assert response.status_code == 421


async def test_ready_waits_for_start_up_and_the_smtp_listeners(tmp_path: Path) -> None:
    """The real parts, the dashboard started before SMTP (in production SMTP starts first, but
    after a crash it is down while the supervisor waits to restart it) and a last component
    still starting: not ready until both are done; not ready again once SMTP stops."""
    settings = parse_settings(base_config(tmp_path))
    live = LiveSettings(settings, None)
    gate = trio.Event()

    async def last_to_start(shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None:
        await gate.wait()
        task_status.started()
        await shutdown.requested.wait()

    async with open_spool(Path(settings.spool.directory)) as spool, trio.open_nursery() as nursery:
        parts, components = assemble(live, spool)
        [smtp] = [c for c in components if c.name == "smtp"]
        others = [c for c in components if c.name != "smtp"]
        supervisor = Supervisor(
            [*others, Component("last", last_to_start)],
            live,
            grace_seconds=5,
            on_ready=parts.started.set,
        )
        nursery.start_soon(supervisor.run)
        dispatch = Running(parts, supervisor, settings.listener.ports[0], tmp_path)
        await accepting(settings.webui.port)  # the dashboard is up, its certificate written
        async with client_for(dispatch) as client:
            starting = await client.get("/health/ready")
            gate.set()
            await supervisor.ready.wait()
            no_smtp = await client.get("/health/ready")
            smtp_stop = Shutdown(5)
            await nursery.start(smtp.run, smtp_stop)
            ready = await client.get("/health/ready")
            smtp_stop.request()
            stopped = await ready_when(client, 503)
            alive = await client.get("/health/live")
        supervisor.request_stop()
    port = settings.listener.ports[0]
    assert starting.status_code == 503
    assert starting.json()["status"] == "unready"
    assert starting.json()["startupDone"] is False
    assert starting.json()["reason"] == (
        "start-up has not finished: not every component has started yet; "
        f"SMTP is not listening on any port (configured: {port})"
    )
    assert no_smtp.status_code == 503
    assert no_smtp.json()["reason"] == f"SMTP is not listening on any port (configured: {port})"
    assert no_smtp.json()["smtp"]["listeningPorts"] == []
    assert ready.status_code == 200
    assert ready.json()["smtp"]["listeningPorts"] == [port]
    assert stopped["reason"] == f"SMTP is not listening on any port (configured: {port})"
    assert alive.status_code == 200


async def accepting(port: int) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    with trio.move_on_after(WITHIN):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return
    raise AssertionError(f"nothing accepted connections on port {port} within {WITHIN} s")


async def ready_when(client: httpx.AsyncClient, status: int) -> dict[str, Any]:
    """GET /health/ready until it answers ``status``; its body."""
    with trio.move_on_after(WITHIN):
        while True:
            response = await client.get("/health/ready")
            if response.status_code == status:
                body: dict[str, Any] = response.json()
                return body
            await trio.sleep(0.05)
    raise AssertionError(f"/health/ready did not answer {status} within {WITHIN} s")


@contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """``directory`` made read-only by a bind mount onto itself (root ignores modes, not a
    read-only mount); writable again and unmounted on exit."""

    def mount(*args: str) -> None:
        subprocess.run(["mount", *args], check=True, capture_output=True)

    mount("--bind", str(directory), str(directory))
    try:
        mount("-o", "remount,bind,ro", str(directory))
        yield
    finally:
        subprocess.run(["umount", "--lazy", str(directory)], check=True)


async def test_ready_is_503_while_the_spool_is_not_writable(tmp_path: Path) -> None:
    async with dashboard(tmp_path) as (dispatch, client):
        before = await client.get("/health/ready")
        with read_only(dispatch.root / "spool" / "tmp"):  # intake's first write goes there
            not_writable = {path: await timed_get(client, path) for path in PROBES}
            health = await client.get("/health")
        after = await client.get("/health/ready")
    deadline = dispatch.parts.settings.current.health.timeout_seconds
    assert before.status_code == 200
    elapsed, ready = not_writable["/health/ready"]
    assert elapsed < deadline
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unready"
    assert body["spoolWritable"] is False
    spool = (dispatch.root / "spool").absolute()
    assert body["reason"].startswith(f"the spool at {spool} is not writable: ")
    assert "Read-only file system" in body["reason"]
    assert body["checks"]["spool"]["status"] == "error"
    assert not_writable["/health/live"][1].status_code == 200
    assert health.status_code == 503  # /health as before: critical
    assert after.status_code == 200


async def test_a_wedged_spool_probe_is_unready_within_the_deadline(tmp_path: Path) -> None:
    """Both of the spool probe's threads held, as by probes stuck in a hung file system:
    the next probe cannot start, and still the answers go out in time."""
    deadline = 0.5
    limiter = PROBE_THREADS["spool"]
    holders = [object() for _ in range(int(limiter.total_tokens))]
    async with dashboard(tmp_path, health={"timeout_seconds": deadline}) as (_, client):
        for holder in holders:
            await limiter.acquire_on_behalf_of(holder)
        try:
            wedged = [await timed_get(client, "/health/ready") for _ in range(3)]
            health = await timed_get(client, "/health")
        finally:
            for holder in holders:
                limiter.release_on_behalf_of(holder)
        after = await client.get("/health/ready")
    for elapsed, _ in [*wedged, health]:
        assert elapsed < deadline, f"answered in {elapsed:.2f} s, past its {deadline} s deadline"
    for _, response in wedged:
        assert response.status_code == 503
        assert response.json()["checks"]["spool"]["status"] == "timeout"
        assert "did not take a new file within the deadline" in response.json()["reason"]
    assert health[1].status_code == 503
    assert after.status_code == 200
