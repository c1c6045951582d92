"""MTA-STS through the real composition root: smtplib → Dispatch → the mx relay, against a
loopback DNS server, a loopback HTTPS policy host and an aiosmtpd exchanger.

The recipient domain publishes an ``enforce`` policy. While its exchanger offers no
STARTTLS the message waits in the spool with the reason; once the exchanger offers TLS with a
certificate valid for its name, the retry delivers it. The relay trusts the test CA through
its ``ca_file`` (for both the policy host and the exchanger), as an operator would configure
a private CA.
"""

from __future__ import annotations

from pathlib import Path

from dispatch.monitoring.vars import JsonValue, ProcessInfo, debug_vars
from tests.conftest import free_port
from tests.delivery.harness import running_dispatch
from tests.relays.peers import DnsServer
from tests.relays.policy_host import policy_host, policy_text
from tests.support.config import base_config
from tests.support.sink import Pki, StartSink
from tests.support.waiting import wait_until_async


def by_key(document: dict[str, JsonValue], name: str) -> dict[str, int]:
    """A counter map of ``/debug/vars`` (``{key: count}``)."""
    value = document[name]
    assert isinstance(value, dict)
    return {key: count for key, count in value.items() if isinstance(count, int)}


MESSAGE = b"From: a@example.com\r\nTo: b@example.test\r\nSubject: sts\r\n\r\nbody\r\n"


async def test_an_enforced_policy_holds_mail_until_the_exchanger_has_valid_tls(
    tmp_path: Path, start_sink: StartSink, pki: Pki, dns_server: DnsServer
) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    dns_server.add("mx.example.test", "A", "127.0.0.1")
    dns_server.add("mta-sts.example.test", "A", "127.0.0.1")
    dns_server.add("_mta-sts.example.test", "TXT", '"v=STSv1; id=e2e1"')
    port = free_port()
    plain = start_sink(port=port)  # no STARTTLS: an enforced policy refuses it
    async with policy_host(pki.ca, "mta-sts.example.test") as host:
        host.serve(policy_text("enforce", "mx.example.test"))
        relay = {
            "name": "direct",
            "kind": "mx",
            "port": port,
            "nameservers": ["127.0.0.1"],
            "nameserver_port": dns_server.port,
            "timeout_seconds": 5,
            "mta_sts_port": host.port,
            "ca_file": str(pki.ca_file),
        }
        config = base_config(
            tmp_path,
            relays=[relay],
            spool={"retry_delays_seconds": [0.3], "max_retries": 20},
        )
        async with running_dispatch(tmp_path, config) as dispatch:
            message_id = await dispatch.submit("a@example.com", ["b@example.test"], MESSAGE)
            spool = dispatch.parts.spool
            await wait_until_async(lambda: spool.get(message_id).envelope.attempts >= 1)
            reason = spool.get(message_id).envelope.last_error or ""
            assert "mx.example.test[127.0.0.1]" in reason
            assert "does not offer STARTTLS" in reason
            assert "example.test requires verified TLS: its MTA-STS policy is in enforce mode" in (
                reason
            )
            assert plain.messages == []
            plain.stop()
            tls = start_sink(tls="starttls", port=port)  # pki: a certificate for mx.example.test
            await wait_until_async(lambda: len(tls.messages) == 1)
            await wait_until_async(lambda: spool.counts().total == 0)
            stats = dispatch.parts.stats
            document = debug_vars(
                stats, ProcessInfo.current(), spool_counts=spool.counts(), relays=[]
            )
    assert tls.messages[0].tls
    assert len(host.requests) == 1  # fetched once, then from the cache
    assert by_key(document, "dispatch/smtpOut/sts/mode")["enforce"] >= 2
    assert by_key(document, "dispatch/smtpOut/sts/security")["fail"] >= 1
    assert by_key(document, "dispatch/smtpOut/sts/security")["pass"] == 1
    assert by_key(document, "dispatch/smtpOut/tlsCount")["tls:secure"] == 1
    assert document["dispatch/sts/cache/fetches"] == 1
    hits = document["dispatch/sts/cache/hits"]
    assert isinstance(hits, int)
    assert hits >= 1
    assert (tmp_path / "data" / "mta-sts" / "example.test.json").is_file()
    assert (tmp_path / "data" / "domaininfo" / "example.test.json").is_file()
