"""The mx relay end to end: a loopback DNS server, aiosmtpd sinks as mail exchangers.

Every exchanger listens on the same port (the relay's ``port``); an exchanger whose address
is 127.0.0.2 has nothing listening there, so connecting to it is refused at once.
"""

from __future__ import annotations

import random
import ssl
from pathlib import Path
from typing import Any

import pytest

from dispatch.config.settings import MxRelay
from dispatch.config.types import Port, PositiveFloat
from dispatch.relays.base import DeliveryRequest, DeliveryResult, Relay
from dispatch.relays.mx import MxRelayClient, order_exchangers
from tests.relays.peers import DnsServer
from tests.support.sink import Pki, StartSink

MESSAGE = b"From: a@example.com\r\nTo: b@example.test\r\nSubject: mx\r\n\r\n.dot\r\nbody\r\n"
UNREACHABLE = "127.0.0.2"


def make_relay(
    dns: DnsServer,
    port: int,
    rng: random.Random | None = None,
    ssl_context: ssl.SSLContext | None = None,
    **overrides: Any,
) -> MxRelayClient:
    values: dict[str, Any] = {
        "name": "direct",
        "port": Port(port),
        "nameservers": ("127.0.0.1",),
        "nameserver_port": Port(dns.port),
        "timeout_seconds": PositiveFloat(2.0),
    }
    values.update(overrides)
    return MxRelayClient(MxRelay(**values), "dispatch.test", rng=rng, ssl_context=ssl_context)


@pytest.fixture
def eml(tmp_path: Path) -> Path:
    path = tmp_path / "message.eml"
    path.write_bytes(MESSAGE)
    return path


def request(path: Path, *recipients: str) -> DeliveryRequest:
    return DeliveryRequest("m1", "a@example.com", recipients, path, path.stat().st_size)


def outcomes(result: DeliveryResult) -> list[str]:
    return [o.outcome for o in result.outcomes]


async def test_second_exchanger_when_the_first_is_unreachable(
    dns_server: DnsServer, start_sink: StartSink, eml: Path
) -> None:
    sink = start_sink()
    dns_server.add("example.test", "MX", "10 mx1.example.test.", "20 mx2.example.test.")
    dns_server.add("mx1.example.test", "A", UNREACHABLE)
    dns_server.add("mx2.example.test", "A", "127.0.0.1")
    relay: Relay = make_relay(dns_server, sink.port)
    result = await relay.deliver(request(eml, "b@example.test", "c@Example.TEST"))
    assert outcomes(result) == ["delivered", "delivered"]
    assert result.remote_id == "Q1"
    [received] = sink.messages
    assert received.rcpt_tos == ("b@example.test", "c@Example.TEST")
    assert received.content == MESSAGE
    assert ("example.test", "MX") in dns_server.queries
    await relay.aclose()


async def test_equal_preferences_are_all_tried(
    dns_server: DnsServer, start_sink: StartSink, eml: Path
) -> None:
    sink = start_sink()
    dns_server.add("example.test", "MX", "10 a.example.test.", "10 b.example.test.")
    dns_server.add("a.example.test", "A", UNREACHABLE)
    dns_server.add("b.example.test", "A", "127.0.0.1")
    seeds = range(6)
    firsts = {order_exchangers([(10, "a"), (10, "b")], random.Random(s))[0] for s in seeds}
    assert firsts == {"a", "b"}  # the unreachable one comes first for some seeds
    for seed in seeds:
        relay = make_relay(dns_server, sink.port, rng=random.Random(seed))
        assert outcomes(await relay.deliver(request(eml, "b@example.test"))) == ["delivered"]
    assert len(sink.messages) == 6


def test_order_exchangers_keeps_preference_and_shuffles_ties() -> None:
    records = [(20, "c"), (10, "a"), (10, "b"), (30, "d")]
    orders = {tuple(order_exchangers(records, random.Random(seed))) for seed in range(50)}
    assert orders == {("a", "b", "c", "d"), ("b", "a", "c", "d")}


