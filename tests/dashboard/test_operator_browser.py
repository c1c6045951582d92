"""The operator pages in Chromium, with real SMTP and API traffic: an API key made in the page
and used with httpx, a test message from the Relays page with the upstream's reply, a reload
from the Settings page in the audit log; and the screenshots of these pages for the docs."""

from __future__ import annotations

import email.message
import email.policy
import re

import httpx
from playwright.sync_api import Page, expect

from tests.dashboard.support import (
    DashboardDaemon,
    Screenshots,
    StartDashboard,
    set_up_in_browser,
)
from tests.dashboard.test_inbox import PNG, send, wait_for_captured
from tests.support.config import dump, smtp_relay
from tests.support.sink import Sink, StartSink
from tests.support.waiting import wait_until

MESSAGE: dict[str, object] = {
    "from": "billing@shop.example.com",
    "to": "customer@example.org",
    "subject": "Your invoice",
    "text": "Thanks for your order.",
    "tags": ["invoice"],
}


def api_send(dashboard: DashboardDaemon, key: str, message: dict[str, object]) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{dashboard.ports.api}/api/v1/messages",
        json=message,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def create_key_in_page(page: Page, dashboard: DashboardDaemon, name: str) -> str:
    page.goto(f"{dashboard.url}/api-keys")
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Create key").click()
    shown = page.locator("#new-key")
    expect(shown).to_have_text(re.compile(r"^dsp_live_[A-Za-z0-9_-]{43}$"))
    return shown.inner_text()


def test_an_api_key_made_in_the_page_sends_mail(
    dashboard: DashboardDaemon, admin_page: Page
) -> None:
    page = admin_page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    key = create_key_in_page(page, dashboard, "shop backend")
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == key

    answer = api_send(dashboard, key, MESSAGE)
    assert answer.status_code == 202, answer.text
    wait_for_captured(dashboard, 1)
    page.goto(f"{dashboard.url}/inbox")
    expect(page.get_by_role("link", name="Your invoice")).to_be_visible()

    page.goto(f"{dashboard.url}/api-keys")
    assert key not in page.content()  # shown once
    row = page.get_by_role("row").filter(has_text="shop backend")
    expect(row).to_contain_text(key[:17])  # the prefix
    page.on("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke shop backend").click()
    expect(page.get_by_role("status")).to_contain_text("revoked")
    assert api_send(dashboard, key, MESSAGE).status_code == 401


def sink_and_dashboard(
    start_dashboard: StartDashboard, start_sink: StartSink
) -> tuple[Sink, DashboardDaemon]:
    sink = start_sink()
    dashboard = start_dashboard(
        relays=[{"name": "local", "kind": "local"}, smtp_relay("upstream", sink.port)],
        routes=[
            {"priority": 10, "recipient_domain": "partner.example", "relay": "upstream"},
            {"priority": 20, "sender_domain": "*.shop.example", "relay": ["upstream", "local"]},
            {"priority": 5, "recipient_domain": "*.test", "relay": "local", "enabled": False},
        ],
        default_relay="local",
    )
    return sink, dashboard


def test_send_test_from_the_relays_page_shows_the_upstreams_reply(
    start_dashboard: StartDashboard, start_sink: StartSink, page: Page
) -> None:
    sink, dashboard = sink_and_dashboard(start_dashboard, start_sink)
    set_up_in_browser(page, dashboard)
    page.goto(f"{dashboard.url}/relays")
    page.get_by_role("link", name="upstream").click()
    page.get_by_label("From").fill("ops@example.com")
    page.get_by_label("To").fill("check@partner.example")
    page.get_by_role("button", name="Send the test message").click()
    notice = page.get_by_role("status")
    expect(notice).to_contain_text("Test message through upstream to check@partner.example")
    expect(notice).to_contain_text("delivered: 250 2.0.0 Ok: queued as Q1")
    assert len(sink.messages) == 1
    # The live log shows the attempt without a reload.
    expect(page.locator("#relay-log")).to_contain_text("250 2.0.0 Ok: queued as Q1")
    expect(page.locator("#relay-log table")).to_contain_text("delivered", timeout=15_000)


def test_a_reload_from_the_settings_page_is_audited(
    dashboard: DashboardDaemon, admin_page: Page
) -> None:
    page = admin_page
    config = dict(dashboard.config)
    config["spool"] = {**config["spool"], "max_retries": 5}
    (dashboard.root / "dispatch.toml").write_text(dump(config))
    page.goto(f"{dashboard.url}/settings")
    page.get_by_role("button", name="Reload the configuration file").click()
    expect(page.get_by_role("status")).to_contain_text("applied: spool.max_retries")
    page.goto(f"{dashboard.url}/audit")
    page.get_by_label("Category").select_option("Config")
    page.get_by_role("button", name="Filter").click()
    row = page.get_by_role("row").filter(has_text="configuration reloaded")
    expect(row).to_contain_text("applied spool.max_retries")
    expect(row).to_contain_text("dashboard admin from 127.0.0.1")


