"""Login, the throttle of wrong passwords, logout, the session cookie's flags, and
``dispatch set-admin-password``: a real daemon, driven by Chromium and httpx."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from playwright.sync_api import Page, expect

from dispatch.dashboard.auth import SESSION_COOKIE
from dispatch.dashboard.sources import LOGIN_FAILURES
from tests.dashboard.support import (
    PASSWORD,
    AdminClient,
    DashboardDaemon,
    Screenshots,
    log_in_in_browser,
    set_up_in_browser,
)
from tests.support.waiting import wait_until


def audit_messages(dashboard: DashboardDaemon) -> list[str]:
    database = Path(dashboard.config["data_dir"]) / "dispatch.db"
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        rows = connection.execute("SELECT message FROM audit_log ORDER BY id").fetchall()
    return [row[0] for row in rows]


def audited(dashboard: DashboardDaemon, text: str) -> bool:
    return any(text in message for message in audit_messages(dashboard))


def log_out(page: Page) -> None:
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/login")


def test_log_out_then_log_in_again(
    admin_page: Page, dashboard: DashboardDaemon, screenshots: Screenshots
) -> None:
    log_out(admin_page)
    admin_page.goto(dashboard.url + "/relays")
    assert admin_page.url == dashboard.url + "/login?next=/relays"
    screenshots.take(admin_page, "login")
    admin_page.get_by_label("Admin password").fill(PASSWORD)
    admin_page.get_by_role("button", name="Log in").click()
    admin_page.wait_for_url(dashboard.url + "/relays")  # back where the browser was going
    expect(admin_page.get_by_role("heading", level=1)).to_have_text("Relays")
    wait_until(lambda: audited(dashboard, "admin signed out from 127.0.0.1"), what="logout")
    wait_until(
        lambda: sum("admin signed in from 127.0.0.1" in m for m in audit_messages(dashboard)) == 2,
        what="the first-run sign-in and the login audited",
    )
    assert audited(dashboard, "dashboard admin password set (first run)")


def test_the_session_cookie_is_httponly_secure_and_strict(
    admin_page: Page, dashboard: DashboardDaemon
) -> None:
    cookies = {c["name"]: c for c in admin_page.context.cookies()}
    session = cookies[SESSION_COOKIE]
    assert session["httpOnly"] is True
    assert session["secure"] is True
    assert session["sameSite"] == "Strict"
    assert session["path"] == "/"
    assert session["expires"] == -1  # a browser-session cookie: the server decides the expiry
    assert admin_page.evaluate("document.cookie") == ""  # invisible to scripts


def test_a_logged_out_sessions_cookie_opens_nothing(
    admin_page: Page, dashboard: DashboardDaemon
) -> None:
    token = {c["name"]: c["value"] for c in admin_page.context.cookies()}[SESSION_COOKIE]
    with dashboard.client(cookies={SESSION_COOKIE: token}) as before:
        assert before.get("/spool").status_code == 200
    log_out(admin_page)
    with dashboard.client(cookies={SESSION_COOKIE: token}) as replay:
        answer = replay.get("/spool")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=/spool"


def test_wrong_passwords_are_throttled_per_address(
    admin_page: Page, dashboard: DashboardDaemon
) -> None:
    log_out(admin_page)
    page = admin_page
    for attempt in range(1, LOGIN_FAILURES + 2):
        page.get_by_label("Admin password").fill(f"wrong password {attempt}")
        with page.expect_response(
            lambda r: r.request.method == "POST" and r.url.endswith("/login")
        ) as answer:
            page.get_by_role("button", name="Log in").click()
        response = answer.value
        if attempt < LOGIN_FAILURES:
            assert response.status == 401
            expect(page.get_by_role("alert")).to_have_text("Wrong password.")
        else:
            assert response.status == 429
            assert 0 < int(response.headers["retry-after"]) <= 300
            expect(page.get_by_role("alert")).to_contain_text("Too many wrong passwords")
    # Even the right password is refused while the address is throttled.
    page.get_by_label("Admin password").fill(PASSWORD)
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Log in").click()
    assert answer.value.status == 429
    wait_until(lambda: audited(dashboard, "127.0.0.1 throttled after 5 wrong passwords"))
    throttled = [m for m in audit_messages(dashboard) if "throttled" in m]
    assert len(throttled) == 1  # one entry per throttling, not per refused attempt
    assert sum("wrong admin password" in m for m in audit_messages(dashboard)) == LOGIN_FAILURES


def set_admin_password(
    dashboard: DashboardDaemon, password: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "dispatch",
            "set-admin-password",
            "--stdin",
            "--config",
            str(dashboard.root / "dispatch.toml"),
        ],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_set_admin_password_on_the_command_line_then_log_in(
    page: Page, dashboard: DashboardDaemon
) -> None:
    done = set_admin_password(dashboard, "set on the command line")
    assert done.returncode == 0, done.stderr
    assert "Admin password set" in done.stdout
    log_in_in_browser(page, dashboard, "set on the command line", path="/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
    wait_until(lambda: audited(dashboard, "dashboard admin password set (first run)"))


def test_changing_the_password_on_the_command_line_signs_browsers_out(
    admin_page: Page, dashboard: DashboardDaemon
) -> None:
    done = set_admin_password(dashboard, "a new password for the admin")
    assert done.returncode == 0, done.stderr
    assert "every dashboard session has ended" in done.stdout
    admin_page.goto(dashboard.url + "/spool")
    assert "/login" in admin_page.url
    client = AdminClient(dashboard, "a new password for the admin")
    client.close()
    assert audited(dashboard, "dashboard admin password changed")


def test_a_short_password_on_the_command_line_changes_nothing(
    dashboard: DashboardDaemon,
) -> None:
    done = set_admin_password(dashboard, "too short")
    assert done.returncode == 2
    assert done.stderr == "dispatch: the password has 9 characters; use at least 12\n"
    with dashboard.client() as client:
        assert client.get("/").headers["location"] == "/setup"  # still first run


def test_setup_is_gone_once_a_password_is_set(page: Page, dashboard: DashboardDaemon) -> None:
    set_up_in_browser(page, dashboard)
    with dashboard.client() as client:
        answer = client.get("/setup")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login"
