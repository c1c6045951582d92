"""A plain start with the default ``listener.processes`` ("auto") uses every usable core.

``python -m dispatch`` with a configuration that does not name ``listener.processes`` starts
one intake worker per usable core (at most 8) when there is more than one, and mail sent over
many connections is accepted by the workers only (the main process takes no session) and
delivered once each. Run under ``taskset`` with one core, the same configuration starts no
worker at all: the main process takes the sessions.
"""

from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dispatch.config.types import MAX_AUTO_PROCESSES
from tests.support.config import Ports, base_config, dump, smtp_relay
from tests.support.sink import Sink
from tests.support.waiting import wait_until
from tests.system.test_intake_processes import Start, accepted_by, send_one, worker_pids

pytestmark = pytest.mark.slow

MESSAGES = 60


def default_processes_config(tmp_path: Path, ports: Ports, sink: Sink) -> str:
    config = base_config(
        tmp_path, ports, default_relay="upstream", relays=[smtp_relay("upstream", sink.port)]
    )
    del config["listener"]["processes"]  # the default, as a new user has it
    return dump(config)


def test_the_default_starts_a_worker_per_extra_core(tmp_path: Path, start_daemon: Start) -> None:
    processes = min(len(os.sched_getaffinity(0)), MAX_AUTO_PROCESSES)
    workers = processes if processes > 1 else 0
    ports, sink = Ports.pick(), Sink(pipelining=False)
    try:
        daemon = start_daemon(default_processes_config(tmp_path, ports, sink))
        daemon.wait_for("all components ready")
        assert len(worker_pids(daemon)) == workers
        tokens = [f"tok{i:03d}" for i in range(MESSAGES)]
        with ThreadPoolExecutor(max_workers=12) as pool:
            list(pool.map(lambda t: send_one(ports.smtp, t), tokens))
        wait_until(lambda: len(sink.delivered()) == MESSAGES, what="every message delivered")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0, daemon.log
    finally:
        sink.stop()
    delivered = sink.delivered()
    assert set(delivered) == set(tokens)
    assert all(len(copies) == 1 for t in tokens for copies in delivered[t].values())
    takers = accepted_by(daemon)
    assert takers.total() == MESSAGES
    if workers:
        assert "main" not in takers, "the main process leaves the sessions to the workers"
        assert len(takers) > 1, "more than one worker accepted"
    else:
        assert set(takers) == {"main"}


def test_one_usable_core_starts_no_worker(tmp_path: Path, start_daemon: Start) -> None:
    ports, sink = Ports.pick(), Sink(pipelining=False)
    first = min(os.sched_getaffinity(0))
    try:
        daemon = start_daemon(
            default_processes_config(tmp_path, ports, sink),
            command=("taskset", "-c", str(first), sys.executable, "-m", "dispatch"),
        )
        daemon.wait_for("all components ready")
        assert worker_pids(daemon) == []
        send_one(ports.smtp, "single")
        wait_until(lambda: "single" in sink.delivered(), what="the message delivered")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0, daemon.log
    finally:
        sink.stop()
