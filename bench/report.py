"""``docs/benchmarks.md``: rewritten from the results of every run, never edited by hand.

The document opens with the summary (every Dispatch/peer ratio), then the machine, the peers
(with versions, configuration, and those not measured and why), the common method, and one
section per figure: its method, every measured series, the comparisons, notes, what limits
it (generated from CPU accounting and profiles), and the profile's hottest functions.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.machine import Machine
from bench.peers.base import Peer
from bench.plan import Plan
from bench.profile import ProfileSummary
from bench.results import Comparison, Figure
from bench.stats import EN_DASH

PROFILE_ROWS = 12
DISPATCH_ROWS = 16


@dataclass
class RunInfo:
    plan: Plan
    started: float  # time.time()
    seconds: float
    commit: str
    command: str


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _comparison_rows(figure: Figure, caveats: list[str]) -> list[list[str]]:
    """Summary rows; a caveat becomes a numbered footnote (collected in ``caveats``)."""
    rows = []
    for index, comparison in enumerate(figure.comparisons):
        verdict = comparison.verdict()
        if comparison.caveat:
            if comparison.caveat not in caveats:
                caveats.append(comparison.caveat)
            verdict += f" (note {caveats.index(comparison.caveat) + 1})"
        rows.append(
            [
                figure.title if index == 0 else "",
                comparison.metric,
                comparison.peer,
                comparison.dispatch.text(),
                comparison.other.text(),
                comparison.ratio_text(),
                verdict,
            ]
        )
    return rows


def _scale_verdict(comparison: Comparison) -> str:
    verdict = comparison.verdict()
    return {"ahead": "better when full", "behind": "worse when full", "level": "flat"}.get(
        verdict, verdict
    )


def summary(figures: list[Figure]) -> list[str]:
    lines = ["## Summary", ""]
    caveats: list[str] = []
    rows = [
        row
        for figure in figures
        if figure.key != "scale"
        for row in _comparison_rows(figure, caveats)
    ]
    if rows:
        lines.append(
            "Ratios are Dispatch / peer of the medians (in brackets: the lowest and highest "
            "per-round ratio). For throughput above 1 is better for Dispatch, for latency "
            'below 1 is. "ahead"/"behind" means by more than 5 %.'
        )
        lines.append("")
        lines += _table(
            ["figure", "metric", "peer", "Dispatch", "peer's", "Dispatch / peer", ""], rows
        )
        lines.append("")
        lines += [
            f"Note {number}: {caveat.rstrip('.')}." for number, caveat in enumerate(caveats, 1)
        ]
        if caveats:
            lines.append("")
    absolute_rows = []
    for figure in figures:
        for absolute in figure.absolutes:
            absolute_rows.append(
                [figure.title, absolute.metric, absolute.series.text(), absolute.note]
            )
        if figure.key == "scale":
            for comparison in figure.comparisons:
                absolute_rows.append(
                    [
                        figure.title,
                        comparison.metric,
                        f"{comparison.dispatch.text()} vs {comparison.other.text()} "
                        f"({comparison.peer})",
                        f"ratio {comparison.ratio_text()}: {_scale_verdict(comparison)}",
                    ]
                )
    if absolute_rows:
        lines.append(f"Dispatch alone (medians, min{EN_DASH}max over N):")
        lines.append("")
        lines += _table(["figure", "metric", "Dispatch", "note"], absolute_rows)
        lines.append("")
    missing = [(f.title, m) for f in figures for m in f.not_measured]
    if missing:
        lines.append("Not measured:")
        lines.append("")
        lines += [f"- {title} — {item.subject}: {item.reason}" for title, item in missing]
        lines.append("")
    return lines


def machine_section(machine: Machine) -> list[str]:
    return ["## Machine", "", *_table(["", ""], [[k, v] for k, v in machine.lines()]), ""]


def peers_section(peers: list[Peer]) -> list[str]:
    rows = []
    for peer in peers:
        state = "measured" if peer.tool.available else f"**not measured**: {peer.tool.reason}"
        rows.append([peer.name, peer.tool.version or "—", peer.config_note or "—", state])
    return ["## Peers", "", *_table(["peer", "version", "configuration", "status"], rows), ""]


COMMON_METHOD = """\
## Method

- Every server runs on this machine at the same time as the load generator, on 127.0.0.1
  and a free port chosen by the kernel, and is started and stopped by the benchmark
  (`bench/peers/`). Nothing listens on any other address.
- Figures are measured in rounds: each round runs every server once, one after another
  (A B C D, then B C D A, …), so that drift on the machine (other work, page cache, disk
  state) falls on all of them alike. A figure is the median of its N rounds; the spread
  shown is the lowest and highest of the N. A ratio is Dispatch's median over the peer's
  median; its spread is the lowest and highest per-round ratio.
- Load: Postfix's `smtp-source` (C, never the bottleneck: its own CPU per message is in
  the intake table) and, where a figure needs per-message latency, our Trio generator
  (`bench/latency.py`). Every load is bounded in message count and in time.
