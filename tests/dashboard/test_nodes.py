"""The Settings page lists every node sharing the PostgreSQL database (issue 17, item 2).

A real daemon on a real PostgreSQL 15 writes its own heartbeat; a second node's heartbeat is
written as that node writes it (:class:`dispatch.storage.nodes.Heartbeat` on its own
connection), and a third node's row is old. The page shows all three, marks this node, and
tells the answering nodes from the silent one, over HTTP and in Chromium (at phone width too).
"""

from __future__ import annotations

import re
import time

import trio
from playwright.sync_api import Page, expect

from dispatch.storage import PostgresDatabase
from dispatch.storage.nodes import STALE_AFTER_SECONDS, UPSERT_NODE, Heartbeat
from tests.dashboard.support import (
    AdminClient,
    Screenshots,
    StartDashboard,
    set_up_in_browser,
)
from tests.support.waiting import wait_until


async def beat_as_other_nodes(url: str) -> None:
    database = PostgresDatabase(url)
    try:
        await Heartbeat(database, "node-b").beat()
        old = time.time() - 10 * STALE_AFTER_SECONDS
        row = ("node-c", "gone.example", "0.0.9", old - 60, old)
        await database.write(lambda cursor: cursor.execute(UPSERT_NODE, row))
    finally:
        await database.aclose()


def test_the_settings_page_lists_every_node(
    start_dashboard: StartDashboard, postgres_url: str
) -> None:
    daemon = start_dashboard(database={"url": postgres_url, "node_id": "node-a"})
    trio.run(beat_as_other_nodes, postgres_url)
    client = AdminClient(daemon)
    try:
        wait_until(lambda: "node-a" in client.http.get("/settings").text, what="own heartbeat")
        page = client.http.get("/settings").text
    finally:
        client.close()
    rows = {
        node: row
        for row in re.findall(r"<tr><th scope=\"row\"><code>node-.*?</tr>", page)
        for node in re.findall(r"<code>(node-[abc])</code>", row)
    }
    assert set(rows) == {"node-a", "node-b", "node-c"}
    assert "(this node)" in rows["node-a"]
    assert "(this node)" not in rows["node-b"]
    assert "answering" in rows["node-a"]
    assert "answering" in rows["node-b"]
    assert "not answering" not in rows["node-b"]
    assert "not answering" in rows["node-c"]
    assert "gone.example" in rows["node-c"]


def test_the_node_list_in_the_browser(
    page: Page, start_dashboard: StartDashboard, postgres_url: str, screenshots: Screenshots
) -> None:
    daemon = start_dashboard(database={"url": postgres_url, "node_id": "node-a"})
    trio.run(beat_as_other_nodes, postgres_url)
    set_up_in_browser(page, daemon)
    page.goto(daemon.url + "/settings#nodes")
    table = page.get_by_role("table", name="Nodes sharing the database")
    expect(table.get_by_role("row")).to_have_count(4)  # the header and three nodes
    this = table.get_by_role("row").filter(has_text="node-a")
    expect(this).to_contain_text("(this node)")
    expect(this).to_contain_text("answering")
    silent = table.get_by_role("row").filter(has_text="node-c")
    expect(silent).to_contain_text("not answering")
    page.set_viewport_size({"width": 360, "height": 800})
    table.scroll_into_view_if_needed()
    screenshots.take(page, "settings-nodes-360")
