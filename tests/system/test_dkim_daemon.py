"""DKIM in the daemon as an operator runs it: ``python -m dispatch`` with two SMTP processes,
a key made by ``dispatch dkim generate``, inbound verification on, a loopback DNS server.

Signed mail sent over many connections lands in both intake worker processes (the main
process takes no session); each is checked after its 250 and counted in the worker that took
it, and the figures reach the main process's /metrics. Every message leaves signed for the
sink, where dkimpy verifies it.
"""

from __future__ import annotations

import signal
import smtplib
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dkim
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from dispatch.security.dkim_keys import load_key
from tests.conftest import Daemon
from tests.relays.peers import DnsServer
from tests.support.config import Ports, base_config, smtp_relay, write_config
from tests.support.sink import Sink
from tests.support.waiting import wait_until
from tests.system.faults import Ops, metric

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]
MESSAGES = 30


def message(n: int) -> bytes:
    return (
        f"From: app@example.com\r\nTo: x@example.net\r\nSubject: n{n}\r\n\r\nbody {n}\r\n"
    ).encode()


def test_two_processes_verify_count_and_sign(tmp_path: Path, start_daemon: Start) -> None:
    dns_server, sink, ports = DnsServer(), Sink(), Ports.pick()
    try:
        key_path = tmp_path / "example.com.key"
        made = subprocess.run(
            [sys.executable, "-m", "dispatch", "dkim", "generate", "example.com",
             "--selector", "s1", "--out", str(key_path)],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        record = next(line for line in made.stdout.splitlines() if " IN TXT " in line)
        dns_server.add("s1._domainkey.example.com", "TXT", record.split(" IN TXT ", 1)[1])
        config = base_config(
            tmp_path,
            ports,
            listener={
                "ports": [ports.smtp],
                "bind_address": "127.0.0.1",
                "processes": 2,
                "dkim_verify": True,
                "dkim_verify_nameservers": ["127.0.0.1"],
                "dkim_verify_nameserver_port": dns_server.port,
            },
            relays=[smtp_relay("upstream", sink.port)],
            dkim=[{"domain": "example.com", "selector": "s1", "private_key_file": str(key_path)}],
        )
        daemon = start_daemon(write_config(tmp_path / "c.toml", config))
        daemon.wait_for("all components ready")
        # The client's own signature (the same key: the domain signs at its submission).
        key = load_key("example.com", "s1", key_path)

        def send(n: int) -> None:
            body = message(n)
            signed = dkim.sign(body, b"s1", b"example.com", key.private) + body
            with smtplib.SMTP("127.0.0.1", ports.smtp, timeout=30) as client:
                client.sendmail("app@example.com", ["x@example.net"], signed)

        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(send, range(MESSAGES)))
        wait_until(lambda: len(sink.messages) == MESSAGES, what="every message delivered")
        ops = Ops(ports.webui, tmp_path / "data")
        wait_until(  # worker counters arrive every second
            lambda: metric(ops.metrics(), "dispatch_dkim_verify_valid_total") == MESSAGES,
            what="/metrics to count every valid signature",
        )
        text = ops.metrics()
        assert metric(text, "dispatch_dkim_verify_found_total") == MESSAGES
        assert metric(text, "dispatch_dkim_verify_results_total", result="pass") == MESSAGES
        assert metric(text, "dispatch_dkim_signed_total") == MESSAGES
        assert metric(text, "dispatch_dkim_sign_errors_total") == 0
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0, daemon.log
    finally:
        sink.stop()
        dns_server.stop()
    queued = [line for line in daemon.lines if " queued spl_" in line]
    assert any("worker=2" in line for line in queued), "the first worker took some"
    assert all("worker=" in line for line in queued), "the main process took none"
    rdata = dns.rdata.from_text(
        dns.rdataclass.IN, dns.rdatatype.TXT, record.split(" IN TXT ", 1)[1]
    )
    value = b"".join(rdata.strings)  # type: ignore[attr-defined]

    def published(_name: bytes, timeout: float = 5) -> bytes:
        return value

    for received in sink.messages:
        # Ours on top, the client's below it: both verify against the published record.
        assert received.content.count(b"DKIM-Signature:") == 2
        checker = dkim.DKIM(received.content)
        assert checker.verify(0, dnsfunc=published)
        assert checker.verify(1, dnsfunc=published)