- Durability: every server fsyncs a message before its 250. Dispatch fsyncs the message
  file (the envelope is its extended attribute) after renaming it into `incoming/`: one
  fsync per message on ext4, XFS and btrfs, whose fsync of a renamed file makes the rename
  durable too; elsewhere the file and then `incoming/` (two; a third where the envelope needs
  a `.json` of its own; `dispatch/spool/durability.py`); the Python peer the file and the
  directory; Postfix its queue file (and not the directory);
  OpenSMTPD its message file and its envelope.
- Dispatch runs with `listener.processes = 2` (one SMTP process per core: two intake
  worker processes sharing the port, while the main process keeps delivery, the API and
  `/health` and takes no SMTP session); "Dispatch, 1 process" is the same build with
  intake in the main process only, measured beside it in every round.
- CPU figures are the servers' own (every process of the server, from `/proc`); for
  Dispatch they are split into the main process's Trio thread, its worker threads and the
  intake worker processes. Profiles come from Dispatch's `/debug/profile` (pyinstrument on
  the main process's Trio thread; worker threads doing fsync and SQLite, and the intake
  worker process, are not sampled), taken in an extra run that is not counted; the flame
  graphs (`flames/<figure>.svg`, py-spy) cover every thread of every Dispatch process, in
  one more uncounted run.
- Other work on the machine during the run (other engineers' test suites) adds noise; the
  spreads show how much.
"""


def figure_section(number: int, figure: Figure) -> list[str]:
    lines = [f"## {number}. {figure.title}", "", figure.method, ""]
    series_rows = [
        [subject, metric, series.text()]
        for subject, per_metric in figure.peer_series.items()
        for metric, series in per_metric.items()
    ]
    if series_rows:
        lines += _table(["subject", "metric", f"median (min{EN_DASH}max, N)"], series_rows)
        lines.append("")
    if figure.comparisons:
        label = "full / empty" if figure.key == "scale" else "Dispatch / peer"
        rows = [
            [
                c.metric,
                c.peer,
                c.ratio_text(),
                _scale_verdict(c) if figure.key == "scale" else c.verdict(),
            ]
            for c in figure.comparisons
        ]
        lines += _table(["metric", "against", label, ""], rows)
        lines.append("")
    for item in figure.not_measured:
        lines.append(f"- **Not measured — {item.subject}:** {item.reason}")
    for note in figure.notes:
        lines.append(f"- {note}")
    if figure.not_measured or figure.notes:
        lines.append("")
    if figure.limits:
        lines += ["**What limits it** (from this run's CPU accounting and profile):", ""]
        lines += [f"- {line}" for line in figure.limits]
        lines.append("")
    if figure.flame:
        lines += [
            f"Flame graph of every thread of every Dispatch process during an extra run "
            f"(py-spy, merged per function): [{figure.flame}]({figure.flame})",
            "",
        ]
    if figure.profile is not None and not figure.profile.error:
        lines += profile_tables(figure.profile, figure.profile_label)
    return lines


def profile_tables(profile: ProfileSummary, label: str) -> list[str]:
    busy = profile.busy_seconds or 1.0
    lines = [
        f"Profile of {label}: {profile.seconds:.1f} s of the Trio thread, "
        f"{profile.busy_seconds:.2f} s busy. Hottest functions by self time:",
        "",
    ]
    rows = [
        [
            f"`{frame.function}`",
            frame.where,
            f"{frame.self_seconds / busy:.1%}",
            f"{frame.total_seconds / profile.seconds:.1%}",
        ]
        for frame in profile.top_self(PROFILE_ROWS)
    ]
    lines += _table(["function", "where", "self (of busy)", "total (of profile)"], rows)
    lines += ["", "Dispatch's own code paths by total time:", ""]
    rows = [
        [
            f"`{frame.function}`",
            frame.where,
            f"{frame.total_seconds / profile.seconds:.1%}",
            f"{frame.self_seconds / busy:.1%}",
        ]
        for frame in profile.top_dispatch_total(DISPATCH_ROWS)
    ]
    lines += _table(["function", "where", "total (of profile)", "self (of busy)"], rows)
    lines.append("")
    return lines


def render(info: RunInfo, machine: Machine, peers: list[Peer], figures: list[Figure]) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(info.started))
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{info.command}` ({info.plan.name} variant, N = {info.plan.rounds}) on "
        f"{stamp}, commit {info.commit}, in {info.seconds / 60:.1f} minutes. Rewritten by "
        "every run: do not edit by hand. SPEC §13 sets the goals; `bench/` is the instrument.",
        "",
        "Run it: `nox -s bench` (quick, a few minutes) or `nox -s bench -- --full` (longer "
        "runs, N = 7, 100,000 waiting messages). It installs what it lacks (Debian packages "
        "postfix and opensmtpd, aiosmtpd into the nox venv) and needs root for the MTAs.",
        "",
    ]
    lines += summary(figures)
    lines += machine_section(machine)
    lines += peers_section(peers)
    lines += COMMON_METHOD.splitlines()
    lines.append("")
    for number, figure in enumerate(figures, 1):
        lines += figure_section(number, figure)
    return "\n".join(lines).rstrip() + "\n"


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
