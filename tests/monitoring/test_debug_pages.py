"""The ``/debug/`` building blocks: vars JSON, task tree, CPU and memory profiles, HTML pages."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from html.parser import HTMLParser

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

from dispatch.monitoring import pages, queue_page, trace_pages
from dispatch.monitoring.profiling import (
    ProfilerBusyError,
    clamp_seconds,
    cpu_profile,
    memory_stop,
    memory_top,
)
from dispatch.monitoring.stats import Stats
from dispatch.monitoring.tasks import task_tree_text
from dispatch.monitoring.traces import Tracer
from dispatch.monitoring.vars import ProcessInfo, debug_vars
from dispatch.spool.envelope import Envelope
from dispatch.spool.ids import new_id
from dispatch.spool.index import SpoolCounts, SpoolEntry
from dispatch.spool.layout import MessageState
from tests.support.waiting import wait_until_async

HOSTILE = '<script>alert("x")</script>'


@attrs.define
class Relay:
    name: str
    inflight: int = 0


class TagCollector(HTMLParser):
    """The start tags of a page, to prove hostile text did not become markup."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


def tags_of(page: str) -> list[str]:
    collector = TagCollector()
    collector.feed(page)
    collector.close()
    return collector.tags


def process_info(hostname: str = "mail.example.test") -> ProcessInfo:
    return attrs.evolve(ProcessInfo.current(), hostname=hostname)


# ---- /debug/vars ---------------------------------------------------------------------------


def test_debug_vars_has_the_chasquid_style_names() -> None:
    stats = Stats()
    for _ in range(3):
        stats.smtp_commands.add("EHLO")
    stats.smtp_commands.add("unknownFOO")
    stats.smtp_loops.add()
    stats.messages_received.add("smtp", 2)
    stats.delivery_attempts.add("smtp:delivered")
    stats.delivery_latency_seconds.observe(3.0)
    stats.relay_deliveries.add("smarthost:delivered", 9)
    stats.relay_deliveries.add("smarthost:permanent", 2)
    info = process_info()
    document = debug_vars(
        stats,
        info,
        spool_counts=SpoolCounts(incoming=5, retrying=2, processing=1, failed=0, total_bytes=77),
        relays=[Relay("smarthost", inflight=1), Relay("inbox")],
    )
    decoded = json.loads(json.dumps(document))  # it is plain JSON
    assert decoded["dispatch/smtpIn/commandCount"] == {"EHLO": 3, "unknownFOO": 1}
    assert decoded["dispatch/smtpIn/loopsDetected"] == 1
    assert decoded["dispatch/smtpIn/responseCodeCount"] == {}
    assert decoded["dispatch/smtpIn/tlsCount"] == {}
    assert decoded["dispatch/smtpIn/wrongProtoCount"] == {}
    assert decoded["dispatch/queue/putCount"] == {"smtp": 2}
    assert decoded["dispatch/queue/itemsWritten"] == {}
    assert decoded["dispatch/queue/deliverAttempts"] == {"smtp:delivered": 1}
    latency = decoded["dispatch/queue/deliveryLatencySeconds"]
    assert latency["count"] == 1
    assert latency["sum"] == 3.0
    assert latency["buckets"]["2.5"] == 0
    assert latency["buckets"]["5.0"] == 1
    assert latency["buckets"]["+Inf"] == 1
    assert decoded["dispatch/version"] == info.version
    assert isinstance(decoded["dispatch/sourceDateTimestamp"], int)
    assert decoded["dispatch/sourceDateTimestamp"] > 1_600_000_000
    assert decoded["dispatch/sourceDateStr"].endswith("+0000")
    assert decoded["dispatch/startTime"].endswith("+0000")
    assert 0 <= decoded["dispatch/uptimeSeconds"] < 60
    assert decoded["dispatch/spool/files"] == {"incoming": 5, "processing": 1, "failed": 0}
    assert decoded["dispatch/spool/retrying"] == 2
    assert decoded["dispatch/relays/delivered"] == {"inbox": 0, "smarthost": 9}
    assert decoded["dispatch/relays/failed"]["smarthost"] == 2
    assert decoded["dispatch/relays/inflight"]["smarthost"] == 1
    assert decoded["dispatch/retention/lastRun"] is None  # no run yet
    assert all(name.startswith("dispatch/") for name in decoded)
    assert list(decoded) == sorted(decoded)
    for var in stats.all():  # every counter is exported, none forgotten
        assert var.name in decoded


