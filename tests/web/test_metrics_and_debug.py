"""/metrics on the dashboard port and the /debug pages on the monitoring server, after real
SMTP traffic (received, delivered, denied from a disallowed source address)."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

import httpx
import trio
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.delivery.harness import Running, running_dispatch
from tests.support.config import base_config
from tests.support.waiting import wait_until_async
from tests.web.test_health import client_for

SPEC_GAUGES = {
    "dispatch_up": set(),
    "dispatch_database_reachable": set(),
    "dispatch_messages_today": {"event"},
    "dispatch_messages_last5m": {"event"},
    "dispatch_spool_files": {"state"},
    "dispatch_relay_inflight": {"relay"},
    "dispatch_relay_delivered_today": {"relay"},
    "dispatch_relay_failed_today": {"relay"},
}
MESSAGE = b"From: a@x.test\r\nSubject: metrics\r\n\r\nbody\r\n"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def traffic(dispatch: Running) -> None:
    """Two messages delivered by the local relay, one connection denied."""
    for _ in range(2):
        await dispatch.submit("a@x.test", ["b@y.test"], MESSAGE)

    def denied() -> bytes:
        with socket.create_connection(
            ("127.0.0.1", dispatch.smtp_port), timeout=10, source_address=("127.0.0.2", 0)
        ) as sock:
            return sock.recv(1024)

    assert (await trio.to_thread.run_sync(denied)).startswith(b"554")
    await wait_until_async(lambda: dispatch.parts.spool.counts().total == 0)
    await dispatch.parts.store.log.wait_until_written()
    await dispatch.parts.figures.refresh(dispatch.parts.store.queries)


async def test_metrics_families_labels_and_values_after_traffic(tmp_path: Path) -> None:
    config = base_config(tmp_path, listener={"allowed_cidrs": ["127.0.0.1/32"]})
    async with running_dispatch(tmp_path, config) as dispatch, client_for(dispatch) as client:
        before = samples((await client.get("/metrics")).text)
        await traffic(dispatch)
        response = await client.get("/metrics")
        openmetrics = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, labels in SPEC_GAUGES.items():
        assert families[name].type == "gauge", name
        for sample in families[name].samples:
            assert set(sample.labels) == labels, (name, sample.labels)
    after = samples(text)
    today = {
        e: after[("dispatch_messages_today", (("event", e),))]
        for e in ("received", "delivered", "failed", "retried", "denied")
    }
    assert today == {"received": 2, "delivered": 2, "failed": 0, "retried": 0, "denied": 1}
    assert after[("dispatch_messages_last5m", (("event", "received"),))] == 2
    assert after[("dispatch_messages_last5m", (("event", "sent"),))] == 2
    assert after[("dispatch_relay_delivered_today", (("relay", "local"),))] == 2
    assert after[("dispatch_relay_inflight", (("relay", "local"),))] == 0
    assert after[("dispatch_spool_files", (("state", "incoming"),))] == 0
    assert after[("dispatch_up", ())] == 1
    assert after[("dispatch_database_reachable", ())] == 1
    assert after[("dispatch_smtp_denied_connections_total", (("reason", "allowlist"),))] == 1
    received = ("dispatch_messages_received_total", (("source", "smtp"),))
    assert after[received] - before.get(received, 0) == 2
    assert (
        after[("dispatch_delivery_attempts_total", (("kind", "local"), ("outcome", "delivered")))]
        == 2
    )
    assert "dispatch_build_info" in families
    assert not re.search(r"example|x\.test|y\.test", text), "an address leaked into a label"
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    parsed = parse_openmetrics(openmetrics.text)  # type: ignore[no-untyped-call]
    assert {f.name for f in parsed} >= set(SPEC_GAUGES)
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (.ci/run does)"
    checked = await trio.run_process(
        [promtool, "check", "metrics"],
        stdin=text.encode(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()


async def test_debug_pages_on_the_monitoring_server(tmp_path: Path) -> None:
    port = free_port()
    relays = [
        {"name": "local", "kind": "local"},
        {
            "name": "secretive",
            "kind": "smtp",
            "host": "127.0.0.1",
            "port": free_port(),
            "tls": "none",
            "username": "u",
            "password": "hunter2-top-secret",
        },
    ]
    routes = [{"recipient_domain": "fail.test", "relay": "secretive"}]
    config = base_config(
        tmp_path,
        monitoring={"address": f"127.0.0.1:{port}"},
        relays=relays,
        routes=routes,
        default_relay="local",
        spool={"max_retries": 0},
    )
    async with running_dispatch(tmp_path, config) as dispatch:
        await dispatch.submit("a@x.test", ["b@y.test"], MESSAGE)
        stuck = await dispatch.submit("a@x.test", ["c@fail.test"], MESSAGE)
        await wait_until_async(lambda: dispatch.parts.spool.counts().failed == 1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            pages = {
                path: await client.get(f"/debug/{path}")
                for path in ("", "config", "vars", "traces", "queue", "tasks", "memory")
            }
            delivery_traces = await client.get("/debug/traces?family=delivery.attempt&show=errors")
            trace_ids = re.findall(r"traces\?id=([0-9a-f]+)", delivery_traces.text)
            one_trace = await client.get(f"/debug/traces?id={trace_ids[0]}")
            profile = await client.get("/debug/profile?seconds=1")
            metrics = await client.get("/metrics")
            missing = await client.get("/debug/nope")
    assert all(page.status_code == 200 for page in pages.values())
    index = pages[""].text
    for link in ("config", "vars", "traces", "queue", "tasks", "profile", "memory"):
        assert link in index
    assert "hunter2" not in pages["config"].text
    assert "&lt;redacted&gt;" in pages["config"].text  # the password, shown redacted
    variables = pages["vars"].json()
    assert variables["dispatch/smtpIn/commandCount"]["EHLO"] == 2
    assert variables["dispatch/queue/putCount"]["smtp"] == 2
    assert "smtp.session" in pages["traces"].text
    assert stuck in pages["queue"].text
    assert "refused" in pages["queue"].text
    assert "delivery worker" in pages["tasks"].text
    assert "tracemalloc" in pages["memory"].text
    assert one_trace.status_code == 200
    assert stuck in one_trace.text
    assert profile.status_code == 200
    assert "html" in profile.headers["content-type"]
    assert "dispatch_up 1.0" in metrics.text
    assert missing.status_code == 404
