"""The forms of ``/debug/profile``: an HTML page, speedscope's JSON, pprof's protobuf.

Pure functions from a :class:`~dispatch.monitoring.sampling.Profile` to bytes. Weights are
CPU time: a sample stands for the CPU its thread used since its previous sample, so the
percentages are shares of the CPU the whole process used while it was profiled, idle time
never counts, and threads are compared fairly whatever their sampling rate.

* HTML: the threads by CPU, the functions with the most CPU (self and inclusive, per
  thread), the hottest stacks. Every value goes through :func:`html.escape`: function and
  thread names come from code Dispatch loads, but a thread name carries a Trio task's name.
* speedscope (https://www.speedscope.app): one "sampled" profile per thread, frames shared.
* pprof: :func:`~dispatch.monitoring.pprof.encode_pprof`.
"""

from __future__ import annotations

import html
import json
import time
from collections import Counter
from typing import Final, Literal

from dispatch.monitoring.pprof import CONTENT_TYPE as PPROF_CONTENT_TYPE
from dispatch.monitoring.pprof import encode_pprof
from dispatch.monitoring.sampling import (
    SAMPLE_INTERVAL,
    THREAD_SAMPLE_INTERVAL,
    Profile,
)
from dispatch.monitoring.tasks import short_path

ProfileFormat = Literal["html", "speedscope", "pprof"]

CONTENT_TYPES: Final[dict[str, str]] = {
    "html": "text/html; charset=utf-8",
    "speedscope": "application/json",
    "pprof": PPROF_CONTENT_TYPE,
}

Function = tuple[str, str, int]  # name, file, first line

_STYLE: Final = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;margin-bottom:1.5em}"
    "th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}"
    "th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}"
)


def render(profile: Profile, fmt: ProfileFormat) -> bytes:
    """``profile`` in ``fmt``; the content type is ``CONTENT_TYPES[fmt]``."""
    if fmt == "pprof":
        return encode_pprof(profile)
    if fmt == "speedscope":
        return speedscope(profile).encode()
    return html_page(profile).encode()


def _label(function: Function) -> str:
    return f"{function[0]} ({short_path(function[1])}:{function[2]})"


def _ms(nanoseconds: int) -> str:
    return f"{nanoseconds / 1e6:,.1f}"


def html_page(profile: Profile) -> str:
    """The HTML form: threads, self and inclusive CPU per function, hottest stacks."""
    total = profile.total_cpu_ns or 1
    own: Counter[tuple[str, Function]] = Counter()
    inclusive: Counter[tuple[str, Function]] = Counter()
    for (thread, stack), tally in profile.stacks.items():
        if stack:
            own[(thread, stack[-1][:3])] += tally.cpu_ns
        for function in {frame[:3] for frame in stack}:
            inclusive[(thread, function)] += tally.cpu_ns

    def pct(nanoseconds: int) -> str:
        return f'<td class="num">{nanoseconds / total * 100:5.1f}%</td>'

    def rows(counter: Counter[tuple[str, Function]], limit: int) -> str:
        return "".join(
            f'<tr>{pct(cpu)}<td class="num">{_ms(cpu)}</td><td>{html.escape(thread)}</td>'
            f"<td><code>{html.escape(_label(function))}</code></td></tr>"
            for (thread, function), cpu in counter.most_common(limit)
        )

    threads = "".join(
        f'<tr><td>{html.escape(name)}</td>{pct(tally.cpu_ns)}<td class="num">'
        f'{_ms(tally.cpu_ns)}</td><td class="num">{tally.samples}</td></tr>'
        for name, tally in profile.threads()[:100]
    )
    hottest = sorted(profile.stacks.items(), key=lambda item: -item[1].cpu_ns)[:25]
    stacks = "".join(
        f"<li>{tally.cpu_ns / total * 100:.1f}% — {html.escape(thread)}: <code>"
        + html.escape(" → ".join(frame[0] for frame in stack[-12:]))
        + "</code></li>"
        for (thread, stack), tally in hottest
    )
    head = "<tr><th>%</th><th>CPU ms</th><th>thread</th><th>function</th></tr>"
    return (
        "<!doctype html><meta charset=utf-8><title>CPU profile</title>"
        f"<style>{_STYLE}</style><p><a href=./>/debug/</a></p>"
        f"<h1>CPU profile of every thread</h1><p>{_summary(profile)}</p>"
        "<p>Percentages are of the CPU time the process used while profiled: in a function "
        "(self) or below it (inclusive); idle time is not sampled. The same profile as "
        "<code>?format=speedscope</code> (https://www.speedscope.app) or "
        "<code>?format=pprof</code> (<code>go tool pprof -http=: profile.pb.gz</code>).</p>"
        "<h2>Threads</h2><table><tr><th>thread</th><th>%</th><th>CPU ms</th>"
        f"<th>samples</th></tr>{threads}</table>"
        f"<h2>Self</h2><table>{head}{rows(own, 40)}</table>"
        f"<h2>Inclusive</h2><table>{head}{rows(inclusive, 60)}</table>"
        f"<h2>Hottest stacks (innermost last)</h2><ol>{stacks}</ol>"
    )


def _summary(profile: Profile) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(profile.started))
    samples = sum(tally.samples for tally in profile.stacks.values())
    how = (
        f"sampled by SIGPROF every {SAMPLE_INTERVAL * 1000:g} ms of CPU"
        if profile.trio_by_signal
        else "not the main thread: sampled by the sampler thread, its stacks lean toward "
        "the calls that release the GIL (I/O)"
    )
    return html.escape(
        f"{when}Z, {profile.duration:.1f} s, {_ms(profile.total_cpu_ns)} ms of CPU in "
        f"{samples} samples. Trio thread ({profile.trio_thread}): {how}; other threads: "
        f"every {THREAD_SAMPLE_INTERVAL * 1000:g} ms while they use CPU. The sampler thread "
        f"itself used {_ms(profile.sampler_cpu_ns)} ms of CPU."
    )


def speedscope(profile: Profile) -> str:
    """speedscope's file format: one sampled profile per thread, weights in seconds of CPU."""
    index: dict[Function, int] = {}
    frames: list[dict[str, object]] = []
    per_thread: dict[str, tuple[list[list[int]], list[float]]] = {
        name: ([], []) for name, _ in profile.threads()
    }
    for (thread, stack), tally in profile.stacks.items():
        ids = []
        for frame in stack:
            function = frame[:3]
            if function not in index:
                index[function] = len(frames)
                frames.append({"name": function[0], "file": function[1], "line": function[2]})
            ids.append(index[function])
        samples, weights = per_thread[thread]
        samples.append(ids)
        weights.append(tally.cpu_ns / 1e9)
    document = {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "exporter": "dispatch",
        "name": "Dispatch CPU profile",
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": thread,
                "unit": "seconds",
                "startValue": 0,
                "endValue": sum(weights),
                "samples": samples,
                "weights": weights,
            }
            for thread, (samples, weights) in per_thread.items()
        ],
    }
    return json.dumps(document)
