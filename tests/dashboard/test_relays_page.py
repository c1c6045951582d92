"""The Relays page over HTTP: state, a test message with the upstream's reply, the live log."""

from __future__ import annotations

import re

from dispatch.spool.testing import envelope_ids
from tests.dashboard.support import AdminClient, StartDashboard
from tests.support.config import smtp_relay
from tests.support.sink import StartSink
from tests.support.waiting import wait_until

LOCAL = {"name": "local", "kind": "local"}


def test_send_test_shows_the_upstreams_reply_and_the_log(
    start_dashboard: StartDashboard, start_sink: StartSink
) -> None:
    sink = start_sink()
    dashboard = start_dashboard(
        relays=[LOCAL, smtp_relay("upstream", sink.port)], default_relay="local"
    )
    client = AdminClient(dashboard)
    listing = client.http.get("/relays")
    assert listing.status_code == 200
    assert f"127.0.0.1:{sink.port} (TLS none)" in listing.text
    assert re.search(r'<span class="state-idle">idle</span>', listing.text)

    answer = client.post_form(
        "/relays/upstream/test", {"from": "ops@example.com", "to": "check@example.org"}
    )
    assert answer.status_code == 303
    page = client.http.get(answer.headers["location"].partition("#")[0])
    assert "Test message through upstream to check@example.org: 1 delivered" in page.text
    assert "delivered: 250 2.0.0 Ok: queued as Q1" in page.text
    (received,) = sink.messages
    assert received.rcpt_tos == ("check@example.org",)
    assert b"Subject: Dispatch test message through relay upstream" in received.content
    assert '<span class="state-ok">ok</span>' in client.http.get("/relays").text

    log = client.http.get("/relays/upstream/log")
    assert log.status_code == 200
    assert log.headers["x-live-version"]
    assert "250 2.0.0 Ok: queued as Q1" in log.text  # the message log's row, or the dialogue
    assert "relay upstream →" in log.text  # the dialogue trace, with the SMTP exchange
    assert "RCPT TO:&lt;check@example.org&gt;" in log.text
    wait_until(
        lambda: ">delivered</span>" in client.http.get("/relays/upstream/log").text,
        what="the delivered row in the message log",
    )
    newer = client.http.get("/relays/upstream/log").headers["x-live-version"]
    assert client.http.get("/relays/upstream/log", params={"version": newer}).status_code == 204

    def audited() -> bool:
        text = client.http.get("/audit", params={"category": "Relay"}).text
        return "relay upstream: test message to a recipient at example.org: 1 delivered" in text

    wait_until(audited, what="the test message in the audit log")
    client.close()


def test_a_refused_test_message_shows_the_refusal(
    start_dashboard: StartDashboard, start_sink: StartSink
) -> None:
    sink = start_sink()
    dashboard = start_dashboard(
        relays=[LOCAL, smtp_relay("upstream", sink.port)], default_relay="local"
    )
    client = AdminClient(dashboard)
    answer = client.post_form(
        "/relays/upstream/test", {"from": "ops@example.com", "to": "reject@example.org"}
    )
    page = client.http.get(answer.headers["location"].partition("#")[0])
    assert "1 permanent" in page.text
    assert "550 5.1.1 no such user" in page.text
    assert sink.messages == []
    spool = dashboard.root / "spool"
    assert not envelope_ids(spool / "incoming")  # not retried: deleted
    assert not envelope_ids(spool / "failed")
    client.close()


def test_bad_addresses_and_unknown_relays_are_refused_with_the_reason(
    start_dashboard: StartDashboard,
) -> None:
    dashboard = start_dashboard()
    client = AdminClient(dashboard)
    answer = client.post_form("/relays/local/test", {"from": "nobody", "to": "x@example.org"})
    page = client.http.get(answer.headers["location"].partition("#")[0])
    assert "Not sent: &#39;nobody&#39; is not an address like user@example.com" in page.text
    assert client.http.get("/relays/nowhere").status_code == 404
    assert client.post_form("/relays/nowhere/test", {}).status_code == 404
    assert client.http.post("/relays/local/test", data={"to": "x@example.org"}).status_code == 403
    client.close()
