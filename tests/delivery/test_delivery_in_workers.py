"""``listener.processes = 2``: the relay dialogue runs in the intake worker processes.

The daemon runs as ``python -m dispatch``; delivery goes to a real aiosmtpd upstream. Which
process talked to the upstream is read from the kernel: the sink records each connection's
client address, and ``/proc/net/tcp`` with ``/proc/PID/fd`` says which process holds that
socket (the relay pools its connections, so they stay open after the delivery). The main
process keeps the spool, the log and the traces: a worker killed with SIGKILL in the middle
of a DATA loses nothing, and a reload that moves the relay to another port reaches the
workers.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import Daemon, free_port
from tests.support.config import Ports, base_config, smtp_relay, write_config
from tests.support.sink import Sink
from tests.support.waiting import wait_until
from tests.system.faults import token_message

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]


def config(
    tmp_path: Path, ports: Ports, relay_port: int, monitoring: str = ""
) -> dict[str, object]:
    return base_config(
        tmp_path,
        ports,
        monitoring={"address": monitoring},
        listener={"ports": [ports.smtp], "bind_address": "127.0.0.1", "processes": 2},
        spool={"directory": str(tmp_path / "spool"), "retry_delays_seconds": [1, 1, 1]},
        default_relay="upstream",
        relays=[smtp_relay("upstream", relay_port)],
    )


def send(port: int, tokens: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for token in tokens:
            client.sendmail("app@example.com", [f"{token}@example.net"], token_message(token))


def worker_pids(daemon: Daemon) -> list[int]:
    tasks = Path(f"/proc/{daemon.process.pid}/task")
    pids = [int(p) for task in tasks.iterdir() for p in (task / "children").read_text().split()]
    return [p for p in pids if b"intake-worker" in Path(f"/proc/{p}/cmdline").read_bytes()]


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def owner_of(client_port: int, pids: list[int]) -> int | None:
    """The process among ``pids`` holding the TCP socket whose local port is ``client_port``."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rpartition(":")[2], 16) == client_port:
            inode = fields[9]
    if inode is None:
        return None
    return next((pid for pid in pids if inode in socket_inodes(pid)), None)


def upstream_owners(daemon: Daemon, sink: Sink) -> dict[int, int | None]:
    """Each connection the sink saw (by client port) → the daemon process holding it."""
    pids = [daemon.process.pid, *worker_pids(daemon)]
    return {peer[1]: owner_of(peer[1], pids) for peer in list(sink.handler.peers)}


def fetch(url: str) -> str:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return response.text


def test_the_workers_talk_to_the_upstream_and_the_main_process_settles(
    tmp_path: Path, start_daemon: Start
) -> None:
    ports, sink, monitoring = Ports.pick(), Sink(pipelining=True), f"127.0.0.1:{free_port()}"
    try:
        settings = config(tmp_path, ports, sink.port, monitoring)
        daemon = start_daemon(write_config(tmp_path / "c.toml", settings))
        daemon.wait_for("all components ready")
        tokens = [f"tok{i:03d}" for i in range(30)]
        send(ports.smtp, tokens)
        wait_until(lambda: set(sink.delivered()) == set(tokens), what="every message delivered")
        owners = upstream_owners(daemon, sink)
        workers = set(worker_pids(daemon))
        assert owners, "the sink saw no connection"
        assert set(owners.values()) <= workers, (owners, workers, daemon.process.pid)
        # The main process settled them: nothing left in the spool, each delivered once.
        wait_until(lambda: not list((tmp_path / "spool" / "processing").iterdir()), what="settled")
        assert all(len(r) == 1 for by in sink.delivered().values() for r in by.values())
        # The upstream dialogue the worker ran is in the main process's traces.
        listed = fetch(f"http://{monitoring}/debug/traces?family=relay.dialogue&show=0")
        assert "relay upstream" in listed
        trace_id = re.search(r"traces\?id=([\w-]+)", listed)
        assert trace_id is not None, listed[-2000:]
        dialogue = fetch(f"http://{monitoring}/debug/traces?id={trace_id.group(1)}")
        assert "MAIL FROM:&lt;app@example.com&gt;" in dialogue, dialogue[-3000:]
        assert "250 2.0.0 Ok: queued as" in dialogue
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0, daemon.log
    finally:
        sink.stop()


def test_a_worker_killed_mid_data_loses_nothing(tmp_path: Path, start_daemon: Start) -> None:
    ports, sink = Ports.pick(), Sink(pipelining=True, data_delay=1.5)
    try:
        settings = config(tmp_path, ports, sink.port)
        daemon = start_daemon(write_config(tmp_path / "c.toml", settings))
        daemon.wait_for("all components ready")
        tokens = [f"kill{i:02d}" for i in range(6)]
        send(ports.smtp, tokens)
        assert sink.handler.data_started.wait(30), "no delivery reached DATA"
        owners = upstream_owners(daemon, sink)
        delivering = {pid for pid in owners.values() if pid in worker_pids(daemon)}
        assert delivering, f"no worker holds an upstream connection: {owners}"
        for pid in delivering:
            os.kill(pid, signal.SIGKILL)
        daemon.wait_for("exited while delivering it through upstream")
        wait_until(
            lambda: set(sink.delivered()) == set(tokens),
            within=60,
            what="every message delivered after the kill",
        )
        wait_until(lambda: not list((tmp_path / "spool" / "processing").iterdir()), what="settled")
        assert not list((tmp_path / "spool" / "failed").iterdir())
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0, daemon.log
    finally:
        sink.stop()


def test_a_reload_that_moves_the_relay_reaches_the_workers(
    tmp_path: Path, start_daemon: Start
) -> None:
    ports, first, second = Ports.pick(), Sink(), Sink()
    try:
        settings = config(tmp_path, ports, first.port)
        daemon = start_daemon(write_config(tmp_path / "c.toml", settings))
        daemon.wait_for("all components ready")
        send(ports.smtp, ["before"])
        wait_until(lambda: "before" in first.delivered(), what="the first message delivered")
        write_config(tmp_path / "dispatch.toml", config(tmp_path, ports, second.port))
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("configuration reloaded")
        send(ports.smtp, ["after"])
        wait_until(lambda: "after" in second.delivered(), what="the second to the new port")
        assert "after" not in first.delivered()
        owners = upstream_owners(daemon, second)
        assert set(owners.values()) <= set(worker_pids(daemon)), owners
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0, daemon.log
    finally:
        first.stop()
        second.stop()
