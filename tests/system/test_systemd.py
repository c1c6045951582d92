"""Dispatch under systemd, without systemd: a real ``python -m dispatch`` talking to a notify
socket the test binds, and serving SMTP on listening sockets the test passes it, the way the
service manager does (``contrib/dispatch.service``, ``contrib/dispatch-smtp.socket``); and
the unit files checked by ``systemd-analyze verify``."""

from __future__ import annotations

import itertools
import re
import secrets
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from dispatch.config import load_settings
from dispatch.config.advice import config_warnings
from dispatch.supervisor import DEFAULT_GRACE_SECONDS
from tests.conftest import Daemon
from tests.support.config import base_config, dump

Start = Callable[..., Daemon]
CONTRIB = Path(__file__).parents[2] / "contrib"
WITHIN = 30.0  # seconds: a bound on a hang, never what a test measures


@attrs.frozen
class Notification:
    fields: dict[str, str]
    received: float  # time.monotonic() when the test read it


class NotifySocket:
    """The service manager's side of ``NOTIFY_SOCKET``: a bound Unix datagram socket."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.seen: list[Notification] = []
        self.daemon: Daemon | None = None  # whose log a failure shows

    def expect(self, key: str, value: str = "1") -> Notification:
        """The next notification carrying ``key=value``; fail with what came, and the
        daemon's log, if none does."""
        deadline = time.monotonic() + WITHIN
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                datagram = self.sock.recv(4096)
            except TimeoutError:
                break
            lines = datagram.decode().split("\n")
            note = Notification(dict(line.split("=", 1) for line in lines), time.monotonic())
            self.seen.append(note)
            if note.fields.get(key) == value:
                return note
        log = ""
        if self.daemon is not None:
            try:
                self.daemon.wait_for("\0", timeout=1)  # no line has it: collects the log
            except AssertionError as exc:
                log = str(exc)
        raise AssertionError(f"no {key}={value} within {WITHIN} s; got {self.seen}; {log}")

    def keys_seen(self) -> list[str]:
        return [key for note in self.seen for key in note.fields if key != "STATUS"]


@pytest.fixture
def notify_path(tmp_path: Path) -> Iterator[NotifySocket]:
    receiver = NotifySocket(str(tmp_path / "notify"))
    with receiver.sock:
        yield receiver


@pytest.fixture
def notify_abstract() -> Iterator[tuple[NotifySocket, str]]:
    name = f"dispatch-test-{secrets.token_hex(8)}"
    receiver = NotifySocket(b"\0" + name.encode())
    with receiver.sock:
        yield receiver, f"@{name}"


def config(tmp_path: Path, **listener: object) -> tuple[str, int]:
    settings = base_config(tmp_path)
    settings["listener"].update(listener)
    return dump(settings), int(settings["listener"]["ports"][0])


def greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WITHIN) as client:
        return client.recv(512)


@pytest.mark.slow
def test_ready_reloading_stopping(
    start_daemon: Start, tmp_path: Path, notify_path: NotifySocket
) -> None:
    text, port = config(tmp_path)
    notify = str(notify_path.sock.getsockname())
    daemon = notify_path.daemon = start_daemon(text, env={"NOTIFY_SOCKET": notify})
    ready = notify_path.expect("READY")
    # READY=1 means the SMTP port is bound and served: a client connecting now is greeted.
    assert greeting(port).startswith(b"220 ")
    assert ready.fields["STATUS"] == f"accepting mail on SMTP port(s) {port}"
    daemon.wait_for("all components ready")

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.signal(signal.SIGHUP)
    reloading = notify_path.expect("RELOADING")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    # MONOTONIC_USEC is CLOCK_MONOTONIC at the reload's start, as systemd compares it.
    assert before <= int(reloading.fields["MONOTONIC_USEC"]) <= after
    reloaded = notify_path.expect("READY")
    assert reloaded.fields["STATUS"] == "configuration reloaded: no live key changed"

    daemon.signal(signal.SIGTERM)
    stopping = notify_path.expect("STOPPING")
    assert stopping.fields["STATUS"].startswith("stopping")
    assert daemon.wait_exit() == 0, daemon.log
    assert notify_path.keys_seen() == ["READY", "RELOADING", "MONOTONIC_USEC", "READY", "STOPPING"]


