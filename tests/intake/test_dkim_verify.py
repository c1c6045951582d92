"""Inbound DKIM verification (listener.dkim_verify): real SMTP in with smtplib, the signers'
keys served by a loopback DNS server, the counters read from /debug/vars and /metrics.

A signed message passes, a tampered one fails, an unsigned one is "not found", a key whose
DNS server fails is a temperror (and an error), a DNS server that never answers is bounded by
dkim_verify_timeout_seconds while the 250 comes at once, and with the option off nothing is
checked at all.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from dispatch.intake.dkim_verify import MAX_VERIFY_BYTES
from dispatch.security.dkim_keys import generate_key, load_key
from tests.conftest import free_port
from tests.delivery.harness import running_dispatch
from tests.relays.peers import DnsServer
from tests.support.config import base_config
from tests.support.waiting import wait_until_async

MESSAGE = (
    b"From: sender@signer.test\r\n"
    b"To: someone@example.org\r\n"
    b"Subject: signed\r\n"
    b"\r\n"
    b"Hello from a signed domain.\r\n"
)


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer()
    yield server
    server.stop()


def signed(
    tmp_path: Path, dns_server: DnsServer, domain: str, message: bytes, *, publish: bool = True
) -> bytes:
    """``message`` signed by a fresh ed25519 key for ``domain``, published unless told."""
    made = generate_key(domain, "in", "ed25519", tmp_path / f"{domain}.key")
    if publish:
        dns_server.add(made.key.record_name, "TXT", f'"{made.key.public_record}"')
    key = load_key(domain, "in", made.path)
    header: bytes = dkim.sign(
        message,
        b"in",
        domain.encode(),
        key.private,
        signature_algorithm=b"ed25519-sha256",
    )
    return header + message


def verify_config(root: Path, dns_server: DnsServer, monitoring: int, **listener: Any) -> Any:
    return base_config(
        root,
        listener={
            "dkim_verify": True,
            "dkim_verify_nameservers": ["127.0.0.1"],
            "dkim_verify_nameserver_port": dns_server.port,
            **listener,
        },
        monitoring={"address": f"127.0.0.1:{monitoring}"},
    )


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name}{labels}")


async def test_signatures_are_checked_and_counted(tmp_path: Path, dns_server: DnsServer) -> None:
    good = signed(tmp_path, dns_server, "signer.test", MESSAGE)
    tampered = good.replace(b"Hello", b"Jello")
    unpublished = signed(tmp_path, dns_server, "nokey.test", MESSAGE, publish=False)
    dns_server.servfail.add("in._domainkey.broken.test")
    broken = signed(tmp_path, dns_server, "broken.test", MESSAGE, publish=False)
    malformed = b"DKIM-Signature: v=1; a=rsa-sha256; d=signer.test; s=in\r\n" + MESSAGE
    monitoring = free_port()
    config = verify_config(tmp_path, dns_server, monitoring)
    async with running_dispatch(tmp_path, config) as dispatch:
        for message in (good, tampered, MESSAGE, unpublished, broken, malformed):
            await dispatch.submit("a@signer.test", ["b@example.org"], message)
        stats = dispatch.parts.stats
        await wait_until_async(
            lambda: stats.dkim_verify_found.value + stats.dkim_verify_not_found.value == 6
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{monitoring}") as client:
            variables = (await client.get("/debug/vars")).json()
            metrics = (await client.get("/metrics")).text
    p = "dispatch/smtpIn/"
    assert variables[p + "dkimVerifyFound"] == 5
    assert variables[p + "dkimVerifyNotFound"] == 1
    assert variables[p + "dkimVerifyValid"] == 1
    assert variables[p + "dkimVerifyErrors"] == 1  # the SERVFAIL
    assert variables[p + "dkimVerifyResult"] == {
        "fail": 2,  # the changed body, the key that is not published
        "pass": 1,
        "permerror": 1,  # no b= tag
        "temperror": 1,
    }
    assert metric(metrics, "dispatch_dkim_verify_found_total") == 5
    assert metric(metrics, "dispatch_dkim_verify_not_found_total") == 1
    assert metric(metrics, "dispatch_dkim_verify_valid_total") == 1
    assert metric(metrics, "dispatch_dkim_verify_errors_total") == 1
    assert metric(metrics, "dispatch_dkim_verify_results_total", result="pass") == 1
    assert metric(metrics, "dispatch_dkim_verify_results_total", result="fail") == 2
    assert metric(metrics, "dispatch_dkim_verify_results_total", result="permerror") == 1
    assert metric(metrics, "dispatch_dkim_verify_results_total", result="temperror") == 1


async def test_a_silent_dns_server_is_bounded_and_the_250_comes_first(
    tmp_path: Path, dns_server: DnsServer
) -> None:
    dns_server.silent.add("in._domainkey.slow.test")
    message = signed(tmp_path, dns_server, "slow.test", MESSAGE, publish=False)
    config = verify_config(tmp_path, dns_server, free_port(), dkim_verify_timeout_seconds=1.0)
    async with running_dispatch(tmp_path, config) as dispatch:
        stats = dispatch.parts.stats

        def send() -> tuple[float, float]:
            with smtplib.SMTP("127.0.0.1", dispatch.smtp_port, timeout=10) as client:
                client.ehlo()
                client.mail("a@slow.test")
                client.rcpt("b@example.org")
                started = time.monotonic()
                code, _ = client.data(message)
                accepted = time.monotonic() - started
                assert code == 250
                client.noop()  # answered once the check has ended
                return accepted, time.monotonic() - started

        accepted, answered = await trio.to_thread.run_sync(send)
        await wait_until_async(lambda: stats.dkim_verify_errors.value == 1)
    assert accepted < 0.5  # the 250 did not wait for the lookup
    assert 0.8 < answered < 4  # the next command waited for the bound, not longer
    assert stats.dkim_verify_found.value == 0  # a check that ran out counts only as an error


async def test_off_by_default_nothing_is_checked(tmp_path: Path, dns_server: DnsServer) -> None:
    message = signed(tmp_path, dns_server, "signer.test", MESSAGE)
    async with running_dispatch(tmp_path, base_config(tmp_path)) as dispatch:
        await dispatch.submit("a@signer.test", ["b@example.org"], message)
        stats = dispatch.parts.stats
        assert stats.messages_received["smtp"] == 1
        assert stats.dkim_verify_found.value == stats.dkim_verify_not_found.value == 0
    assert dns_server.queries == []


async def test_a_message_over_the_bound_is_not_checked(
    tmp_path: Path, dns_server: DnsServer
) -> None:
    large = signed(tmp_path, dns_server, "signer.test", MESSAGE + b"x" * 998 + b"\r\n") + (
        b"y" * 998 + b"\r\n"
    ) * (MAX_VERIFY_BYTES // 1000)
    config = verify_config(tmp_path, dns_server, free_port())
    async with running_dispatch(tmp_path, config) as dispatch:
        await dispatch.submit("a@signer.test", ["b@example.org"], large)
        stats = dispatch.parts.stats
        await wait_until_async(lambda: stats.dkim_verify_errors.value == 1)
        assert stats.dkim_verify_found.value == stats.dkim_verify_not_found.value == 0
    assert dns_server.queries == []
