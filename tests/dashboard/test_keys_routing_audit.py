"""API keys, Routing and Audit log pages over HTTP, with real API traffic."""

from __future__ import annotations

import re

import httpx

from dispatch.security.key_format import prefix_of
from tests.dashboard.support import AdminClient, DashboardDaemon, StartDashboard
from tests.support.waiting import wait_until

MESSAGE = {"from": "app@example.com", "to": "bob@example.org", "subject": "Hi", "text": "Hello"}


def rows(page: str) -> str:
    """The table body of a page (not its menu, footer or filters)."""
    return page.partition("<tbody>")[2].partition("</tbody>")[0]


def api_send(dashboard: DashboardDaemon, key: str) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{dashboard.ports.api}/api/v1/messages",
        json=MESSAGE,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_a_key_is_shown_once_works_and_stops_working_when_revoked(
    dashboard: DashboardDaemon, admin_client: AdminClient
) -> None:
    created = admin_client.post_form("/api-keys", {"name": "billing app"})
    assert created.status_code == 201
    found = re.search(r'<code id="new-key">(dsp_live_[A-Za-z0-9_-]{43})</code>', created.text)
    assert found is not None
    key = found.group(1)
    assert 'data-copy="#new-key"' in created.text
    assert created.headers["cache-control"] == "no-store"
    listing = admin_client.http.get("/api-keys")
    assert key not in listing.text  # shown once: the list has the prefix only
    assert f"<code>{prefix_of(key)}</code>" in listing.text

    assert api_send(dashboard, key).status_code == 202
    wait_until(
        lambda: "never" not in admin_client.http.get("/api-keys").text,
        what="the key's last use on the page",
    )
    key_id = re.search(r'action="/api-keys/(\d+)/revoke"', listing.text)
    assert key_id is not None
    revoked = admin_client.post_form(f"/api-keys/{key_id.group(1)}/revoke")
    assert revoked.status_code == 303
    assert "revoked" in admin_client.http.get(revoked.headers["location"]).text
    assert api_send(dashboard, key).status_code == 401

    def audited() -> bool:
        text = admin_client.http.get("/audit", params={"category": "ApiKey"}).text
        return "&#39;billing app&#39;" in text and "revoked" in text and "created" in text

    wait_until(audited, what="creation and revocation in the audit log")
    audit = admin_client.http.get("/audit", params={"category": "ApiKey"}).text
    assert "dashboard admin from 127.0.0.1" in audit


def test_key_names_are_checked_and_forms_need_the_token(
    dashboard: DashboardDaemon, admin_client: AdminClient
) -> None:
    empty = admin_client.post_form("/api-keys", {"name": "   "})
    assert empty.status_code == 400
    assert "give 1 to 100 printable characters" in empty.text
    assert admin_client.http.post("/api-keys", data={"name": "x"}).status_code == 403
    assert admin_client.http.post("/api-keys/1/revoke").status_code == 403


def test_routing_lists_rules_in_order_and_simulates(start_dashboard: StartDashboard) -> None:
    relays = [{"name": "local", "kind": "local"}, {"name": "capture", "kind": "local"}]
    routes = [
        {"priority": 20, "recipient_domain": "example.org", "relay": "capture"},
        {"priority": 10, "sender_domain": "*.marketing.example.com", "relay": ["capture", "local"]},
        {"priority": 5, "relay": "local", "enabled": False},
    ]
    dashboard = start_dashboard(relays=relays, routes=routes, default_relay="local")
    client = AdminClient(dashboard)
    page = client.http.get("/routing").text
    order = re.findall(r'<tr id="route-(\d+)"', page)
    assert order == ["1", "0", "2"]  # priority 10, then 20; the disabled one last
    simulated = client.http.get(
        "/routing", params={"from": "news@mail.marketing.example.com", "to": "a@example.org"}
    )
    assert "routes[1] matched" in simulated.text
    assert '<tr id="route-1" class="chosen" aria-current="true">' in simulated.text
    fallback = client.http.get("/routing", params={"from": "<>", "to": "a@example.net"})
    assert "no rule matched: default_relay local" in fallback.text
    bad = client.http.get("/routing", params={"from": "x@example.com", "to": "nobody"})
    assert bad.status_code == 400
    assert "To: &#39;nobody&#39; is not an address" in bad.text
    client.close()


def test_audit_filters_by_category_and_severity(
    dashboard: DashboardDaemon, admin_client: AdminClient
) -> None:
    wait_until(
        lambda: "signed in from" in admin_client.http.get("/audit").text,
        what="the login in the audit log",
    )
    auth = admin_client.http.get("/audit", params={"category": "Auth", "level": "Notice"}).text
    assert "dashboard: admin signed in from 127.0.0.1" in auth
    assert "started (pid" not in rows(auth)  # the start is System
    system = admin_client.http.get("/audit", params={"category": "System"}).text
    assert "started (pid" in rows(system)
    assert "signed in" not in rows(system)
    warnings = admin_client.http.get("/audit", params={"level": "Warning"}).text
    assert "signed in" not in rows(warnings)
    wrong = admin_client.http.get("/audit", params={"category": "Nope"})
    assert wrong.status_code == 400
    assert "category must be one of Auth, Config, ApiKey, Relay, System" in wrong.text
