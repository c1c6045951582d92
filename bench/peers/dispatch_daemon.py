"""Dispatch itself: ``python -m dispatch --config FILE`` with every port on loopback.

The configuration is written fresh for each start (all ports free loopback ports, data,
spool and SQLite database under the given directory, the monitoring server on for
``/debug/profile``). Start-up is timed from process start to the supervisor's
``all components ready`` log line.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.install import Tool
from bench.peers.base import SERVER_NAME, Peer, RelayMode, Server
from bench.procs import LOOPBACK, Launcher, free_port

READY_LINE = "all components ready"
PROCESSES = 2
"""``listener.processes`` of the Dispatch measured: one per core of the benchmark machine."""
STARTUP_TIMEOUT = 300.0  # a 100,000-message spool is read before "ready"

HEALTH_TIMEOUT_SECONDS = 2.0
"""``health.timeout_seconds``: the deadline every /health answer must beat (the default)."""


@dataclass
class DispatchOptions:
    """The knobs a figure may turn; everything else is Dispatch's default."""

    max_connections: int = 200
    max_connections_per_ip: int = 50  # Dispatch's default; every benchmark client is 127.0.0.1
    processes: int = 1  # listener.processes
    connection_timeout_seconds: int = 60
    spool_dir: Path | None = None  # None: <directory>/spool
    database_url: str | None = None  # None: a SQLite file in <directory>/data


@dataclass
class DispatchServer(Server):
    """A running Dispatch and the addresses of its HTTP sides."""

    monitoring_port: int = 0
    webui_port: int = 0
    database: Path = Path()
    spool_dir: Path = Path()


def _relay_table(mode: RelayMode, relay_port: int) -> str:
    limit = "rate_limit_per_minute = 1\n" if mode is RelayMode.HELD else ""
    return (
        "[[relays]]\n"
        'name = "out"\n'
        'kind = "smtp"\n'
        f'host = "{LOOPBACK}"\n'
        f"port = {relay_port}\n"
        'tls = "none"\n'
        f"{limit}"
    )


def write_config(
    directory: Path, mode: RelayMode, relay_port: int, options: DispatchOptions
) -> tuple[Path, dict[str, int], Path, Path]:
    """Write ``dispatch.toml``; return its path, the ports, the database and the spool."""
    ports = {name: free_port() for name in ("smtp", "webui", "api", "monitoring")}
    data = directory / "data"
    spool = options.spool_dir or directory / "spool"
    database = data / "dispatch.db"
    text = f"""\
data_dir = "{data}"
default_relay = "out"

[listener]
ports = [{ports["smtp"]}]
bind_address = "{LOOPBACK}"
server_name = "{SERVER_NAME}"
max_connections = {options.max_connections}
max_connections_per_ip = {options.max_connections_per_ip}
processes = {options.processes}
connection_timeout_seconds = {options.connection_timeout_seconds}

[spool]
directory = "{spool}"

[database]
url = "{options.database_url or f"sqlite:///{database}"}"

[webui]
port = {ports["webui"]}
bind_address = "{LOOPBACK}"

[api]
port = {ports["api"]}
bind_address = "{LOOPBACK}"

[health]
timeout_seconds = {HEALTH_TIMEOUT_SECONDS}

[monitoring]
address = "{LOOPBACK}:{ports["monitoring"]}"

{_relay_table(mode, relay_port)}"""
    path = directory / "dispatch.toml"
    path.write_text(text)
    return path, ports, database, spool


def start_dispatch(
    launcher: Launcher,
    directory: Path,
    mode: RelayMode,
    relay_port: int,
    options: DispatchOptions | None = None,
    *,
    name: str = "dispatch",
) -> DispatchServer:
    """Start Dispatch and wait until it is ready (raises ``StartError`` if it is not)."""
    directory.mkdir(parents=True, exist_ok=True)
    config, ports, database, spool = write_config(
        directory, mode, relay_port, options or DispatchOptions()
    )
    child = launcher.start(
        name,
        [sys.executable, "-m", "dispatch", "--config", str(config)],
        cwd=directory,
        env=dict(os.environ),
    )
    ready = child.wait_for_log(READY_LINE, STARTUP_TIMEOUT)
    return DispatchServer(
        name="Dispatch",
        port=ports["smtp"],
        child=child,
        session_id=child.pid,
        main_pid=child.pid,
        startup_seconds=ready - child.started_at,
        monitoring_port=ports["monitoring"],
        webui_port=ports["webui"],
        database=database,
        spool_dir=spool,
    )


def dispatch_peer(processes: int = PROCESSES, name: str = "Dispatch") -> Peer:
    """Dispatch with ``listener.processes`` = ``processes``, otherwise on its defaults."""
    import attrs

    from dispatch import __version__
    from dispatch.config.settings import RelayCommon, SpoolSettings
    from dispatch.smtp import server as smtp_core

    # setup.py compiles the SMTP core where a C compiler is at hand: say which one ran.
    core = "compiled" if str(smtp_core.__file__).endswith(".so") else "as Python"

    def start(launcher: Launcher, directory: Path, mode: RelayMode, relay_port: int) -> Server:
        options = DispatchOptions(processes=processes)
        server = start_dispatch(launcher, directory, mode, relay_port, options)
        server.name = name
        return server

    return Peer(
        name=name,
        tool=Tool(
            "Dispatch",
            version=f"{__version__} (Python {sys.version.split()[0]}, SMTP core {core})",
        ),
        start=start,
        config_note=f"listener.processes = {processes}, otherwise defaults "
        f"({SpoolSettings().worker_count} delivery workers, relay max_inflight "
        f"{attrs.fields(RelayCommon).max_inflight.default}), SQLite message log, "
        "INFO logging to a file",
    )
