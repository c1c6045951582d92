"""``contrib/prometheus/alerts.yml`` is valid for Prometheus and does what
``alerts.test.yml`` says (promtool, from Debian's prometheus package; .ci/run installs it).
That the rules read only series Dispatch serves is in ``test_served_families.py``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

RULES = Path(__file__).resolve().parents[2] / "contrib" / "prometheus"
ALERTS = {
    "DispatchDown",
    "DispatchRelayFailing",
    "DispatchRelaySuspended",
    "DispatchQueueGrowing",
    "DispatchOldestDueMessageWaiting",
    "DispatchDiskLow",
    "DispatchDiskCritical",
    "DispatchDatabaseUnreachable",
    "DispatchTlsCertificateExpiresSoon",
    "DispatchRetentionFailing",
    "DispatchDkimSignErrors",
    "DispatchWebhookBacklog",
    "DispatchWebhookGivenUp",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    assert path, "promtool is missing: apt-get install prometheus (.ci/run does)"
    return subprocess.run(
        [path, *args], capture_output=True, text=True, check=False, timeout=60, cwd=RULES
    )


def test_promtool_checks_the_rules() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_firing_case_and_texts() -> None:
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())["groups"]
    named = {rule["alert"]: rule for group in rules for rule in group["rules"]}
    assert set(named) == ALERTS
    for name, rule in named.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name
    tests = yaml.safe_load((RULES / "alerts.test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert fired == ALERTS


def test_a_broken_expectation_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: the same file with one threshold changed does."""
    (tmp_path / "alerts.yml").write_text(
        (RULES / "alerts.yml").read_text().replace("> 900", "> 5000")
    )
    (tmp_path / "alerts.test.yml").write_text((RULES / "alerts.test.yml").read_text())
    path = shutil.which("promtool")
    assert path
    tested = subprocess.run(
        [path, "test", "rules", "alerts.test.yml"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=tmp_path,
    )
    assert tested.returncode == 1
    assert "DispatchOldestDueMessageWaiting" in tested.stdout + tested.stderr
