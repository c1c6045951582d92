"""Two nodes sharing one PostgreSQL database (issue 17, item 2): two real daemons in-process,
each with its own spool and data directory, the API over httpx.

A key created on node A works on node B within a second; revoked on A, it is refused by B on
B's next request, and B's cache of it is dropped (NOTIFY); a message accepted by A is
answered for by B from the shared log, queued or delivered; every log row names its node,
and both nodes' heartbeats are in the ``nodes`` table.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio

from dispatch.security.api_keys import create_api_key
from dispatch.storage import AuditEntry, list_nodes
from tests.conftest import free_port
from tests.delivery.harness import Running, running_dispatch
from tests.support.config import base_config
from tests.support.waiting import wait_until_async

DEAD_RELAY = [{"name": "down", "kind": "smtp", "host": "127.0.0.1", "port": 9, "tls": "none"}]


@asynccontextmanager
async def two_nodes(
    tmp_path: Path, url: str, **overrides: Any
) -> AsyncIterator[tuple[Running, Running]]:
    roots = [tmp_path / "a", tmp_path / "b"]
    configs = [
        base_config(root, database={"url": url, "node_id": f"node-{name}"}, **overrides)
        for root, name in zip(roots, "ab", strict=True)
    ]
    async with (
        running_dispatch(roots[0], configs[0]) as a,
        running_dispatch(roots[1], configs[1]) as b,
    ):
        yield a, b


def api_client(node: Running, key: str) -> httpx.AsyncClient:
    port = node.parts.settings.current.api.port
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        timeout=20,
        headers={"Authorization": f"Bearer {key}"},
    )


async def status_within(client: httpx.AsyncClient, path: str, wanted: int, seconds: float) -> float:
    """Seconds until ``GET path`` answers ``wanted``; fails after ``seconds``."""
    started = trio.current_time()
    with trio.fail_after(seconds):
        while True:
            if (await client.get(path)).status_code == wanted:
                return trio.current_time() - started
            await trio.sleep(0.02)


async def test_keys_revocations_and_status_lookups_cross_nodes(
    tmp_path: Path, postgres_url: str
) -> None:
    async with two_nodes(tmp_path, postgres_url, relays=DEAD_RELAY) as (a, b):
        record, key = await create_api_key(a.parts.store.api_keys, "shared")
        async with api_client(a, key) as on_a, api_client(b, key) as on_b:
            took = await status_within(on_b, "/api/v1/messages?limit=1", 200, 1.0)
            sent = await on_a.post(
                "/api/v1/messages",
                json={"from": "app@example.com", "to": "rcpt@example.org", "text": "hi"},
            )
            assert sent.status_code == 202, sent.text
            message_id = sent.json()["id"]
            await a.parts.store.log.wait_until_written()
            from_b = await on_b.get(f"/api/v1/messages/{message_id}")
            await wait_until_async(lambda: a.parts.spool.counts().total == 1)
            key_changes = b.parts.store.key_changes
            assert key_changes is not None
            heard_before = key_changes.received
            await a.parts.store.api_keys.revoke(record.id)
            refused = await on_b.get("/api/v1/messages?limit=1")
            await wait_until_async(lambda: key_changes.received > heard_before, within=2)
            b.parts.store.log.audit(AuditEntry(category="System", level="Info", message="b"))
            await b.parts.store.log.wait_until_written()
        nodes = await list_nodes(b.parts.store.database)
    assert took < 1.0
    assert from_b.status_code == 200, from_b.text
    body = from_b.json()
    assert body["id"] == message_id
    assert body["status"] in ("queued", "retrying")  # still in A's spool, relay down
    assert body["recipients"] == {"rcpt@example.org": {"status": "pending"}}
    assert body["finishedAt"] is None
    assert refused.status_code == 401
    assert "revoked" in refused.text
    assert {n.node_id for n in nodes} == {"node-a", "node-b"}
    with psycopg.connect(postgres_url) as pg:
        writers = pg.execute("SELECT DISTINCT node FROM message_log").fetchall()
        audit_writers = pg.execute("SELECT DISTINCT node FROM audit_log").fetchall()
    assert writers == [("node-a",)]
    assert audit_writers == [("node-b",)]


async def test_a_delivered_message_is_answered_by_the_other_node(
    tmp_path: Path, postgres_url: str
) -> None:
    async with two_nodes(tmp_path, postgres_url) as (a, b):
        _, key = await create_api_key(b.parts.store.api_keys, "made on b")
        async with api_client(a, key) as on_a, api_client(b, key) as on_b:
            sent = await on_a.post(
                "/api/v1/messages",
                json={"from": "app@example.com", "to": "rcpt@example.org", "text": "hi"},
            )
            message_id = sent.json()["id"]
            await wait_until_async(lambda: a.parts.spool.counts().total == 0)
            await a.parts.store.log.wait_until_written()
            from_b = (await on_b.get(f"/api/v1/messages/{message_id}")).json()
    assert from_b["status"] == "delivered", from_b
    assert from_b["recipients"]["rcpt@example.org"]["status"] == "delivered"
    assert from_b["finishedAt"] is not None


async def test_a_node_id_is_generated_once_and_kept_in_the_data_dir(
    tmp_path: Path, postgres_url: str
) -> None:
    config = base_config(tmp_path, database={"url": postgres_url})
    seen = []
    for _ in range(2):
        config["listener"]["ports"] = [free_port()]
        async with running_dispatch(tmp_path, config) as node:
            seen.append(node.parts.store.log.node_id)
    kept = (tmp_path / "data" / "node-id").read_text().strip()
    assert seen == [kept, kept]
    assert kept
