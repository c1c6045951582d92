"""MTA-STS parsing and matching (RFC 8461 §3.1, §3.2, §4.1), the cache's expiry, and where
the outbound security counters appear: the smtp relay's TLS count, ``/debug/vars`` and
``/metrics``."""

from __future__ import annotations

import ssl
from pathlib import Path

import dns.asyncresolver
import pytest
import trio
from prometheus_client.exposition import generate_latest

from dispatch.config.settings import SmtpRelay
from dispatch.config.types import Port, PositiveFloat
from dispatch.monitoring.metrics import DatabaseFigures, MetricsCollector, build_registry
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.vars import ProcessInfo, debug_vars
from dispatch.relays.base import DeliveryRequest
from dispatch.relays.security_levels import DomainLevels, SecurityLevel
from dispatch.relays.smarthost import SmtpRelayClient
from dispatch.relays.sts_cache import StsPolicies
from dispatch.relays.sts_policy import Policy, PolicyError, mx_matches, parse_policy, parse_txt
from dispatch.spool.index import SpoolCounts
from tests.relays.peers import DnsServer
from tests.relays.policy_host import policy_host, policy_text
from tests.support.sink import Pki, StartSink

COUNTS = SpoolCounts(incoming=0, retrying=0, processing=0, failed=0, total_bytes=0)


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("mx.example.com", "mx.example.com", True),
        ("mx.example.com", "MX.Example.COM.", True),
        ("*.example.com", "mx1.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", ".example.com", False),
        ("mx.example.com", "mx.example.com.evil.test", False),
    ],
)
def test_mx_patterns(pattern: str, host: str, matches: bool) -> None:
    assert mx_matches(pattern, host) is matches


def test_a_policy_parses_with_crlf_or_lf_and_ignores_unknown_keys() -> None:
    text = "version: STSv1\nmode: enforce\nmx: MX1.example.com.\nmx: *.example.net\n"
    text += "max_age: 604800\nextension: ignored\n"
    assert parse_policy(text) == Policy("enforce", 604800, ("mx1.example.com", "*.example.net"))
    assert parse_policy(text.replace("\n", "\r\n")) == parse_policy(text)
    assert parse_policy("version: STSv1\r\nmode: none\r\nmax_age: 1\r\n").mx == ()
    huge = parse_policy(policy_text("testing", "a.test", max_age=99_999_999))
    assert huge.max_age == 31_557_600  # RFC 8461 §3.2's limit


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("mode: enforce\nmx: a.test\nmax_age: 1\n", "version is missing, not STSv1"),
        ("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n", "version is STSv2"),
        ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "mode strict is not"),
        ("version: STSv1\nmode: enforce\nmax_age: 1\n", "mode enforce without any mx line"),
        ("version: STSv1\nmode: enforce\nmx: a.test\n", "max_age is missing"),
        ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n", "max_age '-1'"),
        ("version: STSv1\nmode: enforce\nmx: a.*.test\nmax_age: 1\n", "mx 'a.*.test'"),
        ("<html>policy</html>\n", "is not 'key: value'"),
    ],
)
def test_invalid_policies_say_what_is_wrong(text: str, error: str) -> None:
    with pytest.raises(PolicyError, match=error.replace("*", r"\*").replace(".", r"\.")):
        parse_policy(text)


def test_txt_records() -> None:
    assert parse_txt(["v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"
    assert parse_txt(["v=spf1 -all", "v=STSv1;id=abc"]) == "abc"
    assert parse_txt(["v=spf1 -all"]) is None
    with pytest.raises(PolicyError, match="2 STSv1 TXT records"):
        parse_txt(["v=STSv1; id=a", "v=STSv1; id=b"])
    with pytest.raises(PolicyError, match="without a valid id"):
        parse_txt(["v=STSv1; id=not-alnum"])
    with pytest.raises(PolicyError, match="without a valid id"):
        parse_txt(["v=STSv1;"])


async def test_an_expired_policy_is_fetched_again(
    dns_server: DnsServer, pki: Pki, tmp_path: Path
) -> None:
    dns_server.add("_mta-sts.example.test", "TXT", '"v=STSv1; id=1"')
    dns_server.add("mta-sts.example.test", "A", "127.0.0.1")
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], dns_server.port
    now = [1_000_000.0]
    stats = Stats()
    async with policy_host(pki.ca, "mta-sts.example.test") as host:
        host.serve(policy_text("enforce", "mx.example.test", max_age=600))
        policies = StsPolicies(
            label="relay t",
            resolver=resolver,
            ssl_context=pki.client_context(),
            directory=tmp_path,
            stats=stats,
            port=host.port,
            clock=lambda: now[0],
        )
        first = await policies.policy_for("example.test")
        now[0] += 599
        assert await policies.policy_for("example.test") == first
        now[0] += 1
        host.serve(policy_text("testing", "mx.example.test", max_age=600))
        second = await policies.policy_for("example.test")
    assert first is not None
    assert first.mode == "enforce"
    assert second is not None
    assert second.mode == "testing"
    assert (stats.sts_cache_fetches.value, stats.sts_cache_hits.value) == (2, 1)
    assert stats.sts_cache_expired.value == 1


async def test_concurrent_lookups_of_one_domain_share_one_fetch(
    dns_server: DnsServer, pki: Pki, tmp_path: Path
) -> None:
    dns_server.add("_mta-sts.example.test", "TXT", '"v=STSv1; id=1"')
    dns_server.add("mta-sts.example.test", "A", "127.0.0.1")
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], dns_server.port
    stats = Stats()
    found: list[Policy | None] = []
    async with policy_host(pki.ca, "mta-sts.example.test") as host:
        host.serve(policy_text("enforce", "mx.example.test"))
        policies = StsPolicies(
            label="relay t",
            resolver=resolver,
            ssl_context=pki.client_context(),
            directory=tmp_path,
            stats=stats,
            port=host.port,
        )

        async def look() -> None:
            found.append(await policies.policy_for("example.test"))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(look)
    assert len(host.requests) == 1
    assert (stats.sts_cache_fetches.value, stats.sts_cache_hits.value) == (1, 4)
    assert len(found) == 5
    assert len(set(found)) == 1
    assert found[0] is not None
    assert policies._locks == {}  # no lock kept for a domain nobody is looking up


