"""The Overview in Chromium and over httpx: real traffic's figures, live updates without a
reload (Server-Sent Events), the charts, and a stop that an open Overview does not hold up."""

from __future__ import annotations

import re
import signal
import threading
import time

import attrs
from playwright.sync_api import Page, expect

from dispatch.dashboard.overview_feed import RelayState, relay_state_text
from tests.dashboard.support import (
    AdminClient,
    DashboardDaemon,
    StartDashboard,
    set_up_in_browser,
)
from tests.dashboard.traffic import (
    create_api_key,
    id_of_subject,
    send_api,
    send_smtp,
    wait_for_events,
)
from tests.support.config import smtp_relay
from tests.support.sink import StartSink
from tests.system.faults import HungServer

LOCAL = {"name": "local", "kind": "local"}


def live(page: Page, key: str) -> str:
    return f'[data-live="{key}"]'


def test_the_overview_shows_real_traffic(
    page: Page, start_dashboard: StartDashboard, start_sink: StartSink
) -> None:
    sink = start_sink()
    dashboard = start_dashboard(
        relays=[LOCAL, smtp_relay("upstream", sink.port)],
        default_relay="upstream",
        routes=[{"priority": 1, "recipient_domain": "capture.test", "relay": "local"}],
        bounces={"enabled": False},  # the 550's DSN would be a fifth message in the figures
    )
    set_up_in_browser(page, dashboard)
    key, _ = create_api_key(dashboard)
    send_smtp(dashboard, "app@example.com", ["ann@example.org"], "Order 1 shipped")
    send_smtp(dashboard, "app@example.com", ["reject@example.org"], "Order 2 refused")
    send_smtp(dashboard, "app@example.com", ["bob@capture.test"], "Captured copy")
    send_api(dashboard, key, sender="api@example.com", to=["cy@example.org"], subject="By API")
    for subject, final in (("Order 1 shipped", "delivered"), ("Order 2 refused", "failed"),
                           ("Captured copy", "delivered"), ("By API", "delivered")):  # fmt: skip
        wait_for_events(dashboard, id_of_subject(dashboard, subject), final)

    page.goto(dashboard.url + "/")
    expect(page.locator(live(page, "today.received"))).to_have_text("4")
    expect(page.locator(live(page, "today.delivered"))).to_have_text("3")
    expect(page.locator(live(page, "today.failed"))).to_have_text("1")
    expect(page.locator(live(page, "last5m.received"))).to_have_text("4")
    expect(page.locator(live(page, "relay.upstream.delivered"))).to_have_text("2")
    expect(page.locator(live(page, "relay.upstream.failed"))).to_have_text("1")
    expect(page.locator(live(page, "relay.local.delivered"))).to_have_text("1")
    expect(page.locator(live(page, "relay.upstream.state"))).to_have_text("delivering")
    expect(page.locator(live(page, "spool.failed"))).to_have_text("1")  # the 550 waits in failed/
    expect(page.locator(live(page, "health.status"))).to_have_text(re.compile("healthy|degraded"))
    latest = page.locator("#latest-messages")
    for subject in ("Order 1 shipped", "Order 2 refused", "Captured copy", "By API"):
        expect(latest).to_contain_text(subject)
    expect(latest.locator("tr", has_text="Order 2 refused")).to_contain_text("failed")

    throughput = page.locator("#throughput-chart")
    expect(throughput).to_be_visible()
    expect(throughput.locator("desc")).to_contain_text("received 4")
    expect(throughput.locator("polyline.series-received")).to_have_count(1)
    queue = page.locator("#queue-chart")
    expect(queue.locator("desc")).to_contain_text("1 failed")
    expect(page.locator("#live-status")).to_contain_text("Live")


def test_a_message_sent_while_the_overview_is_open_appears_without_reload(
    admin_page: Page, dashboard: DashboardDaemon
) -> None:
    page = admin_page
    expect(page.locator("#live-status")).to_contain_text("Live")  # the stream is connected
    expect(page.locator(live(page, "today.received"))).to_have_text("0")
    page.evaluate("window.sameDocument = 'yes'")  # gone if the page were loaded again

    send_smtp(dashboard, "app@example.com", ["live@example.org"], "Sent while you watch")

    expect(page.locator("#latest-messages")).to_contain_text("Sent while you watch")
    expect(page.locator(live(page, "today.received"))).to_have_text("1")
    expect(page.locator(live(page, "today.delivered"))).to_have_text("1")
    row = page.locator("#latest-messages tr", has_text="Sent while you watch")
    expect(row.get_by_role("link")).to_have_attribute("href", re.compile(r"^/messages/spl_"))
    assert page.evaluate("window.sameDocument") == "yes"
    # The charts follow the figures too (fetched again without a reload).
    expect(page.locator("#throughput-chart desc")).to_contain_text("received 1", timeout=30_000)
    assert page.evaluate("window.sameDocument") == "yes"


