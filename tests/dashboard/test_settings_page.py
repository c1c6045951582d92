"""The Settings page over HTTP: no secret rendered, reload audited, the certificate in use,
storage usage and "purge now"; and the /debug/ pages behind the login on this port."""

from __future__ import annotations

import hashlib
import os
import re
import smtplib
import ssl
import time
from pathlib import Path

from dispatch.config import parse_settings
from dispatch.dashboard.settings_facts import config_rows
from tests.dashboard.support import AdminClient, DashboardDaemon, StartDashboard
from tests.support.config import dump
from tests.support.waiting import wait_until

RELAY_PASSWORD = "relay-pass-7f3a2c"
MAILGUN_KEY = "mg-key-9c1d44"
URL_PASSWORD = "urlpass-55e1"
SECRETS = (RELAY_PASSWORD, MAILGUN_KEY, URL_PASSWORD)

RELAYS = [
    {"name": "local", "kind": "local"},
    {
        "name": "smarthost",
        "kind": "smtp",
        "host": "127.0.0.1",
        "port": 9,
        "tls": "starttls",
        "username": "relay-user",
        "password": RELAY_PASSWORD,
    },
    {
        "name": "provider",
        "kind": "mailgun",
        "domain": "mg.example.com",
        "api_key": MAILGUN_KEY,
        "base_url": f"https://api-user:{URL_PASSWORD}@127.0.0.1:9/",
    },
]


def served_fingerprint(dashboard: DashboardDaemon) -> str:
    pem = ssl.get_server_certificate(("127.0.0.1", dashboard.ports.webui))
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def colon_hex(digest: str) -> str:
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper()


def test_no_secret_is_rendered(start_dashboard: StartDashboard) -> None:
    dashboard = start_dashboard(relays=RELAYS, default_relay="local")
    client = AdminClient(dashboard)
    for path in ("/settings", "/relays", "/relays/provider", "/debug/config", "/routing"):
        page = client.http.get(path)
        assert page.status_code == 200, path
        for secret in SECRETS:
            assert secret not in page.text, (path, secret)
    settings = client.http.get("/settings").text
    assert "relays[1].password" in settings
    assert "&#34;&lt;redacted&gt;&#34;" in settings  # the value cell of each secret
    assert "https://api-user:&lt;redacted&gt;@127.0.0.1:9/" in settings
    client.close()


def test_a_database_url_password_is_never_a_row() -> None:
    settings = parse_settings(
        {"database": {"url": "postgresql://dispatch:pg-secret-31@db.example/mail?sslmode=require"}}
    )
    rows = {row.key: row.value for row in config_rows(settings)}
    assert (
        rows["database.url"] == '"postgresql://dispatch:<redacted>@db.example/mail?sslmode=require"'
    )
    assert not any("pg-secret-31" in value for value in rows.values())


def test_reload_applies_live_keys_names_the_others_and_is_audited(
    dashboard: DashboardDaemon, admin_client: AdminClient
) -> None:
    config_file = dashboard.root / "dispatch.toml"
    page = admin_client.http.get("/settings").text
    assert f'<code id="config-path">{config_file}</code>' in page
    changed = dict(dashboard.config)
    changed["spool"] = {**changed["spool"], "max_retries": 9}
    changed["listener"] = {**changed["listener"], "max_message_bytes": 1000, "server_name": "x"}
    config_file.write_text(dump(changed))
    answer = admin_client.post_form("/settings/reload")
    assert answer.status_code == 303
    notice = admin_client.http.get(answer.headers["location"]).text
    assert f"Reloaded {config_file}: live keys applied" in notice
    assert "applied: spool.max_retries" in notice
    assert "applied: listener.max_message_bytes" in notice
    assert "changed but needs a restart: listener.server_name" in notice
    assert 'spool.max_retries</code></th><td class="value">9</td>' in notice

    config_file.write_text(dump({**changed, "spool": {**changed["spool"], "max_retries": -1}}))
    refused = admin_client.post_form("/settings/reload")
    text = admin_client.http.get(refused.headers["location"]).text
    assert "was refused; the running configuration is kept" in text
    assert "spool.max_retries" in text

    def audited() -> bool:
        audit = admin_client.http.get("/audit", params={"category": "Config"}).text
        return (
            "configuration reloaded from" in audit
            and "applied listener.max_message_bytes, spool.max_retries" in audit
            and "rejected (1 problem" in audit
            and "dashboard admin from 127.0.0.1" in audit
        )

    wait_until(audited, what="both reloads in the audit log with the admin as actor")


