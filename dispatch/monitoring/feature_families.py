"""The ``/metrics`` families of the delivery features: DKIM, bounces (DSNs) and the
suppression list, delivery webhooks, and outbound SMTP security (TLS status, security
levels, MTA-STS). :class:`~dispatch.monitoring.metrics.MetricsCollector` yields them at each
scrape; each function reads :class:`~dispatch.monitoring.stats.Stats` only (memory, never
I/O) and, with ``populated`` false, gives the families without samples (``describe``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from dispatch.monitoring.stats import Counter, CounterMap, Stats

TLS_STATUSES: Final = ("plain", "tls:secure", "tls:insecure", "tls:failed")
"""``dispatch/smtpOut/tlsCount`` keys, chasquid's (dispatch/relays/smtp_session.py)."""


def with_known(counter_map: CounterMap, known: Iterable[str]) -> list[tuple[str, int]]:
    """The map's values by label, with a zero for each ``known`` label not counted yet."""
    values = dict.fromkeys(known, 0)
    values.update(counter_map.values)
    return sorted(values.items())


def _counters(counters: Iterable[tuple[str, Counter]], populated: bool) -> Iterator[Metric]:
    """One unlabelled counter family per ``(name, counter)``."""
    for name, counter in counters:
        family = CounterMetricFamily(name, counter.help)
        if populated:
            family.add_metric([], counter.value)
        yield family


def outbound_families(s: Stats, populated: bool) -> Iterator[Metric]:
    """Outbound SMTP security (docs/delivery.md, docs/deliverability.md#mta-sts): TLS
    status per connection, security level checks, MTA-STS checks and its cache."""
    for name, counter_map, label, known in (
        ("dispatch_smtp_out_tls", s.smtp_out_tls, "status", TLS_STATUSES),
        (
            "dispatch_smtp_out_security_level_checks",
            s.smtp_out_security_checks,
            "result",
            ("pass", "fail"),
        ),
        ("dispatch_sts_mode", s.sts_mode, "mode", ("enforce", "testing", "none")),
        ("dispatch_sts_security_checks", s.sts_security, "result", ("pass", "fail")),
    ):
        family = CounterMetricFamily(name, counter_map.help, labels=[label])
        if populated:
            for value, count in with_known(counter_map, known):
                family.add_metric([value], count)
        yield family
    yield from _counters(
        (
            ("dispatch_sts_cache_fetches", s.sts_cache_fetches),
            ("dispatch_sts_cache_hits", s.sts_cache_hits),
            ("dispatch_sts_cache_expired", s.sts_cache_expired),
            ("dispatch_sts_cache_failed_fetches", s.sts_cache_failed_fetch),
            ("dispatch_sts_cache_invalid", s.sts_cache_invalid),
            ("dispatch_sts_cache_io_errors", s.sts_cache_io_errors),
            ("dispatch_sts_cache_marshal_errors", s.sts_cache_marshal_errors),
            ("dispatch_sts_cache_unmarshal_errors", s.sts_cache_unmarshal_errors),
        ),
        populated,
    )


def webhook_families(s: Stats, populated: bool) -> Iterator[Metric]:
    """Delivery webhooks (docs/webhooks.md): calls by result, and the calls still owed."""
    yield from _counters(
        (
            ("dispatch_webhook_queued", s.webhook_queued),
            ("dispatch_webhook_sent", s.webhook_sent),
            ("dispatch_webhook_retried", s.webhook_retried),
            ("dispatch_webhook_failed", s.webhook_failed),
            ("dispatch_webhook_outbox_errors", s.webhook_outbox_errors),
        ),
        populated,
    )
    depth = GaugeMetricFamily(
        "dispatch_webhook_outbox_depth",
        "webhook calls in the outbox: not yet answered 2xx nor given up",
    )
    if populated:
        depth.add_metric([], s.webhook_activity.outbox_depth)
    yield depth


def bounce_families(s: Stats, populated: bool) -> Iterator[Metric]:
    """Bounces (DSNs) spooled, and the suppression list (docs/deliverability.md)."""
    yield from _counters(
        (
            ("dispatch_dsn_queued", s.dsn_queued),
            ("dispatch_suppression_added", s.suppression_added),
        ),
        populated,
    )
    refused = CounterMetricFamily(
        "dispatch_suppression_refused", s.suppressed.help, labels=["where"]
    )
    if populated:
        for value, count in with_known(s.suppressed, ("intake", "delivery")):
            refused.add_metric([value], count)
    yield refused


def dkim_families(s: Stats, populated: bool) -> Iterator[Metric]:
    """DKIM (docs/deliverability.md): messages signed at delivery and signing failures;
    received messages checked when listener.dkim_verify is on, and each signature's
    result."""
    yield from _counters(
        (
            ("dispatch_dkim_signed", s.dkim_signed),
            ("dispatch_dkim_sign_errors", s.dkim_sign_errors),
            ("dispatch_dkim_verify_found", s.dkim_verify_found),
            ("dispatch_dkim_verify_not_found", s.dkim_verify_not_found),
            ("dispatch_dkim_verify_valid", s.dkim_verify_valid),
            ("dispatch_dkim_verify_errors", s.dkim_verify_errors),
        ),
        populated,
    )
    results = CounterMetricFamily(
        "dispatch_dkim_verify_results", s.dkim_verify_results.help, labels=["result"]
    )
    if populated:
        known = ("pass", "fail", "temperror", "permerror")
        for value, count in with_known(s.dkim_verify_results, known):
            results.add_metric([value], count)
    yield results
