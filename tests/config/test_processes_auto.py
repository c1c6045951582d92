"""``listener.processes``: ``"auto"`` (the default) is one process per usable core, at most 8."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dispatch.config import ConfigError, load_settings
from dispatch.config.loader import parse_settings
from dispatch.config.types import MAX_AUTO_PROCESSES, auto_processes

RELAY = '[[relays]]\nname = "out"\nkind = "smtp"\nhost = "127.0.0.1"\n'


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def test_the_default_is_one_process_per_usable_core() -> None:
    expected = min(usable_cores(), MAX_AUTO_PROCESSES)
    assert auto_processes() == expected
    assert load_settings(None).listener.processes == expected
    auto = parse_settings({"listener": {"processes": "auto"}}, "test").listener.processes
    assert auto == expected


def test_auto_follows_the_cpu_affinity() -> None:
    """A container or ``taskset`` limited to one core gets one process, not the host's count."""
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert auto_processes() == 1
    finally:
        os.sched_setaffinity(0, before)
    assert auto_processes() == min(len(before), MAX_AUTO_PROCESSES)


def test_a_number_is_kept() -> None:
    for number in (1, 3, 12):
        settings = parse_settings({"listener": {"processes": number}}, "test")
        assert settings.listener.processes == number


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "listener.processes: 0 is too small; use 1 or more"),
        (-2, "listener.processes: -2 is too small; use 1 or more"),
        ("all", 'listener.processes: expected a number of processes or "auto", got string'),
        ("Auto", 'listener.processes: expected a number of processes or "auto", got string'),
        (1.5, 'listener.processes: expected a number of processes or "auto", got number 1.5'),
        (True, 'listener.processes: expected a number of processes or "auto", got boolean'),
    ],
)
def test_anything_else_is_refused_naming_the_key(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"listener": {"processes": value}}, "test")
    assert message in str(caught.value)


def test_check_config_prints_the_number_auto_gives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dispatch.cli import main

    config = tmp_path / "dispatch.toml"
    config.write_text('[listener]\nprocesses = "auto"\n' + RELAY)
    assert main(["check-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"processes = {min(usable_cores(), MAX_AUTO_PROCESSES)}\n" in out
    assert '"auto"' not in out
