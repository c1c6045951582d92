"""/health on the dashboard port, black-box over HTTPS with httpx (SPEC §9)."""

from __future__ import annotations

import shutil
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from tests.delivery.harness import Running, running_dispatch
from tests.support.config import base_config


def client_for(dispatch: Running) -> httpx.AsyncClient:
    cert = dispatch.root / "data" / "tls" / "selfsigned-cert.pem"
    context = ssl.create_default_context(cafile=str(cert))  # the persisted self-signed cert
    port = dispatch.parts.settings.current.webui.port
    return httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=context, timeout=10)


@asynccontextmanager
async def dashboard(
    tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[Running, httpx.AsyncClient]]:
    config = base_config(tmp_path, **overrides)
    async with running_dispatch(tmp_path, config) as dispatch, client_for(dispatch) as client:
        yield dispatch, client


def set_health(dispatch: Running, **values: Any) -> None:
    """Change live [health] keys as a SIGHUP reload would."""
    live = dispatch.parts.settings
    live.current = attrs.evolve(live.current, health=attrs.evolve(live.current.health, **values))


async def test_health_fields_when_healthy(tmp_path: Path) -> None:
    async with dashboard(tmp_path) as (dispatch, client):
        await dispatch.submit("a@x.test", ["b@y.test"], b"Subject: s\r\n\r\nbody\r\n")
        response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert list(body) == [
        "status",
        "version",
        "uptimeSeconds",
        "database",
        "disk",
        "spool",
        "smtp",
        "checks",
    ]
    assert body["status"] == "healthy"
    assert body["version"]
    assert body["uptimeSeconds"] > 0
    assert body["database"]["reachable"] is True
    assert body["database"]["latencyMs"] >= 0
    usage = shutil.disk_usage(tmp_path)
    assert body["disk"]["path"] == str((tmp_path / "spool").absolute())
    assert body["disk"]["totalBytes"] == usage.total
    assert abs(body["disk"]["freeBytes"] - usage.free) < 512 * 1024**2
    assert set(body["spool"]) == {"incoming", "processing", "failed"}
    port = dispatch.smtp_port
    assert body["smtp"] == {"configuredPorts": [port], "listeningPorts": [port], "ports": [port]}
    for check in ("database", "disk", "spool"):
        assert body["checks"][check]["status"] == "ok"
        assert body["checks"][check]["durationMs"] >= 0


