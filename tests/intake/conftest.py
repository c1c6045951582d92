"""A real SMTP listener on 127.0.0.1 with a real spool, run inside the test's Trio loop."""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme

from dispatch.config import parse_settings
from dispatch.config.settings import ListenerSettings, Settings
from dispatch.intake.listener import SmtpListener
from dispatch.intake.ports import bind_smtp_ports
from dispatch.intake.processes import IntakeWorkers
from dispatch.intake.records import received
from dispatch.intake.session import IntakeContext
from dispatch.lifecycle import Shutdown
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.traces import Tracer
from dispatch.security.certs import CertificateFiles, server_context
from dispatch.security.throttle import FailureThrottle
from dispatch.spool import Spool
from dispatch.storage.records import AuditEntry, MessageEvent
from tests.conftest import free_port


@attrs.define
class Smtpd:
    """A running listener and what the tests need to look at it."""

    port: int
    root: Path
    listener: SmtpListener
    spool: Spool
    stats: Stats
    shutdown: Shutdown
    ca: trustme.CA
    settings: dict[str, Any]
    events: list[MessageEvent]
    ports: dict[str, int] = attrs.Factory(dict)  # every port it serves, by name
    audited: list[AuditEntry] = attrs.Factory(list)  # what the listener handed to the audit log
    sockets: list[trio.SocketListener] = attrs.Factory(list)  # what the listener accepts on

    def configure(self, **listener: Any) -> None:
        """Change live listener keys, as a SIGHUP reload would."""
        self.settings.update(listener)

    def client(self, timeout: float = 10) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, timeout=timeout)

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[trustme.CA, CertificateFiles]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return ca, CertificateFiles(cert_file, key_file, self_signed=False)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    """Where the listener's spool lives; override it to put the spool somewhere special."""
    return tmp_path / "spool"


@asynccontextmanager
async def running_smtpd(
    spool_dir: Path,
    tls_files: tuple[trustme.CA, CertificateFiles],
    live: dict[str, Any],
    ports: dict[str, int],
    tracer: Tracer | None = None,
    limiter: trio.CapacityLimiter | None = None,
) -> AsyncIterator[Smtpd]:
    """A listener on 127.0.0.1 serving ``ports`` (name → number; the first is ``Smtpd.port``)
    with the listener settings ``live`` (changed by ``Smtpd.configure``), until the block ends.
    ``tracer``: a fresh :class:`Tracer` unless given; ``limiter``: the spool's threads."""
    ca, files = tls_files
    spool = await Spool.open(spool_dir, limiter=limiter)
    stats = Stats()
    events: list[MessageEvent] = []
    audited: list[AuditEntry] = []

    def settings() -> ListenerSettings:
        return parse_settings({"listener": live}).listener

    context = IntakeContext(
        settings=settings,
        spool=spool,
        stats=stats,
        auth_throttle=FailureThrottle(max_failures=3, window=60),
        tls=server_context(files),
        record=events.append,
        received=lambda envelope, subject: events.append(received(envelope, subject=subject)),
        tracer=tracer or Tracer(),
        audit=audited.append,
    )
    current = settings()
    listeners, bound = await bind_smtp_ports(current.ports, ("127.0.0.1",), current.tls_ports)
    listener = SmtpListener(context, bound)
    shutdown = Shutdown(grace_seconds=5)
    port = next(iter(ports.values()))
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.serve, listeners, shutdown)
        yield Smtpd(
            port,
            spool_dir,
            listener,
            spool,
            stats,
            shutdown,
            ca,
            live,
            events,
            ports,
            audited,
            sockets=listeners,
        )
        shutdown.request()


@pytest.fixture
async def smtpd(
    spool_dir: Path, tls_files: tuple[trustme.CA, CertificateFiles]
) -> AsyncIterator[Smtpd]:
    port = free_port()
    live: dict[str, Any] = {"connection_timeout_seconds": 10, "ports": [port]}
    async with running_smtpd(spool_dir, tls_files, live, {"smtp": port}) as running:
        yield running


Blocking = Callable[[], Any]


async def in_thread(fn: Blocking) -> Any:
    """Run a blocking smtplib conversation without blocking the listener's event loop."""
    return await trio.to_thread.run_sync(fn)


def raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.recv(1024)  # the greeting
    return sock


def until_354(sock: socket.socket) -> bytes:
    """The replies up to the 354 to DATA (a client must wait for it, RFC 2920 §3.1)."""
    data = b""
    while b"354 " not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def at_data(port: int) -> socket.socket:
    """A connection whose transaction has been given its 354: the message's bytes go next."""
    sock = raw(port)
    sock.sendall(b"EHLO x\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
    until_354(sock)
    return sock


# --- one real intake worker process, run by IntakeWorkers in the test's Trio loop ----------


def write_worker_config(path: Path, port: int, listener: str = "") -> None:
    """A configuration with one intake worker (``processes = 2``) on ``port``; ``listener``
    adds lines to the ``[listener]`` table."""
    path.write_text(
        f'data_dir = "{path.parent / "data"}"\n'
        "[listener]\n"
        f'ports = [{port}]\nbind_address = "127.0.0.1"\nprocesses = 2\n'
        f"{listener}"
        "[spool]\n"
        f'directory = "{path.parent / "spool"}"\n'
    )


@asynccontextmanager
async def one_intake_worker(
    listeners: list[trio.SocketListener],
    settings: Callable[[], Settings],
    spool: Spool,
    *,
    record: Callable[[MessageEvent], None],
    audit: Callable[[AuditEntry], None],
    wait_changed: Callable[[], Awaitable[None]] = trio.sleep_forever,
) -> AsyncIterator[None]:
    """A real ``python -m dispatch intake-worker`` accepting on ``listeners`` (the test runs
    no listener of its own, so every connection lands on it) until the block ends; then it is
    stopped and the listeners closed."""
    workers = IntakeWorkers(
        1,
        settings=settings,
        wait_changed=wait_changed,
        spool=spool,
        stats=Stats(),
        record=record,
        audit=audit,
    )
    shutdown = Shutdown(grace_seconds=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(workers.run, listeners, shutdown)
        yield
        shutdown.request()
    for listener in listeners:
        await listener.aclose()
