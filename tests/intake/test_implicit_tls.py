"""listener.tls_ports (issue 11, item 16): implicit TLS (RFC 8314), then the submission policy.

One listener serves a plain port and an implicit-TLS port with the certificate of STARTTLS
(a trustme CA the clients trust). Clients: ``smtplib.SMTP_SSL`` and swaks ``--tlsc``.
"""

from __future__ import annotations

import logging
import shutil
import smtplib
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from dispatch.security.certs import CertificateFiles
from dispatch.security.passwords import hash_password
from tests.conftest import free_port
from tests.intake.conftest import Smtpd, in_thread, running_smtpd

USER, PASSWORD = "alice", "alice's secret"
MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


@pytest.fixture
async def tls_port(
    spool_dir: Path, tls_files: tuple[trustme.CA, CertificateFiles]
) -> AsyncIterator[Smtpd]:
    plain, implicit = free_port(), free_port()
    live: dict[str, Any] = {
        "ports": [plain],
        "tls_ports": [implicit],
        "connection_timeout_seconds": 10,
        "users": [{"username": USER, "password_hash": hash_password(PASSWORD)}],
    }
    async with running_smtpd(spool_dir, tls_files, live, {"tls": implicit, "plain": plain}) as s:
        yield s


def ssl_client(smtpd: Smtpd) -> smtplib.SMTP_SSL:
    return smtplib.SMTP_SSL(
        "127.0.0.1", smtpd.ports["tls"], timeout=10, context=smtpd.client_context()
    )


async def test_smtp_ssl_gets_tls_from_the_first_byte_then_the_submission_policy(
    tls_port: Smtpd,
) -> None:
    def session() -> dict[str, Any]:
        with ssl_client(tls_port) as client:
            client.ehlo()
            seen: dict[str, Any] = {
                "tls": client.sock.version(),  # type: ignore[union-attr]
                "starttls offered": client.has_extn("starttls"),
                "auth offered": client.has_extn("auth"),
                "starttls": client.docmd("STARTTLS")[0],
                "mail before auth": client.docmd("MAIL FROM:<a@example.com>"),
            }
            client.login(USER, PASSWORD)
            seen["refused"] = client.sendmail("a@example.com", ["b@x.test"], MESSAGE)
            return seen

    seen = await in_thread(session)
    assert seen["tls"] in ("TLSv1.2", "TLSv1.3")
    assert not seen["starttls offered"]  # RFC 8314: already TLS
    assert seen["auth offered"]  # over TLS, with no allow_unsecure_auth needed
    assert seen["starttls"] >= 500
    assert seen["mail before auth"][0] == 530
    assert seen["mail before auth"][1].startswith(b"5.7.0")
    assert seen["refused"] == {}
    assert tls_port.spool.counts().incoming == 1
    assert tls_port.stats.smtp_sessions["tls"] == 1


async def test_swaks_tlsc_sends_through_the_implicit_tls_port(tls_port: Smtpd) -> None:
    swaks = shutil.which("swaks")
    assert swaks, "swaks is missing: apt-get install -y swaks libio-socket-ssl-perl (.ci/run does)"
    command = [
        swaks,
        "--server", "127.0.0.1",
        "--port", str(tls_port.ports["tls"]),
        "--tlsc",
        "--auth", "PLAIN",
        "--auth-user", USER,
        "--auth-password", PASSWORD,
        "--from", "a@example.com",
        "--to", "b@x.test",
        "--timeout", "10",
    ]  # fmt: skip

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    done = await in_thread(run)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TLS started" in done.stdout
    assert "235 2.7.0" in done.stdout
    assert "250 2.0.0 Ok: queued as spl_" in done.stdout
    assert tls_port.spool.counts().incoming == 1


async def test_a_plaintext_client_on_the_tls_port_is_dropped_quietly(
    tls_port: Smtpd, caplog: pytest.LogCaptureFixture
) -> None:
    def plaintext() -> bytes:
        with socket.create_connection(("127.0.0.1", tls_port.ports["tls"]), 10) as sock:
            sock.sendall(b"EHLO plain.example\r\n")
            data = b""
            while chunk := sock.recv(1024):
                data += chunk
            return data

    with caplog.at_level(logging.INFO, logger="dispatch.smtp"):
        answer = await in_thread(plaintext)
    assert b"220" not in answer  # never an SMTP greeting in plaintext on this port
    assert any("implicit TLS handshake" in r.getMessage() for r in caplog.records)
    failed = [r for r in caplog.records if "handshake" in r.getMessage()]
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in failed)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    # The port still serves TLS clients, and the plain port is plain.
    def both() -> tuple[int, bool]:
        with ssl_client(tls_port) as client:
            code = client.noop()[0]
        with smtplib.SMTP("127.0.0.1", tls_port.ports["plain"], timeout=10) as client:
            client.ehlo()
            return code, client.has_extn("starttls")

    assert await in_thread(both) == (250, True)


async def test_refusals_on_the_tls_port_are_counted_and_send_no_plaintext(
    tls_port: Smtpd,
) -> None:
    tls_port.configure(allowed_cidrs=["10.0.0.0/8"])

    def refused() -> bytes:
        with socket.create_connection(("127.0.0.1", tls_port.ports["tls"]), 10) as sock:
            data = b""
            while chunk := sock.recv(1024):
                data += chunk
            return data

    assert await in_thread(refused) == b""  # closed; a plaintext 554 would garble a handshake
    assert tls_port.stats.smtp_denied["allowlist"] == 1
