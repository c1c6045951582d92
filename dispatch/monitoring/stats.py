"""The in-memory counters of one Dispatch process, in the manner of chasquid's expvars.

Every counter has a chasquid-style name (``dispatch/smtpIn/commandCount``) under which
``/debug/vars`` shows it, and a help text that ``/metrics`` reuses. Updating is a dict
increment on the Trio thread: cheap enough for the per-command path, and never I/O.

Label values must never identify a person: verbs are sanitised by the protocol core, reply
codes are numbers, and nothing here takes an address, a subject or a secret.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import attrs

from dispatch.monitoring.webhook_activity import WebhookActivity

MAX_LABEL_VALUES: Final = 200
"""Distinct values one map keeps; later ones are counted under ``"other"`` (bounded memory)."""


class Counter:
    """A single monotonically increasing count."""

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self.value = 0

    def add(self, amount: int = 1) -> None:
        self.value += amount

    def take(self) -> int:
        value, self.value = self.value, 0
        return value

    def merge(self, value: int) -> None:
        self.value += value


class CounterMap:
    """Counts keyed by one label (chasquid's ``expvar.Map``): ``{"EHLO": 12, "MAIL": 10}``."""

    def __init__(self, name: str, help_text: str, label: str) -> None:
        self.name = name
        self.help = help_text
        self.label = label
        self.values: defaultdict[str, int] = defaultdict(int)

    def add(self, key: str, amount: int = 1) -> None:
        if key not in self.values and len(self.values) >= MAX_LABEL_VALUES:
            key = "other"
        self.values[key] += amount

    def __getitem__(self, key: str) -> int:
        return self.values.get(key, 0)

    def take(self) -> dict[str, int]:
        values, self.values = dict(self.values), defaultdict(int)
        return values

    def merge(self, values: dict[str, int]) -> None:
        for key, amount in values.items():
            self.add(key, amount)


class Histogram:
    """Observations in fixed buckets (upper bounds, seconds), as Prometheus exposes them."""

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.help = help_text
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def take(self) -> tuple[list[int], float, int]:
        taken = (self.counts, self.sum, self.count)
        self.counts, self.sum, self.count = [0] * len(self.counts), 0.0, 0
        return taken

    def merge(self, taken: tuple[list[int], float, int]) -> None:
        counts, total, count = taken
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.sum += total
        self.count += count

    def cumulative(self) -> Iterator[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` pairs, ending with ``(inf, count)``."""
        running = 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            yield bound, running


class HistogramMap:
    """One :class:`Histogram` per value of one label (a relay's name), all with the same
    buckets; at most :data:`MAX_LABEL_VALUES` values, later ones observed under ``"other"``."""

    def __init__(self, name: str, help_text: str, label: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.help = help_text
        self.label = label
        self.buckets = tuple(sorted(buckets))
        self.values: dict[str, Histogram] = {}

    def observe(self, key: str, value: float) -> None:
        self._histogram(key).observe(value)

    def take(self) -> dict[str, tuple[list[int], float, int]]:
        values, self.values = self.values, {}
        return {key: histogram.take() for key, histogram in values.items()}

    def merge(self, taken: Mapping[str, Sequence[Any]]) -> None:
        for key, (counts, total, count) in taken.items():
            self._histogram(key).merge((list(counts), float(total), int(count)))

    def _histogram(self, key: str) -> Histogram:
        if key not in self.values and len(self.values) >= MAX_LABEL_VALUES:
            key = "other"
        histogram = self.values.get(key)
        if histogram is None:
            histogram = self.values[key] = Histogram(self.name, self.help, self.buckets)
        return histogram


RETENTION_KINDS: Final = (
    "delivered_log",
    "failed_log",
    "received_log",
    "retried_log",
    "denied_log",
    "audit_log",
    "failed_spool",
    "captured",
)
"""What retention removes: message-log rows by event, audit rows, failed spool messages and
captured copies (the ``kind`` label of ``dispatch_retention_removed_total``)."""


@attrs.frozen
class RetentionRun:
    """What one run of the retention component did (``dispatch/retention.py``).

    ``removed`` counts by kind (log rows, spool messages, captured copies); ``errors`` says
    what could not be done (a database that is down), empty when the run finished.
    """

    started_at: float  # Unix time
    duration_seconds: float
    removed: Mapping[str, int]
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


SESSION_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800)
LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600)
ATTEMPT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
"""Hand-overs to a relay: a local copy takes milliseconds, a pooled smarthost connection tens
of them, a new TLS connection under a second, and a relay's timeouts end at minutes."""

RELAY_OUTCOMES: Final = ("delivered", "transient", "permanent")
"""What happened to a recipient handed to a relay (``dispatch.relays.base.Outcome``)."""


def relay_outcomes(stats: Stats) -> dict[str, dict[str, int]]:
    """``{relay: {"delivered": n, "transient": n, "permanent": n}}``: recipients handed to
    each relay since this process started, by outcome (``stats.relay_deliveries``); a
    ``"other"`` relay with an ``"other"`` outcome holds what a full map could not key.

    The one reading of that counter: ``/metrics`` and ``/debug/vars`` both use it, so they
    cannot disagree. Relays that never had a recipient are absent.
    """
    result: dict[str, dict[str, int]] = {}
    for key, count in stats.relay_deliveries.values.items():
        relay, sep, outcome = key.rpartition(":")
        if not sep:  # "other", the overflow key of a full map, has no outcome part
            relay, outcome = key, "other"
        figures = result.setdefault(relay, dict.fromkeys(RELAY_OUTCOMES, 0))
        figures[outcome] = figures.get(outcome, 0) + count
    return result


class Stats:
    """All counters of one process; created once by the daemon and shared by reference."""

    def __init__(self) -> None:
        p = "dispatch/smtpIn/"
        self.smtp_commands = CounterMap(p + "commandCount", "SMTP commands received", "verb")
        self.smtp_replies = CounterMap(p + "responseCodeCount", "SMTP reply codes sent", "code")
        self.smtp_sessions = CounterMap(
            p + "tlsCount", "SMTP sessions by TLS status at their end", "status"
        )
        self.smtp_wrong_protocol = CounterMap(
            p + "wrongProtoCount", "commands of other protocols (e.g. HTTP) on SMTP", "verb"
        )
        self.smtp_loops = Counter(p + "loopsDetected", "messages refused as mail loops")
        # DKIM, under chasquid's names (smtpIn/dkim*): signing happens at delivery (mx and
        # smtp relays, dispatch/relays/dkim_sign.py), verification at intake when
        # listener.dkim_verify is on (dispatch/intake/dkim_verify.py).
        self.dkim_signed = Counter(p + "dkimSigned", "messages DKIM-signed for delivery")
        self.dkim_sign_errors = Counter(
            p + "dkimSignErrors", "DKIM signing failures (the message went unsigned)"
        )
        self.dkim_verify_found = Counter(
            p + "dkimVerifyFound", "received messages with at least one DKIM signature"
        )
        self.dkim_verify_not_found = Counter(
            p + "dkimVerifyNotFound", "received messages with no DKIM signature"
        )
        self.dkim_verify_valid = Counter(
            p + "dkimVerifyValid", "received messages with at least one valid DKIM signature"
        )
        self.dkim_verify_errors = Counter(
            p + "dkimVerifyErrors",
            "DKIM verifications that could not finish (DNS failure, timeout, message too "
            "large to check)",
        )
        self.dkim_verify_results = CounterMap(
            p + "dkimVerifyResult",
            "DKIM signatures checked on received messages, by result (pass, fail, temperror, "
            "permerror)",
            "result",
        )
        self.smtp_violations = CounterMap(
            p + "protocolViolations",
            "SMTP sessions closed or messages refused for breaking the protocol",
            "kind",
        )
        self.smtp_denied = CounterMap(
            p + "deniedCount", "SMTP connections refused at connect", "reason"
        )
        self.smtp_auth = CounterMap(p + "authResults", "SMTP AUTH attempts", "result")
        self.smtp_session_seconds = Histogram(
            p + "sessionSeconds", "SMTP session duration in seconds", SESSION_BUCKETS
        )
        self.messages_received = CounterMap(
            "dispatch/queue/putCount", "messages accepted into the spool", "source"
        )
        self.spool_writes = CounterMap(
            "dispatch/queue/itemsWritten", "spool write attempts", "result"
        )
        # Bounces and the suppression list (dispatch/delivery/bounces.py, docs/deliverability.md)
        self.dsn_queued = Counter(
            "dispatch/queue/dsnQueued",
            "delivery status notifications (bounces, delay and success notices) spooled",
        )
        self.suppressed = CounterMap(
            "dispatch/suppression/refusedCount",
            "recipients on the suppression list refused at RCPT (intake) or skipped at "
            "delivery (delivery)",
            "where",
        )
        self.suppression_added = Counter(
            "dispatch/suppression/addedCount", "addresses put on the suppression list"
        )
        self.api_denied = CounterMap(
            "dispatch/api/deniedCount", "API requests refused at the allow-list", "reason"
        )
        self.webui_denied = CounterMap(
            "dispatch/webui/deniedCount",
            "dashboard-port requests (/health, /metrics) refused at the allow-list",
            "reason",
        )
        self.monitoring_denied = CounterMap(
            "dispatch/monitoring/deniedCount",
            "monitoring-server requests refused: peer not in monitoring.allowed_cidrs "
            "(allowlist) or a Host header that is not an address (host)",
            "reason",
        )
        self.api_auth = CounterMap(
            "dispatch/api/authResults", "API key checks and rate-limit decisions", "result"
        )
        self.api_busy = CounterMap(
            "dispatch/api/busyCount",
            "API requests refused with 503: too many in progress (api.max_concurrent_requests, "
            "api.max_concurrent_requests_per_ip)",
            "reason",
        )
        self.delivery_attempts = CounterMap(
            "dispatch/queue/deliverAttempts",
            "recipient groups handed to relays, by relay kind and outcome",
            "kind:outcome",
        )
        self.relay_deliveries = CounterMap(
            "dispatch/relays/deliveries",
            "recipients handed to each relay, by relay name and outcome "
            "(delivered, transient, permanent)",
            "relay:outcome",
        )
        self.relay_attempt_seconds = HistogramMap(
            "dispatch/relays/attemptSeconds",
            "seconds each hand-over of a recipient group to a relay took, by relay",
            "relay",
            ATTEMPT_BUCKETS,
        )
        self.delivery_latency_seconds = Histogram(
            "dispatch/queue/deliveryLatencySeconds",
            "seconds from acceptance to delivery",
            LATENCY_BUCKETS,
        )
        self.retention_removed = CounterMap(
            "dispatch/retention/removedCount",
            "records removed by retention: log rows, failed spool messages, captured copies",
            "kind",
        )
        self.retention_runs = CounterMap(
            "dispatch/retention/runCount", "retention runs, by result (ok, failed)", "result"
        )
        o = "dispatch/smtpOut/"  # outbound security (relays/mx.py, docs/delivery.md)
        self.smtp_out_tls = CounterMap(
            o + "tlsCount",
            "outbound SMTP connections by TLS status: tls:secure (certificate verified), "
            "tls:insecure (not verified), tls:failed (handshake failed), plain",
            "status",
        )
        self.smtp_out_security_checks = CounterMap(
            o + "securityLevelChecks",
            "outbound security level checks (no downgrade below the best level seen for the "
            "domain), by result (pass, fail)",
            "result",
        )
        self.sts_mode = CounterMap(
            o + "sts/mode", "MTA-STS policies applied to deliveries, by mode", "mode"
        )
        self.sts_security = CounterMap(
            o + "sts/security",
            "MTA-STS checks of an exchanger (policy match and verified TLS), by result",
            "result",
        )
        c = "dispatch/sts/cache/"  # the MTA-STS policy cache (relays/sts_cache.py)
        self.sts_cache_fetches = Counter(c + "fetches", "MTA-STS policy fetches over HTTPS")
        self.sts_cache_hits = Counter(c + "hits", "MTA-STS policies answered from the cache")
        self.sts_cache_expired = Counter(
            c + "expired", "cached MTA-STS policies found past their max_age"
        )
        self.sts_cache_failed_fetch = Counter(
            c + "failedFetch", "MTA-STS TXT lookups or policy fetches that failed"
        )
        self.sts_cache_invalid = Counter(
            c + "invalid", "MTA-STS TXT records or policies refused as invalid"
        )
        self.sts_cache_io_errors = Counter(
            c + "ioErrors", "MTA-STS cache files that could not be read or written"
        )
        self.sts_cache_marshal_errors = Counter(
            c + "marshalErrors", "MTA-STS cache entries that could not be encoded"
        )
        self.sts_cache_unmarshal_errors = Counter(
            c + "unmarshalErrors", "MTA-STS cache files that could not be decoded"
        )
        # Not counters: set by the retention component in the main process only.
        self.retention_last_run: RetentionRun | None = None
        self.retention_last_success: float | None = None  # Unix time the last ok run ended
        w = "dispatch/webhooks/"  # delivery webhooks (dispatch/webhooks/, docs/webhooks.md)
        self.webhook_queued = Counter(
            w + "queued", "webhook calls put in the outbox (one per event and receiver)"
        )
        self.webhook_sent = Counter(w + "sent", "webhook calls answered with a 2xx status")
        self.webhook_retried = Counter(
            w + "retried",
            "webhook calls that got no 2xx (error status, timeout, connection refused) and "
            "are tried again later",
        )
        self.webhook_failed = Counter(
            w + "failed", "webhook calls given up after webhooks[].give_up_after_seconds"
        )
        self.webhook_outbox_errors = Counter(
            w + "outboxErrors", "writes or fsyncs of the webhook outbox file that failed"
        )
        # Not a counter: the sender's recent calls and the outbox depth (main process only).
        self.webhook_activity = WebhookActivity()

    def all(self) -> Iterator[Counter | CounterMap | Histogram | HistogramMap]:
        for value in vars(self).values():
            if isinstance(value, Counter | CounterMap | Histogram | HistogramMap):
                yield value

    def take(self) -> dict[str, Any]:
        """Every figure counted since the last ``take``, by name; the counts start over.

        An intake worker process takes its figures every second and sends them to the main
        process, which adds them to its own with :meth:`merge` (see ``intake/processes.py``).
        """
        return {metric.name: metric.take() for metric in self.all()}

    def merge(self, taken: dict[str, Any]) -> None:
        for metric in self.all():
            if metric.name in taken:
                metric.merge(taken[metric.name])