# ---- /debug/tasks --------------------------------------------------------------------------


async def _idle_worker_for_task_tree(ready: trio.Event) -> None:
    ready.set()
    await trio.sleep_forever()


async def test_task_tree_shows_named_tasks_and_their_stacks() -> None:
    ready = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_idle_worker_for_task_tree, ready, name="monitoring-test-worker")
        await ready.wait()
        await trio.testing.wait_all_tasks_blocked()
        text = task_tree_text()
        nursery.cancel_scope.cancel()
    lines = text.splitlines()
    task_line = next(i for i, line in enumerate(lines) if "task monitoring-test-worker" in line)
    below = lines[task_line + 1 : task_line + 4]
    assert "_idle_worker_for_task_tree (" in below[0]
    assert "test_debug_pages.py:" in below[0]
    assert any("sleep_forever (trio/" in line for line in below)
    own = next(line for line in lines if "(rendering this page)" in line)
    assert own.lstrip().startswith("task ")
    assert "test_task_tree_shows_named_tasks_and_their_stacks" in text
    depth = len(lines[task_line]) - len(lines[task_line].lstrip())
    assert depth > len(own) - len(own.lstrip())  # the child is indented below its parent
    assert lines[0].split()[0].isdigit()  # "N tasks (...)"


def test_task_tree_needs_trio() -> None:
    with pytest.raises(RuntimeError):
        task_tree_text()


# ---- /debug/profile ------------------------------------------------------------------------


def _busy_marker_for_profile() -> int:
    spins = 0
    end = time.perf_counter() + 0.005
    while time.perf_counter() < end:
        spins += 1
    return spins


async def _keep_busy() -> None:
    while True:
        _busy_marker_for_profile()
        await trio.lowlevel.checkpoint()


async def test_cpu_profile_sees_other_tasks_and_refuses_a_second_one() -> None:
    result: list[tuple[bytes, str]] = []

    async def profile() -> None:
        result.append(await cpu_profile(0.2))  # clamped up to 1 s

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_keep_busy)
        nursery.start_soon(profile)
        await trio.sleep(0.1)
        with pytest.raises(ProfilerBusyError):
            await cpu_profile(1, "speedscope")
        await wait_until_async(lambda: bool(result), within=10, what="the profile")
        nursery.cancel_scope.cancel()
    body, content_type = result[0]
    assert content_type == "text/html; charset=utf-8"
    assert body.lstrip().lower().startswith(b"<!doctype html")
    assert b"_busy_marker_for_profile" in body


async def test_cpu_profile_speedscope_is_json() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_keep_busy)
        body, content_type = await cpu_profile(1, "speedscope")
        nursery.cancel_scope.cancel()
    assert content_type == "application/json"
    document = json.loads(body)
    assert "speedscope" in document["$schema"]
    names = {frame["name"] for frame in document["shared"]["frames"]}
    assert "_busy_marker_for_profile" in names


async def test_cpu_profile_rejects_unknown_formats() -> None:
    with pytest.raises(ValueError, match="'flamegraph'"):
        await cpu_profile(1, "flamegraph")  # type: ignore[arg-type]


def test_profile_seconds_are_clamped() -> None:
    assert clamp_seconds(0) == 1
    assert clamp_seconds(float("nan")) == 1
    assert clamp_seconds(5.5) == 5.5
    assert clamp_seconds(3600) == 60


# ---- /debug/memory -------------------------------------------------------------------------


@pytest.fixture
def tracing_stopped() -> Iterator[None]:
    memory_stop()
    yield
    memory_stop()


@pytest.mark.usefixtures("tracing_stopped")
def test_memory_top_starts_tracing_on_demand_and_works_twice() -> None:
    first = memory_top()
    assert "started it now" in first
    kept = [f"allocation {n}" for n in range(20_000)]  # the biggest allocation since the start
    second = memory_top(limit=5)
    assert "started it now" not in second
    assert "test_debug_pages.py:" in second.splitlines()[2]
    assert len(kept) == 20_000
    assert memory_stop()
    assert not memory_stop()


