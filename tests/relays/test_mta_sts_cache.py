"""The mx relay's MTA-STS cache (RFC 8461 §3.3, §5.1) end to end: policies that cannot be
had, the cache in ``data_dir/mta-sts/`` across restarts, a new id, a corrupt file.

The same loopback peers as `test_mx_security.py` (helpers: `tests.relays.mx_outbound`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from dispatch.config.types import Port, PositiveFloat
from dispatch.monitoring.stats import Stats
from tests.relays.mx_outbound import (
    MESSAGE,
    make_relay,
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


# --- fetch failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "content_type", "body", "counter"),
    [
        (404, "text/plain", "not here", "failed_fetch"),
        (200, "text/html", policy_text("enforce", "mx.example.test"), "failed_fetch"),
        (301, "text/plain", "", "failed_fetch"),
        (200, "text/plain", "version: STSv1\r\nmode: enforce\r\nmax_age: 60\r\n", "invalid"),
        (200, "text/plain", policy_text("strict", "mx.example.test"), "invalid"),
        (
            200,
            "text/plain",
            policy_text("enforce", "mx.example.test") + "#" * 65_536,
            "failed_fetch",
        ),
    ],
)
async def test_a_policy_that_cannot_be_had_is_no_policy(
    dns_server: DnsServer,
    start_sink: StartSink,
    pki: Pki,
    eml: Path,
    state: Path,
    status: int,
    content_type: str,
    body: str,
    counter: str,
) -> None:
    publish(dns_server)
    sink = start_sink()  # plaintext: an enforced policy would refuse it
    stats = Stats()
    async with policy_host(pki.ca, "mta-sts.example.test") as host:
        host.serve(body, status=status, content_type=content_type)
        relay = make_relay(dns_server, sink.port, pki, stats=stats, state=state, policy=host)
        assert outcomes(await relay.deliver(request(eml, "b@example.test"))) == ["delivered"]
    assert stats.sts_cache_fetches.value == 1
    failed = stats.sts_cache_failed_fetch.value
    invalid = stats.sts_cache_invalid.value
    assert (failed, invalid) == ((1, 0) if counter == "failed_fetch" else (0, 1))
    assert stats.sts_mode.values == {}
    assert not (state / "mta-sts" / "example.test.json").exists()


async def test_a_policy_host_with_a_certificate_for_another_name_is_not_trusted(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server)
    sink = start_sink()
    stats = Stats()
    async with policy_host(pki.ca, "elsewhere.test") as host:
        host.serve(policy_text("enforce", "mx.example.test"))
        relay = make_relay(dns_server, sink.port, pki, stats=stats, state=state, policy=host)
        assert outcomes(await relay.deliver(request(eml, "b@example.test"))) == ["delivered"]
    assert stats.sts_cache_failed_fetch.value == 1
    assert host.requests == []  # the handshake failed before any request


@pytest.mark.parametrize("content_length", [True, False])
async def test_a_policy_over_64_kib_is_refused(
    dns_server: DnsServer,
    start_sink: StartSink,
    pki: Pki,
    eml: Path,
    state: Path,
    content_length: bool,
) -> None:
    publish(dns_server)
    sink = start_sink()
    stats = Stats()
    async with policy_host(pki.ca, "mta-sts.example.test") as host:
        big = policy_text("enforce", "mx.example.test") + "#" * 65_536
        host.serve(big, content_length=content_length)
        relay = make_relay(dns_server, sink.port, pki, stats=stats, state=state, policy=host)
        assert outcomes(await relay.deliver(request(eml, "b@example.test"))) == ["delivered"]
    assert stats.sts_cache_failed_fetch.value == 1
    assert stats.sts_mode.values == {}


async def test_no_policy_host_or_two_records_is_no_policy(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server)
    del dns_server.records["mta-sts.example.test"]  # the TXT record, but no policy host
    dns_server.add("two.test", "MX", "10 mx.example.test.")
    dns_server.add("_mta-sts.two.test", "TXT", '"v=STSv1; id=1"', '"v=STSv1; id=2"')
    sink = start_sink()
    stats = Stats()
    relay = make_relay(dns_server, sink.port, pki, stats=stats, state=state)
    result = await relay.deliver(request(eml, "b@example.test", "c@two.test"))
    assert outcomes(result) == ["delivered", "delivered"]
    assert (stats.sts_cache_failed_fetch.value, stats.sts_cache_invalid.value) == (1, 1)
    assert stats.sts_cache_fetches.value == 1
    assert stats.sts_mode.values == {}


# --- the cache across restarts ----------------------------------------------------------------


async def test_the_cached_policy_survives_a_restart_and_a_removed_record(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server)
    tls = start_sink(tls="starttls")
    async with policy_host(pki.ca, "mta-sts.example.test") as host:
        host.serve(policy_text("enforce", "mx.example.test"))
        first = make_relay(dns_server, tls.port, pki, stats=Stats(), state=state, policy=host)
        assert outcomes(await first.deliver(request(eml, "b@example.test"))) == ["delivered"]
        policy_port = host.port
    # The policy host is gone and so is the TXT record (an attacker could remove both); a
    # new process with the same data_dir still enforces the cached policy (RFC 8461 §5.1).
    del dns_server.records["_mta-sts.example.test"]
    plain = start_sink()
    stats = Stats()
    second = make_relay(
        dns_server,
        plain.port,
        pki,
        stats=stats,
        state=state,
        mta_sts_port=Port(policy_port),
        security_levels=False,
    )
    [outcome] = (await second.deliver(request(eml, "b@example.test"))).outcomes
    assert outcome.outcome == "transient"
    assert "does not offer STARTTLS" in outcome.response
    assert "its MTA-STS policy is in enforce mode" in outcome.response
    assert plain.messages == []
    assert (stats.sts_cache_hits.value, stats.sts_cache_fetches.value) == (1, 0)


async def test_a_new_policy_id_fetches_the_policy_again(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server, sts_id="one")
    sink = start_sink()
    stats = Stats()
    async with policy_host(pki.ca, "mta-sts.example.test") as host:
        host.serve(policy_text("enforce", "mx.example.test"))
        relay = make_relay(dns_server, sink.port, pki, stats=stats, state=state, policy=host)
        assert outcomes(await relay.deliver(request(eml, "b@example.test"))) == ["transient"]
        dns_server.records["_mta-sts.example.test"]["TXT"] = ['"v=STSv1; id=two"']
        host.serve(policy_text("testing", "mx.example.test"))
        assert outcomes(await relay.deliver(request(eml, "b@example.test"))) == ["delivered"]
        assert len(host.requests) == 2
    assert stats.sts_mode.values == {"enforce": 1, "testing": 1}
    cached = json.loads((state / "mta-sts" / "example.test.json").read_text())
    assert (cached["id"], cached["mode"]) == ("two", "testing")


async def test_a_corrupt_cache_file_is_counted_and_fetched_again(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server)
    (state / "mta-sts").mkdir(parents=True)
    (state / "mta-sts" / "example.test.json").write_text("{not json")
    sink = start_sink(tls="starttls")
    stats = Stats()
    async with policy_host(pki.ca, "mta-sts.example.test") as host:
        host.serve(policy_text("enforce", "mx.example.test"))
        relay = make_relay(dns_server, sink.port, pki, stats=stats, state=state, policy=host)
        assert outcomes(await relay.deliver(request(eml, "b@example.test"))) == ["delivered"]
    assert stats.sts_cache_unmarshal_errors.value == 1
    assert stats.sts_cache_fetches.value == 1
    assert json.loads((state / "mta-sts" / "example.test.json").read_text())["id"] == "20261204"


async def test_a_txt_lookup_that_times_out_goes_on_without_a_policy(
    dns_server: DnsServer, start_sink: StartSink, pki: Pki, eml: Path, state: Path
) -> None:
    publish(dns_server)
    dns_server.silent.add("_mta-sts.example.test")
    sink = start_sink()
    stats = Stats()
    relay = make_relay(
        dns_server, sink.port, pki, stats=stats, state=state, timeout_seconds=PositiveFloat(0.5)
    )
    started = trio.current_time()
    assert outcomes(await relay.deliver(request(eml, "b@example.test"))) == ["delivered"]
    assert trio.current_time() - started < 2.0  # bounded by the resolver's lifetime
    assert stats.sts_cache_failed_fetch.value == 1
    assert stats.sts_cache_fetches.value == 0
