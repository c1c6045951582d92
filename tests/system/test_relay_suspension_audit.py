"""A hung smarthost suspends its relay, and the daemon's audit log says so, then says when it
resumed: the wiring from the relay set to the store, end to end.

A real ``python -m dispatch`` relays to a port that accepts connections and never greets.
One message submitted over smtplib times the connection out: the relay is suspended (one
``Relay``/``Warning`` row). The upstream then heals (an SMTP sink on the same port); the
retry, after the suspension, goes through as the trial connection, delivers, and lifts it (one
``Relay``/``Info`` row). Rows are read from SQLite and through ``dispatch audit``.
"""

from __future__ import annotations

import smtplib
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, free_port
from tests.support.config import Ports, base_config, smtp_relay, write_config
from tests.support.sink import Sink
from tests.support.waiting import wait_until
from tests.system.faults import HungServer

pytestmark = pytest.mark.slow

TIMEOUT = 1  # the relay's timeout_seconds: how long a suspension lasts


def relay_rows(root: Path) -> list[tuple[str, str, str]]:
    """(level, actor, message) of the Relay rows, in the order written."""
    with closing(sqlite3.connect(root / "data" / "dispatch.db")) as connection:
        return connection.execute(
            "SELECT level, actor, message FROM audit_log WHERE category = 'Relay' ORDER BY id"
        ).fetchall()


def submit(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        client.sendmail("app@example.test", ["someone@example.org"], b"Subject: hi\r\n\r\nhi\r\n")


def test_suspension_and_resumption_reach_the_audit_log(start_daemon: Any, tmp_path: Path) -> None:
    ports, upstream_port = Ports.pick(), free_port()
    config = tmp_path / "dispatch.toml"
    write_config(
        config,
        base_config(
            tmp_path,
            ports,
            spool={"max_retries": 10, "retry_delays_seconds": [2]},
            relays=[smtp_relay("upstream", upstream_port, timeout_seconds=TIMEOUT)],
            default_relay="upstream",
        ),
    )
    hung = HungServer(upstream_port)
    daemon: Daemon = start_daemon(config.read_text())
    daemon.wait_for("all components ready")
    submit(ports.smtp)
    wait_until(lambda: len(relay_rows(tmp_path)) >= 1, what="the suspension's audit row")
    hung.stop()
    sink = Sink(port=upstream_port)
    try:
        wait_until(lambda: len(sink.messages) == 1, what="the retry delivered to the healed sink")
        wait_until(lambda: len(relay_rows(tmp_path)) >= 2, what="the resumption's audit row")
    finally:
        sink.stop()
    suspended, resumed = relay_rows(tmp_path)
    assert suspended == (
        "Warning",
        "dispatch",
        "relay upstream suspended for 1 s, then tried again one connection at a time: "
        f"timed out after 1 s waiting for the greeting (127.0.0.1:{upstream_port})",
    )
    assert resumed == ("Info", "dispatch", "relay upstream resumed: a trial connection worked")
    listed = subprocess.run(
        [sys.executable, "-m", "dispatch", "audit", "--category", "Relay", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert "relay upstream suspended" in listed.stdout
    assert "relay upstream resumed" in listed.stdout
