"""With ``listener.processes = 2`` the main process takes no SMTP session: ``/health`` never
waits behind one.

``python -m dispatch`` with two intake workers. With both workers stopped (SIGSTOP: intake as
saturated as it gets, nothing accepts), a new SMTP connection gets no greeting — the main
process does not take it — while ``/health`` keeps answering within
``health.timeout_seconds`` with both ports listed as listening. Once the workers continue,
the waiting connection is greeted by one of them. And while clients keep every session slot
of the workers busy with mail, each ``/health`` probe still answers within its deadline, and
every message is taken by a worker.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import smtplib
import socket
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.config import Ports, base_config, smtp_relay, write_config
from tests.support.sink import Sink
from tests.support.waiting import wait_until
from tests.system.faults import Ops, token_message
from tests.system.test_intake_processes import Start, accepted_by, worker_pids

pytestmark = pytest.mark.slow

HEALTH_DEADLINE_SECONDS = 5.0  # health.timeout_seconds: every answer is due within it
SENDERS = 16
PROBES = 10
GREETING_SECONDS = 30.0  # a continued worker greets the waiting connection well within this


def config(tmp_path: Path, ports: Ports, sink: Sink) -> dict[str, object]:
    return base_config(
        tmp_path,
        ports,
        listener={"processes": 2},
        health={"timeout_seconds": HEALTH_DEADLINE_SECONDS},
        default_relay="upstream",
        relays=[smtp_relay("upstream", sink.port)],
    )


def probe_health(ops: Ops) -> tuple[int, dict[str, object]]:
    """One ``/health`` probe; an answer later than ``health.timeout_seconds`` fails it."""
    cert = ops.data_dir / "tls" / "selfsigned-cert.pem"
    context = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(
        base_url=f"https://127.0.0.1:{ops.port}", verify=context, timeout=HEALTH_DEADLINE_SECONDS
    ) as client:
        response = client.get("/health")
    return response.status_code, response.json()


@contextlib.contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_with_the_workers_stopped_no_session_starts_and_health_answers(
    tmp_path: Path, start_daemon: Start
) -> None:
    ports, sink = Ports.pick(), Sink(pipelining=False)
    try:
        daemon = start_daemon(write_config(tmp_path / "c.toml", config(tmp_path, ports, sink)))
        daemon.wait_for("all components ready")
        workers = worker_pids(daemon)
        assert len(workers) == 2
        ops = Ops(ports.webui, tmp_path / "data")
        waiting = socket.socket()
        with contextlib.closing(waiting):
            with stopped(workers):
                # The kernel completes the handshake (the socket listens); only a process
                # that accepts the connection would greet it. The /health probes meanwhile
                # give a main process that did every chance to.
                waiting.connect(("127.0.0.1", ports.smtp))
                for _ in range(PROBES):
                    status, document = probe_health(ops)
                    assert status == 200, document
                    assert document["smtp"] == {
                        "configuredPorts": [ports.smtp],
                        "listeningPorts": [ports.smtp],
                        "ports": [ports.smtp],
                    }
                readable, _, _ = select.select([waiting], [], [], 0)
                assert not readable, "greeted with the workers stopped: the main process took it"
            waiting.settimeout(GREETING_SECONDS)
            assert waiting.recv(512).startswith(b"220 "), "a worker greets it once continued"
            waiting.sendall(b"QUIT\r\n")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0, daemon.log
    finally:
        sink.stop()


def test_health_answers_within_its_deadline_while_the_workers_are_busy(
    tmp_path: Path, start_daemon: Start
) -> None:
    ports, sink = Ports.pick(), Sink(pipelining=False)
    sending = threading.Event()
    sent: list[str] = []

    def keep_sending(number: int) -> None:
        with smtplib.SMTP("127.0.0.1", ports.smtp, timeout=60) as client:
            count = 0
            while sending.is_set() or count == 0:
                token = f"s{number:02d}m{count:04d}"
                client.sendmail("app@example.com", [f"{token}@example.net"], token_message(token))
                sent.append(token)
                count += 1

    try:
        daemon = start_daemon(write_config(tmp_path / "c.toml", config(tmp_path, ports, sink)))
        daemon.wait_for("all components ready")
        ops = Ops(ports.webui, tmp_path / "data")
        sending.set()
        with ThreadPoolExecutor(max_workers=SENDERS) as pool:
            senders = [pool.submit(keep_sending, number) for number in range(SENDERS)]
            try:
                wait_until(lambda: len(sent) >= SENDERS, what="every sender under way")
                answers = [probe_health(ops) for _ in range(PROBES)]
            finally:
                sending.clear()
            for sender in senders:
                sender.result()
        assert [status for status, _ in answers] == [200] * PROBES, answers
        daemon.signal(signal.SIGTERM)  # the log then holds a queued line for every message
        assert daemon.wait_exit() == 0, daemon.log
    finally:
        sink.stop()
    takers = accepted_by(daemon)
    assert takers.total() == len(sent)
    assert "main" not in takers, "every session was a worker's"
