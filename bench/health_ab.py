"""``python -m bench.health_ab``: ``/health`` under full intake, and intake itself, per source tree.

A quick A/B tool beside the bench's health figure (which measures this checkout only): for
each tree given (``--trees A B``, alternated round by round, order reversed every other round
so a busy machine slows each alike) it starts Dispatch from that tree (first on
``PYTHONPATH``) with the bench's configuration (:func:`bench.peers.dispatch_daemon.write_config`:
``listener.processes`` 2 unless ``TREE::P`` says otherwise, delivery held) and measures:

- **health**: ``/health`` probed ten times a second over new HTTPS connections
  (:mod:`bench.health_probe`) while smtp-source sends M messages, new connection per message,
  20 sessions — the health figure's "intake at full speed" condition; p50 / p99 / max;
- the same run's intake rate and CPU ms per message (utime + stime over every process of
  Dispatch's session, ``/proc``);
- **reused**: intake with connections reused (M messages), rate and CPU ms per message.

``--profile DIR`` records py-spy (every thread, ``--gil`` too) of the main process during an
extra health run of each tree, as raw collapsed stacks (``DIR/<tree>-{all,gil}.txt``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from bench.health_probe import HealthRun, probe_for, probe_while
from bench.load import SourceRun, run_source
from bench.peers.base import RelayMode
from bench.peers.dispatch_daemon import READY_LINE, DispatchOptions, write_config
from bench.procs import LOOPBACK, Launcher, StartError, free_port
from bench.procstat import session_cpu_seconds, thread_cpu_seconds
from bench.stats import percentile

REPO = Path(__file__).resolve().parent.parent
START_ATTEMPTS = 3
IDLE_SECONDS = 3.0


@dataclass
class TreeFigures:
    health_p50: list[float] = field(default_factory=list)
    health_p99: list[float] = field(default_factory=list)
    health_max: list[float] = field(default_factory=list)
    new_rate: list[float] = field(default_factory=list)
    new_cpu: list[float] = field(default_factory=list)
    reused_rate: list[float] = field(default_factory=list)
    reused_cpu: list[float] = field(default_factory=list)


def _start(launcher: Launcher, tree: Path, work: Path, processes: int) -> tuple[int, int, int]:
    """Start Dispatch from ``tree``; return (its pid, the SMTP port, the dashboard port)."""
    for attempt in range(START_ATTEMPTS):
        config, ports, _, _ = write_config(
            work, RelayMode.HELD, free_port(), DispatchOptions(processes=processes)
        )
        child = launcher.start(
            f"dispatch-{attempt}",
            [sys.executable, "-m", "dispatch", "--config", str(config)],
            cwd=work,
            env=dict(os.environ, PYTHONPATH=str(tree)),
        )
        try:
            child.wait_for_log(READY_LINE, 120)
            break
        except StartError:
            # A port picked free was taken before Dispatch bound it (a load generator's
            # connection got it as its local port): pick others.
            if attempt == START_ATTEMPTS - 1:
                raise
            launcher.stop(child)
    time.sleep(1.0)  # the workers' start-up CPU is not the messages'
    return child.pid, ports["smtp"], ports["webui"]


def _run_queue_seconds(pid: int) -> float:
    """Time the Trio thread of ``pid`` has spent runnable but waiting for a core
    (``/proc/<pid>/task/<pid>/schedstat``, second field, in nanoseconds)."""
    fields = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    return int(fields[1]) / 1e9


def _loaded(pid: int, port: int, messages: int, work: Path, *, reuse: bool) -> SourceRun:
    return run_source(
        port, messages, reuse=reuse, timeout=300, log_path=work / f"source-{reuse}.out"
    )


def one_round(
    tree: Path, processes: int, messages: int, work: Path, profile: Path | None, label: str
) -> tuple[HealthRun, SourceRun, float, SourceRun, float]:
    with Launcher(work) as launcher:
        pid, port, webui = _start(launcher, tree, work, processes)
        url = f"https://{LOOPBACK}:{webui}/health"
        idle = trio.run(probe_for, url, IDLE_SECONDS)
        print(
            f"  idle: /health p50 {idle.p(0.5) * 1000:.1f} p99 {idle.p(0.99) * 1000:.1f} ms",
            flush=True,
        )
        cpu0, main0 = session_cpu_seconds(pid), sum(thread_cpu_seconds(pid).values())
        waited0 = _run_queue_seconds(pid)
        health, new = trio.run(
            probe_while, url, lambda: _loaded(pid, port, messages, work, reuse=False)
        )
        cpu1, main1 = session_cpu_seconds(pid), sum(thread_cpu_seconds(pid).values())
        waited = _run_queue_seconds(pid) - waited0
        print(
            f"  main process: {(main1 - main0) / new.seconds:.2f} cores busy "
            f"({(main1 - main0) * 1000 / max(1, new.messages):.2f} CPU ms/msg) "
            f"of {(cpu1 - cpu0) / new.seconds:.2f} for all of Dispatch; its Trio thread "
            f"waited for a core {waited * 1000 / new.seconds:.0f} ms per second",
            flush=True,
        )
        reused = _loaded(pid, port, messages, work, reuse=True)
        cpu2 = session_cpu_seconds(pid)
        if profile is not None:
            _profile(pid, port, url, messages, work, profile, label)
    new_cpu = (cpu1 - cpu0) * 1000 / max(1, new.messages)
    reused_cpu = (cpu2 - cpu1) * 1000 / max(1, reused.messages)
    return health, new, new_cpu, reused, reused_cpu


def _profile(
    pid: int, port: int, url: str, messages: int, work: Path, out: Path, label: str
) -> None:
    """py-spy of the main process during an extra health run: all threads, then --gil."""
    out.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).parent / "py-spy"
    for kind, extra in (("all", ["--threads"]), ("gil", ["--gil", "--threads"])):
        target = out / f"{label}-{kind}.txt"
        recorder = subprocess.Popen(
            [
                str(py_spy),
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "200",
                "--nonblocking",
                "--output",
                str(target),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            trio.run(probe_while, url, lambda: _loaded(pid, port, messages, work, reuse=False))
        finally:
            recorder.send_signal(2)  # SIGINT: py-spy writes what it has
            recorder.wait(timeout=60)


def _median(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.health_ab")
    parser.add_argument(
        "--trees", nargs="+", default=[str(REPO)], help="source trees; TREE::P sets processes"
    )
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy stacks go here")
    parser.add_argument(
        "--scratch",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the rounds' spools go; see python -m bench.intake_cpu --help",
    )
    args = parser.parse_args()
    figures = {spec: TreeFigures() for spec in args.trees}
    # Deleted only after the last round, as bench.intake_cpu's: on ext4 without a journal a
    # round after a deletion nearby pays for it in system time (docs/intake-cpu.md, round 9).
    with tempfile.TemporaryDirectory(prefix="health-ab-", dir=args.scratch) as scratches:
        for number in range(args.rounds):
            for spec in args.trees if number % 2 == 0 else args.trees[::-1]:
                tree, _, count = spec.partition("::")
                processes = int(count) if count else 2
                label = f"{Path(tree).name}-{processes}"
                scratch = Path(tempfile.mkdtemp(dir=scratches))
                profile = args.profile if number == 0 else None
                health, new, new_cpu, reused, reused_cpu = one_round(
                    Path(tree), processes, args.messages, scratch, profile, label
                )
                row = figures[spec]
                row.health_p50.append(health.p(0.5) * 1000)
                row.health_p99.append(health.p(0.99) * 1000)
                row.health_max.append(max(health.latencies, default=float("nan")) * 1000)
                row.new_rate.append(new.rate)
                row.new_cpu.append(new_cpu)
                row.reused_rate.append(reused.rate)
                row.reused_cpu.append(reused_cpu)
                problems = " ".join(p for p in (new.error, reused.error, health.first_error) if p)
                checks = ", ".join(
                    f"{name} {percentile(values, 0.5):.1f}/{percentile(values, 0.99):.1f}"
                    for name, values in sorted(health.check_ms.items())
                )
                print(
                    f"round {number + 1} {spec}: /health p50 {row.health_p50[-1]:.1f} p99 "
                    f"{row.health_p99[-1]:.1f} max {row.health_max[-1]:.1f} ms "
                    f"({len(health.latencies)} probes, {health.errors} failed); new conn "
                    f"{new.rate:.0f} msgs/s {new_cpu:.2f} CPU ms/msg; reused {reused.rate:.0f} "
                    f"msgs/s {reused_cpu:.2f} CPU ms/msg; checks p50/p99 ms: {checks} {problems}",
                    flush=True,
                )
        for spec, row in figures.items():
            print(
                f"{spec}: /health p50 {_median(row.health_p50)} p99 {_median(row.health_p99)} "
                f"max {_median(row.health_max)} ms; new conn {_median(row.new_rate)} msgs/s, "
                f"{_median(row.new_cpu)} CPU ms/msg; reused {_median(row.reused_rate)} msgs/s, "
                f"{_median(row.reused_cpu)} CPU ms/msg"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