def test_the_event_stream_needs_a_session(dashboard: DashboardDaemon) -> None:
    with dashboard.client() as anonymous:
        answer = anonymous.get("/overview/events")
        assert answer.status_code == 303
        assert answer.headers["location"] in ("/setup", "/login?next=/overview/events")


def test_the_event_stream_sends_figures_then_ends_by_itself(dashboard: DashboardDaemon) -> None:
    client = AdminClient(dashboard)
    with client.http.stream("GET", "/overview/events") as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert answer.headers["cache-control"] == "no-store"
        lines = list(answer.iter_lines())  # to the stream's own end (before the read timeout)
    assert lines[0] == "retry: 1000"
    assert "event: overview" in lines
    data = next(line for line in lines if line.startswith("data: "))
    assert '"today.received":"0"' in data
    client.close()


def test_sigterm_with_the_overview_open_ends_the_stream_and_exits_promptly(
    admin_page: Page, dashboard: DashboardDaemon
) -> None:
    page = admin_page
    expect(page.locator("#live-status")).to_contain_text("Live")
    client = AdminClient(dashboard)
    seen: list[str] = []
    connected = threading.Event()

    def read() -> None:
        with client.http.stream("GET", "/overview/events") as answer:
            for line in answer.iter_lines():
                seen.append(line)
                connected.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert connected.wait(30), "the event stream did not start"

    started = time.monotonic()
    dashboard.daemon.signal(signal.SIGTERM)
    assert dashboard.daemon.wait_exit(timeout=60) == 0
    took = time.monotonic() - started
    reader.join(timeout=30)
    assert not reader.is_alive()
    assert "event: stopping" in seen  # ended by the stop request, not cut by the grace period
    assert "grace period over" not in dashboard.daemon.log
    expect(page.locator("#live-status")).to_contain_text(re.compile("stopping|stopped|not running"))
    print(f"SIGTERM to exit with the Overview open: {took:.2f} s")
    client.close()


def test_a_hung_relay_shows_suspended_with_its_reason(
    start_dashboard: StartDashboard, page: Page
) -> None:
    hung = HungServer()
    try:
        dashboard = start_dashboard(
            spool={"retry_delays_seconds": [600]},
            relays=[smtp_relay("upstream", hung.port, timeout_seconds=2)],
            default_relay="upstream",
        )
        set_up_in_browser(page, dashboard)
        send_smtp(dashboard, "app@example.com", ["ann@example.org"], "Into the void")
        wait_for_events(dashboard, id_of_subject(dashboard, "Into the void"), "retried")
        state = page.locator(live(page, "relay.upstream.state"))
        expect(state).to_have_text(re.compile(r"^suspended( until \d{4}-|: the next delivery)"))
        page.reload()  # the reason is drawn with the page
        row = page.locator("tr", has=page.locator(live(page, "relay.upstream.state")))
        expect(row).to_contain_text("timed out")
        # Health is checked at most every 10 s (overview_feed.HEALTH_SECONDS) and sent live.
        health = page.locator(live(page, "health.status"))
        expect(health).to_have_text("degraded", timeout=30_000)
        expect(page.locator(live(page, "health.delivery.error"))).to_contain_text("upstream")
        expect(page.locator(live(page, "spool.retrying"))).to_have_text("1")
    finally:
        hung.stop()


def test_the_relay_state_reads_until_when_it_is_suspended() -> None:
    suspended = RelayState("upstream", "smtp", 0, 0, 0, "connection timed out", 1_800_000_060.0)
    assert relay_state_text(suspended, now=1_800_000_000.0) == (
        "suspended until 2027-01-15 08:01:00Z"
    )
    assert relay_state_text(suspended, now=1_800_000_061.0) == (
        "suspended: the next delivery tries one connection"
    )
    assert relay_state_text(attrs.evolve(suspended, suspended=None)) == "delivering"
