"""One benchmark run: get the peers, run every figure, write the report, stop everything.

Theory of operation: a run owns one work directory (servers' data, spools, logs) and one
:class:`~bench.procs.Launcher`. Figures run one after another; each starts the servers it
needs and stops them when it is done, and the launcher stops whatever is left if a figure
fails or the run is interrupted. A figure that fails is reported as not measured, with the
error, and the run goes on; an interrupted run writes no report (a half report would replace
a whole one). The work directory is removed at the end unless the run failed or
``keep`` was asked for.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench import report
from bench.cpu_split import add_cpu_split
from bench.figures import database, end_to_end, health, idle, intake, latency, scale, shapes
from bench.figures.common import Context, started
from bench.idle import raise_fd_limit
from bench.install import ensure_opensmtpd, ensure_postfix
from bench.machine import describe
from bench.peers.base import Peer, RelayMode
from bench.peers.dispatch_daemon import dispatch_peer
from bench.peers.opensmtpd import opensmtpd_peer
from bench.peers.postfix import postfix_peer
from bench.peers.python_peer import aiosmtpd_peer
from bench.plan import Plan
from bench.procs import Launcher, free_port, interrupt_on_sigterm, run_quiet
from bench.results import DISPATCH_ONE_PROCESS, Figure, NotMeasured

FIGURES = ("intake", "latency", "e2e", "health", "idle", "scale", "database", "shapes")
REPO = Path(__file__).resolve().parents[1]


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


def commit() -> str:
    head = run_quiet(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).stdout.strip()
    dirty = run_quiet(["git", "-C", str(REPO), "status", "--porcelain", "--", "dispatch"])
    changed = " (with uncommitted changes in dispatch/)" if dirty.stdout.strip() else ""
    return f"`{head or 'unknown'}`{changed}"


def _failed(key: str, exc: BaseException) -> Figure:
    figure = Figure(key, f"{key} (failed)", "The figure failed; see the run's output.")
    figure.not_measured.append(NotMeasured("Dispatch", f"{type(exc).__name__}: {exc}"))
    return figure


def _guarded(key: str, work: Callable[[], list[Figure]]) -> list[Figure]:
    try:
        return work()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001  # one broken figure must not lose the others
        say(f"figure {key} failed: {exc}")
        traceback.print_exc()
        return [_failed(key, exc)]


def _one(step: Callable[[Context], Figure], ctx: Context) -> list[Figure]:
    return [step(ctx)]


def held_figures(ctx: Context, wanted: set[str]) -> list[Figure]:
    """Intake and latency share one set of servers with onward delivery held."""
    closed_port = free_port()  # held relays point here; nothing ever listens on it
    with started(ctx, ctx.peers, RelayMode.HELD, lambda _: closed_port, "held") as (
        servers,
        missing,
    ):
        figures = []
        if "intake" in wanted:
            say("figure: durable intake")
            figures.append(intake.measure(ctx, servers, missing))
        if "latency" in wanted:
            say("figure: intake latency")
            figures.append(latency.measure(ctx, servers, missing))
    return figures


def run(plan: Plan, out: Path, *, only: set[str], keep: bool, command: str) -> int:
    began, wall = time.time(), time.monotonic()
    limit = raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="dispatch-bench-"))
    work.chmod(0o755)  # Postfix's unprivileged processes walk into their directories
    (work / "logs").mkdir()
    say(f"{plan.name} run in {work} (open-file limit {limit})")
    ok = False
    try:
        with interrupt_on_sigterm(), Launcher(work / "logs") as launcher:
            postfix_tool = ensure_postfix()
            if not postfix_tool.available:
                say(f"cannot run without smtp-source: {postfix_tool.reason}")
                return 1
            peers: list[Peer] = [
                dispatch_peer(),
                dispatch_peer(processes=1, name=DISPATCH_ONE_PROCESS),
                aiosmtpd_peer(),
                postfix_peer(postfix_tool),
                opensmtpd_peer(ensure_opensmtpd()),
            ]
            for peer in peers:
                state = peer.tool.version if peer.tool.available else peer.tool.reason
                say(f"peer {peer.name}: {state}")
            machine = describe(work)
            ctx = Context(
                plan=plan,
                launcher=launcher,
                work=work,
                peers=peers,
                say=say,
                fsync_ms=machine.fsync_ms.get("p50", 0.0),
                flames=out.parent / "flames",
            )
            figures: list[Figure] = []
            wanted = set(only) or set(FIGURES)
            if wanted & {"intake", "latency"}:
                figures += _guarded("intake", lambda: held_figures(ctx, wanted))
            steps: list[tuple[str, Callable[[Context], Figure]]] = [
                ("e2e", end_to_end.measure),
                ("health", health.measure),
                ("idle", idle.measure),
                ("scale", scale.measure),
                ("database", database.measure),
                ("shapes", shapes.measure),
            ]
            for key, step in steps:
                if key in wanted:
                    say(f"figure: {key}")
                    figures += _guarded(key, partial(_one, step, ctx))
            add_cpu_split(figures)
            info = report.RunInfo(
                plan=plan,
                started=began,
                seconds=time.monotonic() - wall,
                commit=commit(),
                command=command,
            )
            report.write(out, report.render(info, machine, peers, figures))
            say(f"wrote {out} after {(time.monotonic() - wall) / 60:.1f} minutes")
            ok = True
    except KeyboardInterrupt:
        say("interrupted: every server started was stopped; no report written")
        return 130
    finally:
        if ok and not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"work directory kept: {work}")
    return 0
