"""``/debug/queue`` and the relay figures of ``/debug/vars`` after real traffic: the composition
root in-process, an aiosmtpd upstream that refuses one recipient permanently (550) and defers
another (451), a local relay capturing a third; pages fetched over HTTP with httpx."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.delivery.harness import Running, running_dispatch
from tests.monitoring.test_queue_page import columns
from tests.support.config import base_config, smtp_relay
from tests.support.sink import StartSink
from tests.support.waiting import wait_until_async

MESSAGE = b"From: app@example.test\r\nSubject: queue page\r\n\r\nbody\r\n"


def config_for(root: Path, sink_port: int, monitoring_port: int) -> dict[str, object]:
    return base_config(
        root,
        monitoring={"address": f"127.0.0.1:{monitoring_port}"},
        relays=[smtp_relay("upstream", sink_port), {"name": "inbox", "kind": "local"}],
        routes=[{"recipient_domain": "inbox.test", "relay": "inbox"}],
        default_relay="upstream",
        spool={"retry_delays_seconds": [3600]},  # the deferred recipient waits while we look
        bounces={"enabled": False},  # the senders' DSNs would add to the figures counted here
    )


async def traffic(dispatch: Running) -> dict[str, str]:
    """Three messages: mixed outcomes (stays incoming), all refused (failed/), captured."""
    ids = {
        "mixed": await dispatch.submit(
            "app@example.test", ["ok@y.test", "reject@y.test", "later@y.test"], MESSAGE
        ),
        "refused": await dispatch.submit("app@example.test", ["reject-all@y.test"], MESSAGE),
        "captured": await dispatch.submit("app@example.test", ["box@inbox.test"], MESSAGE),
    }

    def settled() -> bool:
        counts = dispatch.parts.spool.counts()
        captured = dispatch.root / "spool" / "captured" / f"{ids['captured']}.json"
        return (counts.retrying, counts.failed, counts.total) == (1, 1, 2) and captured.exists()

    await wait_until_async(settled)
    return ids


async def test_queue_shows_each_recipient_with_its_state_reply_relay_and_route(
    tmp_path: Path, start_sink: StartSink
) -> None:
    sink = start_sink()
    port = free_port()
    async with running_dispatch(tmp_path, config_for(tmp_path, sink.port, port)) as dispatch:
        ids = await traffic(dispatch)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            text = await client.get("/debug/queue?format=text")
            html = await client.get("/debug/queue")
    assert text.headers["content-type"].startswith("text/plain")
    rows = {row["RECIPIENT"]: row for row in columns(text.text)}
    assert set(rows) == {"ok@y.test", "reject@y.test", "later@y.test", "reject-all@y.test"}
    ok, rejected, later = rows["ok@y.test"], rows["reject@y.test"], rows["later@y.test"]
    for row in (ok, rejected, later):
        assert (row["ID"], row["STATE"], row["ATTEMPTS"]) == (ids["mixed"], "incoming", "1")
        assert (row["RELAY"], row["ROUTE"]) == ("upstream", "default")
        assert row["NEXT"].startswith("+")  # the retry, an hour away
    assert ok["RCPT_STATE"] == "delivered"
    assert "250 2.0.0 Ok: queued as Q1" in ok["REPLY"]
    assert rejected["RCPT_STATE"] == "failed"
    assert "550 5.1.1 no such user" in rejected["REPLY"]
    assert later["RCPT_STATE"] == "retrying"
    assert "451 4.3.0 try later" in later["REPLY"]
    refused = rows["reject-all@y.test"]
    assert (refused["ID"], refused["STATE"], refused["RCPT_STATE"]) == (
        ids["refused"],
        "failed",
        "failed",
    )
    assert "2 message(s), all states" in text.text

    assert html.headers["content-type"].startswith("text/html")
    assert f'<td rowspan="3">{ids["mixed"]}</td>' in html.text
    for reply in ("550 5.1.1 no such user", "451 4.3.0 try later", "queued as Q1"):
        assert reply in html.text


async def test_queue_filters_by_state_and_refuses_unknown_ones(
    tmp_path: Path, start_sink: StartSink
) -> None:
    sink = start_sink()
    port = free_port()
    async with running_dispatch(tmp_path, config_for(tmp_path, sink.port, port)) as dispatch:
        ids = await traffic(dispatch)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            pages = {
                state: await client.get(f"/debug/queue?state={state}&format=text")
                for state in ("incoming", "processing", "failed", "captured")
            }
            html_failed = await client.get("/debug/queue?state=failed")
            unknown = await client.get("/debug/queue?state=delivered")
            unknown_text = await client.get("/debug/queue?state=x&format=text")
            bad_limit = await client.get("/debug/queue?limit=0")
    assert {row["ID"] for row in columns(pages["incoming"].text)} == {ids["mixed"]}
    assert columns(pages["processing"].text) == []
    assert {row["ID"] for row in columns(pages["failed"].text)} == {ids["refused"]}
    (captured,) = columns(pages["captured"].text)
    assert (captured["ID"], captured["STATE"], captured["RCPT_STATE"]) == (
        ids["captured"],
        "captured",
        "captured",
    )
    assert captured["RECIPIENT"] == "box@inbox.test"
    assert "captured as" in captured["REPLY"]
    assert ids["refused"] in html_failed.text
    assert ids["mixed"] not in html_failed.text
    assert unknown.status_code == 400
    assert "state must be one of incoming, processing, failed, captured" in unknown.text
    assert unknown_text.status_code == 400
    assert unknown_text.headers["content-type"].startswith("text/plain")
    assert bad_limit.status_code == 400
    assert "limit must be a number of messages from 1 to" in bad_limit.text


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name}{labels}")


async def test_relay_figures_in_vars_and_metrics_come_from_one_source(
    tmp_path: Path, start_sink: StartSink
) -> None:
    sink = start_sink()
    port = free_port()
    async with running_dispatch(tmp_path, config_for(tmp_path, sink.port, port)) as dispatch:
        await traffic(dispatch)
        await dispatch.parts.store.log.wait_until_written()
        assert await dispatch.parts.figures.refresh(dispatch.parts.store.queries)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            variables = (await client.get("/debug/vars")).json()
            metrics = (await client.get("/metrics")).text
    outcomes = {"delivered": "delivered", "failed": "permanent", "deferred": "transient"}
    expected = {"delivered": 1, "failed": 2, "deferred": 1}  # recipients handed to upstream
    for var, outcome in outcomes.items():
        shown = variables[f"dispatch/relays/{var}"]["upstream"]
        counted = metric(
            metrics, "dispatch_relay_deliveries_total", relay="upstream", outcome=outcome
        )
        assert shown == counted == expected[var], var
    assert variables["dispatch/relays/delivered"]["inbox"] == 1
    for var, gauge in (
        ("deliveredToday", "dispatch_relay_delivered_today"),
        ("failedToday", "dispatch_relay_failed_today"),
    ):
        for relay in ("upstream", "inbox"):
            assert variables[f"dispatch/relays/{var}"][relay] == metric(metrics, gauge, relay=relay)
    assert variables["dispatch/relays/failedToday"]["upstream"] > 0
