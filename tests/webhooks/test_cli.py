"""``dispatch webhooks recent`` without a daemon: exit 1, saying where it looked and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.cli import main
from tests.support.config import base_config, write_config


def test_without_a_daemon_it_says_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "dispatch.toml"
    write_config(config, base_config(tmp_path))
    assert main(["webhooks", "recent", "--config", str(config)]) == 1
    error = capsys.readouterr().err
    assert f"no daemon answers on {tmp_path / 'data' / 'control.sock'}" in error
    assert "start it, or give the command its --config" in error
    assert str(tmp_path / "data" / "webhooks" / "outbox.jsonl") in error
