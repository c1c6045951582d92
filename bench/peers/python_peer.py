"""The fair Python peer (:mod:`bench.fsync_smtpd`) as a started server."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bench.install import python_peer
from bench.peers.base import Peer, RelayMode, Server
from bench.procs import Launcher, free_port

REPO = Path(__file__).resolve().parents[2]


def start_python_peer(
    launcher: Launcher, directory: Path, mode: RelayMode, relay_port: int
) -> Server:
    """Start the peer; ``mode`` and ``relay_port`` are ignored (it only spools)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = launcher.start(
        "aiosmtpd-fsync",
        [
            sys.executable,
            "-m",
            "bench.fsync_smtpd",
            "--port",
            str(port),
            "--spool",
            str(directory / "spool"),
        ],
        cwd=directory,
        env=env,
    )
    child.wait_for_log("ready", 30)
    return Server(name="aiosmtpd+fsync", port=port, child=child, session_id=child.pid)


def aiosmtpd_peer() -> Peer:
    return Peer(
        name="aiosmtpd+fsync",
        tool=python_peer(),
        start=start_python_peer,
        relays=False,
        config_note="bench/fsync_smtpd.py: one file per message, fsync of the file and the "
        "directory in asyncio's default thread pool before 250; no onward delivery",
    )
