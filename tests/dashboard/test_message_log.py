"""The Message log over httpx and in Chromium, with real SMTP and API traffic through a sink
that delivers, refuses (550) and defers (451), and a local relay that captures.

Five messages, each findable by what sets it apart:

====  ======  ==================  ======================  =========  ===========  ==========
name  source  from                to                      subject    outcome      relay
====  ======  ==================  ======================  =========  ===========  ==========
A     smtp    app@example.com     ann@example.org         Invoice 1  delivered    upstream
B     smtp    app@example.com     reject@example.org      Invoice 2  failed 550   upstream
C     smtp    ops@example.net     later@example.org       Weekly     deferred 451 upstream
D     api     api@example.com     bob@capture.test        Welcome    delivered    local
E     api     api@example.com     dan@example.org         Receipt    delivered    upstream
====  ======  ==================  ======================  =========  ===========  ==========

D carries the tag ``welcome``, E the tag ``billing``; D and E were sent with one API key.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Final

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.dashboard.support import (
    AdminClient,
    DashboardDaemon,
    Screenshots,
    StartDashboard,
    log_in_in_browser,
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
from tests.support.waiting import wait_until

LOCAL: Final = {"name": "local", "kind": "local"}
ROW_ID: Final = re.compile(r'<tr data-id="(spl_[0-9A-Z]+)">')


class Traffic:
    """The daemon, a signed-in client, the messages' ids by name, and what was sent."""

    def __init__(self, dashboard: DashboardDaemon, client: AdminClient) -> None:
        self.dashboard = dashboard
        self.client = client
        self.ids: dict[str, str] = {}
        self.sent: dict[str, bytes] = {}
        self.key_prefix = ""

    def found(self, **query: str) -> set[str]:
        """The names of the messages the search lists."""
        answer = self.client.http.get("/messages", params=query)
        assert answer.status_code == 200, answer.text[:2000]
        by_id = {message_id: name for name, message_id in self.ids.items()}
        return {by_id.get(message_id, message_id) for message_id in ROW_ID.findall(answer.text)}


@pytest.fixture
def traffic(start_dashboard: StartDashboard, start_sink: StartSink) -> Iterator[Traffic]:
    sink = start_sink()
    dashboard = start_dashboard(
        relays=[LOCAL, smtp_relay("upstream", sink.port)],
        default_relay="upstream",
        routes=[{"priority": 1, "recipient_domain": "capture.test", "relay": "local"}],
        bounces={"enabled": False},  # B's DSN would be a sixth message in the log
    )
    client = AdminClient(dashboard)
    traffic = Traffic(dashboard, client)
    key, traffic.key_prefix = create_api_key(dashboard)
    for name, sender, to, subject in (
        ("A", "app@example.com", "ann@example.org", "Invoice 1"),
        ("B", "app@example.com", "reject@example.org", "Invoice 2"),
        ("C", "ops@example.net", "later@example.org", "Weekly report"),
    ):
        traffic.sent[name] = send_smtp(dashboard, sender, [to], subject)
        traffic.ids[name] = id_of_subject(dashboard, subject)
    traffic.ids["D"] = send_api(dashboard, key, sender="api@example.com", to=["bob@capture.test"],
                                subject="Welcome", tags=["welcome"])  # fmt: skip
    traffic.ids["E"] = send_api(dashboard, key, sender="api@example.com", to=["dan@example.org"],
                                subject="Receipt", tags=["billing"])  # fmt: skip
    for name, event in (("A", "delivered"), ("B", "failed"), ("C", "retried"),
                        ("D", "delivered"), ("E", "delivered")):  # fmt: skip
        wait_for_events(dashboard, traffic.ids[name], event)
    yield traffic
    client.close()


def test_every_filter_narrows_the_results(traffic: Traffic) -> None:
    found = traffic.found
    assert found() == {"A", "B", "C", "D", "E"}
    # address: a whole address exactly (sender or recipient), or a part of one
    assert found(address="ann@example.org") == {"A"}
    assert found(address="ANN@example.org") == {"A"}
    assert found(address="ops@example.net") == {"C"}
    assert found(address="@capture.test") == {"D"}
    assert found(address="api@") == {"D", "E"}
    assert found(address="nobody@example.org") == set()
    # subject: a part, any case
    assert found(subject="invoice") == {"A", "B"}
    assert found(subject="Weekly") == {"C"}
    # status: what happened to the message
    assert found(status="delivered") == {"A", "D", "E"}
    assert found(status="failed") == {"B"}
    assert found(status="deferred") == {"C"}
    assert found(status="open") == {"C"}
    # tag, relay, source, API key
    assert found(tag="billing") == {"E"}
    assert found(tag="WELCOME") == {"D"}
    assert found(tag="bill") == set()  # a tag matches whole
    assert found(relay="local") == {"D"}
    assert found(relay="upstream") == {"A", "B", "C", "E"}
    assert found(source="api") == {"D", "E"}
    assert found(source="smtp") == {"A", "B", "C"}
    assert found(api_key=traffic.key_prefix) == {"D", "E"}
    assert found(api_key="dsp_live_nothere0") == set()
    # combined
    assert found(source="smtp", status="delivered") == {"A"}
    assert found(address="app@example.com", subject="2") == {"B"}