def test_certificate_in_use_and_regenerating_the_self_signed_one(
    dashboard: DashboardDaemon, admin_client: AdminClient
) -> None:
    served = colon_hex(served_fingerprint(dashboard))
    page = admin_client.http.get("/settings").text
    assert f'<code id="fingerprint" class="break">{served}</code>' in page
    assert "self-signed, made by Dispatch" in page
    assert "days left" in page

    answer = admin_client.post_form("/settings/certificate")
    notice = admin_client.http.get(answer.headers["location"].partition("#")[0]).text
    assert "restart Dispatch to serve it" in notice
    new = colon_hex(
        hashlib.sha256(ssl.PEM_cert_to_DER_cert(dashboard.certificate.read_text())).hexdigest()
    )
    assert new != served
    assert f'<code id="fingerprint" class="break">{new}</code>' in notice
    assert colon_hex(served_fingerprint(dashboard)) == served  # served from the next start
    assert oct(dashboard.certificate.with_name("selfsigned-key.pem").stat().st_mode)[-3:] == "600"
    wait_until(
        lambda: "self-signed TLS certificate regenerated" in admin_client.http.get("/audit").text,
        what="the regeneration in the audit log",
    )


def test_a_configured_certificate_is_not_replaced(
    start_dashboard: StartDashboard, tmp_path: Path
) -> None:
    first = start_dashboard()
    # The daemon made its self-signed pair; a second daemon is told to use it as its own.
    cert = first.certificate
    key = cert.with_name("selfsigned-key.pem")
    first.daemon.kill()
    second = start_dashboard(tls={"cert_file": str(cert), "key_file": str(key)})
    client = AdminClient(second)
    page = client.http.get("/settings").text
    assert "Regenerate the self-signed certificate" not in page
    answer = client.post_form("/settings/certificate")
    text = client.http.get(answer.headers["location"].partition("#")[0]).text
    assert "does not replace it" in text
    client.close()


def test_storage_usage_and_purge_now(dashboard: DashboardDaemon, admin_client: AdminClient) -> None:
    with smtplib.SMTP("127.0.0.1", dashboard.ports.smtp, timeout=30) as smtp:
        for n in range(2):
            smtp.sendmail("a@example.com", ["b@example.org"], f"Subject: {n}\r\n\r\nx\r\n")
    captured = Path(dashboard.config["spool"]["directory"]) / "captured"
    wait_until(lambda: len(list(captured.glob("*.json"))) == 2, what="two captured copies")
    page = admin_client.http.get("/settings").text
    captured_row = re.search(r"captured <span[^>]*>\(Local inbox\)</span></th>\s*(.*?)</tr>", page)
    assert captured_row is not None
    assert re.findall(r'<td class="num">([^<]*)</td>', captured_row.group(1))[:2] == ["2", "4"]
    assert '<code>message_log</code></th><td class="num">' in page
    assert "<code>audit_log</code>" in page

    old, young = sorted(captured.glob("*.json"))
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old, (ten_days_ago, ten_days_ago))
    os.utime(old.with_suffix(".eml"), (ten_days_ago, ten_days_ago))
    answer = admin_client.post_form("/settings/purge")
    notice = admin_client.http.get(answer.headers["location"].partition("#")[0]).text
    assert "captured: 1 removed" in notice
    assert not old.exists()
    assert young.exists()
    wait_until(
        lambda: (
            "retention run on request (purge now): 1 rows and files removed"
            in admin_client.http.get("/audit", params={"category": "System"}).text
        ),
        what="the purge in the audit log",
    )
    assert admin_client.http.post("/settings/purge").status_code == 403


def test_debug_pages_need_the_login_and_have_their_own_policy(
    dashboard: DashboardDaemon, admin_client: AdminClient
) -> None:
    anonymous = dashboard.client()
    refused = anonymous.get("/debug/vars")
    anonymous.close()
    assert refused.status_code == 303
    assert refused.headers["location"] == "/login?next=/debug/vars"
    index = admin_client.http.get("/debug/")
    assert index.status_code == 200
    assert 'href="traces"' in index.text
    policy = index.headers["content-security-policy"]
    assert "style-src 'unsafe-inline'" in policy
    assert "script-src" not in policy
    assert "default-src 'none'" in policy
    assert "dispatch/smtpIn/commandCount" in admin_client.http.get("/debug/vars").json()
    overview = admin_client.http.get("/")
    assert "debug" not in overview.headers.get("content-security-policy", "")
    assert "script-src 'self'" in overview.headers["content-security-policy"]


def test_settings_actions_need_the_csrf_token(
    dashboard: DashboardDaemon, admin_client: AdminClient
) -> None:
    before = dashboard.certificate.read_bytes()
    for path in ("/settings/reload", "/settings/certificate", "/settings/purge"):
        assert admin_client.http.post(path).status_code == 403, path
        wrong = admin_client.http.post(path, data={"csrf_token": "not-the-token"})
        assert wrong.status_code == 403, path
    assert dashboard.certificate.read_bytes() == before
    audit = admin_client.http.get("/audit").text
    assert "reload" not in audit.partition("<tbody>")[2]
