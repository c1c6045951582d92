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
  and while it is down the last figures stay (``dispatch_database_reachable`` says so).

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
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry

from dispatch import __version__
from dispatch.monitoring.stats import RETENTION_KINDS, CounterMap, Histogram, Stats
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
    ) -> None:
        self._stats = stats
        self._spool_counts = spool_counts
        self._relays = relays
        self._database_reachable = database_reachable
        self._figures = figures

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
        yield self._retention_success(populated)
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
                for value, count in _with_known(counter_map, _KNOWN_VALUES.get(key, ())):
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


def build_registry(collector: MetricsCollector) -> CollectorRegistry:
    """A private registry holding only ``collector`` (no process or platform collectors:
    the default registry's globals would leak between tests and between embedded apps)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
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


def _with_known(counter_map: CounterMap, known: Iterable[str]) -> list[tuple[str, int]]:
    values = dict.fromkeys(known, 0)
    values.update(counter_map.values)
    return sorted(values.items())


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [
        ("+Inf" if bound == float("inf") else _bound_text(bound), count)
        for bound, count in histogram.cumulative()
    ]


def _bound_text(bound: float) -> str:
    # "1.0" rather than "1": Prometheus' own clients write le values as floats.
    return repr(float(bound))
