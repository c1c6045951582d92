"""The notify protocol against real Unix datagram sockets (dispatch/systemd/notify.py)."""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from dispatch.config.live import ReloadResult
from dispatch.systemd.notify import (
    SystemdNotifier,
    notify_address,
    reload_status,
    watchdog_seconds,
)


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[socket.socket]:
    """A bound datagram socket standing in for systemd's notify socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(10)
        yield sock


def fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


def test_addresses_of_notify_socket_values() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@dispatch/notify") == b"\0dispatch/notify"
    assert notify_address("vsock:2:1234") is None
    assert notify_address("relative/path") is None
    assert notify_address("@") is None


def test_watchdog_is_ours_only_when_the_pid_matches_or_is_absent() -> None:
    assert watchdog_seconds("30000000", None, 42) == 30.0
    assert watchdog_seconds("30000000", "42", 42) == 30.0
    assert watchdog_seconds("30000000", "43", 42) is None
    assert watchdog_seconds(None, None, 42) is None
    with pytest.raises(ValueError, match="WATCHDOG_USEC=0"):
        watchdog_seconds("0", None, 42)


def test_from_environment_takes_the_variables_out(manager: socket.socket) -> None:
    env = {
        "NOTIFY_SOCKET": manager.getsockname(),
        "WATCHDOG_USEC": "4000000",
        "WATCHDOG_PID": "77",
        "PATH": "/usr/bin",
    }
    notifier = SystemdNotifier.from_environment(env, pid=77)
    assert env == {"PATH": "/usr/bin"}
    assert notifier.enabled
    assert notifier.watchdog == 4.0


def test_nothing_happens_without_notify_socket() -> None:
    env = {"WATCHDOG_USEC": "4000000"}
    notifier = SystemdNotifier.from_environment(env)
    assert not notifier.enabled
    assert notifier.watchdog is None
    assert env == {}
    assert notifier.send("READY=1") is False


def test_ready_reload_stop_in_order(manager: socket.socket) -> None:
    notifier = SystemdNotifier(manager.getsockname())
    notifier.reloading()  # before READY=1: the manager is not told of a reload
    notifier.ready("accepting mail")
    assert fields(manager.recv(4096)) == {"READY": "1", "STATUS": "accepting mail"}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading = fields(manager.recv(4096))
    assert reloading["RELOADING"] == "1"
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after
    notifier.reloaded("configuration reloaded\nwith a second line")
    assert fields(manager.recv(4096)) == {
        "READY": "1",
        "STATUS": "configuration reloaded\\nwith a second line",
    }
    notifier.stopping("stopping")
    assert fields(manager.recv(4096)) == {"STOPPING": "1", "STATUS": "stopping"}
    notifier.ready("late")  # never READY=1 after STOPPING=1
    notifier.reloading()
    notifier.status("last words")
    assert fields(manager.recv(4096)) == {"STATUS": "last words"}


def test_abstract_namespace_socket() -> None:
    name = f"dispatch-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(10)
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": f"@{name}"})
        notifier.ready("up")
        assert fields(sock.recv(4096))["READY"] == "1"


def test_send_failures_are_logged_once_and_never_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier(str(tmp_path / "nobody-listens-here"))
    with caplog.at_level(logging.DEBUG, logger="dispatch.systemd"):
        assert notifier.send("WATCHDOG=1") is False
        assert notifier.send("WATCHDOG=1") is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cannot notify systemd" in warnings[0].getMessage()


def test_a_full_manager_queue_never_blocks_the_sender(manager: socket.socket) -> None:
    notifier = SystemdNotifier(manager.getsockname())
    results: list[bool] = []
    # Nothing reads the socket: its queue fills (net.unix.max_dgram_qlen, 10 by default,
    # or the receive buffer). A blocking sendto would hang this thread for ever.
    sender = threading.Thread(
        target=lambda: results.extend(notifier.send("WATCHDOG=1") for _ in range(2000)),
        daemon=True,
    )
    sender.start()
    sender.join(timeout=30)
    assert not sender.is_alive(), "sending blocked on a full notify socket"
    assert True in results
    assert False in results  # some were dropped, not waited for


def test_reload_status_says_what_the_reload_did() -> None:
    assert "live keys applied" in reload_status(ReloadResult(applied=True))
    assert "no live key changed" in reload_status(ReloadResult(applied=False))
    rejected = reload_status(ReloadResult(applied=False, problems=("a", "b")))
    assert "rejected" in rejected
    assert "2 problem" in rejected
    restart = reload_status(ReloadResult(applied=True, needs_restart=("listener.ports",)))
    assert "listener.ports" in restart


async def test_watchdog_pings_from_the_trio_loop(manager: socket.socket) -> None:
    notifier = SystemdNotifier(manager.getsockname(), watchdog=0.02)
    receiver = trio.socket.from_stdlib_socket(manager)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(notifier.feed_watchdog, 0.01)
        with trio.fail_after(10):
            pings = [await receiver.recv(4096) for _ in range(3)]
        nursery.cancel_scope.cancel()
    assert pings == [b"WATCHDOG=1"] * 3
