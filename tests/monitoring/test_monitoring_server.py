"""The monitoring server's own defences, black-box over HTTP with httpx (issue 11, item 6).

Regressions: its only gate was ``webui.allowed_cidrs`` (everyone by default); the ``Host``
header was not checked (a DNS-rebinding page in an operator's browser could read it); one GET
of ``/debug/memory`` left tracemalloc on for good; a non-loopback ``monitoring.address``
passed ``check-config`` without a word.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from dispatch.cli import main
from dispatch.config.types import Cidr
from dispatch.web.ops import host_is_address
from tests.conftest import free_port
from tests.delivery.harness import Running, running_dispatch
from tests.support.config import base_config, dump
from tests.support.waiting import wait_until_async
from tests.system.faults import metric


@asynccontextmanager
async def monitoring(
    tmp_path: Path, *, local_address: str = "127.0.0.1", **overrides: Any
) -> AsyncIterator[tuple[Running, httpx.AsyncClient, int]]:
    port = free_port()
    config = base_config(tmp_path, **overrides)
    config["monitoring"] = {"address": f"127.0.0.1:{port}", **config.get("monitoring", {})}
    transport = httpx.AsyncHTTPTransport(local_address=local_address)
    async with (
        running_dispatch(tmp_path, config) as dispatch,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", transport=transport, timeout=30
        ) as client,
    ):
        yield dispatch, client, port


async def test_its_own_allow_list_loopback_by_default_and_live(tmp_path: Path) -> None:
    # The dashboard admits everyone; that must not open the monitoring server.
    async with monitoring(tmp_path, local_address="127.0.0.2", webui={"allowed_cidrs": []}) as (
        dispatch,
        client,
        _,
    ):
        by_default = await client.get("/debug/vars")  # 127.0.0.2 is loopback: allowed
        live = dispatch.parts.settings
        live.current = attrs.evolve(
            live.current,
            monitoring=attrs.evolve(live.current.monitoring, allowed_cidrs=(Cidr("127.0.0.1/32"),)),
        )
        denied = {path: await client.get(path) for path in ("/debug/config", "/metrics")}
        stats = dispatch.parts.stats
        counted = stats.monitoring_denied["allowlist"]
        dashboard_counted = stats.webui_denied["allowlist"]
        async with httpx.AsyncClient(base_url=client.base_url, timeout=30) as from_127_0_0_1:
            allowed = await from_127_0_0_1.get("/debug/config")
            scraped = (await from_127_0_0_1.get("/metrics")).text
    assert by_default.status_code == 200
    for response in denied.values():
        assert response.status_code == 403
        assert "127.0.0.2 is not in monitoring.allowed_cidrs" in response.json()["detail"]
    assert "[database]" not in denied["/debug/config"].text
    assert allowed.status_code == 200
    assert counted == 2
    assert dashboard_counted == 0
    assert metric(scraped, "dispatch_monitoring_denied_requests_total", reason="allowlist") == 2


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1", True),
        ("127.0.0.1:1099", True),
        ("localhost", True),
        ("LOCALHOST:8080", True),
        ("[::1]", True),
        ("[::1]:1099", True),
        ("10.1.2.3:1099", True),
        ("evil.example", False),
        ("evil.example:1099", False),
        ("127.0.0.1.nip.io", False),
        ("localhost.evil.example", False),
        ("127.1", False),
        ("[::1", False),
        ("[::1]x", False),
        ("[evil.example]:1", False),
        ("127.0.0.1:", True),
        ("127.0.0.1:99999", False),
        ("127.0.0.1:http", False),
        ("::1", False),
        ("", False),
    ],
)
def test_host_is_address(host: str, ok: bool) -> None:
    assert host_is_address(host) is ok


async def test_host_header_must_be_an_address(tmp_path: Path) -> None:
    async with monitoring(tmp_path) as (dispatch, client, port):
        good = {
            host: await client.get("/debug/config", headers={"Host": host})
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}")
        }
        rebound = {
            path: await client.get(path, headers={"Host": f"attacker.example:{port}"})
            for path in ("/debug/config", "/debug/queue", "/metrics", "/health")
        }
        counted = dispatch.parts.stats.monitoring_denied["host"]
    for response in good.values():
        assert response.status_code == 200
    for response in rebound.values():
        assert response.status_code == 421
        detail = response.json()["detail"]
        assert "attacker.example" in detail
        assert "DNS-rebinding" in detail
        assert "[database]" not in response.text
    assert counted == len(rebound)


async def test_memory_tracing_stops_by_itself(tmp_path: Path) -> None:
    assert not tracemalloc.is_tracing()
    async with monitoring(tmp_path) as (_, client, _):
        first = await client.get("/debug/memory?seconds=1")
        on_after_request = tracemalloc.is_tracing()
        # A semantic bound: far past the 1 s asked for.
        await wait_until_async(lambda: not tracemalloc.is_tracing(), within=15)
        bad = await client.get("/debug/memory?seconds=soon")
        # A page left open (the default 5 minutes) is stopped when the server stops.
        second = await client.get("/debug/memory")
        on_again = tracemalloc.is_tracing()
    off_after_stop = not tracemalloc.is_tracing()
    assert first.status_code == 200
    assert "started it now, for 1 s" in first.text
    assert "stops by itself" in first.text
    assert on_after_request
    assert bad.status_code == 400
    assert "for 300 s" in second.text
    assert on_again
    assert off_after_stop


def test_check_config_warns_of_a_non_loopback_monitoring_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exposed = tmp_path / "exposed.toml"
    exposed.write_text('[monitoring]\naddress = "0.0.0.0:1099"\n')
    loopback = tmp_path / "loopback.toml"
    loopback.write_text('[monitoring]\naddress = "127.0.0.1:1099"\n')
    assert main(["check-config", str(exposed)]) == 0
    warned = capsys.readouterr()
    assert main(["check-config", str(loopback)]) == 0
    quiet = capsys.readouterr()
    assert "warning: monitoring.address: '0.0.0.0:1099' is not a loopback address" in warned.err
    assert "monitoring.allowed_cidrs (127.0.0.0/8, ::1/128)" in warned.err
    assert "valid" in warned.out
    assert "warning" not in quiet.err


@pytest.mark.slow
def test_the_daemon_logs_the_warning_at_start(tmp_path: Path) -> None:
    """0.0.0.0 for real, but in a network namespace of its own: nothing outside can reach it."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed; CI has it"
    assert os.geteuid() == 0, "a network namespace needs root; CI runs as root"
    config = tmp_path / "dispatch.toml"
    config.write_text(dump(base_config(tmp_path, monitoring={"address": "0.0.0.0:1099"})))
    script = f'ip link set lo up && exec "{sys.executable}" -m dispatch --config "{config}"'
    process = subprocess.Popen(
        [unshare, "--net", "--", "sh", "-c", script],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        for line in process.stdout:
            lines.append(line)
            if "all components ready" in line or time.monotonic() > deadline:
                break
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
    log = "".join(lines)
    assert "all components ready" in log, log
    assert "monitoring server on http://0.0.0.0:1099" in log, log
    assert "WARNING" in log
    assert "configuration: monitoring.address: '0.0.0.0:1099' is not a loopback address" in log
