"""Implicit TLS (``listener.tls_ports``, RFC 8314) in the real daemon, with an intake worker.

``python -m dispatch`` with ``listener.processes = 2`` serves a plain port and an
implicit-TLS port; both intake worker processes accept on both, the main process on neither
(the log lines say which process took a connection). Clients: ``smtplib.SMTP_SSL`` with
AUTH, and swaks ``--tlsc``. ``/health`` lists the TLS port among the configured and
listening ports.
"""

from __future__ import annotations

import shutil
import signal
import smtplib
import ssl
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dispatch.security.passwords import hash_password
from tests.conftest import Daemon, free_port
from tests.support.config import Ports, base_config, smtp_relay, write_config
from tests.support.sink import Sink
from tests.support.waiting import wait_until
from tests.system.faults import Ops, token_message

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]
USER, PASSWORD = "app", "an app's password"
MESSAGES = 60


def test_both_processes_serve_the_implicit_tls_port(tmp_path: Path, start_daemon: Start) -> None:
    ports, sink, implicit = Ports.pick(), Sink(pipelining=False), free_port()
    config = base_config(
        tmp_path,
        ports,
        listener={
            "ports": [ports.smtp],
            "tls_ports": [implicit],
            "processes": 2,
            "users": [{"username": USER, "password_hash": hash_password(PASSWORD)}],
        },
        default_relay="upstream",
        relays=[smtp_relay("upstream", sink.port)],
    )
    try:
        daemon = start_daemon(write_config(tmp_path / "dispatch.toml", config))
        daemon.wait_for("all components ready")
        cert = tmp_path / "data" / "tls" / "selfsigned-cert.pem"
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False  # the self-signed certificate names the host, not 127.0.0.1

        def send(token: str) -> None:
            with smtplib.SMTP_SSL("127.0.0.1", implicit, timeout=30, context=context) as client:
                client.login(USER, PASSWORD)
                client.sendmail("app@example.com", [f"{token}@example.net"], token_message(token))

        tokens = [f"tls{i:03d}" for i in range(MESSAGES)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(send, tokens))
        swaks = shutil.which("swaks")
        assert swaks, "swaks is missing: apt-get install -y swaks libio-socket-ssl-perl"
        swaked = subprocess.run(
            [swaks, "--server", "127.0.0.1", "--port", str(implicit), "--tlsc",
             "--auth", "LOGIN", "--auth-user", USER, "--auth-password", PASSWORD,
             "--from", "app@example.com", "--to", "swaks@example.net",
             "--header", "X-Fault-Token: swaks"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert swaked.returncode == 0, swaked.stdout + swaked.stderr
        wait_until(lambda: len(sink.delivered()) == MESSAGES + 1, what="every message delivered")
        assert set(sink.delivered()) == {*tokens, "swaks"}
        status, health = Ops(ports.webui, tmp_path / "data").health()
        assert status == 200
        assert health["smtp"]["configuredPorts"] == [ports.smtp, implicit]
        assert health["smtp"]["listeningPorts"] == [ports.smtp, implicit]
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0, daemon.log
    finally:
        sink.stop()
    queued = [line for line in daemon.lines if " queued spl_" in line]
    assert len(queued) == MESSAGES + 1
    assert 0 < len([line for line in queued if "worker=2" in line]) < len(queued)
    assert all("worker=" in line for line in queued), "the main process took none"
    assert "Traceback" not in daemon.log
