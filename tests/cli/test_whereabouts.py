"""CLI commands run away from the daemon say which state they act on (issue 13, item 4)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.support.config import base_config, dump

pytestmark = pytest.mark.slow

NOTICE = "dispatch: no daemon runs with "


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DISPATCH_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "dispatch", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_commands_elsewhere_name_what_they_use_and_find_the_daemon_with_its_config(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = start_daemon(dump(base_config(tmp_path)))
    daemon.wait_for("all components ready")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    beside = cli(tmp_path, "spool", "list")  # ./dispatch.toml: the daemon's configuration
    assert beside.returncode == 0, beside.stderr
    assert NOTICE not in beside.stderr

    lost = cli(elsewhere, "spool", "list")
    assert lost.returncode == 0, lost.stderr
    assert f"{NOTICE}the built-in defaults" in lost.stderr, lost.stderr
    assert f"the spool {elsewhere / '.dispatch-spool'} " in lost.stderr, lost.stderr
    assert f"the database {elsewhere / '.dispatch' / 'dispatch.db'} " in lost.stderr
    assert "--config" in lost.stderr

    key = cli(elsewhere, "api-key", "create", "--name", "lost")
    assert key.returncode == 0, key.stderr
    assert f"{NOTICE}the built-in defaults" in key.stderr, key.stderr

    found = cli(elsewhere, "--config", str(tmp_path / "dispatch.toml"), "spool", "list")
    assert found.returncode == 0, found.stderr
    assert NOTICE not in found.stderr, found.stderr

    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    stopped = cli(tmp_path, "spool", "list")
    assert f"{NOTICE}configuration {tmp_path / 'dispatch.toml'} " in stopped.stderr
    assert "bad request" not in daemon.log  # the probe of the socket is not a request
