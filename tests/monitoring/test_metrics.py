"""``/metrics``: the SPEC §9 families, both exposition formats, promtool, live values."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from dispatch.lifecycle import Shutdown
from dispatch.monitoring.metrics import (
    DatabaseFigures,
    MetricsCollector,
    build_registry,
    render,
)
from dispatch.monitoring.stats import Stats
from dispatch.spool.index import SpoolCounts
from dispatch.storage import MessageEvent, Store, open_store
from dispatch.storage.records import EventKind
from tests.support.waiting import wait_until_async

OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0"

SPEC_GAUGES: dict[str, tuple[str, ...] | None] = {
    # family -> the label values that must always be there (None: no label)
    "dispatch_up": None,
    "dispatch_database_reachable": None,
    "dispatch_messages_today": ("received", "delivered", "failed", "retried", "denied"),
    "dispatch_messages_last5m": ("received", "sent"),
    "dispatch_spool_files": ("incoming", "processing", "failed"),
}
RELAY_GAUGES = (
    "dispatch_relay_inflight",
    "dispatch_relay_delivered_today",
    "dispatch_relay_failed_today",
)
# Label names are verbs, codes, states, events, relay names and kinds: never a person.
ALLOWED_LABELS = {
    "verb",
    "code",
    "tls",
    "reason",
    "result",
    "source",
    "kind",
    "outcome",
    "event",
    "state",
    "relay",
    "version",
    "python",
    "le",
    "certificate",  # a certificate file's path
    "status",  # outbound TLS status: plain, tls:secure, tls:insecure, tls:failed
    "mode",  # an MTA-STS policy's mode: enforce, testing, none
    "where",  # where a suppressed recipient was stopped: intake, delivery
    # prometheus_client's platform and GC collectors
    "implementation",
    "major",
    "minor",
    "patchlevel",
    "generation",
}


@attrs.define
class Relay:
    """What the collector reads of a relay (the relay objects have these attributes)."""

    name: str
    kind: str
    inflight: int = 0


@attrs.define
class Sources:
    """Everything a collector reads, mutable by the test."""

    stats: Stats = attrs.field(factory=Stats)
    spool: SpoolCounts = attrs.field(factory=lambda: SpoolCounts(0, 0, 0, 0, 0))
    relays: list[Relay] = attrs.field(factory=list)
    reachable: bool = False
    figures: DatabaseFigures = attrs.field(factory=DatabaseFigures)

    def collector(self) -> MetricsCollector:
        return MetricsCollector(
            stats=self.stats,
            spool_counts=lambda: self.spool,
            relays=lambda: self.relays,
            database_reachable=lambda: self.reachable,
            figures=self.figures,
        )

    def scrape(self, accept: str = "") -> str:
        body, _ = render(build_registry(self.collector()), accept)
        return body.decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``{(sample name, labels): value}`` of a 0.0.4 scrape, failing on a duplicate series."""
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in parse_text(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"duplicate series {key}"
            found[key] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def busy_sources() -> Sources:
    sources = Sources(
        spool=SpoolCounts(incoming=4, retrying=1, processing=2, failed=3, total_bytes=999),
        relays=[Relay("smarthost", "smtp", 2), Relay("inbox", "local"), Relay("direct", "mx")],
        reachable=True,
    )
    s = sources.stats
    for verb in ("EHLO", "MAIL", "RCPT", "RCPT", "DATA", "QUIT", "unknownFOO"):
        s.smtp_commands.add(verb)
    for code in ("220", "250", "250", "354", "221", "535"):
        s.smtp_replies.add(code)
    s.smtp_sessions.add("tls")
    s.smtp_wrong_protocol.add("GET")
    s.smtp_loops.add()
    s.smtp_denied.add("cidr")
    s.smtp_auth.add("failure")
    s.messages_received.add("smtp")
    s.spool_writes.add("ok")
    s.delivery_attempts.add("smtp:delivered", 3)
    s.delivery_attempts.add("mx:transient")
    s.smtp_session_seconds.observe(0.2)
    s.delivery_latency_seconds.observe(7.0)
    s.retention_removed.add("delivered_log", 40)
    s.retention_removed.add("captured", 2)
    s.retention_runs.add("ok")
    s.retention_last_success = 1_800_000_000.5
    return sources


def test_every_spec_family_and_label_exists_before_anything_happened() -> None:
    text = Sources().scrape()
    families = {family.name: family for family in parse_text(text)}
    for name, labels in SPEC_GAUGES.items():
        assert families[name].type == "gauge"
        if labels is None:
            assert len(families[name].samples) == 1
        else:
            assert sorted(s.labels[next(iter(s.labels))] for s in families[name].samples) == sorted(
                labels
            )
    for name in RELAY_GAUGES:
        assert families[name].type == "gauge"  # declared even with no relay configured
    assert value(text, "dispatch_up") == 1
    assert value(text, "dispatch_database_reachable") == 0
    assert value(text, "dispatch_messages_today", event="denied") == 0
    for counter in (
        "dispatch_smtp_commands",
        "dispatch_smtp_replies",
        "dispatch_smtp_sessions",
        "dispatch_smtp_wrong_protocol",
        "dispatch_smtp_loops_detected",
        "dispatch_smtp_denied_connections",
        "dispatch_smtp_auth",
        "dispatch_messages_received",
        "dispatch_spool_writes",
        "dispatch_delivery_attempts",
        "dispatch_retention_removed",
        "dispatch_retention_runs",
    ):
        assert families[counter].type == "counter"
    assert value(text, "dispatch_smtp_sessions_total", tls="plain") == 0
    assert value(text, "dispatch_retention_removed_total", kind="captured") == 0
    assert value(text, "dispatch_retention_runs_total", result="failed") == 0
    assert families["dispatch_retention_last_success_timestamp_seconds"].type == "gauge"
    assert value(text, "dispatch_retention_last_success_timestamp_seconds") == 0
    assert value(text, "dispatch_smtp_loops_detected_total") == 0
    for histogram in (
        "dispatch_smtp_session_duration_seconds",
        "dispatch_delivery_latency_seconds",
    ):
        assert families[histogram].type == "histogram"
        assert value(text, f"{histogram}_bucket", le="+Inf") == 0
    assert families["dispatch_build_info"].type == "gauge"


def test_values_follow_stats_spool_relays_and_reachability() -> None:
    sources = busy_sources()
    text = sources.scrape()
    assert value(text, "dispatch_database_reachable") == 1
    assert value(text, "dispatch_spool_files", state="incoming") == 4
    assert value(text, "dispatch_spool_files", state="failed") == 3
    assert value(text, "dispatch_relay_inflight", relay="smarthost") == 2
    assert value(text, "dispatch_relay_delivered_today", relay="inbox") == 0  # configured → 0
    assert value(text, "dispatch_smtp_commands_total", verb="RCPT") == 2
    assert value(text, "dispatch_smtp_commands_total", verb="unknownFOO") == 1
    assert value(text, "dispatch_smtp_replies_total", code="250") == 2
    assert value(text, "dispatch_smtp_sessions_total", tls="tls") == 1
    assert value(text, "dispatch_smtp_wrong_protocol_total", verb="GET") == 1
    assert value(text, "dispatch_smtp_loops_detected_total") == 1
    assert value(text, "dispatch_smtp_denied_connections_total", reason="cidr") == 1
    assert value(text, "dispatch_smtp_auth_total", result="failure") == 1
    assert value(text, "dispatch_smtp_auth_total", result="success") == 0
    assert value(text, "dispatch_messages_received_total", source="smtp") == 1
    assert value(text, "dispatch_spool_writes_total", result="ok") == 1
    attempts = "dispatch_delivery_attempts_total"
    assert value(text, attempts, kind="smtp", outcome="delivered") == 3
    assert value(text, attempts, kind="mx", outcome="transient") == 1
    assert value(text, attempts, kind="local", outcome="permanent") == 0
    latency = "dispatch_delivery_latency_seconds"
    assert value(text, f"{latency}_bucket", le="5.0") == 0
    assert value(text, f"{latency}_bucket", le="10.0") == 1
    assert value(text, f"{latency}_sum") == 7.0
    assert value(text, "dispatch_smtp_session_duration_seconds_count") == 1
    assert value(text, "dispatch_retention_removed_total", kind="delivered_log") == 40
    assert value(text, "dispatch_retention_removed_total", kind="captured") == 2
    assert value(text, "dispatch_retention_removed_total", kind="audit_log") == 0
    assert value(text, "dispatch_retention_runs_total", result="ok") == 1
    assert value(text, "dispatch_retention_last_success_timestamp_seconds") == 1_800_000_000.5

    sources.spool = SpoolCounts(incoming=0, retrying=0, processing=1, failed=3, total_bytes=0)
    sources.relays[0].inflight = 0
    sources.reachable = False
    sources.stats.smtp_commands.add("RCPT")
    sources.stats.smtp_loops.add()
    sources.stats.delivery_attempts.add("other")  # a full CounterMap's overflow key
    text = sources.scrape()
    assert value(text, "dispatch_spool_files", state="incoming") == 0
    assert value(text, "dispatch_relay_inflight", relay="smarthost") == 0
    assert value(text, "dispatch_database_reachable") == 0
    assert value(text, "dispatch_smtp_commands_total", verb="RCPT") == 3
    assert value(text, "dispatch_smtp_loops_detected_total") == 2
    assert value(text, attempts, kind="other", outcome="other") == 1


def test_both_formats_parse_without_duplicates_and_with_safe_labels() -> None:
    sources = busy_sources()
    sources.relays.append(Relay("smarthost", "smtp", 5))  # a repeated name is one series
    text = sources.scrape()
    found = samples(text)  # asserts no duplicate series
    assert {name for (_, labels) in found for name, _ in labels} <= ALLOWED_LABELS
    assert value(text, "dispatch_relay_inflight", relay="smarthost") == 2

    openmetrics = sources.scrape(OPENMETRICS_ACCEPT)
    assert openmetrics.endswith("# EOF\n")
    seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()
    for family in parse_openmetrics(openmetrics):  # type: ignore[no-untyped-call]
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in seen, f"duplicate series {key}"
            seen.add(key)
    assert seen == set(found)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", "text/plain; version=0.0.4"),
        ("*/*", "text/plain; version=0.0.4"),
        ("text/plain", "text/plain; version=0.0.4"),
        (OPENMETRICS_ACCEPT, "application/openmetrics-text; version=1.0.0"),
        (
            "application/openmetrics-text;version=1.0.0;q=0.9,text/plain;version=0.0.4;q=0.5",
            "application/openmetrics-text; version=1.0.0",
        ),
    ],
)
def test_content_negotiation(accept: str, expected: str) -> None:
    body, content_type = render(build_registry(busy_sources().collector()), accept)
    assert content_type.startswith(expected)
    assert body.endswith(b"# EOF\n") == content_type.startswith("application/openmetrics-text")


