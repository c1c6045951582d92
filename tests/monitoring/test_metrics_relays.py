"""The per-relay families, the queue's wait, the file-system figures and the standard
collectors of ``/metrics``, from a collector fed by the test (the daemon's own scrape is in
``test_relay_failure_metrics.py`` and ``test_metrics_docs.py``)."""

from __future__ import annotations

import datetime
import logging
import shutil
import time
from pathlib import Path

import pytest
import trio
import trustme

from dispatch.config import parse_settings
from dispatch.monitoring.file_figures import FileFigures
from dispatch.monitoring.metrics import MetricsCollector, build_registry, render
from dispatch.monitoring.stats import Stats, relay_outcomes
from dispatch.security.certs import certificate_file
from tests.monitoring.test_metrics import Relay, Sources, samples, value
from tests.support.config import base_config

DELIVERIES = "dispatch_relay_deliveries_total"
DURATIONS = "dispatch_relay_attempt_duration_seconds"


def scrape(collector: MetricsCollector) -> str:
    body, _ = render(build_registry(collector), "")
    return body.decode()


def collector_for(sources: Sources, **extra: object) -> MetricsCollector:
    return MetricsCollector(
        stats=sources.stats,
        spool_counts=lambda: sources.spool,
        relays=lambda: sources.relays,
        database_reachable=lambda: sources.reachable,
        figures=sources.figures,
        **extra,  # type: ignore[arg-type]
    )


def test_configured_relays_have_every_series_before_any_attempt() -> None:
    sources = Sources(relays=[Relay("smarthost", "smtp"), Relay("inbox", "local")])
    text = sources.scrape()
    for relay in ("smarthost", "inbox"):
        for outcome in ("delivered", "transient", "permanent"):
            assert value(text, DELIVERIES, relay=relay, outcome=outcome) == 0
        assert value(text, f"{DURATIONS}_count", relay=relay) == 0
        assert value(text, f"{DURATIONS}_bucket", relay=relay, le="+Inf") == 0
        assert value(text, "dispatch_relay_suspended", relay=relay) == 0


def test_relay_series_follow_the_counters_per_recipient_and_per_attempt() -> None:
    sources = Sources(relays=[Relay("smarthost", "smtp"), Relay("inbox", "local")])
    stats = sources.stats
    stats.relay_deliveries.add("smarthost:delivered", 5)
    stats.relay_deliveries.add("smarthost:transient", 2)
    stats.relay_deliveries.add("smarthost:permanent")
    stats.relay_deliveries.add("retired:delivered", 4)  # removed by a reload since
    for seconds in (0.02, 0.3, 7.0):
        stats.relay_attempt_seconds.observe("smarthost", seconds)
    text = sources.scrape()
    assert value(text, DELIVERIES, relay="smarthost", outcome="delivered") == 5
    assert value(text, DELIVERIES, relay="smarthost", outcome="transient") == 2
    assert value(text, DELIVERIES, relay="smarthost", outcome="permanent") == 1
    assert value(text, DELIVERIES, relay="inbox", outcome="delivered") == 0
    assert value(text, DELIVERIES, relay="retired", outcome="delivered") == 4
    assert value(text, f"{DURATIONS}_count", relay="smarthost") == 3
    assert value(text, f"{DURATIONS}_sum", relay="smarthost") == pytest.approx(7.32)
    assert value(text, f"{DURATIONS}_bucket", relay="smarthost", le="0.025") == 1
    assert value(text, f"{DURATIONS}_bucket", relay="smarthost", le="0.5") == 2
    assert value(text, f"{DURATIONS}_bucket", relay="smarthost", le="10.0") == 3
    assert relay_outcomes(stats)["smarthost"] == {"delivered": 5, "transient": 2, "permanent": 1}


def test_a_relay_name_with_a_colon_keeps_its_outcomes() -> None:
    stats = Stats()
    stats.relay_deliveries.add("eu:west:permanent", 2)
    assert relay_outcomes(stats) == {"eu:west": {"delivered": 0, "transient": 0, "permanent": 2}}


def test_suspended_gauge_follows_the_suspensions() -> None:
    sources = Sources(relays=[Relay("smarthost", "smtp"), Relay("inbox", "local")])
    suspended: dict[str, str | None] = {"smarthost": "connect timed out", "inbox": None}
    collector = collector_for(sources, suspensions=lambda: suspended)
    text = scrape(collector)
    assert value(text, "dispatch_relay_suspended", relay="smarthost") == 1
    assert value(text, "dispatch_relay_suspended", relay="inbox") == 0
    suspended["smarthost"] = None
    assert value(scrape(collector), "dispatch_relay_suspended", relay="smarthost") == 0