def test_screenshots_of_the_operator_pages(
    start_dashboard: StartDashboard, start_sink: StartSink, page: Page, screenshots: Screenshots
) -> None:
    sink, dashboard = sink_and_dashboard(start_dashboard, start_sink)
    set_up_in_browser(page, dashboard)
    key = create_key_in_page(page, dashboard, "shop backend")
    screenshots.take(page, "api-key-created")
    create_key_in_page(page, dashboard, "monitoring probe")
    page.goto(f"{dashboard.url}/api-keys")
    screenshots.take(page, "api-keys")

    newsletter = email.message.EmailMessage()
    newsletter["From"] = "Shop <news@shop.example.com>"
    newsletter["To"] = "customer@example.org"
    newsletter["Subject"] = "Our winter collection"
    newsletter.set_content("Our winter collection is here.\n")
    newsletter.add_alternative(
        '<html><body style="font-family: sans-serif"><h1 style="color:#1f5fbf">Winter is here</h1>'
        '<p>Warm coats, <b>20% off</b> this week.</p><img src="cid:banner@shop" alt="banner" '
        'width="240"><p><a href="https://shop.example.com/winter">Shop now</a></p></body></html>',
        subtype="html",
    )
    html_part = newsletter.get_body(("html",))
    assert isinstance(html_part, email.message.EmailMessage)
    html_part.add_related(PNG, maintype="image", subtype="png", cid="<banner@shop>")
    newsletter.add_attachment(PNG, maintype="image", subtype="png", filename="lookbook.png")
    send(dashboard, newsletter.as_bytes(policy=email.policy.SMTP), to="customer@example.org")
    assert api_send(dashboard, key, MESSAGE).status_code == 202
    (first, _) = wait_for_captured(dashboard, 2)
    page.goto(f"{dashboard.url}/inbox/{first}")
    expect(page.frame_locator("iframe.mail-frame").get_by_role("heading")).to_have_text(
        "Winter is here"
    )
    screenshots.take(page, "inbox-message")

    page.goto(f"{dashboard.url}/relays/upstream")
    page.get_by_label("From").fill("ops@example.com")
    page.get_by_label("To").fill("check@partner.example")
    page.get_by_role("button", name="Send the test message").click()
    expect(page.locator("#relay-log table")).to_contain_text("delivered", timeout=15_000)
    page.evaluate("window.scrollTo(0, 0)")
    screenshots.take(page, "relay", full_page=True)
    page.goto(f"{dashboard.url}/relays")
    screenshots.take(page, "relays")
    page.goto(f"{dashboard.url}/routing?from=app%40example.com&to=someone%40partner.example")
    expect(page.locator("#simulation")).to_contain_text("routes[0] matched")
    screenshots.take(page, "routing")
    wait_until(lambda: len(sink.messages) == 1, what="the test message at the sink")
    page.goto(f"{dashboard.url}/audit")
    screenshots.take(page, "audit")
    page.goto(f"{dashboard.url}/settings")
    screenshots.take(page, "settings", full_page=True)
    page.goto(f"{dashboard.url}/debug/")
    debug = screenshots.directory / "debug-light.png"  # its pages have one scheme only
    page.screenshot(path=str(debug))
    assert debug.read_bytes().startswith(b"\x89PNG")


def test_the_operator_pages_fit_a_phone(
    start_dashboard: StartDashboard, start_sink: StartSink, page: Page
) -> None:
    sink, dashboard = sink_and_dashboard(start_dashboard, start_sink)
    set_up_in_browser(page, dashboard)
    key = create_key_in_page(page, dashboard, "a key with a rather long descriptive name")
    assert api_send(dashboard, key, MESSAGE).status_code == 202
    (message_id,) = wait_for_captured(dashboard, 1)
    page.goto(f"{dashboard.url}/relays/upstream")
    page.get_by_label("From").fill("ops@example.com")
    page.get_by_label("To").fill("check@partner.example")
    page.get_by_role("button", name="Send the test message").click()
    expect(page.locator("#relay-log table")).to_contain_text("delivered", timeout=15_000)
    page.set_viewport_size({"width": 360, "height": 740})
    paths = [
        "/inbox",
        f"/inbox/{message_id}",
        f"/inbox/{message_id}?view=headers",
        f"/inbox/{message_id}?view=raw",
        "/relays",
        "/relays/upstream",
        "/routing?from=a%40example.com&to=b%40partner.example",
        "/api-keys",
        "/audit",
        "/settings",
    ]
    for path in paths:
        page.goto(dashboard.url + path)
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, (path, overflow)
    assert len(sink.messages) == 1
