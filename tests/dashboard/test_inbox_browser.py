"""The Local inbox in Chromium: captured HTML cannot run script or fetch anything, new mail
appears without a reload, a captured message is released through a relay to a real sink.

The "fetch anything" half is measured, not assumed: :class:`CountingServer` is a real HTTP
server on 127.0.0.1 that counts every connection, and the hostile message points every kind
of reference at it. A control run loads the same HTML into a plain page to show that, without
the inbox's frame, the script runs and the server is hit.
"""

from __future__ import annotations

import email.message
import email.policy
import http.server
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.dashboard.support import DashboardDaemon, Screenshots, StartDashboard, set_up_in_browser
from tests.dashboard.test_inbox import PNG, rich_message, send, wait_for_captured
from tests.support.config import smtp_relay
from tests.support.sink import StartSink
from tests.support.waiting import wait_until


class CountingServer:
    """An HTTP server on 127.0.0.1 that counts connections and requests (any path: 200)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.connections = 0
        counter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def setup(self) -> None:
                counter.connections += 1
                super().setup()

            def do_GET(self) -> None:
                counter.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()
                self.wfile.write(PNG)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def hits(self) -> int:
        return self.connections + len(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def counting_server() -> Iterator[CountingServer]:
    server = CountingServer()
    yield server
    server.close()


def tricks(port: int) -> dict[str, str]:
    """Every way an HTML mail could run script or reach the counting server, by name."""
    base = f"http://127.0.0.1:{port}"
    return {
        "script": f'<script>document.title = "script ran"; fetch("{base}/script");</script>',
        "image": f'<img src="{base}/remote-image.png" alt="remote">',
        "refresh": f'<meta http-equiv="refresh" content="0;url={base}/refresh">',
        "stylesheet": f'<link rel="stylesheet" href="{base}/style.css">',
        "preconnect": f'<link rel="preconnect" href="{base}">',
        "background": f'<style>body {{ background-image: url("{base}/background"); }}</style>',
        "onload": f"<body onload=\"fetch('{base}/onload')\">",
        "onerror": f'<img src="x" onerror="fetch(\'{base}/onerror\')">',
        "iframe": f'<iframe src="{base}/frame"></iframe>',
        "object": f'<object data="{base}/object"></object>',
        "form": f'<form action="{base}/form" method="post"><input name="q" value="x"></form>',
        "external script": f'<script src="{base}/external.js"></script>',
    }


def html_with(pieces: list[str]) -> str:
    return (
        "<!doctype html>\n<html><head><title>captured</title>\n"
        + "\n".join(pieces)
        + "\n<h1>Invoice</h1><p>Hello, this is the HTML part.</p></html>"
    )


def test_captured_html_runs_no_script_and_loads_nothing(
    dashboard: DashboardDaemon,
    admin_page: Page,
    counting_server: CountingServer,
) -> None:
    html = html_with(list(tricks(counting_server.port).values()))
    send(dashboard, rich_message("Invoice with tricks", html=html))
    (message_id,) = wait_for_captured(dashboard, 1)
    page = admin_page
    page.goto(f"{dashboard.url}/inbox/{message_id}")
    frame_element = page.locator("iframe.mail-frame")
    expect(frame_element).to_have_attribute(
        "sandbox", "allow-popups allow-popups-to-escape-sandbox"
    )
    frame = page.frame_locator("iframe.mail-frame")
    expect(frame.get_by_role("heading", name="Invoice")).to_be_visible()
    page.wait_for_load_state("networkidle")
    (mail_frame,) = [f for f in page.frames if f.url.endswith(f"/inbox/{message_id}/frame")]
    assert mail_frame.title() == "captured"  # the script would have renamed it
    assert page.title() == "Invoice with tricks · Dispatch"
    assert counting_server.hits == 0, counting_server.requests

    page.get_by_role("link", name="Load remote content").click()
    page.wait_for_url(f"{dashboard.url}/inbox/{message_id}?view=html&remote=1")
    expect(
        page.frame_locator("iframe.mail-frame").get_by_role("heading", name="Invoice")
    ).to_be_visible()
    page.wait_for_load_state("networkidle")
    assert counting_server.hits == 0, counting_server.requests  # https images only; still no script

    # The control: the script and the image in an ordinary page do run and load.
    control = page.context.new_page()
    trick = tricks(counting_server.port)
    control.set_content(html_with([trick["script"], trick["image"]]))
    wait_until(lambda: "/script" in counting_server.requests, what="the control's fetch")
    assert "/remote-image.png" in counting_server.requests
    assert control.title() == "script ran"
    control.close()


def test_new_mail_appears_without_a_reload(
    dashboard: DashboardDaemon, admin_page: Page, screenshots: Screenshots
) -> None:
    page = admin_page
    page.goto(f"{dashboard.url}/inbox")
    expect(page.get_by_text("The Local inbox is empty.")).to_be_visible()
    send(dashboard, rich_message("Arrived while watching", html="<p>hello</p>"))
    expect(page.get_by_role("link", name="Arrived while watching")).to_be_visible(timeout=15_000)
    assert page.url == f"{dashboard.url}/inbox"  # no navigation happened
    for n, subject in enumerate(("Password reset", "Welcome aboard", "Your receipt #1042")):
        message = email.message.EmailMessage()
        message["From"] = f"app-{n}@shop.example.com"
        message["To"] = f"customer{n}@example.org"
        message["Subject"] = subject
        message.set_content("Thanks.")
        send(dashboard, message.as_bytes(policy=email.policy.SMTP), to=f"customer{n}@example.org")
    expect(page.get_by_role("link", name="Your receipt #1042")).to_be_visible(timeout=15_000)
    screenshots.take(page, "inbox")

    page.get_by_label("Search").fill("subject:receipt")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("link", name="Your receipt #1042")).to_be_visible()
    expect(page.get_by_role("link", name="Welcome aboard")).to_have_count(0)


def test_release_through_a_relay_reaches_the_sink(
    start_dashboard: StartDashboard, start_sink: StartSink, page: Page, tmp_path: Path
) -> None:
    sink = start_sink()
    dashboard = start_dashboard(
        relays=[{"name": "local", "kind": "local"}, smtp_relay("upstream", sink.port)],
        default_relay="local",
    )
    set_up_in_browser(page, dashboard)
    raw = rich_message("Release me", html="<p>Hold on</p>")
    send(dashboard, raw)
    (message_id,) = wait_for_captured(dashboard, 1)
    assert sink.messages == []  # captured, not delivered
    page.goto(f"{dashboard.url}/inbox/{message_id}")
    page.get_by_label("Relay").select_option("upstream")
    page.get_by_label("To").fill("carol@example.net")
    page.get_by_role("button", name="Release").click()
    expect(page.get_by_role("status")).to_contain_text(
        f"Released {message_id} through relay upstream: 1 delivered"
    )
    expect(page.get_by_role("status")).to_contain_text("250 2.0.0 Ok: queued as Q1")
    (received,) = sink.messages
    assert received.rcpt_tos == ("carol@example.net",)
    assert received.mail_from == "alice@example.com"
    copy = (
        Path(dashboard.config["spool"]["directory"]) / "captured" / f"{message_id}.eml"
    ).read_bytes()
    assert received.content.replace(b"\r\n", b"\n") == copy.replace(b"\r\n", b"\n")
    assert (
        Path(dashboard.config["spool"]["directory"]) / "captured" / f"{message_id}.json"
    ).exists()
