"""The Webhooks page in Chromium: a real daemon posting to a loopback receiver that refuses
the first call, then takes the retry; the page shows both calls, and the CLI the same."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.dashboard.support import Screenshots, StartDashboard, set_up_in_browser
from tests.dashboard.traffic import send_smtp
from tests.support.waiting import wait_until
from tests.webhooks.receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver(statuses=[500])
    yield started
    started.stop()


def test_the_page_shows_a_refused_call_and_its_retry(
    start_dashboard: StartDashboard, receiver: Receiver, page: Page, screenshots: Screenshots
) -> None:
    dashboard = start_dashboard(
        webhooks=[{"url": receiver.url, "secret": "s3cret-key", "retry_first_seconds": 0.2}]
    )
    send_smtp(dashboard, "app@example.com", ["bob@example.org"], "Webhook me")
    wait_until(lambda: len(receiver.acknowledged) == 1, what="the retry answered 200")
    message_id = receiver.acknowledged[0].json()["message_id"]

    set_up_in_browser(page, dashboard)
    page.get_by_role("link", name="Webhooks").click()
    expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_visible()
    receivers = page.get_by_role("table", name="Configured webhook receivers")
    expect(receivers).to_contain_text(receiver.url)
    expect(page.locator("#webhook-outbox")).to_contain_text("Nothing owed")
    rows = page.get_by_role("row").filter(has_text=message_id)
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("sent")
    expect(rows.nth(0)).to_contain_text("HTTP 200")
    expect(rows.nth(1)).to_contain_text("retry")
    expect(rows.nth(1)).to_contain_text("HTTP 500")
    expect(rows.nth(1)).to_contain_text("delivered")
    screenshots.take(page, "webhooks")
    page.set_viewport_size({"width": 360, "height": 740})  # long URLs and ids: still no
    overflow = page.evaluate(  # sideways scrolling of the page (the table scrolls itself)
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, overflow

    # The command line asks the same daemon over its control socket.
    done = subprocess.run(
        [sys.executable, "-m", "dispatch", "webhooks", "recent", "--json",
         "--config", str(dashboard.root / "dispatch.toml")],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    recent = json.loads(done.stdout)
    assert recent["outbox_depth"] == 0
    assert [(c["result"], c["status"], c["attempt"]) for c in recent["calls"]] == [
        ("sent", 200, 2),
        ("retry", 500, 1),
    ]
    text = subprocess.run(
        [sys.executable, "-m", "dispatch", "webhooks", "recent",
         "--config", str(dashboard.root / "dispatch.toml")],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "0 call(s) owed" in text
    assert f"message {message_id}  HTTP 500" in text