async def test_null_mx_is_permanent(dns_server: DnsServer, eml: Path) -> None:
    dns_server.add("nomail.test", "MX", "0 .")
    relay = make_relay(dns_server, 25)
    [outcome] = (await relay.deliver(request(eml, "b@nomail.test"))).outcomes
    assert outcome.outcome == "permanent"
    assert outcome.response == "relay direct: nomail.test accepts no mail (null MX, RFC 7505)"


async def test_nonexistent_domain_is_permanent(dns_server: DnsServer, eml: Path) -> None:
    relay = make_relay(dns_server, 25)
    [outcome] = (await relay.deliver(request(eml, "b@nowhere.test"))).outcomes
    assert outcome.outcome == "permanent"
    assert outcome.response == "relay direct: domain nowhere.test does not exist"


async def test_implicit_mx_uses_the_domain_address(
    dns_server: DnsServer, start_sink: StartSink, eml: Path
) -> None:
    sink = start_sink()
    dns_server.add("plain.test", "A", "127.0.0.1")
    relay = make_relay(dns_server, sink.port)
    assert outcomes(await relay.deliver(request(eml, "b@plain.test"))) == ["delivered"]
    assert ("plain.test", "MX") in dns_server.queries
    assert sink.messages[0].rcpt_tos == ("b@plain.test",)


async def test_no_mx_and_no_address_is_permanent(dns_server: DnsServer, eml: Path) -> None:
    dns_server.add("bare.test", "TXT", '"v=spf1 -all"')
    relay = make_relay(dns_server, 25)
    [outcome] = (await relay.deliver(request(eml, "b@bare.test"))).outcomes
    assert outcome.outcome == "permanent"
    assert outcome.response == "relay direct: bare.test has no MX and no address records"


async def test_two_domains_two_deliveries(
    dns_server: DnsServer, start_sink: StartSink, eml: Path
) -> None:
    sink = start_sink()
    for domain in ("one.test", "two.test"):
        dns_server.add(domain, "MX", f"10 mx.{domain}.")
        dns_server.add(f"mx.{domain}", "A", "127.0.0.1")
    relay = make_relay(dns_server, sink.port)
    recipients = ("a@one.test", "x@two.test", "reject@one.test", "y@two.test")
    result = await relay.deliver(request(eml, *recipients))
    assert [o.recipient for o in result.outcomes] == list(recipients)
    assert outcomes(result) == ["delivered", "delivered", "permanent", "delivered"]
    assert sorted(m.rcpt_tos for m in sink.messages) == [
        ("a@one.test",),
        ("x@two.test", "y@two.test"),
    ]
    assert sink.connections == 2
    assert sorted((result.remote_id or "").split(", ")) == ["Q1", "Q2"]
    assert (relay.delivered, relay.failed) == (1, 1)


async def test_dns_failures_are_transient(dns_server: DnsServer, eml: Path) -> None:
    dns_server.servfail.add("broken.test")
    dns_server.silent.add("slow.test")
    relay = make_relay(dns_server, 25, timeout_seconds=PositiveFloat(0.5))
    result = await relay.deliver(request(eml, "b@broken.test", "c@slow.test"))
    assert outcomes(result) == ["transient", "transient"]
    assert result.outcomes[0].response.startswith("relay direct: MX lookup for broken.test failed")
    assert result.outcomes[1].response.startswith("relay direct: MX lookup for slow.test failed")


async def test_every_exchanger_unreachable_is_transient(dns_server: DnsServer, eml: Path) -> None:
    dns_server.add("down.test", "MX", "10 mx.down.test.", "20 gone.down.test.")
    dns_server.add("mx.down.test", "A", UNREACHABLE)
    relay = make_relay(dns_server, 2525)
    [outcome] = (await relay.deliver(request(eml, "b@down.test"))).outcomes
    assert outcome.outcome == "transient"
    assert outcome.response == (
        "relay direct: no mail exchanger of down.test took the message: "
        f"connection to mx.down.test[{UNREACHABLE}]:2525 refused; "
        "gone.down.test has no address records"
    )


