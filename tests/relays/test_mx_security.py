"""The mx relay's outbound security end to end: MTA-STS enforce, testing and none (RFC 8461),
the no-downgrade security levels, and their wiring through the relay set.

Real peers on loopback: the `dns_server` fixture answers MX, A and ``_mta-sts`` TXT records;
`policy_host` serves ``https://mta-sts.example.test/.well-known/mta-sts.txt`` with a trustme
certificate; aiosmtpd sinks are the exchangers, with STARTTLS and a certificate for
``mx.example.test`` (the ``pki`` fixture) or for another name, or without TLS. Helpers:
`tests.relays.mx_outbound`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dispatch.config import Settings
from dispatch.config.settings import MxRelay
from dispatch.config.types import Port, PositiveFloat
from dispatch.monitoring.stats import Stats
from dispatch.relays.registry import BrokenRelay, RelaySet
from tests.relays.mx_outbound import (
    MESSAGE,
    WELL_KNOWN,
    NoCapture,
    make_relay,
    other_name_context,
    outcomes,
    publish,
    request,
)
from tests.relays.peers import DnsServer
from tests.relays.policy_host import policy_host, policy_text
from tests.support.sink import Pki, StartSink


@pytest.fixture
def eml(tmp_path: Path) -> Path:
    path = tmp_path / "message.eml"
    path.write_bytes(MESSAGE)
    return path


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "data"


# --- MTA-STS enforce -------------------------------------------------------------------------


async def test_enforce_delivers_over_verified_tls_and_caches_the_policy(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server)
    sink = start_sink(tls="starttls")  # certificate for mx.example.test from the test CA
    stats = Stats()
    async with policy_host(pki.ca, "mta-sts.example.test") as host:
        host.serve(policy_text("enforce", "mx.example.test"))
        relay = make_relay(dns_server, sink.port, pki, stats=stats, state=state, policy=host)
        assert outcomes(await relay.deliver(request(eml, "b@example.test"))) == ["delivered"]
        assert outcomes(await relay.deliver(request(eml, "c@example.test"))) == ["delivered"]
        # One fetch, from the policy host by its name (SNI and Host), then the cache.
        assert host.requests == [
            ("mta-sts.example.test", f"mta-sts.example.test:{host.port}", WELL_KNOWN)
        ]
    assert [m.tls for m in sink.messages] == [True, True]
    assert stats.sts_cache_fetches.value == 1
    assert stats.sts_cache_hits.value == 1
    assert stats.sts_mode.values == {"enforce": 2}
    assert stats.sts_security.values == {"pass": 2}
    assert stats.smtp_out_tls.values == {"tls:secure": 2}
    cached = json.loads((state / "mta-sts" / "example.test.json").read_text())
    assert cached["id"] == "20261204"
    assert (cached["mode"], cached["mx"], cached["max_age"]) == (
        "enforce",
        ["mx.example.test"],
        86400,
    )


async def test_enforce_refuses_an_exchanger_whose_certificate_does_not_verify(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server)
    sink = start_sink(tls="starttls", tls_context=other_name_context(pki))
    stats = Stats()
    async with policy_host(pki.ca, "mta-sts.example.test") as host:
        host.serve(policy_text("enforce", "mx.example.test"))
        relay = make_relay(dns_server, sink.port, pki, stats=stats, state=state, policy=host)
        [outcome] = (await relay.deliver(request(eml, "b@example.test"))).outcomes
    assert outcome.outcome == "transient"
    assert "TLS certificate of mx.example.test[127.0.0.1]" in outcome.response
    assert "failed verification" in outcome.response
    assert "example.test requires verified TLS: its MTA-STS policy is in enforce mode" in (
        outcome.response
    )
    assert sink.messages == []
    assert stats.sts_security.values == {"fail": 1}
    assert stats.smtp_out_tls.values == {"tls:insecure": 1}  # one connection, never retried


async def test_enforce_refuses_an_exchanger_without_starttls(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server)
    sink = start_sink()  # no STARTTLS
    stats = Stats()
    async with policy_host(pki.ca, "mta-sts.example.test") as host:
        host.serve(policy_text("enforce", "mx.example.test"))
        relay = make_relay(dns_server, sink.port, pki, stats=stats, state=state, policy=host)
        [outcome] = (await relay.deliver(request(eml, "b@example.test"))).outcomes
    assert outcome.outcome == "transient"
    assert "does not offer STARTTLS" in outcome.response
    assert "requires verified TLS" in outcome.response
    assert sink.messages == []
    assert stats.sts_security.values == {"fail": 1}


async def test_enforce_refuses_when_no_exchanger_matches_the_policy(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server)
    sink = start_sink(tls="starttls")
    stats = Stats()
    async with policy_host(pki.ca, "mta-sts.example.test") as host:
        # "*." stands for one label: neither mx.example.test nor a.b.other.test would match.
        host.serve(policy_text("enforce", "*.other.test", "example.test"))
        relay = make_relay(dns_server, sink.port, pki, stats=stats, state=state, policy=host)
        [outcome] = (await relay.deliver(request(eml, "b@example.test"))).outcomes
    assert outcome.outcome == "transient"
    assert outcome.response == (
        "relay direct: no mail exchanger of example.test (mx.example.test) matches its "
        "MTA-STS policy (mx: *.other.test, example.test, mode enforce); the delivery waits "
        "until the domain's MX records or policy are fixed"
    )
    assert sink.connections == 0
    assert stats.sts_security.values == {"fail": 1}


async def test_enforce_skips_an_unlisted_exchanger_for_a_listed_one(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server)
    dns_server.add("example.test", "MX", "5 rogue.example.test.")
    dns_server.add("rogue.example.test", "A", "127.0.0.1")
    sink = start_sink(tls="starttls")
    stats = Stats()
    async with policy_host(pki.ca, "mta-sts.example.test") as host:
        host.serve(policy_text("enforce", "mx.example.test"))
        relay = make_relay(dns_server, sink.port, pki, stats=stats, state=state, policy=host)
        assert outcomes(await relay.deliver(request(eml, "b@example.test"))) == ["delivered"]
    assert ("rogue.example.test", "A") not in dns_server.queries  # never even looked up
    assert sink.connections == 1


# --- MTA-STS testing and none ----------------------------------------------------------------


async def test_testing_mode_delivers_without_tls_and_counts_the_failure(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server)
    sink = start_sink()  # plaintext only
    stats = Stats()
    async with policy_host(pki.ca, "mta-sts.example.test") as host:
        host.serve(policy_text("testing", "mx.example.test"))
        relay = make_relay(dns_server, sink.port, pki, stats=stats, state=state, policy=host)
        assert outcomes(await relay.deliver(request(eml, "b@example.test"))) == ["delivered"]
    assert not sink.messages[0].tls
    assert stats.sts_mode.values == {"testing": 1}
    assert stats.sts_security.values == {"fail": 1}
    assert stats.smtp_out_tls.values == {"plain": 1}


async def test_testing_mode_with_verified_tls_passes(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server)
    sink = start_sink(tls="starttls")
    stats = Stats()
    async with policy_host(pki.ca, "mta-sts.example.test") as host:
        host.serve(policy_text("testing", "mx.example.test"))
        relay = make_relay(dns_server, sink.port, pki, stats=stats, state=state, policy=host)
        assert outcomes(await relay.deliver(request(eml, "b@example.test"))) == ["delivered"]
    assert stats.sts_security.values == {"pass": 1}


async def test_mode_none_and_no_record_deliver_as_usual(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server)
    dns_server.add("plain.test", "MX", "10 mx.example.test.")
    sink = start_sink()
    stats = Stats()
    async with policy_host(pki.ca, "mta-sts.example.test") as host:
        host.serve(policy_text("none"))
        relay = make_relay(dns_server, sink.port, pki, stats=stats, state=state, policy=host)
        result = await relay.deliver(request(eml, "b@example.test", "c@plain.test"))
    assert outcomes(result) == ["delivered", "delivered"]
    assert stats.sts_mode.values == {"none": 1}
    assert stats.sts_security.values == {}
    assert ("_mta-sts.plain.test", "TXT") in dns_server.queries


async def test_mta_sts_false_never_looks(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server)
    sink = start_sink()
    relay = make_relay(dns_server, sink.port, pki, stats=Stats(), state=state, mta_sts=False)
    assert outcomes(await relay.deliver(request(eml, "b@example.test"))) == ["delivered"]
    assert ("_mta-sts.example.test", "TXT") not in dns_server.queries


# --- security levels --------------------------------------------------------------------------


async def test_a_domain_seen_with_verified_tls_is_never_sent_plaintext(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server, sts_id=None)
    verified = start_sink(tls="starttls")
    stats = Stats()
    first = make_relay(dns_server, verified.port, pki, stats=stats, state=state)
    assert outcomes(await first.deliver(request(eml, "b@example.test"))) == ["delivered"]
    record = json.loads((state / "domaininfo" / "example.test.json").read_text())
    assert record["outgoing_level"] == "tls_verified"
    assert stats.smtp_out_security_checks.values == {"pass": 1}

    # A restart, and the exchanger now offers no STARTTLS (an attacker stripped it).
    plain = start_sink()
    after = Stats()
    second = make_relay(dns_server, plain.port, pki, stats=after, state=state)
    [outcome] = (await second.deliver(request(eml, "b@example.test"))).outcomes
    assert outcome.outcome == "transient"
    assert "does not offer STARTTLS" in outcome.response
    assert "example.test requires verified TLS: it was seen with verified TLS before" in (
        outcome.response
    )
    assert plain.messages == []
    assert after.smtp_out_security_checks.values == {"fail": 1}

    # A forged certificate (trusted CA, wrong name) is refused the same way.
    forged = start_sink(tls="starttls", tls_context=other_name_context(pki))
    third = make_relay(dns_server, forged.port, pki, stats=after, state=state)
    [outcome] = (await third.deliver(request(eml, "b@example.test"))).outcomes
    assert outcome.outcome == "transient"
    assert "failed verification" in outcome.response
    assert forged.messages == []
    assert after.smtp_out_security_checks.values == {"fail": 2}


async def test_unverified_tls_is_recorded_and_plaintext_then_refused(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server, sts_id=None)
    unverified = start_sink(tls="starttls", tls_context=other_name_context(pki))
    stats = Stats()
    first = make_relay(dns_server, unverified.port, pki, stats=stats, state=state)
    assert outcomes(await first.deliver(request(eml, "b@example.test"))) == ["delivered"]
    assert unverified.messages[0].tls
    # Checked first (refused: wrong name), then again without verification.
    assert stats.smtp_out_tls.values == {"tls:insecure": 2}
    record = json.loads((state / "domaininfo" / "example.test.json").read_text())
    assert record["outgoing_level"] == "tls_unverified"

    plain = start_sink()
    second = make_relay(dns_server, plain.port, pki, stats=stats, state=state)
    [outcome] = (await second.deliver(request(eml, "b@example.test"))).outcomes
    assert outcome.outcome == "transient"
    assert "requires TLS with an unverified certificate" in outcome.response
    # Better is always fine, and raises the record.
    good = start_sink(tls="starttls")
    third = make_relay(dns_server, good.port, pki, stats=stats, state=state)
    assert outcomes(await third.deliver(request(eml, "b@example.test"))) == ["delivered"]
    record = json.loads((state / "domaininfo" / "example.test.json").read_text())
    assert record["outgoing_level"] == "tls_verified"


async def test_security_levels_false_allows_a_downgrade(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server, sts_id=None)
    (state / "domaininfo").mkdir(parents=True)
    (state / "domaininfo" / "example.test.json").write_text(
        '{"domain": "example.test", "outgoing_level": "tls_verified"}'
    )
    plain = start_sink()
    stats = Stats()
    relay = make_relay(dns_server, plain.port, pki, stats=stats, state=state, security_levels=False)
    assert outcomes(await relay.deliver(request(eml, "b@example.test"))) == ["delivered"]
    assert stats.smtp_out_security_checks.values == {}


# --- wiring: the relay set ----------------------------------------------------------------------


async def test_the_relay_set_keeps_levels_and_policies_in_data_dir(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, tmp_path: Path
) -> None:
    publish(dns_server)
    sink = start_sink(tls="starttls")
    stats = Stats()
    async with policy_host(pki.ca, "mta-sts.example.test") as host:
        host.serve(policy_text("enforce", "mx.example.test"))
        relay = MxRelay(
            name="direct",
            port=Port(sink.port),
            nameservers=("127.0.0.1",),
            nameserver_port=Port(dns_server.port),
            timeout_seconds=PositiveFloat(3.0),
            mta_sts_port=Port(host.port),
            ca_file=str(pki.ca_file),  # trusted for the exchanger and the policy host
        )
        settings = Settings(data_dir=str(tmp_path / "data"), relays=(relay,))
        relays = RelaySet(lambda: settings, NoCapture(), stats=stats)
        result = await relays.get("direct").deliver(request(eml, "b@example.test"))
        await relays.aclose()
    assert outcomes(result) == ["delivered"]
    assert stats.smtp_out_tls.values == {"tls:secure": 1}
    assert stats.sts_security.values == {"pass": 1}
    level = json.loads((tmp_path / "data" / "domaininfo" / "example.test.json").read_text())
    assert level["outgoing_level"] == "tls_verified"
    assert (tmp_path / "data" / "mta-sts" / "example.test.json").is_file()


async def test_an_unreadable_ca_file_names_the_key(dns_server: DnsServer, tmp_path: Path) -> None:
    relay = MxRelay(name="direct", nameservers=("127.0.0.1",), ca_file=str(tmp_path / "no.pem"))
    relays = RelaySet(lambda: Settings(data_dir=str(tmp_path), relays=(relay,)), NoCapture())
    broken = relays.get("direct")
    assert isinstance(broken, BrokenRelay)
    assert broken.reason.startswith(f"relay direct: cannot load ca_file '{tmp_path / 'no.pem'}'")
    assert 'set ca_file = "" for the system store' in broken.reason
