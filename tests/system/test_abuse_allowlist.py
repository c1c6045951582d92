"""Scenario 5 (allow-lists): a peer outside ``allowed_cidrs`` on every listener.

Only ``127.0.0.1/32`` is allowed on the SMTP port, the API and the dashboard port; the test
client binds its sockets to ``127.0.0.2``. Every listener must refuse it (``554`` at connect,
``403``), log its IP, count it in ``/metrics``, and relay nothing of what it sends — while the
allowed address keeps working.
"""

from __future__ import annotations

import contextlib
import signal
import smtplib
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import Daemon
from tests.support.config import Ports, base_config, smtp_relay, write_config
from tests.support.sink import Sink
from tests.support.waiting import wait_until
from tests.system.faults import (
    UNLIMITED_API,
    Ops,
    assert_spool_whole,
    create_api_key,
    log_so_far,
    metric,
    report,
    spool_ids,
    token_message,
)

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]
ALLOWED = "127.0.0.1"
OUTSIDER = "127.0.0.2"


def test_outsider_is_refused_logged_and_counted_on_every_listener(
    start_daemon: Start, tmp_path: Path
) -> None:
    sink = Sink(pipelining=False)
    ports = Ports.pick()
    only_one = [f"{ALLOWED}/32"]
    config = base_config(
        tmp_path,
        ports,
        listener={"allowed_cidrs": only_one},
        api={**UNLIMITED_API, "allowed_cidrs": only_one},
        webui={"allowed_cidrs": only_one},
        default_relay="upstream",
        relays=[smtp_relay("upstream", sink.port)],
    )
    text = write_config(tmp_path / "dispatch.toml", config)
    key = create_api_key(tmp_path / "dispatch.toml")
    daemon = start_daemon(text)
    daemon.wait_for("all components ready")
    try:
        # SMTP: 554 at connect; a whole transaction sent anyway meets a closed connection.
        with socket.create_connection(("127.0.0.1", ports.smtp), 10, (OUTSIDER, 0)) as sock:
            smtp_answer = sock.recv(4096)
            after = b""
            with contextlib.suppress(OSError):
                sock.sendall(
                    b"EHLO outside.example\r\nMAIL FROM:<a@example.com>\r\n"
                    b"RCPT TO:<b@example.org>\r\nDATA\r\n"
                    b"X-Fault-Token: outsider-smtp\r\n\r\nrelay me\r\n.\r\nQUIT\r\n"
                )
                while chunk := sock.recv(4096):
                    after += chunk
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", ports.smtp, timeout=10, source_address=(OUTSIDER, 0))

        # The API, with a valid key: 403 for sending and for looking up.
        transport = httpx.HTTPTransport(local_address=OUTSIDER)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(
            base_url=f"http://127.0.0.1:{ports.api}", transport=transport, headers=headers
        ) as api:
            message = {
                "from": "a@example.com",
                "to": ["b@example.org"],
                "text": "relay me",
                "headers": {"X-Fault-Token": "outsider-api"},
            }
            api_send = api.post("/api/v1/messages", json=message)
            api_list = api.get("/api/v1/messages")

        # The dashboard port: /health and /metrics.
        outsider = Ops(ports.webui, tmp_path / "data", source=OUTSIDER)
        with outsider.client() as client:
            health = client.get("/health")
            scrape = client.get("/metrics")

        # The allowed address still gets everything.
        with smtplib.SMTP("127.0.0.1", ports.smtp, timeout=10) as client:
            client.sendmail("a@example.com", ["b@example.org"], token_message("insider"))
        ops = Ops(ports.webui, tmp_path / "data")
        wait_until(lambda: len(sink.deliveries) == 1, what="the insider's message")
        # "Today" figures come from the database, refreshed every 5 s.
        wait_until(
            lambda: metric(ops.metrics(), "dispatch_messages_today", event="denied") >= 4,
            within=20,
            what="the denied events in the message log",
        )
        metrics = ops.metrics()
        log = log_so_far(daemon)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0
    finally:
        sink.stop()

    assert smtp_answer.startswith(b"554 5.7.1"), smtp_answer
    assert smtp_answer.count(b"\r\n") == 1, smtp_answer
    assert after == b"", after  # nothing after the refusal
    assert refused.value.smtp_code == 554
    assert api_send.status_code == 403
    assert api_send.json()["detail"] == f"{OUTSIDER} is not in api.allowed_cidrs"
    assert api_list.status_code == 403
    assert health.status_code == 403
    assert scrape.status_code == 403

    # Nothing of the outsider's was queued or relayed.
    assert [d.token for d in sink.deliveries] == ["insider"]
    assert sink.unmarked == 0
    spool = tmp_path / "spool"
    assert_spool_whole(spool)
    assert not any(spool_ids(spool, state) for state in ("incoming", "processing", "failed"))

    # Logged with the IP, on every listener.
    assert f"denied connection from {OUTSIDER}: not in listener.allowed_cidrs" in log
    assert f"denied POST /api/v1/messages from {OUTSIDER}: not in api.allowed_cidrs" in log
    assert f"denied GET /health from {OUTSIDER}: not in webui.allowed_cidrs" in log
    assert f"denied GET /metrics from {OUTSIDER}: not in webui.allowed_cidrs" in log

    # Counted on every listener.
    counted = {
        "smtp": metric(metrics, "dispatch_smtp_denied_connections_total", reason="allowlist"),
        "api": metric(metrics, "dispatch_api_denied_requests_total", reason="allowlist"),
        "webui": metric(metrics, "dispatch_webui_denied_requests_total", reason="allowlist"),
        "today (message log)": metric(metrics, "dispatch_messages_today", event="denied"),
    }
    assert counted == {"smtp": 2, "api": 2, "webui": 2, "today (message log)": 4}, counted
    report("outsider on every listener", counted)
