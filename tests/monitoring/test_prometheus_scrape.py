"""A real Prometheus (Debian's 2.42) scrapes a real daemon and evaluates the shipped dashboard
and alert rules against it.

The daemon routes mail to a relay whose port has nothing listening and to the local relay;
Prometheus scrapes the monitoring server every second with ``contrib/prometheus/alerts.yml``
loaded. Every dashboard expression must evaluate (Grafana's variables replaced as Grafana
would), the per-relay failure ratio must say the down relay fails and the local one does
not, and the rules must load and evaluate without error. Both processes are stopped by PID.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import smtplib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Daemon, free_port
from tests.monitoring.test_alert_rules import ALERTS as ALERT_NAMES
from tests.monitoring.test_served_families import ALERTS, dashboard_expressions
from tests.support.config import base_config, dump, smtp_relay
from tests.support.waiting import wait_until

MESSAGE = b"From: a@example.test\r\nSubject: scraped\r\n\r\nbody\r\n"
FAILURE_RATIO = (
    'sum by (relay) (rate(dispatch_relay_deliveries_total{outcome!="delivered"}[1m]))'
    " / sum by (relay) (rate(dispatch_relay_deliveries_total[1m]))"
)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Start Prometheus scraping ``target`` (given to the returned function); its URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: apt-get install prometheus (.ci/run does)"
    started: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(ALERTS)],
                    "scrape_configs": [
                        {"job_name": "dispatch", "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )
        with (tmp_path / "prometheus.log").open("wb") as log:
            started.append(
                subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=tmp_path,
                )
            )
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(url), within=30, what="Prometheus ready")
        return url

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def query(url: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def by_relay(url: str, expr: str) -> dict[str, float]:
    return {row["metric"]["relay"]: float(row["value"][1]) for row in query(url, expr)}


def test_prometheus_evaluates_the_dashboard_and_the_rules(
    tmp_path: Path, prometheus: Callable[[str], str]
) -> None:
    monitoring = f"127.0.0.1:{free_port()}"
    config = base_config(
        tmp_path,
        relays=[{"name": "inbox", "kind": "local"}, smtp_relay("down", free_port())],
        default_relay="inbox",
        routes=[{"recipient_domain": "down.test", "relay": "down"}],
        spool={"retry_delays_seconds": [1]},
        monitoring={"address": monitoring},
    )
    (tmp_path / "dispatch.toml").write_text(dump(config))
    environment = {k: v for k, v in os.environ.items() if k != "DISPATCH_CONFIG"}
    daemon = Daemon(["--config", str(tmp_path / "dispatch.toml")], tmp_path, environment)
    try:
        daemon.wait_for("all components ready")
        url = prometheus(monitoring)
        # The counters' zeros must be in Prometheus before the mail moves them: rate() sees
        # no increase in a series whose first sample already counts the mail.
        wait_until(
            lambda: [row["value"][1] for row in query(url, 'up{job="dispatch"}')] == ["1"],
            within=30,
            what="a first scrape of the daemon",
        )
        with smtplib.SMTP("127.0.0.1", config["listener"]["ports"][0], timeout=10) as client:
            for n in range(3):
                client.sendmail("a@example.test", [f"r{n}@down.test", f"r{n}@ok.test"], MESSAGE)
        # 0/0 (NaN) until a relay's first attempt is in the last minute of samples.
        wait_until(
            lambda: all(
                by_relay(url, FAILURE_RATIO).get(name, math.nan) >= 0 for name in ("down", "inbox")
            ),
            within=60,
            what="a failure ratio for both relays in Prometheus",
        )
        ratio = by_relay(url, FAILURE_RATIO)
        assert ratio["down"] == 1.0
        assert ratio["inbox"] == 0.0

        for expr in dashboard_expressions():
            if expr.startswith("label_values("):
                continue  # Grafana's own query language, not PromQL
            query(url, expr.replace("$__rate_interval", "1m").replace("$instance", ".*"))
        rss = query(url, 'process_resident_memory_bytes{job="dispatch"}')
        assert float(rss[0]["value"][1]) > 10_000_000

        rules = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        evaluated = {rule["name"]: rule for group in rules for rule in group["rules"]}
        assert set(evaluated) == ALERT_NAMES
        assert all(rule["health"] == "ok" for rule in evaluated.values()), evaluated
    finally:
        daemon.kill()
