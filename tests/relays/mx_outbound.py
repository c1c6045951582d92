"""Shared by the mx relay's outbound security tests (`test_mx_security.py`,
`test_mta_sts_cache.py`): the relay as those tests build it, the DNS records of
``example.test``, a certificate for the wrong name, requests and outcomes.

The relay trusts the test CA only (``ssl_context=pki.client_context()``), never the system
store, and asks only the loopback DNS server.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from dispatch.config.settings import MxRelay
from dispatch.config.types import Port, PositiveFloat
from dispatch.monitoring.stats import Stats
from dispatch.relays.base import DeliveryRequest, DeliveryResult
from dispatch.relays.mx import MxRelayClient
from tests.relays.peers import DnsServer
from tests.relays.policy_host import PolicyHost
from tests.support.sink import Pki

MESSAGE = b"From: a@example.com\r\nTo: b@example.test\r\nSubject: sts\r\n\r\nbody\r\n"
WELL_KNOWN = "/.well-known/mta-sts.txt"


def request(path: Path, *recipients: str) -> DeliveryRequest:
    return DeliveryRequest("m1", "a@example.com", recipients, path, path.stat().st_size)


def outcomes(result: DeliveryResult) -> list[str]:
    return [o.outcome for o in result.outcomes]


def make_relay(
    dns: DnsServer,
    port: int,
    pki: Pki,
    *,
    stats: Stats,
    state: Path | None,
    policy: PolicyHost | None = None,
    **overrides: Any,
) -> MxRelayClient:
    values: dict[str, Any] = {
        "name": "direct",
        "port": Port(port),
        "nameservers": ("127.0.0.1",),
        "nameserver_port": Port(dns.port),
        "timeout_seconds": PositiveFloat(3.0),
    }
    if policy is not None:
        values["mta_sts_port"] = Port(policy.port)
    values.update(overrides)
    return MxRelayClient(
        MxRelay(**values),
        "dispatch.test",
        ssl_context=pki.client_context(),
        stats=stats,
        state_dir=state,
    )


def publish(dns: DnsServer, *, sts_id: str | None = "20261204") -> None:
    """example.test: one exchanger on 127.0.0.1, the policy host too, and the TXT record."""
    dns.add("example.test", "MX", "10 mx.example.test.")
    dns.add("mx.example.test", "A", "127.0.0.1")
    dns.add("mta-sts.example.test", "A", "127.0.0.1")
    if sts_id is not None:
        dns.add("_mta-sts.example.test", "TXT", f'"v=STSv1; id={sts_id}"')


def other_name_context(pki: Pki) -> ssl.SSLContext:
    """A server certificate from the trusted CA, but for a name that is not the exchanger's."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.ca.issue_cert("elsewhere.test").configure_cert(context)
    return context


class NoCapture:
    """The capture sink a relay set takes; only the local relay would use it."""

    async def capture(self, message_id: str) -> Path:
        raise AssertionError("an mx relay never captures")
