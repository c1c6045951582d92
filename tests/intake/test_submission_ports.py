"""listener.submission_ports (issue 11, item 15): a port with the submission policy.

One listener serves a plain port and a submission port with the same (live) settings, which
allow AUTH without TLS: the policy of the port decides, as Postfix's master.cf ``submission``
service and chasquid's 587 do.
"""

from __future__ import annotations

import smtplib
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
async def two_ports(
    spool_dir: Path, tls_files: tuple[trustme.CA, CertificateFiles]
) -> AsyncIterator[Smtpd]:
    plain, submission = free_port(), free_port()
    live: dict[str, Any] = {
        "ports": [plain, submission],
        "submission_ports": [submission],
        "allow_unsecure_auth": True,  # on the plain port; never on the submission port
        "users": [{"username": USER, "password_hash": hash_password(PASSWORD)}],
    }
    ports = {"plain": plain, "submission": submission}
    async with running_smtpd(spool_dir, tls_files, live, ports) as smtpd:
        yield smtpd


def connect(smtpd: Smtpd, name: str) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", smtpd.ports[name], timeout=10)


async def test_submission_port_wants_tls_before_auth_and_auth_before_mail(
    two_ports: Smtpd,
) -> None:
    def before_tls() -> dict[str, Any]:
        with connect(two_ports, "submission") as client:
            client.ehlo()
            seen: dict[str, Any] = {
                "auth offered": client.has_extn("auth"),
                "starttls offered": client.has_extn("starttls"),
                "mail": client.docmd("MAIL FROM:<a@example.com>"),
                "auth": client.docmd("AUTH PLAIN", "AGFsaWNlAGFsaWNlJ3Mgc2VjcmV0"),
            }
            return seen

    seen = await in_thread(before_tls)
    assert not seen["auth offered"]
    assert seen["starttls offered"]
    assert seen["mail"][0] == 530
    assert seen["mail"][1].startswith(b"5.7.0")
    assert seen["auth"][0] == 538  # whatever allow_unsecure_auth says

    def after_tls() -> tuple[bool, tuple[int, bytes], tuple[int, bytes], dict[str, Any]]:
        with connect(two_ports, "submission") as client:
            client.starttls(context=two_ports.client_context())
            client.ehlo()
            offered = client.has_extn("auth")
            refused = client.docmd("MAIL FROM:<a@example.com>")
            client.rset()
            login = client.login(USER, PASSWORD)
            return offered, refused, login, client.sendmail("a@example.com", ["b@x.test"], MESSAGE)

    offered, refused, login, rejected = await in_thread(after_tls)
    assert offered
    assert refused[0] == 530  # TLS alone is not enough: AUTH first
    assert login[0] == 235
    assert rejected == {}
    assert two_ports.spool.counts().incoming == 1
    assert [e.event for e in two_ports.events] == ["received"]


async def test_plain_port_keeps_todays_behaviour_beside_it(two_ports: Smtpd) -> None:
    def plain() -> tuple[bool, dict[str, Any]]:
        with connect(two_ports, "plain") as client:
            client.ehlo()
            offered = client.has_extn("auth")  # allow_unsecure_auth applies here
            return offered, client.sendmail("a@example.com", ["b@x.test"], MESSAGE)

    offered, rejected = await in_thread(plain)
    assert offered
    assert rejected == {}  # no AUTH needed: require_auth is false (SPEC §2 default)


async def test_the_policy_is_live(two_ports: Smtpd) -> None:
    two_ports.configure(submission_ports=[])  # a reload: new sessions on that port are plain

    def now_plain() -> int:
        with connect(two_ports, "submission") as client:
            client.ehlo()
            return client.docmd("MAIL FROM:<a@example.com>")[0]

    assert await in_thread(now_plain) == 250


async def test_default_has_no_submission_port(smtpd: Smtpd) -> None:
    users = [{"username": USER, "password_hash": hash_password(PASSWORD)}]
    smtpd.configure(allow_unsecure_auth=True, users=users)

    def default() -> tuple[bool, int]:
        with smtpd.client() as client:
            client.ehlo()
            return client.has_extn("auth"), client.docmd("MAIL FROM:<a@example.com>")[0]

    assert await in_thread(default) == (True, 250)