# ---- HTML pages ----------------------------------------------------------------------------


def spool_entry(state: MessageState, **fields: object) -> SpoolEntry:
    values: dict[str, object] = {
        "id": new_id(),
        "mail_from": "app@example.test",
        "recipients": ("a@example.test", "b@example.test"),
        "source": "smtp",
        "peer_ip": "192.0.2.1",
        "auth_identity": None,
        "tags": (),
        "received_at": 1_800_000_000.0,
        "size": 100,
    }
    values.update(fields)
    return SpoolEntry(state, Envelope(**values))  # type: ignore[arg-type]


def test_queue_page_lists_every_entry_and_escapes_hostile_text() -> None:
    now = 1_800_000_100.0
    entries = [
        spool_entry(MessageState.FAILED, attempts=5, last_error=HOSTILE),
        spool_entry(MessageState.INCOMING, next_attempt_at=now + 300, attempts=1),
        spool_entry(MessageState.PROCESSING, mail_from='"<img src=x>"@evil.test'),
        spool_entry(MessageState.INCOMING, mail_from=""),
    ]
    counts = SpoolCounts(incoming=2, retrying=1, processing=1, failed=1, total_bytes=400)
    view = queue_page.QueueView(queue_page.message_rows(entries), len(entries), None, counts)
    page = queue_page.queue_html(view, now=now)
    # one row per recipient (two each), under one header row
    assert tags_of(page).count("tr") == 1 + 2 * len(entries)
    assert "script" not in tags_of(page)
    assert "img" not in tags_of(page)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;&gt;" in page  # the null reverse path
    assert "in 5.00 s" not in page
    assert "in 0h05m00s" in page
    assert "due now" in page
    for entry in entries:
        assert entry.id in page
    assert "4 message(s), all states" in page


def test_traces_pages_escape_and_link_one_timeline() -> None:
    tracer = Tracer()
    with tracer.trace("smtp.session", HOSTILE) as trace:
        trace.printf("EHLO %s", HOSTILE)
        trace.error("421 " + HOSTILE)
    running = tracer.start("delivery.attempt", "spl_running")
    running.event("connecting")

    overview = trace_pages.traces_page(tracer)
    assert "script" not in tags_of(overview)
    assert "intake worker processes" not in overview  # sessions run in this process
    assert "run in 3 intake worker processes" in trace_pages.traces_page(tracer, intake_processes=3)
    assert "traces?family=smtp.session&amp;show=errors" in overview
    assert "traces?family=delivery.attempt&amp;show=active" in overview

    errors = trace_pages.traces_page(tracer, family="smtp.session", show="errors")
    assert "script" not in tags_of(errors)
    assert f'href="traces?id={trace.id}"' in errors
    assert "&lt;script&gt;" in errors

    active = trace_pages.traces_page(tracer, family="delivery.attempt", show="active")
    assert "spl_running" in active
    assert "(running)" in active
    for ignored in ("nonsense", "99", "-1"):
        assert "<h2>" not in trace_pages.traces_page(
            tracer, family="delivery.attempt", show=ignored
        )

    timeline = trace_pages.trace_page(trace)
    assert "script" not in tags_of(timeline)
    assert timeline.count("&lt;script&gt;") == 3  # title, EHLO line, error line
    assert 'class="error"' in timeline


def test_index_config_tasks_and_memory_pages_escape_everything() -> None:
    index = pages.index_page(process_info(hostname=HOSTILE), trace_memory_bytes=5 * 1024 * 1024)
    assert "script" not in tags_of(index)
    assert "5.0 MiB" in index
    for link in ("config", "vars", "traces", "queue", "tasks", "profile?seconds=10", "memory"):
        assert f'href="{link}"' in index
    assert 'href="/metrics"' in index

    config = pages.config_page(f'[smtp]\nbanner = "{HOSTILE}"\n', ["--config", HOSTILE])
    tasks = pages.tasks_page(f"task {HOSTILE}\n  | frame")
    memory = pages.memory_page(HOSTILE)
    for page in (config, tasks, memory):
        assert "script" not in tags_of(page)
        assert "&lt;script&gt;" in page
