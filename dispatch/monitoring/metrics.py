"""``/metrics``: the Prometheus view of one Dispatch process (SPEC §9; the names are a contract).

Theory of operation
-------------------
:class:`MetricsCollector` is a custom ``prometheus_client`` collector registered in a private
``CollectorRegistry`` (:func:`build_registry`). A scrape calls :meth:`MetricsCollector.collect`
on the Trio thread, synchronously, so it reads in-memory state only:

- :class:`~dispatch.monitoring.stats.Stats`, the counters every part updates;
- the spool index's counts, the relays' in-flight counts and the log writer's
  ``database_reachable`` flag, through callables given at construction;
- :class:`DatabaseFigures`, a cache of the figures that live in the database (messages
  today, in the last five minutes, per relay today). A background task calls
  :meth:`DatabaseFigures.refresh` every few seconds; a scrape never waits for the database,
  and while it is down the last figures stay (``dispatch_database_reachable`` says so);
- :class:`~dispatch.monitoring.file_figures.FileFigures`, the same kind of cache for the
  spool's free disk and the TLS certificate's expiry;
- the relays' suspensions (the same callable ``/health``'s delivery check reads) and the
  spool index's earliest due time.

:func:`build_registry` adds prometheus_client's process, platform and garbage-collector
collectors (``process_*``, ``python_info``, ``python_gc_*``). The process collector reads
``/proc/self``: kernel memory, not a disk, so a scrape still never waits for I/O.

Every series of the SPEC's gauges exists from the first scrape (zeros), so dashboards and
alerts never see a family appear or vanish. Label values are verbs, reply codes, relay names
and kinds, states and events — never an address, a subject or a secret.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final, Protocol

import trio
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from dispatch import __version__
from dispatch.monitoring.feature_families import (
    bounce_families,
    dkim_families,
    outbound_families,
    webhook_families,
    with_known,
)
from dispatch.monitoring.file_figures import FileFigures
from dispatch.monitoring.stats import (
    RELAY_OUTCOMES,
    RETENTION_KINDS,
    Histogram,
    Stats,
    relay_outcomes,
)
from dispatch.spool.index import SpoolCounts
from dispatch.storage.database import DatabaseUnavailableError
from dispatch.storage.log_batch import utc_day

EVENTS_TODAY: Final = ("received", "delivered", "failed", "retried", "denied")
EVENTS_LAST_5M: Final = ("received", "sent")
SPOOL_STATES: Final = ("incoming", "processing", "failed")
DELIVERY_OUTCOMES: Final = ("delivered", "permanent", "transient")

REFRESH_INTERVAL: Final = 5.0
"""Seconds between refreshes of :class:`DatabaseFigures`: a scrape every 15 s sees figures at
most this old, and the database answers three indexed queries each time."""

# Label values that exist before anything happened, so rate() and alerts have a series.
_KNOWN_VALUES: Final[Mapping[str, tuple[str, ...]]] = {
    "smtp_sessions": ("plain", "tls"),
    "smtp_auth": ("success", "failure", "throttled", "busy"),
    # counted by dispatch/intake/session.py (see docs/smtp.md)
    "smtp_violations": (
        "before_greeting",
        "pipelining_after_data",
        "pipelining_after_starttls",
        "bare_line_ending",
        "nul_in_data",
    ),
    "messages_received": ("smtp", "api"),
    "spool_writes": ("ok", "full", "error"),
    "monitoring_denied": ("allowlist", "host"),
    "api_busy": ("max_concurrent_requests", "max_concurrent_requests_per_ip"),
    "retention_removed": RETENTION_KINDS,
    "retention_runs": ("ok", "failed"),
}


class RelayLike(Protocol):
    """What the collector reads of a configured relay (``LocalRelayClient`` and the others)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def inflight(self) -> int: ...


