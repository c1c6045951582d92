"""What every peer has in common: relay modes, the running server, the peer's description."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.install import Tool
from bench.procs import Child, Launcher

SERVER_NAME = "bench.example.test"
"""Name every server announces; set explicitly so that no peer asks DNS for its own name."""


class RelayMode(enum.Enum):
    """What a server does with the mail it accepted while it is being measured."""

    HELD = "held"
    """Accept only: onward delivery is held (Dispatch: relay limited to 1/min; Postfix:
    ``default_destination_rate_delay = 60s``, and ``in_flow_delay = 0`` so that its inflow
    control does not pace intake against the hold; OpenSMTPD: ``smtpctl pause mta``), so an
    intake figure measures intake and nothing else."""

    SINK = "sink"
    """Relay everything to the ``smtp-sink`` listening on the relay port."""

    DOWN = "down"
    """Relay to a closed port: every delivery attempt fails and is retried later."""


@dataclass
class Server:
    """A started server: its SMTP port and the processes to account CPU time to."""

    name: str
    port: int
    child: Child
    session_id: int
    main_pid: int | None = None  # the process whose threads are split (Dispatch)
    startup_seconds: float = 0.0
    backlog: int | None = None  # listen queue length, from ss
    delivery_evidence: Callable[[], str] | None = None  # what its log says about relaying
    extra: dict[str, object] = field(default_factory=dict)


StartFn = Callable[[Launcher, Path, RelayMode, int], Server]


@dataclass
class Peer:
    """A server we compare Dispatch with (or Dispatch itself)."""

    name: str
    tool: Tool
    start: StartFn
    relays: bool = True  # False: it only spools (the aiosmtpd peer), no end-to-end figure
    config_note: str = ""