@pytest.mark.slow
def test_watchdog_pings_within_its_timeout(
    start_daemon: Start, tmp_path: Path, notify_abstract: tuple[NotifySocket, str]
) -> None:
    receiver, address = notify_abstract
    timeout = 4.0  # WatchdogSec=4s: pings every 2 s
    text, _ = config(tmp_path)
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": str(int(timeout * 1_000_000))}
    daemon = receiver.daemon = start_daemon(text, env=env)
    ready = receiver.expect("READY")
    # systemd arms the watchdog at READY=1; from then on no gap may reach the timeout.
    pings = [ready, *(receiver.expect("WATCHDOG") for _ in range(3))]
    gaps = [later.received - earlier.received for earlier, later in itertools.pairwise(pings)]
    assert all(gap < timeout for gap in gaps), gaps
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0, daemon.log


@pytest.mark.slow
def test_a_watchdog_meant_for_another_process_is_not_fed(
    start_daemon: Start, tmp_path: Path, notify_path: NotifySocket
) -> None:
    text, _ = config(tmp_path)
    env = {
        "NOTIFY_SOCKET": str(notify_path.sock.getsockname()),
        "WATCHDOG_USEC": "100000",  # pings would come every 50 ms
        "WATCHDOG_PID": "1",
    }
    daemon = notify_path.daemon = start_daemon(text, env=env)
    notify_path.expect("READY")
    time.sleep(1)  # twenty ping intervals for a wrong ping to arrive in
    daemon.signal(signal.SIGTERM)
    notify_path.expect("STOPPING")
    assert daemon.wait_exit() == 0, daemon.log
    assert "WATCHDOG" not in notify_path.keys_seen()


# systemd passes a socket unit's sockets as descriptors 3, 4, … to the process LISTEN_PID
# names. subprocess keeps passed descriptors at their numbers, so this wrapper moves them
# to 3, 4, … and execs the daemon: exec keeps the PID, so LISTEN_PID is the daemon's.
ACTIVATE = """
import fcntl, os, sys
count = int(sys.argv[1])
given = [int(fd) for fd in sys.argv[2 : 2 + count]]
held = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in given]
for fd in given:
    os.close(fd)
for number, fd in enumerate(held, start=3):
    os.dup2(fd, number)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = str(count)
os.execv(sys.executable, [sys.executable, *sys.argv[2 + count :]])
"""


def activated(sockets: list[socket.socket]) -> tuple[list[str], list[int]]:
    """The ``command`` and ``pass_fds`` that hand ``sockets`` over as systemd does."""
    fds = [sock.fileno() for sock in sockets]
    command = [sys.executable, "-c", ACTIVATE, str(len(fds)), *map(str, fds)]
    return [*command, "-m", "dispatch"], fds


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def environment_of_children(pid: int) -> list[dict[str, str]]:
    # Each thread lists the children it started (trio may spawn from a worker thread).
    tasks = Path(f"/proc/{pid}/task").iterdir()
    children = [child for task in tasks for child in (task / "children").read_text().split()]
    environments = []
    for child in children:
        raw = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        environments.append(dict(item.decode().split("=", 1) for item in raw if b"=" in item))
    return environments


@pytest.mark.slow
def test_socket_activation_serves_smtp_on_the_inherited_sockets(
    start_daemon: Start, tmp_path: Path, notify_path: NotifySocket
) -> None:
    plain, implicit = listening_socket(), listening_socket()
    with plain, implicit:
        plain_port, tls_port = (int(s.getsockname()[1]) for s in (plain, implicit))
        # The ports the sockets listen on: Dispatch binding them itself would fail (in use).
        text, _ = config(tmp_path, ports=[plain_port], tls_ports=[tls_port], processes=2)
        command, fds = activated([plain, implicit])
        env = {
            "LISTEN_FDNAMES": "smtp:smtps",
            "NOTIFY_SOCKET": str(notify_path.sock.getsockname()),
        }
        daemon = notify_path.daemon = start_daemon(text, env=env, command=command, pass_fds=fds)
        notify_path.expect("READY")
        daemon.wait_for(f"port {plain_port}: fd 3 ('smtp') inherited from systemd")
        daemon.wait_for(f"SMTP over TLS on 127.0.0.1 port {tls_port}: fd 4 ('smtps') inherited")
        # The intake workers got the sockets by descriptor passing; neither systemd's
        # variables nor the notify socket reached them.
        workers = environment_of_children(daemon.process.pid)
        assert len(workers) == 2
        for worker in workers:
            assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET"} & set(worker)

        for number in range(10):
            with smtplib.SMTP("127.0.0.1", plain_port, timeout=WITHIN) as client:
                client.sendmail("a@example.com", ["b@example.net"], f"Subject: {number}\n\nhi\n")
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with smtplib.SMTP_SSL("127.0.0.1", tls_port, timeout=WITHIN, context=context) as client:
            assert client.ehlo()[0] == 250
            # TLS from the first byte, then the implicit-TLS ports' submission policy.
            assert client.mail("a@example.com")[0] == 530
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0, daemon.log
        assert len(re.findall(r"queued spl_", daemon.log)) == 10

        # The sockets outlive the daemon, as a socket unit's do: a client that connects
        # while Dispatch is down waits in the backlog and is greeted by the next start.
        with socket.create_connection(("127.0.0.1", plain_port), timeout=WITHIN) as waiting:
            again = start_daemon(text, env=env, command=command, pass_fds=fds)
            assert waiting.recv(512).startswith(b"220 ")
            again.signal(signal.SIGTERM)
            assert again.wait_exit() == 0, again.log