def test_dates_narrow_the_results_in_the_browsers_zone(traffic: Traffic) -> None:
    found = traffic.found

    def stamp(at: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))

    now = time.time()
    assert found(since=stamp(now - 3600), tz="0") == {"A", "B", "C", "D", "E"}
    assert found(since=stamp(now + 3600), tz="0") == set()
    assert found(until=stamp(now - 3600), tz="0") == set()
    today = time.strftime("%Y-%m-%d", time.gmtime(now))
    assert found(since=today, until=today, tz="0") == {"A", "B", "C", "D", "E"}  # the whole day
    # The same instant, typed in a zone two hours east of UTC (offset -120 minutes).
    east = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now + 2 * 3600 + 3600))
    assert found(since=east, tz="-120") == set()
    east = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now + 2 * 3600 - 3600))
    assert found(since=east, tz="-120") == {"A", "B", "C", "D", "E"}
    bad = traffic.client.http.get("/messages", params={"since": "yesterday"})
    assert bad.status_code == 400
    assert "From: &#39;yesterday&#39; is not a date" in bad.text


def test_a_message_id_opens_its_page_and_timing_is_reported(traffic: Traffic) -> None:
    answer = traffic.client.http.get("/messages", params={"address": traffic.ids["A"]})
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/messages/{traffic.ids['A']}"
    listed = traffic.client.http.get("/messages")
    timing = listed.headers["server-timing"]
    assert re.fullmatch(r'search;dur=\d+\.\d;desc="message log query"', timing), timing


def test_the_timeline_shows_each_attempt_with_its_reply(traffic: Traffic) -> None:
    http = traffic.client.http
    delivered = http.get(f"/messages/{traffic.ids['A']}").text
    assert "Received over SMTP from 127.0.0.1" in delivered
    assert "Attempt 1 through upstream: delivered to 1 recipient" in delivered
    assert "250 2.0.0 Ok: queued as Q" in delivered
    assert "Provider message id" in delivered
    assert re.search(r"<dt>Duration</dt><dd>[\d,]+ ms</dd>", delivered)
    assert "<dt>Route</dt><dd>default</dd>" in delivered
    assert 'id="body-gone"' in delivered  # delivered through SMTP: no copy is kept

    failed = http.get(f"/messages/{traffic.ids['B']}").text
    assert "Attempt 1 through upstream: failed for 1 recipient" in failed
    assert "550 5.1.1 no such user" in failed
    assert "Failed: kept in the spool&#39;s failed/" in failed
    assert 'id="headers"' in failed
    assert "Subject: Invoice 2" in failed

    deferred = http.get(f"/messages/{traffic.ids['C']}").text
    assert "Attempt 1 through upstream: deferred for 1 recipient, to be tried again" in deferred
    assert "451 4.3.0 try later" in deferred
    assert "Waiting to retry" in deferred

    captured = http.get(f"/messages/{traffic.ids['D']}").text
    assert "Received over the HTTP API with key " + traffic.key_prefix in captured
    assert "Attempt 1 through local: delivered to 1 recipient" in captured
    assert "the Local inbox (captured/)" in captured
    assert "<dt>Route</dt><dd>routes[0]</dd>" in captured


def test_raw_downloads_are_the_bytes_received_and_a_gone_body_says_so(traffic: Traffic) -> None:
    http = traffic.client.http
    for name in ("B", "C"):  # in the spool: failed/ and incoming/
        answer = http.get(f"/messages/{traffic.ids[name]}/raw")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("message/rfc822")
        assert answer.headers["content-disposition"] == (
            f'attachment; filename="{traffic.ids[name]}.eml"'
        )
        # Exactly what was sent, after the one Received: header intake prepends (SPEC §3).
        assert answer.content.startswith(b"Received: ")
        assert answer.content.endswith(traffic.sent[name])
        head, _, rest = answer.content.partition(traffic.sent[name])
        assert rest == b""
        assert head.count(b"\r\nReceived: ") == 0
    spooled = traffic.dashboard.root / "spool" / "failed" / f"{traffic.ids['B']}.eml"
    assert http.get(f"/messages/{traffic.ids['B']}/raw").content == spooled.read_bytes()

    captured = http.get(f"/messages/{traffic.ids['D']}/raw")
    assert captured.status_code == 200
    assert b"Subject: Welcome" in captured.content

    gone = http.get(f"/messages/{traffic.ids['A']}/raw")
    assert gone.status_code == 404
    assert "keeps no copy" in gone.text
    assert http.get("/messages/spl_NOTANID/raw").status_code == 404
    assert http.get("/messages/not-an-id").status_code == 404


def test_denied_connections_are_listed(start_dashboard: StartDashboard) -> None:
    dashboard = start_dashboard(api={"allowed_cidrs": ["10.0.0.0/8"]})
    client = AdminClient(dashboard)
    refused = httpx.post(
        f"http://127.0.0.1:{dashboard.ports.api}/api/v1/messages", json={}, timeout=30
    )
    assert refused.status_code == 403

    def listed() -> bool:
        text = client.http.get("/messages", params={"status": "denied"}).text
        return "peer not in api.allowed_cidrs" in text

    wait_until(listed, what="the denied row")
    page = client.http.get("/messages", params={"status": "denied", "source": "smtp"}).text
    assert "peer not in api.allowed_cidrs" not in page
    client.close()


def test_the_message_log_in_the_browser(
    traffic: Traffic, page: Page, screenshots: Screenshots
) -> None:
    log_in_in_browser(page, traffic.dashboard, path="/messages")
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(5)
    page.get_by_label("Subject contains").fill("invoice")
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Search").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Invoice 2")
    expect(rows.first.locator(".badge")).to_have_text("failed")
    page.get_by_role("link", name="Clear").click()
    expect(rows).to_have_count(5)
    screenshots.take(page, "messages")

    rows.filter(has_text="Weekly report").get_by_role("link").first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(traffic.ids["C"])
    timeline = page.locator("ol.timeline")
    expect(timeline).to_contain_text("deferred for 1 recipient")
    expect(timeline).to_contain_text("451 4.3.0 try later")
    screenshots.take(page, "message")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the raw message (.eml)").click()
    saved = download.value.path()
    assert saved.read_bytes().endswith(traffic.sent["C"])
