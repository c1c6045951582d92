"""A real ``python -m dispatch`` with a monitoring address: ``/debug/flags`` lists each flag
with its value and default, ``/``, ``/debug`` and ``/debug/`` all answer the index (links that
lead under ``/debug/``), and ``/debug/vars`` has the process's figures."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin

import httpx

from dispatch.cli import CONFIG_SEARCH, _parser, describe_flags
from tests.conftest import Daemon, free_port
from tests.support.config import base_config, dump


def start(start_daemon: Callable[..., Daemon], root: Path, *flags: str) -> tuple[Daemon, str]:
    port = free_port()
    config = base_config(root, monitoring={"address": f"127.0.0.1:{port}"})
    daemon = start_daemon(dump(config), *flags)
    daemon.wait_for("monitoring server on")
    return daemon, f"http://127.0.0.1:{port}"


def test_flags_page_lists_each_flag_with_its_value_and_default(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    _, url = start(start_daemon, tmp_path, "--log-format", "json")
    config_file = str(tmp_path / "dispatch.toml")
    with httpx.Client(base_url=url, timeout=30) as client:
        text = client.get("/debug/flags?format=text")
        html = client.get("/debug/flags")
    assert text.headers["content-type"].startswith("text/plain")
    lines = {line.split("=", 1)[0]: line for line in text.text.splitlines() if "=" in line}
    assert re.fullmatch(
        rf"--config={re.escape(config_file)} +# given {re.escape(config_file)}; "
        rf"default: {re.escape(CONFIG_SEARCH)}",
        lines["--config"],
    )
    assert re.fullmatch(r"--log-format=json +# given json; default: text", lines["--log-format"])
    assert re.fullmatch(r"--log-level=info +# \(not given\); default: info", lines["--log-level"])
    assert text.text.startswith("# command line: ")
    assert "-m dispatch --config" in text.text.splitlines()[0]
    assert html.status_code == 200
    assert "<code>--log-level</code></td><td>info</td><td>(not given)</td><td>info</td>" in (
        html.text
    )


def test_index_answers_at_the_root_and_its_links_lead_under_debug(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    _, url = start(start_daemon, tmp_path)
    with httpx.Client(base_url=url, timeout=30, follow_redirects=False) as client:
        for path in ("/", "/debug", "/debug/"):
            index = client.get(path)
            assert index.status_code == 200, path
            assert "<title>Dispatch debug</title>" in index.text
            links = re.findall(r'<li><a href="([^"]+)">', index.text)
            assert len(links) >= 10
            for link in links:
                if link.startswith(("profile", "memory")):  # slow or switches tracing on
                    continue
                target = urljoin(f"{url}{path}", link.replace("&amp;", "&"))
                assert target.startswith((f"{url}/debug/", f"{url}/metrics")), (path, link)
                assert client.get(target).status_code == 200, (path, target)


def test_vars_have_the_process_figures(tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    daemon, url = start(start_daemon, tmp_path)
    with httpx.Client(base_url=url, timeout=30) as client:
        variables = client.get("/debug/vars").json()
    pid = daemon.process.pid
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert found is not None
    rss_now = int(found.group(1)) * 1024
    fds_now = len(os.listdir(f"/proc/{pid}/fd"))
    process = variables["dispatch/process"]
    assert process["pid"] == pid
    assert rss_now / 2 < process["residentBytes"] < rss_now * 2
    assert process["residentPeakBytes"] >= process["residentBytes"]
    assert process["virtualBytes"] > process["residentBytes"]
    assert 0 < process["openFds"] <= process["maxFds"]
    assert abs(process["openFds"] - fds_now) <= 5  # the page's own connection comes and goes
    assert process["threads"] >= 1
    assert process["pythonThreads"] >= 1
    assert process["cpuUserSeconds"] > 0
    assert variables["dispatch/python"]["version"] == sys.version  # the same interpreter
    assert variables["dispatch/python"]["executable"] == sys.executable
    cmdline = variables["dispatch/cmdline"]
    assert cmdline[1:4] == ["-m", "dispatch", "--config"]
    garbage = variables["dispatch/gc"]
    assert len(garbage["collections"]) == len(garbage["thresholds"]) == 3
    assert garbage["collections"][0] > 0  # a started daemon has collected at least once
    assert garbage["enabled"] is True
    # What start-up built is frozen out of the collector's reach once the daemon is ready
    # (lifecycle.freeze_start_up_objects): tens of thousands of objects.
    assert garbage["frozen"] > 10_000, garbage


def test_describe_flags_from_a_parsed_command_line(tmp_path: Path) -> None:
    args = _parser().parse_args(["run", "--log-level", "debug"])
    flags = {flag.name: flag for flag in describe_flags(args, None)}
    assert set(flags) == {"--config", "--log-format", "--log-level"}
    assert (flags["--config"].given, flags["--config"].effective) == (None, "built-in defaults")
    assert (flags["--log-level"].given, flags["--log-level"].effective) == ("debug", "debug")
    assert flags["--log-level"].default == "info"
    assert flags["--log-format"].effective == "text"
    assert "log line format" in flags["--log-format"].help
