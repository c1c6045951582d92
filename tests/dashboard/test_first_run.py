"""First run in a real browser: the setup page, the password rule, the Overview after it."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.dashboard.support import PASSWORD, DashboardDaemon, Screenshots


def test_every_page_leads_to_setup_until_a_password_is_set(
    page: Page, dashboard: DashboardDaemon, screenshots: Screenshots
) -> None:
    page.goto(dashboard.url + "/spool")
    assert page.url == dashboard.url + "/setup"
    expect(page.get_by_role("heading", level=1)).to_have_text("Set the admin password")
    screenshots.take(page, "setup")


def test_a_short_password_is_refused_with_the_reason(
    page: Page, dashboard: DashboardDaemon
) -> None:
    page.goto(dashboard.url + "/setup")
    # The browser's own minlength check would stop the form first; the server's rule is what
    # counts for any client, so it is switched off here.
    page.locator("form").evaluate("form => form.noValidate = true")
    page.get_by_label("Password", exact=True).fill("elevenchars")
    page.get_by_label("The same password again").fill("elevenchars")
    page.get_by_role("button", name="Set the password").click()
    expect(page.get_by_role("alert")).to_contain_text("has 11 characters; use at least 12")
    assert page.url == dashboard.url + "/setup"


def test_setting_the_password_opens_the_overview(page: Page, dashboard: DashboardDaemon) -> None:
    page.goto(dashboard.url + "/")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("The same password again").fill(PASSWORD)
    page.get_by_role("button", name="Set the password").click()
    page.wait_for_url(dashboard.url + "/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
    expect(page.get_by_role("navigation", name="Dashboard pages")).to_be_visible()
