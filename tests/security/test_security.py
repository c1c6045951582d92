"""TLS material, allow-lists, failure throttles, password hashes."""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509

from dispatch.config import parse_settings
from dispatch.config.types import PRIVATE_AND_LOOPBACK, Cidr
from dispatch.security.allowlist import is_allowed
from dispatch.security.certs import ensure_certificate, server_context
from dispatch.security.passwords import (
    QUEUE_PER_SLOT,
    ChecksBusy,
    PasswordChecks,
    check_password,
    hash_password,
    machine_slots,
    share_among,
    verify_password,
)
from dispatch.security.throttle import FailureThrottle


def test_self_signed_certificate_is_generated_once_with_a_private_key(tmp_path: Path) -> None:
    settings = parse_settings({"data_dir": str(tmp_path / "data")})
    first = ensure_certificate(settings)
    assert first.self_signed
    assert stat.S_IMODE(os.stat(first.key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(first.key_file.parent).st_mode) == 0o700
    pem = first.cert_file.read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    again = ensure_certificate(settings)
    assert again.cert_file.read_bytes() == pem  # persisted, not regenerated
    context = server_context(again)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_broken_certificate_file_is_replaced(tmp_path: Path) -> None:
    settings = parse_settings({"data_dir": str(tmp_path)})
    files = ensure_certificate(settings)
    files.cert_file.write_text("garbage")
    files = ensure_certificate(settings)
    x509.load_pem_x509_certificate(files.cert_file.read_bytes())


def test_configured_certificate_is_used_as_is(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    generated = ensure_certificate(parse_settings({"data_dir": str(tmp_path / "gen")}))
    cert.write_bytes(generated.cert_file.read_bytes())
    key.write_bytes(generated.key_file.read_bytes())
    settings = parse_settings({"tls": {"cert_file": str(cert), "key_file": str(key)}})
    files = ensure_certificate(settings)
    assert (files.cert_file, files.key_file, files.self_signed) == (cert, key, False)


@pytest.mark.parametrize(
    ("ip", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("10.1.2.3", True),
        ("172.31.255.255", True),
        ("172.32.0.1", False),
        ("192.168.1.1", True),
        ("8.8.8.8", False),
        ("2001:db8::1", False),
        ("::ffff:10.0.0.1", True),  # IPv4-mapped: judged as the IPv4 address
        ("not-an-ip", False),
    ],
)
def test_default_allow_list(ip: str, allowed: bool) -> None:
    assert is_allowed(ip, PRIVATE_AND_LOOPBACK) is allowed


def test_empty_allow_list_allows_everyone() -> None:
    assert is_allowed("8.8.8.8", ())
    assert not is_allowed("127.0.0.1", (Cidr("127.0.0.2/32"),))


def test_a_verdict_is_remembered_per_list() -> None:
    # Verdicts are kept per address and list: a reload that changes the list decides anew.
    only_two = (Cidr("127.0.0.2/32"),)
    for _ in range(2):
        assert is_allowed("127.0.0.2", only_two)
        assert not is_allowed("127.0.0.2", (Cidr("10.0.0.0/8"),))
        assert not is_allowed("127.0.0.3", only_two)


def test_throttle_blocks_after_max_failures_for_the_window() -> None:
    now = [1000.0]
    throttle = FailureThrottle(max_failures=3, window=60, clock=lambda: now[0])
    for _ in range(2):
        throttle.record_failure("1.2.3.4")
    assert throttle.retry_after("1.2.3.4") == 0
    throttle.record_failure("1.2.3.4")
    assert throttle.retry_after("1.2.3.4") == pytest.approx(60)
    assert throttle.retry_after("5.6.7.8") == 0  # others are unaffected
    now[0] += 30
    assert throttle.retry_after("1.2.3.4") == pytest.approx(30)
    now[0] += 31
    assert throttle.retry_after("1.2.3.4") == 0
    throttle.record_failure("1.2.3.4")
    throttle.record_success("1.2.3.4")
    assert throttle.retry_after("1.2.3.4") == 0


def test_throttle_success_forgives_only_failures_with_the_same_detail() -> None:
    throttle = FailureThrottle(max_failures=3, window=60, clock=lambda: 1000.0)
    throttle.record_failure("1.2.3.4", detail="user:alice")
    throttle.record_failure("1.2.3.4", detail="user:alice")
    throttle.record_failure("1.2.3.4", detail="user:bob")
    throttle.record_success("1.2.3.4", detail="user:bob")
    assert throttle.retry_after("1.2.3.4") == 0  # bob's own failure forgiven
    throttle.record_success("1.2.3.4", detail="user:carol")
    throttle.record_success("1.2.3.4")  # a success without detail forgives none of them
    throttle.record_failure("1.2.3.4", detail="user:alice")
    assert throttle.retry_after("1.2.3.4") == pytest.approx(60)  # alice's stayed counted


async def test_password_hashes_verify_off_the_event_loop() -> None:
    hashed = await trio.to_thread.run_sync(hash_password, "correct horse battery")
    assert hashed.startswith("$argon2id$")
    assert await verify_password(hashed, "correct horse battery")
    assert not await verify_password(hashed, "wrong")
    assert not check_password("not a hash", "x")


async def test_password_checks_run_under_the_limit_and_refuse_beyond_the_queue() -> None:
    hashed = await trio.to_thread.run_sync(hash_password, "right")
    checks = PasswordChecks(slots=1, queue=1)
    seen_in_flight: list[int] = []
    results: list[bool] = []

    async def verify(password: str) -> None:
        results.append(await checks.verify(hashed, password))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(verify, "right")
        nursery.start_soon(verify, "wrong")
        await trio.testing.wait_all_tasks_blocked()
        assert (checks.in_flight, checks.waiting) == (1, 1)
        assert checks.full()  # a third would wait beyond the queue bound
        while checks.in_flight or checks.waiting:
            seen_in_flight.append(checks.in_flight)
            await trio.sleep(0.01)
    assert max(seen_in_flight) == 1
    assert sorted(results) == [False, True]
    assert not checks.full()
    assert await checks.verify(None, "anything") is False  # no such account: a decoy check
    assert 1 <= machine_slots() <= (os.process_cpu_count() or 1)


async def test_verify_password_refuses_at_once_when_the_checks_are_busy() -> None:
    hashed = await trio.to_thread.run_sync(hash_password, "right")
    checks = share_among(10_000)  # this process's share: a single slot and its queue
    try:
        assert (checks.slots, checks.queue) == (1, QUEUE_PER_SLOT)
        async with trio.open_nursery() as nursery:
            for _ in range(1 + QUEUE_PER_SLOT):
                nursery.start_soon(verify_password, hashed, "wrong")
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(ChecksBusy):
                await verify_password(hashed, "right", refuse_when_busy=True)
        assert await verify_password(hashed, "right", refuse_when_busy=True)
    finally:
        share_among(1)