async def test_disk_thresholds_make_it_degraded_then_critical(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    async with dashboard(tmp_path) as (dispatch, client):
        set_health(dispatch, disk_warning_bytes=free * 2, disk_critical_bytes=1)
        degraded = await client.get("/health")
        set_health(dispatch, disk_warning_bytes=free * 4, disk_critical_bytes=free * 2)
        critical = await client.get("/health")
    assert (degraded.status_code, degraded.json()["status"]) == (200, "degraded")
    assert (critical.status_code, critical.json()["status"]) == (503, "critical")


@contextmanager
def database_locked(path: Path) -> Iterator[None]:
    """Another connection holds an exclusive lock, so the probe's write has to wait."""
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        connection.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(60)
        connection.execute("ROLLBACK")
        connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    locked.wait(10)
    try:
        yield
    finally:
        release.set()
        thread.join()


async def test_wedged_database_answers_in_time_every_time(tmp_path: Path) -> None:
    deadline = 0.5
    async with dashboard(tmp_path, health={"timeout_seconds": deadline}) as (dispatch, client):
        database = dispatch.root / "data" / "dispatch.db"
        await dispatch.parts.store.log.wait_until_written()
        with database_locked(database):
            answers = []
            for _ in range(10):
                started = time.monotonic()
                response = await client.get("/health")
                answers.append((time.monotonic() - started, response.json()))
        after = (await client.get("/health")).json()
    for elapsed, body in answers:
        assert elapsed < deadline, f"/health took {elapsed:.2f} s, past its {deadline} s deadline"
        assert body["status"] == "degraded"
        assert body["checks"]["database"]["status"] == "timeout"
        assert body["database"] == {"reachable": False, "latencyMs": None}
        assert body["checks"]["spool"]["status"] == "ok"
    assert after["status"] == "healthy"  # and it recovers once the lock is gone


async def test_database_file_mode_that_forbids_opening_it_is_degraded(tmp_path: Path) -> None:
    """Regression (issue 11, item 7): ``chmod 000`` on the database file left /health "fine".

    Tests run as root, whom the kernel lets open any file: the probe judges the mode bits as
    the kernel would judge the daemon's service user (dispatch.monitoring.health).
    """
    async with dashboard(tmp_path) as (dispatch, client):
        database = dispatch.root / "data" / "dispatch.db"
        await dispatch.parts.store.log.wait_until_written()
        before = (await client.get("/health")).json()
        mode = database.stat().st_mode & 0o777
        database.chmod(0)
        try:
            locked_out = (await client.get("/health")).json()
        finally:
            database.chmod(mode)
        wal = database.with_name("dispatch.db-wal")
        assert wal.exists()  # WAL mode: the side files count too
        wal.chmod(0o200)
        try:
            unreadable_wal = (await client.get("/health")).json()
        finally:
            wal.chmod(mode)
        after = (await client.get("/health")).json()
    assert before["status"] == "healthy"
    for body in (locked_out, unreadable_wal):
        assert body["status"] == "degraded"
        assert body["database"] == {"reachable": False, "latencyMs": None}
        assert body["checks"]["database"]["status"] == "error"
    assert "mode 000" in locked_out["checks"]["database"]["error"]
    assert "denies read and write" in locked_out["checks"]["database"]["error"]
    assert "dispatch.db-wal (mode 200) denies read" in unreadable_wal["checks"]["database"]["error"]
    assert after["status"] == "healthy"
    assert after["database"]["reachable"] is True


async def test_smtp_on_fewer_ports_than_configured_is_degraded(tmp_path: Path) -> None:
    async with dashboard(tmp_path) as (dispatch, client):
        listener = dispatch.parts.intake
        assert listener is not None
        assert listener.ports is not None
        listener.ports = attrs.evolve(listener.ports, listening=())
        body = (await client.get("/health")).json()
    assert body["status"] == "degraded"
    assert body["smtp"]["listeningPorts"] == []


async def test_allow_list_unknown_paths_and_the_smtp_port(tmp_path: Path) -> None:
    async with dashboard(tmp_path, webui={"allowed_cidrs": ["127.0.0.2/32"]}) as (
        dispatch,
        client,
    ):
        denied = await client.get("/health")
        metrics_denied = await client.get("/metrics")
        live = dispatch.parts.settings
        live.current = attrs.evolve(
            live.current, webui=attrs.evolve(live.current.webui, allowed_cidrs=())
        )
        missing = await client.get("/nope")
        debug_hidden = await client.get("/debug/")

        def http_on_smtp_port() -> bytes:
            with socket.create_connection(("127.0.0.1", dispatch.smtp_port), timeout=10) as s:
                data = s.recv(4096)  # the greeting (sending before it is refused on its own)
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                while chunk := s.recv(4096):
                    data += chunk
                return data

        smtp_answer = await trio.to_thread.run_sync(http_on_smtp_port)
    assert denied.status_code == 403
    assert "not in webui.allowed_cidrs" in denied.json()["detail"]
    assert metrics_denied.status_code == 403
    # Every other path of the dashboard port is the dashboard's, behind its admin login
    # (first run here: no password yet), /debug/ included (SPEC §10): nothing is served.
    assert missing.status_code == 303
    assert missing.headers["location"] == "/setup"
    assert debug_hidden.status_code == 303
    assert debug_hidden.headers["location"] == "/setup"
    assert b"HTTP/" not in smtp_answer
    assert b"502 5.5.1" in smtp_answer