def test_promtool_check_metrics_is_clean() -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).exists():
        pytest.fail(
            "promtool is not installed; install it with `apt-get install prometheus` "
            "(CI installs it) to check /metrics the way Prometheus' own linter does."
        )
    for sources in (Sources(), busy_sources()):
        checked = subprocess.run(
            [promtool, "check", "metrics"],
            input=sources.scrape(),
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_registering_does_not_read_state() -> None:
    def unavailable() -> SpoolCounts:
        raise AssertionError("collect() ran at registration")

    collector = MetricsCollector(
        stats=Stats(),
        spool_counts=unavailable,
        relays=list,
        database_reachable=lambda: True,
        figures=DatabaseFigures(),
    )
    registry = build_registry(collector)
    described = [family.name for family in collector.describe()]
    assert len(described) == len(set(described))
    with pytest.raises(AssertionError, match="registration"):
        render(registry, "")


# ---- database figures, from a real SQLite store -------------------------------------------


@asynccontextmanager
async def running_store(path: Path) -> AsyncIterator[Store]:
    store = open_store(f"sqlite:///{path / 'dispatch.db'}", path)
    shutdown = Shutdown(grace_seconds=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run, shutdown)
        yield store
        shutdown.request()


async def test_database_figures_reach_the_gauges(tmp_path: Path) -> None:
    now = time.time()
    sources = Sources(relays=[Relay("smarthost", "smtp"), Relay("inbox", "local")])
    async with running_store(tmp_path) as store:
        happened: list[tuple[EventKind, str | None]] = [
            ("received", None),
            ("received", None),
            ("delivered", "smarthost"),
            ("failed", "smarthost"),
            ("delivered", "retired"),  # a relay no longer configured keeps its figures
            ("denied", None),
        ]
        for n, (event, relay) in enumerate(happened):
            store.log.record(MessageEvent(message_id=f"msg-{n}", event=event, at=now, relay=relay))
        with trio.fail_after(10):
            await store.log.wait_until_written()
        before = sources.scrape()
        assert value(before, "dispatch_messages_today", event="received") == 0
        assert await sources.figures.refresh(store.queries)
        sources.reachable = store.log.database_reachable

    text = sources.scrape()
    assert value(text, "dispatch_database_reachable") == 1
    assert value(text, "dispatch_messages_today", event="received") == 2
    assert value(text, "dispatch_messages_today", event="delivered") == 2
    assert value(text, "dispatch_messages_today", event="denied") == 1
    assert value(text, "dispatch_messages_today", event="retried") == 0
    assert value(text, "dispatch_messages_last5m", event="received") == 2
    assert value(text, "dispatch_messages_last5m", event="sent") == 2
    assert value(text, "dispatch_relay_delivered_today", relay="smarthost") == 1
    assert value(text, "dispatch_relay_failed_today", relay="smarthost") == 1
    assert value(text, "dispatch_relay_delivered_today", relay="inbox") == 0
    assert value(text, "dispatch_relay_delivered_today", relay="retired") == 1
    assert ("dispatch_relay_inflight", frozenset({("relay", "retired")})) not in samples(text)


async def test_failed_refresh_keeps_the_last_figures(tmp_path: Path) -> None:
    figures = DatabaseFigures()
    async with running_store(tmp_path / "good") as store:
        store.log.record(MessageEvent(message_id="m", event="received", at=time.time()))
        await store.log.wait_until_written()
        assert await figures.refresh(store.queries)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    broken = open_store(f"sqlite:///{blocker / 'dispatch.db'}", tmp_path)
    assert not await figures.refresh(broken.queries)
    assert figures.last_error
    assert figures.counts_today()["received"] == 1


async def test_refresh_forever_keeps_figures_current(tmp_path: Path) -> None:
    figures = DatabaseFigures()
    async with running_store(tmp_path) as store, trio.open_nursery() as nursery:
        nursery.start_soon(figures.refresh_forever, store.queries, 0.01)
        store.log.record(MessageEvent(message_id="m", event="received", at=time.time()))
        await wait_until_async(lambda: figures.counts_today()["received"] == 1, within=10)
        nursery.cancel_scope.cancel()
    assert figures.refreshed_at is not None


async def test_figures_of_an_earlier_day_are_not_today(tmp_path: Path) -> None:
    figures = DatabaseFigures()
    midday = 1_800_000_000.0
    async with running_store(tmp_path) as store:
        store.log.record(MessageEvent(message_id="m", event="received", at=midday))
        await store.log.wait_until_written()
        assert await figures.refresh(store.queries, now=midday)
    assert figures.counts_today(now=midday)["received"] == 1
    assert figures.counts_today(now=midday + 86_400)["received"] == 0
    assert figures.relay_counts_today(now=midday + 86_400) == {}


def test_each_family_is_declared_once() -> None:
    # promtool does not catch a family emitted twice; the parser would merge it silently.
    text = busy_sources().scrape()
    types = Tally(line.split()[2] for line in text.splitlines() if line.startswith("# TYPE"))
    assert all(count == 1 for count in types.values()), types
