"""Figure: start-up time and intake with a large spool waiting, against an empty spool.

A spool is filled once with waiting messages (:mod:`bench.spoolfill`; due in a day, as
behind a relay that is down) and Dispatch is started on it, its relay pointed at a closed
port so that nothing leaves; the same is done on an empty spool, alternating. Start-up runs
from process start to the supervisor's "all components ready"; then smtp-source measures
intake as in the intake figure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bench.figures.common import Context, rotated, settle
from bench.load import run_source
from bench.peers.base import RelayMode
from bench.peers.dispatch_daemon import DispatchOptions, DispatchServer, start_dispatch
from bench.procs import StartError, free_port
from bench.procstat import rss_bytes
from bench.results import Comparison, Figure, NotMeasured
from bench.spoolfill import fill

_OPENED = re.compile(r"opened: (\d+) messages in ([0-9.]+)s")

METRICS = (
    ("start-up to ready", "s", False),
    ("spool scan at start-up", "s", False),
    ("intake msgs/s", "msgs/s", True),
    ("RSS after start-up", "MiB", False),
)


@dataclass
class Arm:
    label: str
    spool: Path | None  # None: a fresh empty spool for every start


def measure(ctx: Context) -> Figure:
    plan = ctx.plan
    count = plan.scale_messages
    method = (
        f"{count:,} messages waiting in the spool (written directly as valid `.eml`/`.json` "
        "pairs by `bench/spoolfill.py`, next attempt in a day; relay at a closed port) against "
        "an empty spool, alternating. Start-up: process start → `all components ready` in the "
        "log; spool scan: the time the spool reports for its start-up read; then smtp-source "
        f"sends {plan.scale_intake_messages} messages (20 sessions, new connection each). "
        f"N = {plan.rounds} starts of each."
        + (
            " Quick mode uses 20,000 waiting messages; the full run uses 100,000."
            if count < 100_000
            else ""
        )
    )
    figure = Figure("scale", f"Scale: {count:,} messages waiting vs an empty spool", method)
    full_spool = ctx.directory("scale-filled") / "spool"
    ctx.say(f"  filling a spool with {count:,} messages")
    seconds = fill(full_spool, count)
    figure.notes.append(f"Filling the spool with {count:,} messages took {seconds:.1f} s.")
    arms = [Arm("empty spool", None), Arm(f"{count:,} waiting", full_spool)]
    for number in range(plan.rounds):
        for arm in rotated(arms, number):
            ctx.say(f"  scale round {number + 1}: {arm.label}")
            try:
                _one_start(ctx, figure, arm)
            except StartError as exc:
                figure.not_measured.append(NotMeasured(arm.label, f"start failed: {exc}"))
                return figure
            settle()
    scan = figure.series(arms[1].label, "spool scan at start-up", "s")
    startup = figure.series(arms[1].label, "start-up to ready", "s")
    empty_startup = figure.series(arms[0].label, "start-up to ready", "s")
    if scan.values and startup.values and empty_startup.values:
        per_message = scan.median / count * 1e6
        figure.limits.append(
            f"start-up reads the whole spool once before it is ready: with {count:,} waiting "
            f"it takes {startup.median - empty_startup.median:.2f} s longer than on an empty "
            f"spool, of which the spool's own scan is {scan.median:.2f} s "
            f"({per_message:.0f} µs per message: about {per_message * 100_000 / 1e6:.1f} s "
            "for 100,000)"
        )
    for metric, unit, higher_is_better in METRICS:
        if metric == "spool scan at start-up":
            continue  # an empty spool takes no time to scan: a ratio says nothing
        full = figure.series(arms[1].label, metric, unit)
        empty = figure.series(arms[0].label, metric, unit)
        figure.comparisons.append(
            Comparison(metric, arms[0].label, full, empty, higher_is_better=higher_is_better)
        )
    return figure


def _one_start(ctx: Context, figure: Figure, arm: Arm) -> None:
    plan = ctx.plan
    directory = ctx.directory("scale")
    options = DispatchOptions(spool_dir=arm.spool)
    dispatch: DispatchServer = start_dispatch(
        ctx.launcher, directory, RelayMode.DOWN, free_port(), options, name="dispatch-scale"
    )
    try:
        figure.series(arm.label, "start-up to ready", "s").values.append(dispatch.startup_seconds)
        scanned = _OPENED.search(dispatch.child.log_path.read_text(errors="replace"))
        if scanned:
            figure.series(arm.label, "spool scan at start-up", "s").values.append(
                float(scanned.group(2))
            )
        figure.series(arm.label, "RSS after start-up", "MiB").values.append(
            rss_bytes(dispatch.child.pid) / 2**20
        )
        run = run_source(
            dispatch.port,
            plan.scale_intake_messages,
            reuse=False,
            timeout=plan.intake_timeout * 3,
            log_path=ctx.work / "smtp-source.out",
        )
        figure.series(arm.label, "intake msgs/s", "msgs/s").values.append(run.rate)
        if run.error:
            figure.notes.append(f"{arm.label}: {run.messages} messages, {run.error}.")
    finally:
        ctx.launcher.stop(dispatch.child)
