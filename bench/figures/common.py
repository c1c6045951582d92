"""What the figures share: the run context, starting a set of peers, interleaved rounds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.flame import record_during
from bench.peers.base import Peer, RelayMode, Server
from bench.peers.dispatch_daemon import DispatchServer
from bench.plan import Plan
from bench.procs import Launcher, StartError, listen_backlog
from bench.procstat import CpuWindow
from bench.profile import ProfileSummary, profile_dispatch
from bench.results import Figure, NotMeasured

SETTLE_SECONDS = 0.5
"""Pause between runs: lets a server finish writing what the last run left (logs, queue)."""


@dataclass
class Context:
    plan: Plan
    launcher: Launcher
    work: Path
    peers: list[Peer]
    say: Callable[[str], None]
    fsync_ms: float = 0.0  # median cost of one 5 KiB write + fsync here (machine probe)
    counter: int = 0
    flames: Path | None = None  # where flame graphs go (beside the report); None: none made

    def directory(self, label: str) -> Path:
        """A fresh directory under the run's work directory."""
        self.counter += 1
        path = self.work / f"{self.counter:02d}-{label}"
        path.mkdir(parents=True)
        return path


@contextmanager
def started(
    ctx: Context,
    peers: Sequence[Peer],
    mode: RelayMode,
    relay_port: Callable[[Peer], int],
    label: str,
) -> Iterator[tuple[list[Server], list[NotMeasured]]]:
    """Start ``peers`` in ``mode``; yield those that came up and why the others did not.

    Every server started here is stopped when the block ends (and by the launcher if the
    block never ends normally).
    """
    servers: list[Server] = []
    missing: list[NotMeasured] = []
    for peer in peers:
        if not peer.tool.available:
            missing.append(NotMeasured(peer.name, peer.tool.reason))
            continue
        try:
            directory = ctx.directory(f"{label}-{peer.name.lower().replace('+', '-')}")
            server = peer.start(ctx.launcher, directory, mode, relay_port(peer))
            server.backlog = listen_backlog(server.port)
            servers.append(server)
        except (StartError, OSError) as exc:
            missing.append(NotMeasured(peer.name, f"could not start: {exc}"))
            ctx.say(f"  {peer.name} did not start: {exc}")
    try:
        yield servers, missing
    finally:
        ctx.launcher.stop(*(server.child for server in servers))


def rotated[T](items: Sequence[T], round_number: int) -> list[T]:
    """``items`` starting at position ``round_number``: each round changes who goes first."""
    if not items:
        return []
    shift = round_number % len(items)
    return [*items[shift:], *items[:shift]]


def settle() -> None:
    time.sleep(SETTLE_SECONDS)


def cpu_window(server: Server) -> CpuWindow:
    return CpuWindow(session_id=server.session_id, main_pid=server.main_pid)


def flame_graph(
    ctx: Context, figure: Figure, dispatch: DispatchServer, load: Callable[[], None]
) -> None:
    """Record a py-spy flame graph of every Dispatch process while ``load`` runs (an extra,
    uncounted run that must last longer than the plan's profile seconds)."""
    if ctx.flames is None:
        return
    name = f"{figure.key}.svg"
    ctx.say(f"  flame graph of Dispatch for {ctx.plan.profile_seconds:.0f} s: {name}")
    error = record_during(dispatch.main_pid or 0, ctx.plan.profile_seconds, ctx.flames / name, load)
    if error:
        figure.notes.append(f"No flame graph: {error}.")
    else:
        figure.flame = f"{ctx.flames.name}/{name}"


def profile_during(
    dispatch: DispatchServer, seconds: float, load: Callable[[], None]
) -> tuple[ProfileSummary, CpuWindow]:
    """Run ``load`` in a thread and profile Dispatch (and count its CPU) while it runs.

    The profile starts a moment after the load so that it sees the steady state; the load
    must last longer than ``seconds``.
    """
    thread = threading.Thread(target=load, name="load while profiling", daemon=True)
    window = cpu_window(dispatch)
    thread.start()
    try:
        time.sleep(0.5)
        window.start()
        summary = profile_dispatch(dispatch.monitoring_port, seconds)
        window.stop()
    finally:
        thread.join()
    return summary, window