async def test_the_level_store_never_lowers_and_keeps_odd_names_in_memory(
    tmp_path: Path,
) -> None:
    levels = DomainLevels(tmp_path)
    await levels.record("example.test", SecurityLevel.TLS_VERIFIED)
    await levels.record("example.test", SecurityLevel.PLAIN)
    assert await DomainLevels(tmp_path).best("example.test") == SecurityLevel.TLS_VERIFIED
    await levels.record("../escape", SecurityLevel.TLS_VERIFIED)
    assert await levels.best("../escape") == SecurityLevel.TLS_VERIFIED
    assert sorted(p.name for p in await trio.Path(tmp_path).iterdir()) == ["example.test.json"]
    (tmp_path / "broken.test.json").write_text("{")
    assert await DomainLevels(tmp_path).best("broken.test") == SecurityLevel.PLAIN


async def test_the_smtp_relay_counts_each_connections_tls(
    start_sink: StartSink, pki: Pki, tmp_path: Path
) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    sink = start_sink(tls="starttls")
    stats = Stats()
    settings = SmtpRelay(
        name="primary",
        host="127.0.0.1",
        port=Port(sink.port),
        tls="starttls",
        timeout_seconds=PositiveFloat(5.0),
    )
    relay = SmtpRelayClient(
        settings, "dispatch.test", ssl_context=pki.client_context(), tls_count=stats.smtp_out_tls
    )
    request = DeliveryRequest("m1", "a@example.com", ("b@example.org",), eml, eml.stat().st_size)
    assert [o.outcome for o in (await relay.deliver(request)).outcomes] == ["delivered"]
    await relay.aclose()
    unverified = ssl.create_default_context()
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    other = SmtpRelayClient(
        settings, "dispatch.test", ssl_context=unverified, tls_count=stats.smtp_out_tls
    )
    assert [o.outcome for o in (await other.deliver(request)).outcomes] == ["delivered"]
    await other.aclose()
    assert stats.smtp_out_tls.values == {"tls:secure": 1, "tls:insecure": 1}


def test_debug_vars_and_metrics_use_chasquid_and_prometheus_names() -> None:
    stats = Stats()
    stats.smtp_out_tls.add("tls:secure")
    stats.smtp_out_security_checks.add("fail")
    stats.sts_mode.add("enforce")
    stats.sts_security.add("pass")
    stats.sts_cache_hits.add(3)
    stats.sts_cache_failed_fetch.add()
    document = debug_vars(stats, ProcessInfo.current(), spool_counts=COUNTS, relays=[])
    assert document["dispatch/smtpOut/tlsCount"] == {"tls:secure": 1}
    assert document["dispatch/smtpOut/securityLevelChecks"] == {"fail": 1}
    assert document["dispatch/smtpOut/sts/mode"] == {"enforce": 1}
    assert document["dispatch/smtpOut/sts/security"] == {"pass": 1}
    assert document["dispatch/sts/cache/hits"] == 3
    assert document["dispatch/sts/cache/failedFetch"] == 1
    for name in ("fetches", "expired", "invalid", "ioErrors", "marshalErrors", "unmarshalErrors"):
        assert document[f"dispatch/sts/cache/{name}"] == 0
    collector = MetricsCollector(
        stats=stats,
        spool_counts=lambda: COUNTS,
        relays=list,
        database_reachable=lambda: True,
        figures=DatabaseFigures(),
    )
    registry = build_registry(collector)
    text = generate_latest(registry).decode()
    assert 'dispatch_smtp_out_tls_total{status="tls:secure"} 1.0' in text
    assert 'dispatch_smtp_out_tls_total{status="plain"} 0.0' in text
    assert 'dispatch_smtp_out_security_level_checks_total{result="fail"} 1.0' in text
    assert 'dispatch_sts_mode_total{mode="enforce"} 1.0' in text
    assert 'dispatch_sts_security_checks_total{result="pass"} 1.0' in text
    assert "dispatch_sts_cache_hits_total 3.0" in text
    assert "dispatch_sts_cache_failed_fetches_total 1.0" in text