class FigureQueries(Protocol):
    """The part of :class:`~dispatch.storage.queries.LogQueries` the figures come from."""

    async def counts_today(self, *, now: float | None = None) -> dict[str, int]: ...

    async def counts_last_5_minutes(self, *, now: float | None = None) -> dict[str, int]: ...

    async def relay_counts_today(
        self, *, now: float | None = None
    ) -> dict[str, dict[str, int]]: ...


class DatabaseFigures:
    """The last known database figures, for scrapes that must not touch the database.

    Owned by whoever runs :meth:`refresh_forever` (a supervisor component); read by the
    collector. A failed refresh keeps the previous figures and records why in
    :attr:`last_error`. Figures of an earlier UTC day are not reported as today's: after
    midnight, until a refresh succeeds, "today" reads zero.
    """

    def __init__(self) -> None:
        self.day: str | None = None
        """UTC day (``YYYY-MM-DD``) of the last successful refresh; None before the first."""
        self.refreshed_at: float | None = None
        self.last_error: str | None = None
        self._today: dict[str, int] = {}
        self._last_5m: dict[str, int] = {}
        self._relays: dict[str, dict[str, int]] = {}

    async def refresh(self, queries: FigureQueries, *, now: float | None = None) -> bool:
        """Read the three figures (worker threads; the Trio thread is never blocked).

        All three are replaced together, so a scrape never mixes two refreshes. Returns
        whether it succeeded; ``DatabaseUnavailableError`` is recorded, not raised.
        """
        at = time.time() if now is None else now
        try:
            today = await queries.counts_today(now=at)
            last_5m = await queries.counts_last_5_minutes(now=at)
            relays = await queries.relay_counts_today(now=at)
        except DatabaseUnavailableError as exc:
            self.last_error = str(exc) or type(exc).__name__
            return False
        self._today, self._last_5m, self._relays = dict(today), dict(last_5m), dict(relays)
        self.day, self.refreshed_at, self.last_error = utc_day(at), at, None
        return True

    async def refresh_forever(
        self, queries: FigureQueries, interval: float = REFRESH_INTERVAL
    ) -> None:
        """Refresh now and then every ``interval`` seconds until cancelled (owns nothing)."""
        while True:
            await self.refresh(queries)
            await trio.sleep(interval)

    def counts_today(self, now: float | None = None) -> dict[str, int]:
        """``{event: n}`` for every event of :data:`EVENTS_TODAY` (zeros if unknown)."""
        current = self._is_today(now)
        return {event: self._today.get(event, 0) if current else 0 for event in EVENTS_TODAY}

    def counts_last_5_minutes(self) -> dict[str, int]:
        return {event: self._last_5m.get(event, 0) for event in EVENTS_LAST_5M}

    def relay_counts_today(self, now: float | None = None) -> dict[str, dict[str, int]]:
        if not self._is_today(now):
            return {}
        return {relay: dict(counts) for relay, counts in self._relays.items()}

    def _is_today(self, now: float | None) -> bool:
        return self.day is not None and self.day == utc_day(time.time() if now is None else now)


def _none_suspended() -> Mapping[str, str | None]:
    return {}


def _nothing_due() -> float | None:
    return None