def test_oldest_due_age_counts_from_the_due_time_and_is_zero_when_nothing_is_due() -> None:
    due: list[float | None] = [time.time() - 30]
    collector = collector_for(Sources(), next_due_time=lambda: due[0])
    age = value(scrape(collector), "dispatch_spool_oldest_due_age_seconds")
    assert 30 <= age < 60
    due[0] = time.time() + 600  # due later: nobody is waiting yet
    assert value(scrape(collector), "dispatch_spool_oldest_due_age_seconds") == 0
    due[0] = None
    assert value(scrape(collector), "dispatch_spool_oldest_due_age_seconds") == 0


def test_standard_collectors_are_on_the_private_registry() -> None:
    text = Sources().scrape()
    assert value(text, "process_resident_memory_bytes") > 1_000_000
    assert value(text, "process_open_fds") > 0
    assert value(text, "process_max_fds") >= value(text, "process_open_fds")
    assert value(text, "process_start_time_seconds") <= time.time()
    assert ("process_cpu_seconds_total", frozenset()) in samples(text)
    info = [key for key in samples(text) if key[0] == "python_info"]
    assert len(info) == 1
    assert ("implementation", "CPython") in info[0][1]
    assert value(text, "python_gc_collections_total", generation="0") >= 0


def test_two_registries_do_not_share_or_duplicate_collectors() -> None:
    sources = Sources()
    first, second = build_registry(sources.collector()), build_registry(sources.collector())
    for registry in (first, second):
        body, _ = render(registry, "")
        samples(body.decode())  # fails on a duplicate series


# ---- figures read from files -------------------------------------------------------------


def write_certificate(path: Path, not_after: datetime.datetime) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", not_after=not_after)
    path.write_bytes(leaf.cert_chain_pems[0].bytes())


async def test_file_figures_read_the_disk_and_the_certificate(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    expires = datetime.datetime(2031, 5, 17, 12, 0, tzinfo=datetime.UTC)
    write_certificate(cert, expires)
    files = FileFigures(tmp_path, lambda: [cert])
    collector = collector_for(Sources(), files=files)
    before = scrape(collector)
    assert not [k for k in samples(before) if k[0].startswith("dispatch_spool_disk")]
    assert not [k for k in samples(before) if k[0].startswith("dispatch_tls_certificate")]

    await files.refresh()
    text = scrape(collector)
    usage = shutil.disk_usage(tmp_path)
    assert value(text, "dispatch_spool_disk_total_bytes") == usage.total
    assert 0 < value(text, "dispatch_spool_disk_free_bytes") <= usage.total
    expiry = "dispatch_tls_certificate_expiry_timestamp_seconds"
    assert value(text, expiry, certificate=str(cert)) == expires.timestamp()

    renewed = datetime.datetime(2032, 1, 2, 3, 4, tzinfo=datetime.UTC)
    write_certificate(cert, renewed)
    await files.refresh()
    assert value(scrape(collector), expiry, certificate=str(cert)) == renewed.timestamp()


async def test_an_unreadable_certificate_keeps_the_last_figure_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert = tmp_path / "cert.pem"
    expires = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    write_certificate(cert, expires)
    files = FileFigures(tmp_path, lambda: [cert])
    await files.refresh()
    cert.write_text("not a certificate\n")
    with caplog.at_level(logging.WARNING, logger="dispatch.monitoring"):
        await files.refresh()
        await files.refresh()
    assert files.certificate_expiries() == {str(cert): expires.timestamp()}
    warnings = [r.getMessage() for r in caplog.records if "cannot read certificate" in r.message]
    assert len(warnings) == 1, warnings
    assert str(cert) in warnings[0]


async def test_a_certificate_not_made_yet_has_no_series_until_it_exists(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert = tmp_path / "tls" / "selfsigned-cert.pem"
    files = FileFigures(tmp_path, lambda: [cert])
    with caplog.at_level(logging.WARNING, logger="dispatch.monitoring"):
        await files.refresh()
    assert files.certificate_expiries() == {}
    assert not caplog.records  # the first start makes it a moment later: not an error
    cert.parent.mkdir()
    write_certificate(cert, datetime.datetime(2029, 6, 1, tzinfo=datetime.UTC))
    with trio.fail_after(10):
        await files.refresh()
    assert list(files.certificate_expiries()) == [str(cert)]


def test_the_certificate_in_use_is_the_configured_one_or_the_self_signed_one(
    tmp_path: Path,
) -> None:
    leaf = trustme.CA().issue_cert("localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    configured = parse_settings(
        base_config(tmp_path, tls={"cert_file": str(cert), "key_file": str(key)})
    )
    assert certificate_file(configured) == cert
    default = parse_settings(base_config(tmp_path))
    assert certificate_file(default) == tmp_path / "data" / "tls" / "selfsigned-cert.pem"
