"""The daemon as an operator runs it: a real subprocess, real signals, real files."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.support.config import base_config, dump

pytestmark = pytest.mark.slow

Start = Callable[..., Daemon]


def test_starts_ready_and_stops_cleanly_on_sigterm(start_daemon: Start, tmp_path: Path) -> None:
    daemon = start_daemon(dump(base_config(tmp_path)))
    daemon.wait_for("all components ready")
    assert (tmp_path / "spool" / "incoming").is_dir()
    began = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert time.monotonic() - began < 10
    assert "stopped" in daemon.log


def test_sigint_stops_too(start_daemon: Start, tmp_path: Path) -> None:
    daemon = start_daemon(dump(base_config(tmp_path)))
    daemon.wait_for("all components ready")
    daemon.signal(signal.SIGINT)
    assert daemon.wait_exit() == 0


def test_sighup_applies_live_keys_and_names_the_others(start_daemon: Start, tmp_path: Path) -> None:
    daemon = start_daemon(dump(base_config(tmp_path)))
    daemon.wait_for("all components ready")
    config = tmp_path / "dispatch.toml"
    # A live key changes, and the SMTP port too (new free ports), which is not live.
    config.write_text(dump(base_config(tmp_path, listener={"max_connections": 7})))
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("configuration reloaded")
    assert "listener.ports changed but needs a restart" in daemon.log
    config.write_text("[listener]\nports = [0]\n")
    daemon.signal(signal.SIGHUP)
    line = daemon.wait_for("reload rejected")
    assert "listener.ports[0]: 0 is not a port" in line
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_invalid_config_exits_2_listing_every_problem(start_daemon: Start) -> None:
    daemon = start_daemon("[listener]\nports = [70000]\n[spool]\nworker_count = -1\n")
    assert daemon.wait_exit() == 2
    assert "listener.ports[0]: 70000 is not a port (1-65535)" in daemon.log
    assert "spool.worker_count: -1 is too small" in daemon.log


def test_component_that_cannot_start_exits_1_with_one_line(
    start_daemon: Start, tmp_path: Path
) -> None:
    (tmp_path / "spool").write_text("a file where the spool directory should be")
    daemon = start_daemon(dump(base_config(tmp_path)))
    assert daemon.wait_exit() == 1
    reasons = [line for line in daemon.lines if line.startswith("dispatch: cannot start")]
    assert len(reasons) == 1, daemon.log
    assert reasons[0].startswith("dispatch: cannot start spool:")
    assert "Traceback" not in daemon.log


def test_the_first_line_names_the_configuration_file(start_daemon: Start, tmp_path: Path) -> None:
    daemon = start_daemon(dump(base_config(tmp_path)))
    daemon.wait_for("all components ready")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert "starting with configuration file " in daemon.lines[0], daemon.lines[0]
    assert daemon.lines[0].rstrip().endswith(".toml"), daemon.lines[0]
    assert not [line for line in daemon.lines if "Running on" in line], daemon.log
    assert len([line for line in daemon.lines if "HTTP API on" in line]) == 1, daemon.log


def test_json_log_lines_carry_the_component(start_daemon: Start, tmp_path: Path) -> None:
    daemon = start_daemon(dump(base_config(tmp_path)), "--log-format", "json")
    daemon.wait_for("all components ready")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    entries = [json.loads(line) for line in daemon.lines]
    ready = next(e for e in entries if e["message"].startswith("all components ready"))
    assert ready["component"] == "dispatch"
    assert ready["level"] == "info"
    assert any(e.get("component") == "spool" for e in entries)


def test_version(start_daemon: Start) -> None:
    daemon = start_daemon(None, "--version")
    assert daemon.wait_exit() == 0
    assert daemon.lines[0].startswith("dispatch ")


def test_start_and_stop_are_in_the_audit_log(start_daemon: Start, tmp_path: Path) -> None:
    daemon = start_daemon(dump(base_config(tmp_path)))
    daemon.wait_for("all components ready")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    with closing(sqlite3.connect(tmp_path / "data" / "dispatch.db")) as db:
        rows = db.execute(
            "SELECT category, level, message FROM audit_log WHERE category = 'System' ORDER BY at"
        ).fetchall()
    assert [(category, level) for category, level, _ in rows] == [("System", "Notice")] * 2
    assert " started (pid " in rows[0][2], rows
    assert "with configuration file " in rows[0][2], rows
    assert " stopping (pid " in rows[1][2], rows