class MetricsCollector:
    """Builds every metric family from in-memory state at each scrape. Owns nothing."""

    def __init__(
        self,
        *,
        stats: Stats,
        spool_counts: Callable[[], SpoolCounts],
        relays: Callable[[], Iterable[RelayLike]],
        database_reachable: Callable[[], bool],
        figures: DatabaseFigures,
        suspensions: Callable[[], Mapping[str, str | None]] = _none_suspended,
        next_due_time: Callable[[], float | None] = _nothing_due,
        files: FileFigures | None = None,
    ) -> None:
        """``suspensions``: every configured relay's name → why it is suspended, or None;
        ``next_due_time``: the earliest ``next_attempt_at`` (Unix time) of the incoming
        messages no worker has taken, or None (``Spool.next_due_time``)."""
        self._stats = stats
        self._spool_counts = spool_counts
        self._relays = relays
        self._database_reachable = database_reachable
        self._figures = figures
        self._suspensions = suspensions
        self._next_due_time = next_due_time
        self._files = files

    def describe(self) -> Iterator[Metric]:
        """The families without samples: lets the registry check names without a scrape."""
        return self._families(populated=False)

    def collect(self) -> Iterator[Metric]:
        return self._families(populated=True)

    def _families(self, *, populated: bool) -> Iterator[Metric]:
        relays = _relays_by_name(self._relays()) if populated else {}
        yield from self._gauges(populated, relays)
        yield from self._counters(populated, relays)
        yield from self._histograms(populated)
        yield from self._relay_families(populated, relays)
        yield from self._spool_and_files(populated)
        yield self._retention_success(populated)
        yield from dkim_families(self._stats, populated)
        yield from bounce_families(self._stats, populated)
        yield from webhook_families(self._stats, populated)
        yield from outbound_families(self._stats, populated)
        info = GaugeMetricFamily(
            "dispatch_build_info",
            "Dispatch version and Python version of this process (always 1)",
            labels=["version", "python"],
        )
        if populated:
            info.add_metric([__version__, platform.python_version()], 1)
        yield info

    def _gauges(self, populated: bool, relays: Mapping[str, RelayLike]) -> Iterator[Metric]:
        up = GaugeMetricFamily("dispatch_up", "1 while this Dispatch process answers")
        reachable = GaugeMetricFamily(
            "dispatch_database_reachable", "1 if the last write to the log database succeeded"
        )
        today = GaugeMetricFamily(
            "dispatch_messages_today", "message log events today (UTC), by event", labels=["event"]
        )
        last_5m = GaugeMetricFamily(
            "dispatch_messages_last5m",
            "messages received and sent in the last five minutes",
            labels=["event"],
        )
        spool = GaugeMetricFamily(
            "dispatch_spool_files", "messages in the spool, by state", labels=["state"]
        )
        inflight = GaugeMetricFamily(
            "dispatch_relay_inflight", "deliveries in progress, by relay", labels=["relay"]
        )
        delivered = GaugeMetricFamily(
            "dispatch_relay_delivered_today",
            "recipients delivered today (UTC), by relay",
            labels=["relay"],
        )
        failed = GaugeMetricFamily(
            "dispatch_relay_failed_today",
            "recipients failed permanently today (UTC), by relay",
            labels=["relay"],
        )
        if populated:
            up.add_metric([], 1)
            reachable.add_metric([], 1 if self._database_reachable() else 0)
            for event, count in self._figures.counts_today().items():
                today.add_metric([event], count)
            for event, count in self._figures.counts_last_5_minutes().items():
                last_5m.add_metric([event], count)
            counts = self._spool_counts()
            for state, count in zip(
                SPOOL_STATES, (counts.incoming, counts.processing, counts.failed), strict=True
            ):
                spool.add_metric([state], count)
            for name, relay in relays.items():
                inflight.add_metric([name], relay.inflight)
            by_relay = self._figures.relay_counts_today()
            # Configured relays always have a series; a relay removed today keeps its figures.
            for name in sorted(relays.keys() | by_relay.keys()):
                figures = by_relay.get(name, {})
                delivered.add_metric([name], figures.get("delivered", 0))
                failed.add_metric([name], figures.get("failed", 0))
        yield from (up, reachable, today, last_5m, spool, inflight, delivered, failed)

    def _counters(self, populated: bool, relays: Mapping[str, RelayLike]) -> Iterator[Metric]:
        s = self._stats
        simple = (
            ("smtp_commands", "dispatch_smtp_commands", s.smtp_commands, "verb"),
            ("smtp_replies", "dispatch_smtp_replies", s.smtp_replies, "code"),
            ("smtp_sessions", "dispatch_smtp_sessions", s.smtp_sessions, "tls"),
            ("smtp_wrong_protocol", "dispatch_smtp_wrong_protocol", s.smtp_wrong_protocol, "verb"),
            ("smtp_violations", "dispatch_smtp_protocol_violations", s.smtp_violations, "kind"),
            ("smtp_denied", "dispatch_smtp_denied_connections", s.smtp_denied, "reason"),
            ("smtp_auth", "dispatch_smtp_auth", s.smtp_auth, "result"),
            ("messages_received", "dispatch_messages_received", s.messages_received, "source"),
            ("spool_writes", "dispatch_spool_writes", s.spool_writes, "result"),
            ("api_denied", "dispatch_api_denied_requests", s.api_denied, "reason"),
            ("webui_denied", "dispatch_webui_denied_requests", s.webui_denied, "reason"),
            (
                "monitoring_denied",
                "dispatch_monitoring_denied_requests",
                s.monitoring_denied,
                "reason",
            ),
            ("api_auth", "dispatch_api_auth", s.api_auth, "result"),
            ("api_busy", "dispatch_api_busy_requests", s.api_busy, "reason"),
            ("retention_removed", "dispatch_retention_removed", s.retention_removed, "kind"),
            ("retention_runs", "dispatch_retention_runs", s.retention_runs, "result"),
        )
        for key, name, counter_map, label in simple:
            family = CounterMetricFamily(name, counter_map.help, labels=[label])
            if populated:
                for value, count in with_known(counter_map, _KNOWN_VALUES.get(key, ())):
                    family.add_metric([value], count)
            yield family
        loops = CounterMetricFamily("dispatch_smtp_loops_detected", s.smtp_loops.help)
        if populated:
            loops.add_metric([], s.smtp_loops.value)
        yield loops
        attempts = CounterMetricFamily(
            "dispatch_delivery_attempts", s.delivery_attempts.help, labels=["kind", "outcome"]
        )
        if populated:
            for (kind, outcome), count in self._delivery_attempts(relays).items():
                attempts.add_metric([kind, outcome], count)
        yield attempts

    def _retention_success(self, populated: bool) -> Metric:
        gauge = GaugeMetricFamily(
            "dispatch_retention_last_success_timestamp_seconds",
            "Unix time the last retention run that removed everything it should ended "
            "(0 before the first)",
        )
        if populated:
            gauge.add_metric([], self._stats.retention_last_success or 0.0)
        return gauge

    def _delivery_attempts(self, relays: Mapping[str, RelayLike]) -> dict[tuple[str, str], int]:
        kinds = {relay.kind for relay in relays.values()}
        result = {(kind, outcome): 0 for kind in sorted(kinds) for outcome in DELIVERY_OUTCOMES}
        for key, count in self._stats.delivery_attempts.values.items():
            kind, sep, outcome = key.partition(":")
            # "other" is the overflow key of a full CounterMap; it has no outcome part.
            pair = (kind, outcome) if sep else (kind, "other")
            result[pair] = result.get(pair, 0) + count
        return result

    def _histograms(self, populated: bool) -> Iterator[Metric]:
        s = self._stats
        for name, histogram in (
            ("dispatch_smtp_session_duration_seconds", s.smtp_session_seconds),
            ("dispatch_delivery_latency_seconds", s.delivery_latency_seconds),
        ):
            family = HistogramMetricFamily(name, histogram.help)
            if populated:
                family.add_metric([], _buckets(histogram), sum_value=histogram.sum)
            yield family

    def _relay_families(self, populated: bool, relays: Mapping[str, RelayLike]) -> Iterator[Metric]:
        """Per relay name: recipients by outcome, attempt durations, suspension. Configured
        relays have every series from the start; a relay removed by a reload keeps its
        counters until the process ends (they never go back)."""
        s = self._stats
        deliveries = CounterMetricFamily(
            "dispatch_relay_deliveries",
            "recipients handed to each relay since the process started, by outcome: "
            "delivered, transient (to be retried) or permanent (refused for good)",
            labels=["relay", "outcome"],
        )
        durations = HistogramMetricFamily(
            "dispatch_relay_attempt_duration_seconds",
            s.relay_attempt_seconds.help,
            labels=["relay"],
        )
        suspended = GaugeMetricFamily(
            "dispatch_relay_suspended",
            "1 while a relay's deliveries fail fast after its upstream timed out, else 0",
            labels=["relay"],
        )
        if populated:
            outcomes = relay_outcomes(s)
            for name in sorted(relays.keys() | outcomes.keys()):
                counts = outcomes.get(name, dict.fromkeys(RELAY_OUTCOMES, 0))
                for outcome, count in sorted(counts.items()):
                    deliveries.add_metric([name, outcome], count)
            observed = s.relay_attempt_seconds.values
            empty = Histogram("", "", s.relay_attempt_seconds.buckets)
            for name in sorted(relays.keys() | observed.keys()):
                histogram = observed.get(name, empty)
                durations.add_metric([name], _buckets(histogram), sum_value=histogram.sum)
            why = self._suspensions()
            for name in sorted(relays.keys() | why.keys()):
                suspended.add_metric([name], 1 if why.get(name) else 0)
        yield from (deliveries, durations, suspended)

    def _spool_and_files(self, populated: bool) -> Iterator[Metric]:
        """How long due mail waits for a worker, the spool's disk, the certificate's expiry.
        Disk and certificate series appear once :class:`FileFigures` has read them."""
        oldest = GaugeMetricFamily(
            "dispatch_spool_oldest_due_age_seconds",
            "seconds the incoming message due first has waited for a delivery worker "
            "since it came due (0 when none is due)",
        )
        free = GaugeMetricFamily(
            "dispatch_spool_disk_free_bytes",
            "bytes free for Dispatch's user on the spool's file system",
        )
        total = GaugeMetricFamily(
            "dispatch_spool_disk_total_bytes", "size of the spool's file system in bytes"
        )
        expiry = GaugeMetricFamily(
            "dispatch_tls_certificate_expiry_timestamp_seconds",
            "Unix time the TLS certificate the listeners serve expires (notAfter), by file",
            labels=["certificate"],
        )
        if populated:
            due_at = self._next_due_time()
            oldest.add_metric([], 0.0 if due_at is None else max(0.0, time.time() - due_at))
            files = self._files
            if files is not None and files.disk_free_bytes is not None:
                free.add_metric([], files.disk_free_bytes)
            if files is not None and files.disk_total_bytes is not None:
                total.add_metric([], files.disk_total_bytes)
            for path, not_after in (files.certificate_expiries() if files else {}).items():
                expiry.add_metric([path], not_after)
        yield from (oldest, free, total, expiry)


def build_registry(collector: MetricsCollector) -> CollectorRegistry:
    """A private registry holding ``collector`` and prometheus_client's process, platform and
    GC collectors, each made for this registry (the default registry's globals would leak
    between tests and between embedded apps)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry, accept_header: str | None) -> tuple[bytes, str]:
    """The scrape body and its ``Content-Type``: OpenMetrics when ``Accept`` asks for it,
    else the text format 0.0.4."""
    encoder, content_type = choose_encoder(accept_header or "")
    return encoder(registry), content_type


def _relays_by_name(relays: Iterable[RelayLike]) -> dict[str, RelayLike]:
    by_name: dict[str, RelayLike] = {}
    for relay in relays:
        by_name.setdefault(relay.name, relay)  # one series per name, whatever the caller gave
    return by_name


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [
        ("+Inf" if bound == float("inf") else _bound_text(bound), count)
        for bound, count in histogram.cumulative()
    ]


def _bound_text(bound: float) -> str:
    # "1.0" rather than "1": Prometheus' own clients write le values as floats.
    return repr(float(bound))
