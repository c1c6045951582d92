"""The gate of the dashboard port: CSRF, security headers, the allow-list, and the ops paths
that stay open to probes and scrapers. httpx against a real daemon, Chromium for what only a
browser shows (Content-Security-Policy violations)."""

from __future__ import annotations

import httpx
from playwright.sync_api import ConsoleMessage, Page

from dispatch.dashboard.auth import SESSION_COOKIE
from dispatch.dashboard.nav import NAV
from tests.dashboard.support import (
    LAYOUT_PAGES,
    PASSWORD,
    AdminClient,
    DashboardDaemon,
    StartDashboard,
)


def still_signed_in(client: AdminClient) -> bool:
    return client.http.get("/spool").status_code == 200


def test_a_post_without_the_csrf_token_is_forbidden(admin_client: AdminClient) -> None:
    answer = admin_client.http.post("/logout")
    assert answer.status_code == 403
    assert "security token is missing" in answer.text
    assert still_signed_in(admin_client)  # the forged logout did nothing


def test_a_post_with_a_wrong_csrf_token_is_forbidden(admin_client: AdminClient) -> None:
    answer = admin_client.http.post("/logout", data={"csrf_token": "guessed"})
    assert answer.status_code == 403
    assert still_signed_in(admin_client)


def test_the_csrf_token_is_accepted_in_the_form_or_the_header(admin_client: AdminClient) -> None:
    token = admin_client.csrf_token()
    by_header = admin_client.http.post("/logout", headers={"X-CSRF-Token": token})
    assert by_header.status_code == 303
    assert not still_signed_in(admin_client)


def test_a_post_from_another_origin_is_forbidden_even_with_the_token(
    admin_client: AdminClient,
) -> None:
    answer = admin_client.http.post(
        "/logout",
        data={"csrf_token": admin_client.csrf_token()},
        headers={"Origin": "https://attacker.example"},
    )
    assert answer.status_code == 403
    assert still_signed_in(admin_client)


def test_a_post_without_a_session_is_forbidden(dashboard: DashboardDaemon) -> None:
    AdminClient(dashboard).close()  # sets the password
    with dashboard.client() as stranger:
        answer = stranger.post("/logout", data={"csrf_token": "x"})
    assert answer.status_code == 403
    assert "log in again" in answer.text


def test_the_login_form_needs_its_own_token(dashboard: DashboardDaemon) -> None:
    AdminClient(dashboard).close()
    with dashboard.client() as client:
        answer = client.post("/login", data={"password": PASSWORD})
    assert answer.status_code == 403
    assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")


def assert_security_headers(answer: httpx.Response, *, cache: str = "no-store") -> None:
    headers = answer.headers
    policy = headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'self' 'nonce-" in policy
    assert "unsafe-inline" not in policy
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == cache


def test_every_page_login_and_redirect_carries_the_security_headers(
    admin_client: AdminClient, dashboard: DashboardDaemon
) -> None:
    for entry in LAYOUT_PAGES:
        answer = admin_client.http.get(entry.path)
        assert answer.status_code == 200, entry
        assert_security_headers(answer)
    debug = admin_client.http.get("/debug/")
    assert debug.status_code == 200
    assert "default-src 'none'" in debug.headers["content-security-policy"]  # no script at all
    assert "frame-ancestors 'none'" in debug.headers["content-security-policy"]
    assert debug.headers["cache-control"] == "no-store"
    assert debug.headers["referrer-policy"] == "no-referrer"
    with dashboard.client() as stranger:
        assert_security_headers(stranger.get("/login"))
        redirect = stranger.get("/spool")
        assert redirect.status_code == 303
        assert_security_headers(redirect)
        assert_security_headers(stranger.get("/static/dashboard.css"), cache="no-cache")


def test_each_answer_gets_its_own_script_nonce(admin_client: AdminClient) -> None:
    first = admin_client.http.get("/").headers["content-security-policy"]
    second = admin_client.http.get("/").headers["content-security-policy"]
    assert first != second


def test_health_and_metrics_stay_open_on_the_dashboard_port(dashboard: DashboardDaemon) -> None:
    AdminClient(dashboard).close()  # a password is set: still no login needed for these
    with dashboard.client() as probe:
        for path in ("/health", "/health/live", "/health/ready"):
            answer = probe.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-type"] == "application/json", path
            assert "set-cookie" not in answer.headers
            assert "content-security-policy" not in answer.headers  # as before the dashboard
        metrics = probe.get("/metrics")
    assert metrics.status_code == 200
    assert "dispatch_" in metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")


def test_unknown_paths_need_a_login_too(dashboard: DashboardDaemon) -> None:
    AdminClient(dashboard).close()
    with dashboard.client() as stranger:
        answer = stranger.get("/no/such/page")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/login")


def test_the_allow_list_gates_every_dashboard_path(start_dashboard: StartDashboard) -> None:
    dashboard = start_dashboard(webui={"allowed_cidrs": ["192.0.2.0/24"]})
    with dashboard.client() as outsider:
        for path in ("/", "/setup", "/login", "/static/dashboard.css", "/health", "/metrics"):
            answer = outsider.get(path)
            assert answer.status_code == 403, path
            assert "webui.allowed_cidrs" in answer.json()["detail"], path


def test_no_page_breaks_its_content_security_policy(
    admin_page: Page, dashboard: DashboardDaemon
) -> None:
    problems: list[str] = []

    def watch(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"{admin_page.url}: {message.text}")

    admin_page.on("console", watch)
    for entry in NAV:
        admin_page.goto(dashboard.url + entry.path)
        if entry in LAYOUT_PAGES:  # our script ran
            assert admin_page.evaluate("typeof window.dispatchCsrfToken") == "string", entry
    admin_page.goto(dashboard.url + "/")
    admin_page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.injected = 1'; document.body.append(s); }"
    )
    assert admin_page.evaluate("typeof window.injected") == "undefined"  # inline: blocked
    refused = [p for p in problems if "Content Security Policy" in p]
    assert len(refused) == 1, problems  # only the injected script
    assert len(problems) == 1, problems