@pytest.mark.slow
def test_an_inherited_socket_that_is_not_tcp_stops_the_start(
    start_daemon: Start, tmp_path: Path
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        command, fds = activated([udp])
        text, _ = config(tmp_path)
        env = {"LISTEN_FDNAMES": "smtp"}
        daemon = start_daemon(text, env=env, command=command, pass_fds=fds)
        assert daemon.wait_exit() == 1
    assert "cannot start smtp: fd 3 ('smtp') is not a TCP socket (AF_INET, SOCK_DGRAM)" in (
        daemon.log
    )


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail(
            "systemd-analyze is not installed; install it with `apt-get install systemd` "
            "(CI installs it) to verify contrib/dispatch.service and dispatch-smtp.socket."
        )
    return found


def test_unit_files_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    # verify checks that ExecStart= names an executable: point the unit at this
    # environment's console script instead of /opt/dispatch/venv/bin/dispatch.
    dispatch = Path(sys.executable).parent / "dispatch"
    assert dispatch.exists(), f"{dispatch} missing: install the package into this environment"
    for name in ("dispatch.service", "dispatch-smtp.socket"):
        text = (CONTRIB / name).read_text()
        assert name != "dispatch.service" or "/opt/dispatch/venv/bin/dispatch" in text
        (tmp_path / name).write_text(text.replace("/opt/dispatch/venv/bin/dispatch", str(dispatch)))
    checked = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / "dispatch.service"),
         str(tmp_path / "dispatch-smtp.socket")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    output = checked.stdout + checked.stderr
    assert checked.returncode == 0, output
    # verify exits 0 on unknown keys and unsafe settings too; it may only say nothing of ours.
    ours = [line for line in output.splitlines() if "dispatch" in line]
    assert ours == [], output


def test_the_service_unit_has_what_docs_deploy_promises() -> None:
    unit = (CONTRIB / "dispatch.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[0] != "#"
    )
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["User"] == "dispatch"
    assert settings["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert settings["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert settings["ProtectSystem"] == "strict"
    assert "/var/lib/dispatch" in settings["ReadWritePaths"]
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "--config /etc/dispatch/dispatch.toml" in settings["ExecStart"]
    assert int(settings["TimeoutStopSec"].rstrip("s")) > DEFAULT_GRACE_SECONDS


def test_the_example_configuration_writes_only_where_the_unit_allows(tmp_path: Path) -> None:
    # The relay password file is read when the configuration loads: put one where it can be.
    password = tmp_path / "relay-password"
    password.write_text("secret\n")
    text = (CONTRIB / "dispatch.toml").read_text()
    assert "/etc/dispatch/relay-password" in text
    path = tmp_path / "dispatch.toml"
    path.write_text(text.replace("/etc/dispatch/relay-password", str(password)))
    settings = load_settings(path)
    assert config_warnings(settings) == []
    writable = Path("/var/lib/dispatch")  # ReadWritePaths= and StateDirectory= of the unit
    assert Path(settings.data_dir) == writable
    assert Path(settings.spool.directory).is_relative_to(writable)
    assert Path(settings.database.url.removeprefix("sqlite:///")).is_relative_to(writable)
