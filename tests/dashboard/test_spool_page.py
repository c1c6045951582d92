"""The Spool page in Chromium and over httpx: the views with reason and next attempt, retry
and delete (one, several, all) behind confirmations, each audit-logged, and a failed message
retried from the page and then received by a sink. State-changing requests without the CSRF
token are refused."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, Final

import pytest
from aiosmtpd.controller import Controller
from playwright.sync_api import Dialog, Page, expect

from tests.dashboard.support import (
    AdminClient,
    DashboardDaemon,
    Screenshots,
    StartDashboard,
    set_up_in_browser,
)
from tests.dashboard.traffic import (
    audit_messages,
    events_of,
    id_of_subject,
    rows,
    send_smtp,
    spool_ids,
    wait_for_events,
)
from tests.support.config import smtp_relay
from tests.support.sink import Sink, StartSink
from tests.support.waiting import wait_until

REFUSAL: Final = "550 5.7.1 relaying denied for now"


class Refusing:
    """An upstream that refuses every recipient with a 550 (aiosmtpd's hook)."""

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        return REFUSAL


class RefusingUpstream:
    """An upstream on 127.0.0.1:``port`` that refuses every recipient until :meth:`stop`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._controller: Controller | None = Controller(
            Refusing(), hostname="127.0.0.1", port=port
        )
        self._controller.start()

    def stop(self) -> None:
        """Stop it (idempotent: the fixture stops it again at teardown)."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@pytest.fixture
def refusing_upstream(start_sink: StartSink) -> Iterator[RefusingUpstream]:
    """A refusing upstream on a free port (a started sink's port, stopped and taken over)."""
    placeholder = start_sink()
    placeholder.stop()
    upstream = RefusingUpstream(placeholder.port)
    yield upstream
    upstream.stop()


def open_as_admin(page: Page, dashboard: DashboardDaemon, path: str) -> None:
    """Set the admin password in the browser (first run), then open ``path``."""
    set_up_in_browser(page, dashboard)
    page.goto(dashboard.url + path)


def confirm(page: Page, seen: list[str]) -> None:
    """Accept the next confirmation, remembering its question."""

    def answer(dialog: Dialog) -> None:
        seen.append(dialog.message)
        dialog.accept()

    page.once("dialog", answer)


def test_a_failed_message_retried_from_the_page_reaches_the_sink(
    page: Page,
    start_dashboard: StartDashboard,
    refusing_upstream: RefusingUpstream,
    screenshots: Screenshots,
) -> None:
    port = refusing_upstream.port
    dashboard = start_dashboard(
        relays=[smtp_relay("upstream", port)],
        default_relay="upstream",
        bounces={"enabled": False},  # the refused message's DSN would be one more failed row
    )
    data = send_smtp(dashboard, "app@example.com", ["ann@example.org"], "Refused at first")
    message_id = id_of_subject(dashboard, "Refused at first")
    wait_for_events(dashboard, message_id, "failed")
    refusing_upstream.stop()
    sink = Sink(port=port)  # the same upstream, accepting now
    try:
        set_up_in_browser(page, dashboard)
        page.goto(dashboard.url + "/spool?state=failed")
        row = page.locator(f'#spool-table tr[data-id="{message_id}"]')
        expect(row).to_contain_text("ann@example.org")
        expect(row).to_contain_text("Refused at first")  # the subject, from the message log
        expect(row).to_contain_text(f"ann@example.org: {REFUSAL}")  # the reason
        expect(row).to_contain_text("waits for you")
        screenshots.take(page, "spool")
        questions: list[str] = []
        confirm(page, questions)
        row.get_by_role("button", name="Retry").click()
        expect(page.locator(".notice")).to_contain_text("Retried 1 message")
        assert questions == [f"Retry {message_id} now?"]
        wait_until(lambda: len(sink.messages) == 1, what="the retried message at the sink")
        assert sink.messages[0].content.endswith(data)
        wait_for_events(dashboard, message_id, "delivered")
        assert events_of(dashboard, message_id)[-1] == "delivered"
        assert f"spool retry {message_id}: moved from failed back to incoming, due now" in (
            audit_messages(dashboard)
        )
        actors = rows(
            dashboard,
            "SELECT actor FROM audit_log WHERE message LIKE ?",
            (f"spool retry {message_id}%",),
        )
        assert actors == [("dashboard admin from 127.0.0.1",)]
        page.reload()
        expect(page.locator("#spool-table")).not_to_contain_text(message_id)
    finally:
        sink.stop()


@pytest.fixture
def waiting(start_dashboard: StartDashboard, start_sink: StartSink) -> DashboardDaemon:
    """A daemon with three messages deferred (451) by its upstream, waiting to retry."""
    sink = start_sink()
    dashboard = start_dashboard(
        relays=[smtp_relay("upstream", sink.port)], default_relay="upstream"
    )
    for number in (1, 2, 3):
        send_smtp(
            dashboard, "app@example.com", [f"later{number}@example.org"], f"Deferred {number}"
        )
    for number in (1, 2, 3):
        wait_for_events(dashboard, id_of_subject(dashboard, f"Deferred {number}"), "retried")
    return dashboard


def test_retrying_messages_show_reason_and_next_attempt(waiting: DashboardDaemon) -> None:
    client = AdminClient(waiting)
    listing = client.http.get("/spool", params={"state": "retrying"}).text
    ids = re.findall(r'<tr data-id="(spl_[0-9A-Z]+)">', listing)
    assert len(ids) == 3
    assert listing.count("<code>later") == 3  # each recipient's 451, by recipient
    assert "451 4.3.0 try later" in listing
    assert len(re.findall(r'<time datetime="[0-9T:\-]+Z" data-local>', listing)) == 3
    assert re.search(r'Retrying <span class="count">3</span>', listing)
    assert re.search(r'Failed <span class="count">0</span>', listing)
    found = client.http.get("/spool", params={"state": "all", "q": "LATER2@"}).text
    assert re.findall(r'<tr data-id="(spl_[0-9A-Z]+)">', found) == [
        id_of_subject(waiting, "Deferred 2")
    ]
    none = client.http.get("/spool", params={"state": "all", "relay": "nosuch"}).text
    assert "No message in the spool matches." in none
    client.close()


def test_bulk_delete_asks_with_the_count_and_is_audited(
    page: Page, waiting: DashboardDaemon
) -> None:
    ids = [id_of_subject(waiting, f"Deferred {n}") for n in (1, 2, 3)]
    open_as_admin(page, waiting, "/spool")
    table = page.locator("#spool-table")
    for message_id in ids[:2]:
        table.get_by_label(f"Select {message_id}").check()
    # Dismissing the question changes nothing.
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Delete selected").click()
    expect(table.locator("tbody tr")).to_have_count(3)
    assert spool_ids(waiting, "incoming") == set(ids)
    questions: list[str] = []
    confirm(page, questions)
    page.get_by_role("button", name="Delete selected").click()
    expect(page.locator(".notice")).to_contain_text("Deleted 2 messages")
    assert questions == ["Delete 2 selected message(s) for good? This cannot be undone."]
    expect(table.locator("tbody tr")).to_have_count(1)
    assert spool_ids(waiting, "incoming") == {ids[2]}
    deleted = [m for m in audit_messages(waiting) if m.startswith("spool delete")]
    assert sorted(deleted) == sorted(f"spool delete {i}: deleted from incoming" for i in ids[:2])


def test_retry_now_and_retry_all_make_mail_due_and_are_audited(
    page: Page, waiting: DashboardDaemon
) -> None:
    ids = [id_of_subject(waiting, f"Deferred {n}") for n in (1, 2, 3)]
    open_as_admin(page, waiting, "/spool?state=retrying")
    confirm(page, [])
    page.locator(f'tr[data-id="{ids[0]}"]').get_by_role("button", name="Retry").click()
    expect(page.locator(".notice")).to_contain_text("Retried 1 message")
    expect(page.locator(".notice")).to_contain_text(f"{ids[0]}: due now")
    wait_until(lambda: events_of(waiting, ids[0]).count("retried") == 2, what="a second attempt")
    assert f"spool retry {ids[0]}: waiting message made due now (attempts kept)" in (
        audit_messages(waiting)
    )
    questions: list[str] = []
    confirm(page, questions)
    page.get_by_role("button", name="Retry all now").click()
    expect(page.locator(".notice")).to_contain_text(
        re.compile(r"Retry all: [23] messages made due")
    )
    assert questions[0].startswith("Make every waiting message of this scope due now")
    for message_id in ids[1:]:
        wait_until(retried_twice(waiting, message_id), what=f"{message_id} tried again")
    flushed = [m for m in audit_messages(waiting) if m.startswith("spool retry --all")]
    assert flushed == [flushed[0]]
    assert flushed[0].startswith("spool retry --all (relay any, state incoming and failed): ")


def retried_twice(dashboard: DashboardDaemon, message_id: str) -> Callable[[], bool]:
    return lambda: events_of(dashboard, message_id).count("retried") == 2


def test_spool_actions_need_the_csrf_token(waiting: DashboardDaemon) -> None:
    message_id = id_of_subject(waiting, "Deferred 1")
    client = AdminClient(waiting)
    for path, data in (
        ("/spool/act", {"one": f"delete:{message_id}"}),
        ("/spool/act", {"action": "delete", "ids": message_id}),
        ("/spool/flush", {}),
    ):
        refused = client.http.post(path, data=data)
        assert refused.status_code == 403, path
        assert "security token is missing" in refused.text
        wrong = client.http.post(path, data={**data, "csrf_token": "not-the-token"})
        assert wrong.status_code == 403, path
    elsewhere = client.http.post(
        "/spool/act",
        data={"one": f"delete:{message_id}", "csrf_token": client.csrf_token()},
        headers={"Origin": "https://attacker.example"},
    )
    assert elsewhere.status_code == 403
    assert message_id in spool_ids(waiting, "incoming")
    assert not [m for m in audit_messages(waiting) if m.startswith("spool delete")]
    done = client.post_form("/spool/act", {"one": f"delete:{message_id}"})
    assert done.status_code == 303
    assert message_id not in spool_ids(waiting, "incoming")
    # Where an action sends the browser back is a path of this page, and nothing else.
    for back in ("https://attacker.example/spool", "/spool\r\nSet-Cookie: x=1", "//x/spool"):
        answer = client.post_form("/spool/act", {"action": "retry", "back": back})
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/spool?notice=")
        assert "set-cookie" not in answer.headers
    client.close()