async def test_opportunistic_starttls_without_verification(
    dns_server: DnsServer, start_sink: StartSink, eml: Path
) -> None:
    sink = start_sink(tls="starttls")  # a certificate no system store trusts
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    dns_server.add("mx.example.test", "A", "127.0.0.1")
    relay = make_relay(dns_server, sink.port)
    assert outcomes(await relay.deliver(request(eml, "b@example.test"))) == ["delivered"]
    assert sink.messages[0].tls
    assert relay.connections == {"tls": 1, "plain": 0}


async def test_require_tls(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path
) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    dns_server.add("mx.example.test", "A", "127.0.0.1")
    plain = start_sink()
    relay = make_relay(dns_server, plain.port, require_tls=True)
    [outcome] = (await relay.deliver(request(eml, "b@example.test"))).outcomes
    assert outcome.outcome == "transient"
    assert f"mx.example.test[127.0.0.1]:{plain.port} does not offer STARTTLS" in outcome.response
    assert plain.messages == []

    tls = start_sink(tls="starttls")
    verified = make_relay(dns_server, tls.port, require_tls=True, ssl_context=pki.client_context())
    assert outcomes(await verified.deliver(request(eml, "b@example.test"))) == ["delivered"]
    # The certificate is checked against the exchanger's name: the system store rejects it.
    unverified = make_relay(dns_server, tls.port, require_tls=True)
    [outcome] = (await unverified.deliver(request(eml, "b@example.test"))).outcomes
    assert outcome.outcome == "transient"
    assert "failed verification" in outcome.response


async def test_internationalised_domain_is_looked_up_as_a_labels(
    dns_server: DnsServer, start_sink: StartSink, eml: Path
) -> None:
    sink = start_sink(smtputf8=True)
    dns_server.add("xn--bcher-kva.test", "MX", "10 mx.xn--bcher-kva.test.")
    dns_server.add("mx.xn--bcher-kva.test", "A", "127.0.0.1")
    relay = make_relay(dns_server, sink.port)
    result = await relay.deliver(request(eml, "leser@Bücher.test"))
    assert outcomes(result) == ["delivered"]
    assert sink.messages[0].rcpt_tos == ("leser@Bücher.test",)
    assert "SMTPUTF8" in sink.messages[0].mail_options


async def test_recipient_without_domain_is_permanent(dns_server: DnsServer, eml: Path) -> None:
    relay = make_relay(dns_server, 25)
    [outcome] = (await relay.deliver(request(eml, "postmaster"))).outcomes
    assert outcome.outcome == "permanent"
    assert outcome.response == "relay direct: the recipient address has no domain"
    assert dns_server.queries == []


async def test_broken_tls_falls_back_to_plaintext(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path
) -> None:
    old_tls_only = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    old_tls_only.maximum_version = ssl.TLSVersion.TLSv1_2
    pki.ca.issue_cert("mx.example.test").configure_cert(old_tls_only)
    sink = start_sink(tls="starttls", tls_context=old_tls_only)
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    dns_server.add("mx.example.test", "A", "127.0.0.1")
    tls13_only = ssl.create_default_context()
    tls13_only.check_hostname = False
    tls13_only.verify_mode = ssl.CERT_NONE
    tls13_only.minimum_version = ssl.TLSVersion.TLSv1_3
    relay = make_relay(dns_server, sink.port, ssl_context=tls13_only)
    assert outcomes(await relay.deliver(request(eml, "b@example.test"))) == ["delivered"]
    assert not sink.messages[0].tls
    assert relay.connections == {"tls": 0, "plain": 1}
