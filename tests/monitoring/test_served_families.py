"""What a running daemon's ``/metrics`` serves, against what the repository says it serves:
the tables of docs/operations.md (both ways), the Grafana dashboard and the alert rules in
``contrib/`` (every series they read is served), and the two endpoints (the same families).

One real ``python -m dispatch`` with the monitoring server on is scraped on both its
dashboard port (HTTPS, its self-signed certificate) and its monitoring address.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Daemon, free_port
from tests.monitoring.promql import documented_form, series_names, unknown_series
from tests.support.config import Ports, base_config, dump
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "operations.md"
DASHBOARD = ROOT / "contrib" / "grafana" / "dispatch.json"
ALERTS = ROOT / "contrib" / "prometheus" / "alerts.yml"
PROMETHEUS_SERIES = {"up"}  # made by Prometheus for each target, not scraped
READ_LATER = (
    "\ndispatch_spool_disk_free_bytes ",
    "\ndispatch_tls_certificate_expiry_timestamp_seconds{",
)

_ROW = re.compile(r"^\| `([a-z_:][a-z0-9_:]*)` \| (gauge|counter|histogram) \|", re.MULTILINE)


@attrs.frozen
class Served:
    """Both scrapes of one daemon, as ``{family: type}`` and the raw text."""

    dashboard: dict[str, str]
    monitoring: dict[str, str]
    text: str


def families(text: str) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def documented() -> dict[str, str]:
    """``{name: type}`` of every row of the tables in the ``/metrics`` section."""
    text = DOCS.read_text()
    start = text.index("## `/metrics`")
    end = text.index("\n## ", start + 1)
    return dict(_ROW.findall(text[start:end]))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("served")
    ports, monitoring = Ports.pick(), f"127.0.0.1:{free_port()}"
    config = root / "dispatch.toml"
    config.write_text(dump(base_config(root, ports, monitoring={"address": monitoring})))
    environment = {k: v for k, v in os.environ.items() if k != "DISPATCH_CONFIG"}
    daemon = Daemon(["--config", str(config)], root, environment)
    try:
        daemon.wait_for("all components ready")
        context = ssl.create_default_context(cafile=root / "data" / "tls" / "selfsigned-cert.pem")
        with httpx.Client(verify=context, timeout=10) as client:
            url = f"https://127.0.0.1:{ports.webui}/metrics"
            # The disk and certificate figures are read by a task once the daemon runs (the
            # self-signed certificate once the first listener has made it).
            wait_until(lambda: all(line in client.get(url).text for line in READ_LATER), within=30)
            text = client.get(url).text
        local = httpx.get(f"http://{monitoring}/metrics", timeout=10).text
        yield Served(families(text), families(local), text)
    finally:
        daemon.kill()


def test_every_served_family_is_documented_and_every_documented_one_served(
    served: Served,
) -> None:
    docs = documented()
    served_names = documented_form(served.dashboard)
    assert not served_names - docs.keys(), "served but not in docs/operations.md"
    assert not docs.keys() - served_names, "in docs/operations.md but not served"


def test_documented_types_are_the_served_types(served: Served) -> None:
    docs = documented()
    for name, kind in served.dashboard.items():
        key = f"{name}_total" if kind == "counter" else name
        assert docs[key] == kind, key


def test_both_endpoints_serve_the_same_families(served: Served) -> None:
    assert served.monitoring == served.dashboard


def test_process_figures_are_served_by_the_daemon(served: Served) -> None:
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds"):
        assert name in served.dashboard
    rss = re.search(r"^process_resident_memory_bytes (\S+)$", served.text, re.MULTILINE)
    assert rss is not None
    assert float(rss.group(1)) > 10_000_000  # a Python process with Trio and Quart loaded
    certificate = re.search(
        r'^dispatch_tls_certificate_expiry_timestamp_seconds\{certificate="([^"]+)"\}',
        served.text,
        re.MULTILINE,
    )
    assert certificate is not None
    assert certificate.group(1).endswith("selfsigned-cert.pem")


def dashboard_expressions() -> list[str]:
    """Every PromQL text in the dashboard: panel targets and template queries."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text()))
    return found


def rule_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_the_dashboard_reads_only_served_series(served: Served) -> None:
    exprs = dashboard_expressions()
    assert len(exprs) > 30
    assert unknown_series(exprs, served.dashboard) == {}


def test_the_alert_rules_read_only_served_series(served: Served) -> None:
    exprs = rule_expressions()
    allowed = {**served.dashboard, **dict.fromkeys(PROMETHEUS_SERIES, "gauge")}
    assert unknown_series(exprs, allowed) == {}


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each expression as a recording rule (Grafana's variables replaced
    by what Grafana would put there)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (.ci/run does)"
    exprs = [
        e.replace("$__rate_interval", "1m")
        for e in dashboard_expressions()
        if "label_values" not in e
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel_{n}", "expr": e} for n, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (relay) (rate(a_total{relay!="x",le="1"}[5m]))', {"a_total"}),
        ("histogram_quantile(0.95, sum by (le) (rate(b_bucket[$__rate_interval])))", {"b_bucket"}),
        ("c - time() < 14 * 86400", {"c"}),
        ('d == 0 and on (instance) e{job="dispatch"} offset 5m', {"d", "e"}),
        ("label_values(dispatch_up, instance)", {"dispatch_up"}),
        ("1e9 > f", {"f"}),
    ],
)
def test_series_names_finds_only_metric_names(expr: str, names: set[str]) -> None:
    assert series_names(expr) == names


def test_a_series_that_is_not_served_is_reported() -> None:
    served = {"dispatch_up": "gauge", "dispatch_relay_deliveries": "counter"}
    exprs = ["dispatch_up", "rate(dispatch_relay_deliveries_total[5m])", "dispatch_nonesuch"]
    assert unknown_series(exprs, served) == {"dispatch_nonesuch": {"dispatch_nonesuch"}}
