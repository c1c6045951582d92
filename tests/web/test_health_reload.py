"""``health.queue_age_warning_seconds`` is live: a real ``python -m dispatch``, the key changed
in its file and SIGHUP, /health read over HTTPS with httpx (issue 14, item 10).

The queue is kept behind by an upstream that accepts connections and never speaks: the one
delivery worker waits on it, so later messages stay due. The same wait is fine under the
first value of the key, degraded under the second, fine again under the third.
"""

from __future__ import annotations

import signal
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Daemon
from tests.support.config import Ports, base_config, smtp_relay, write_config
from tests.support.waiting import wait_until


class SilentUpstream:
    """Accepts connections on 127.0.0.1 and never sends a byte, until :meth:`close`."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:  # closed
                return
            self.held.append(connection)

    def close(self) -> None:
        self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept() below
        self._server.close()
        self._thread.join(timeout=10)
        for connection in self.held:
            connection.close()


def health(ports: Ports, data_dir: Path) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=str(data_dir / "tls" / "selfsigned-cert.pem"))
    with httpx.Client(verify=context, timeout=10) as client:
        body: dict[str, Any] = client.get(f"https://127.0.0.1:{ports.webui}/health").json()
    return body


def send(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("a@example.com", ["b@example.org"], b"Subject: q\r\n\r\nqueued\r\n")


def test_a_reload_of_queue_age_warning_seconds_applies(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    upstream = SilentUpstream()
    ports = Ports.pick()

    def config(warning: float) -> dict[str, Any]:
        return base_config(
            tmp_path,
            ports,
            default_relay="upstream",
            relays=[smtp_relay("upstream", upstream.port, timeout_seconds=300)],
            spool={"worker_count": 1},
            health={"queue_age_warning_seconds": warning},
        )

    try:
        daemon = start_daemon(write_config(tmp_path / "dispatch.toml", config(3600)))
        daemon.wait_for("all components ready")
        for _ in range(3):  # one in the worker, one claimed for it, one due in the queue
            send(ports.smtp)
        seen: list[dict[str, Any]] = []

        def waited_over(seconds: float) -> bool:
            seen.append(health(ports, tmp_path / "data"))
            oldest = seen[-1]["checks"]["delivery"]["oldestDueSeconds"]
            return oldest is not None and oldest > seconds

        wait_until(lambda: waited_over(1.5), what="a due message waiting over 1.5 s")
        tolerant = seen[-1]

        write_config(tmp_path / "dispatch.toml", config(1))
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: waited_over(1.5) and seen[-1]["status"] == "degraded", what="degraded")
        strict = seen[-1]
        reload_line = daemon.wait_for("configuration reloaded")

        write_config(tmp_path / "dispatch.toml", config(3600))
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: waited_over(1.5) and seen[-1]["status"] == "healthy", what="healthy")
        relaxed = seen[-1]
        assert len(upstream.held) == 1  # the worker still waits on the same connection
    finally:
        upstream.close()  # the held attempt fails at once: the daemon stops without waiting
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0, daemon.log

    assert tolerant["status"] == "healthy"
    assert tolerant["checks"]["delivery"]["status"] == "ok"
    assert tolerant["checks"]["delivery"]["queueAgeWarningSeconds"] == 3600
    assert "live keys applied" in reload_line
    delivery = strict["checks"]["delivery"]
    assert delivery["status"] == "degraded"
    assert delivery["queueAgeWarningSeconds"] == 1
    assert "over health.queue_age_warning_seconds (1 s)" in delivery["error"]
    assert delivery["relays"]["upstream"]["state"] == "ok"  # only the queue is behind
    assert relaxed["checks"]["delivery"]["queueAgeWarningSeconds"] == 3600
    assert relaxed["checks"]["delivery"]["oldestDueSeconds"] > 1.5
