"""Fixtures of the dashboard tests: a real daemon, Debian's Chromium, a signed-in admin.

- ``start_dashboard(**sections)``: start a ``python -m dispatch`` subprocess configured by
  ``base_config(tmp_path, **sections)`` (``tests/support/config.py``) and wait until ready;
- ``dashboard``: one started with the base configuration (first run: no admin password);
- ``browser`` (one Chromium per test session) and ``page``: a fresh context per test
  (1280x800, the daemon's self-signed certificate accepted, light colour scheme);
- ``admin_page``: ``page`` after setting the admin password on ``dashboard``'s first-run page,
  on the Overview;
- ``admin_client``: an httpx client signed in to ``dashboard`` (sets the password on first run);
- ``screenshots``: :class:`tests.dashboard.support.Screenshots` for this test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.conftest import Daemon
from tests.dashboard.support import (
    VIEWPORT,
    AdminClient,
    DashboardDaemon,
    Screenshots,
    StartDashboard,
    launch_chromium,
    set_up_in_browser,
    start_dashboard_daemon,
)


@pytest.fixture
def start_dashboard(start_daemon: Callable[..., Daemon], tmp_path: Path) -> StartDashboard:
    def start(**sections: Any) -> DashboardDaemon:
        return start_dashboard_daemon(start_daemon, tmp_path, **sections)

    return start


@pytest.fixture
def dashboard(start_dashboard: StartDashboard) -> DashboardDaemon:
    return start_dashboard()


@pytest.fixture(scope="session")
def playwright_driver() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    chromium = launch_chromium(playwright_driver)
    yield chromium
    chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(ignore_https_errors=True, viewport=VIEWPORT, color_scheme="light")
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def admin_page(page: Page, dashboard: DashboardDaemon) -> Page:
    set_up_in_browser(page, dashboard)
    return page


@pytest.fixture
def admin_client(dashboard: DashboardDaemon) -> Iterator[AdminClient]:
    client = AdminClient(dashboard)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Screenshots:
    return Screenshots.for_test(tmp_path)
