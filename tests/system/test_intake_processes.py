"""``listener.processes = 2``: two intake worker processes on the same port, end to end.

The daemon runs as ``python -m dispatch``; with two processes it starts two intake workers
and its main process takes no SMTP session itself. Mail sent over many connections is
accepted by both workers and never by the main process (the log lines say which process took
each message), delivered to a real upstream, counted once in ``/metrics`` and logged once in
the database. Each worker runs on a core of its own (``listener.pin_processes``), or on any
with the key off. A worker killed with SIGKILL is started again, and a message it committed
without getting to announce it is found on disk and delivered.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import socket
import sqlite3
import struct
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx
import pytest

from dispatch.intake.worker import NICENESS
from dispatch.spool import MessageState, new_id
from dispatch.spool.envelope import Envelope
from tests.conftest import Daemon, free_port
from tests.support.config import Ports, base_config, smtp_relay, write_config
from tests.support.sink import Sink
from tests.support.waiting import wait_until
from tests.system.faults import Ops, log_rows, metric, token_message

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]

MESSAGES = 120
WORKER = re.compile(r"\bworker=\d+")


def config(tmp_path: Path, ports: Ports, sink: Sink) -> dict[str, object]:
    return base_config(
        tmp_path,
        ports,
        listener={"ports": [ports.smtp], "bind_address": "127.0.0.1", "processes": 2},
        default_relay="upstream",
        relays=[smtp_relay("upstream", sink.port)],
    )


def send_one(port: int, token: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("app@example.com", [f"{token}@example.net"], token_message(token))


def advertised_size(port: int) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("reload.test")
        return client.esmtp_features["size"]


def worker_pids(daemon: Daemon) -> list[int]:
    tasks = Path(f"/proc/{daemon.process.pid}/task")
    pids = [int(p) for task in tasks.iterdir() for p in (task / "children").read_text().split()]
    return [p for p in pids if b"intake-worker" in Path(f"/proc/{p}/cmdline").read_bytes()]


def worker_pid(daemon: Daemon, number: int) -> int:
    """The pid of intake worker ``number`` (its ``--number=`` argument)."""
    wanted = f"--number={number}".encode()
    (pid,) = [
        p
        for p in worker_pids(daemon)
        if wanted in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
    ]
    return pid


def held(daemon: Daemon) -> list[int]:
    """The connections each worker holds, as the main process's counts file says
    (``intake/balance.py``, read through /proc): -1 while a worker is not running."""
    for fd in Path(f"/proc/{daemon.process.pid}/fd").iterdir():
        if os.readlink(fd).startswith("/memfd:dispatch-intake-connections"):
            data = fd.read_bytes()
            return list(struct.unpack(f"{len(data) // 4}i", data))
    raise AssertionError("the main process has no counts file")


def greeted(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    assert sock.recv(1024).startswith(b"220 ")
    return sock


def normal_process(pid: int) -> bool:
    """Whether every thread of process ``pid`` runs under the normal policy."""
    policies = set()
    for thread in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # an idle Trio thread that just ended
            policies.add(os.sched_getscheduler(int(thread)))
    return policies == {os.SCHED_OTHER}


def accepted_by(daemon: Daemon) -> Counter[str]:
    """Which process took each message queued so far: ``worker=N``, or ``main``."""
    takers = (WORKER.search(line) for line in daemon.lines if " queued spl_" in line)
    return Counter(found.group(0) if found else "main" for found in takers)


def test_two_processes_share_the_port_and_lose_nothing(tmp_path: Path, start_daemon: Start) -> None:
    ports, sink = Ports.pick(), Sink(pipelining=False)
    try:
        monitoring_port = free_port()
        settings = config(tmp_path, ports, sink)
        settings["monitoring"] = {"address": f"127.0.0.1:{monitoring_port}"}
        daemon = start_daemon(write_config(tmp_path / "c.toml", settings))
        daemon.wait_for("all components ready")
        assert len(worker_pids(daemon)) == 2
        tokens = [f"tok{i:04d}" for i in range(MESSAGES)]
        with ThreadPoolExecutor(max_workers=12) as pool:
            list(pool.map(lambda t: send_one(ports.smtp, t), tokens))
        wait_until(lambda: len(sink.delivered()) == MESSAGES, what="every message delivered")
        assert set(sink.delivered()) == set(tokens)
        # The workers yield a contended core to the main process (intake/worker.py) in every
        # thread, their commit threads included by now: Linux's nice is per thread.
        main_nice = os.getpriority(os.PRIO_PROCESS, daemon.process.pid)
        for pid in worker_pids(daemon):
            threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            assert {os.getpriority(os.PRIO_PROCESS, t) for t in threads} == {main_nice + NICENESS}
        # A worker is a batch process only while it fills its core (intake/batch_policy.py):
        # idle again, every thread of it is a normal one, as the main process always is.
        for pid in worker_pids(daemon):
            wait_until(partial(normal_process, pid), what=f"worker {pid} normal once idle")
        assert os.sched_getscheduler(daemon.process.pid) == os.SCHED_OTHER
        # listener.pin_processes (default): each worker, every thread, on a core of its own,
        # chosen round robin over the daemon's cores; the main process is not pinned.
        daemon_cores = sorted(os.sched_getaffinity(daemon.process.pid))
        assert daemon_cores == sorted(os.sched_getaffinity(0))
        pinned = {}
        for number in (2, 3):
            pid = worker_pid(daemon, number)
            threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            pinned[number] = {frozenset(os.sched_getaffinity(t)) for t in threads}
        first, second = daemon_cores[0], daemon_cores[1 % len(daemon_cores)]
        assert pinned == {2: {frozenset({first})}, 3: {frozenset({second})}}

        ops = Ops(ports.webui, tmp_path / "data")
        wait_until(  # worker counters arrive every second
            lambda: (
                metric(ops.metrics(), "dispatch_messages_received_total", source="smtp") == MESSAGES
            ),
            what="/metrics to count every message",
        )
        # The workers keep no traces, and the trace page says so.
        traces = httpx.get(f"http://127.0.0.1:{monitoring_port}/debug/traces", timeout=10)
        assert traces.status_code == 200, traces.text
        assert "SMTP sessions run in 2 intake worker processes" in traces.text

        # A live key reloaded by SIGHUP reaches the worker too: every connection sees it.
        reloaded = config(tmp_path, ports, sink)
        reloaded["listener"] = {**reloaded["listener"], "max_message_bytes": 123_456}  # type: ignore[dict-item]
        write_config(tmp_path / "dispatch.toml", reloaded)
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("configuration reloaded")
        daemon.wait_for("listener settings of the reload applied")  # pushed to the worker
        # Both processes have it now: twelve connections in a row, wherever they land, see it.
        assert {advertised_size(ports.smtp) for _ in range(12)} == {"123456"}

        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0, daemon.log
    finally:
        sink.stop()
    takers = accepted_by(daemon)
    assert takers.total() == MESSAGES
    assert set(takers) == {"worker=2", "worker=3"}, "both workers and only they took sessions"
    rows = log_rows(tmp_path / "data" / "dispatch.db")
    received = [r.message_id for r in rows if r.event == "received"]
    assert len(received) == len(set(received)) == MESSAGES
    # The workers' Committed announcements carry each Subject into the main process's log.
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "dispatch.db")) as db:
        subjects = {
            r[0]
            for r in db.execute("SELECT subject FROM message_log WHERE event = ?", ("received",))
        }
    assert subjects == {f"fault {token}" for token in tokens}
    assert "intake worker 2 ended" not in daemon.log
    assert "intake worker 3 ended" not in daemon.log


def plant_committed_message(spool: Path, token: str) -> str:
    """What a worker leaves when it dies between its commit and its announcement."""
    message_id = new_id()
    envelope = Envelope(
        id=message_id,
        mail_from="app@example.com",
        recipients=(f"{token}@example.net",),
        source="smtp",
        peer_ip="127.0.0.1",
        auth_identity=None,
        tags=(),
        received_at=time.time(),
        size=0,
        attempts=0,
        next_attempt_at=time.time(),
    )
    incoming = spool / MessageState.INCOMING.value
    (incoming / f"{message_id}.eml").write_bytes(token_message(token))
    (incoming / f"{message_id}.json").write_bytes(envelope.to_json())
    return message_id


def test_a_killed_worker_is_restarted_and_its_unannounced_message_delivered(
    tmp_path: Path, start_daemon: Start
) -> None:
    ports, sink = Ports.pick(), Sink(pipelining=False)
    unpinned = config(tmp_path, ports, sink)
    unpinned["listener"] = {**unpinned["listener"], "pin_processes": False}  # type: ignore[dict-item]
    try:
        daemon = start_daemon(write_config(tmp_path / "c.toml", unpinned))
        daemon.wait_for("all components ready")
        first = worker_pid(daemon, 2)
        plant_committed_message(tmp_path / "spool", "orphan")
        # Connections that stay, until worker 2 holds one (they are shared out).
        kept = [greeted(ports.smtp)]
        while held(daemon)[0] < 1:
            assert len(kept) < 10, held(daemon)
            kept.append(greeted(ports.smtp))
        assert sum(held(daemon)) == len(kept)
        os.kill(first, signal.SIGKILL)
        daemon.wait_for("intake worker 2 ended")
        # Its count is gone with it: worker 3 alone shares out what comes meanwhile.
        assert held(daemon)[0] in (-1, 0)  # absent, or its successor already started
        for sock in kept:
            sock.close()
        wait_until(lambda: len(worker_pids(daemon)) == 2 and first not in worker_pids(daemon))
        wait_until(lambda: held(daemon)[0] == 0, what="the restarted worker counted in")
        wait_until(lambda: "orphan" in sink.delivered(), what="the unannounced message")
        daemon.wait_for("committed by a worker that ended, queued")
        for i in range(10):  # and the restarted pair serves as before
            send_one(ports.smtp, f"after{i}")
        wait_until(lambda: len(sink.delivered()) == 11, what="the later messages")
        # listener.pin_processes = false: the restarted worker (serving by now) is not told a
        # core and runs on any of the daemon's.
        restarted = worker_pid(daemon, 2)
        assert not any(
            a.startswith(b"--core")
            for a in Path(f"/proc/{restarted}/cmdline").read_bytes().split(b"\0")
        )
        assert os.sched_getaffinity(restarted) == os.sched_getaffinity(daemon.process.pid)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0, daemon.log
    finally:
        sink.stop()
    assert len(sink.delivered()["orphan"]["orphan@example.net"]) == 1
