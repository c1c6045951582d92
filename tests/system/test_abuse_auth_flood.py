"""Scenario (issue 11, item 11): a flood of simultaneous AUTH attempts from many addresses.

Each argon2 verification takes 64 MiB while it runs; sixty at once used to take the daemon
from ~100 MB to 2.6 GB and make ``/health`` miss its deadline. Now verifications run under a
machine-sized limit with a bounded queue, and an attempt beyond the queue gets ``454 4.7.0``
at once. The flood sprays usernames (unknown ones cost a decoy verification, the same work),
one attempt per loopback source address, all sent at the same moment, while ``/health`` is
probed on a fresh connection every 100 ms. Checked: every probe answers within
``health.timeout_seconds``, the daemon's peak RSS (VmHWM) stays within what the limit allows,
some attempts got the busy ``454``, and a real user still gets in afterwards.
"""

from __future__ import annotations

import base64
import signal
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from dispatch.security.passwords import QUEUE_PER_SLOT, hash_password, machine_slots
from tests.conftest import Daemon
from tests.support.config import Ports, base_config, write_config
from tests.system.faults import HealthProber, metric, report

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]
PASSWORD = "correct horse battery staple"
HEALTH_TIMEOUT = 2.0  # health.timeout_seconds, the default
MIB = 1 << 20
ARGON2_MEMORY = 64 * MIB  # argon2-cffi's default profile, which hash-password uses
MARGIN = 150 * MIB  # threads, TLS, buffers of 60+ sessions


def vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def source_addresses(count: int) -> list[str]:
    """127.0.0.2, 127.0.0.3, … (all of 127/8 is loopback on Linux)."""
    return [f"127.0.{(n + 2) // 256}.{(n + 2) % 256}" for n in range(count)]


def test_auth_flood_keeps_memory_bounded_and_health_answering(
    start_daemon: Start, tmp_path: Path
) -> None:
    slots = machine_slots()
    capacity = slots * (1 + QUEUE_PER_SLOT)  # verifying plus waiting, beyond it: busy
    attackers = max(60, 2 * capacity)  # at least twice what the daemon lets in
    ports = Ports.pick()
    config = base_config(
        tmp_path,
        ports,
        listener={
            "allow_unsecure_auth": True,
            "require_auth": True,
            "max_connections": attackers + 20,
            "users": [{"username": "alice", "password_hash": hash_password(PASSWORD)}],
        },
    )
    daemon = start_daemon(write_config(tmp_path / "dispatch.toml", config))
    daemon.wait_for("all components ready")
    pid = daemon.process.pid
    before_kib = vm_kib(pid, "VmRSS")

    prober = HealthProber(ports.webui)
    prober.thread.start()
    replies: dict[str, tuple[int, bytes, float]] = {}
    barrier = threading.Barrier(attackers)

    def attack(n: int, source: str) -> None:
        client = smtplib.SMTP(timeout=60)
        try:
            client.connect("127.0.0.1", ports.smtp, source_address=(source, 0))
            client.ehlo()
            plain = base64.b64encode(f"\0sprayed{n}\0guess{n}".encode()).decode()
            barrier.wait(timeout=60)
            sent = time.monotonic()
            code, text = client.docmd("AUTH PLAIN", plain)
            replies[source] = (code, text, time.monotonic() - sent)
        finally:
            client.close()

    try:
        time.sleep(1.0)  # probes before the flood, for comparison
        threads = [
            threading.Thread(target=attack, args=(n, source))
            for n, source in enumerate(source_addresses(attackers))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        time.sleep(1.0)  # and after
    finally:
        prober.stop.set()
        prober.thread.join(timeout=30)
    peak_kib = vm_kib(pid, "VmHWM")

    with smtplib.SMTP("127.0.0.1", ports.smtp, timeout=30) as legit:
        legit.ehlo()
        assert legit.login("alice", PASSWORD)[0] == 235
    with httpx.Client(verify=False) as client:  # noqa: S501
        metrics = client.get(f"https://127.0.0.1:{ports.webui}/metrics").text
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0

    codes = Counter(code for code, _, _ in replies.values())
    busy = [r for r in replies.values() if r[0] == 454 and b"in progress" in r[1]]
    assert len(replies) == attackers, "every attempt got an answer"
    assert set(codes) <= {535, 454}, codes
    assert busy, codes
    assert codes[535] + len(busy) == attackers  # each either checked (and wrong) or busy
    assert codes[535] >= capacity  # nothing refused while there was room in the queue
    assert metric(metrics, "dispatch_smtp_auth_total", result="busy") == len(busy)
    assert metric(metrics, "dispatch_smtp_auth_total", result="failure") == codes[535]

    assert prober.latencies
    assert set(prober.statuses) == {200}, prober.statuses
    assert max(prober.latencies) < HEALTH_TIMEOUT, sorted(prober.latencies)[-5:]
    bound = before_kib * 1024 + slots * ARGON2_MEMORY + MARGIN
    assert peak_kib * 1024 < bound, (peak_kib // 1024, bound // MIB)

    report(
        "auth flood",
        {
            "attempts at once": attackers,
            "verification slots": slots,
            "queue": slots * QUEUE_PER_SLOT,
            "replies": {str(code): n for code, n in codes.items()},
            "busy 454": len(busy),
            "slowest AUTH reply (s)": round(max(t for _, _, t in replies.values()), 3),
            "slowest busy 454 (s)": round(max(t for _, _, t in busy), 3),
            "health probes": len(prober.latencies),
            "health p99 (s)": round(prober.quantile(0.99), 3),
            "health max (s)": round(max(prober.latencies), 3),
            "RSS before (MiB)": before_kib // 1024,
            "peak RSS, VmHWM (MiB)": peak_kib // 1024,
            "bound (MiB)": bound // MIB,
        },
    )
