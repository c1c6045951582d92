"""The HTML of ``/debug/traces``: pure functions from a :class:`Tracer` to ``str``.

Three views, as in Go's ``x/net/trace``: the overview (per family: running traces, the
latency rings, the errors ring, and a latency histogram of every finished trace), one list
(``?family=…&show=…``) and one trace's timeline (``?id=…``) with its parent and children
linked, so a session leads to the message it queued, each of its delivery attempts and each
relay's dialogue with the upstream.

As for every ``/debug/`` page (:mod:`dispatch.monitoring.pages`), every value that reaches the
HTML goes through :func:`html.escape` and every value in a link through
:func:`urllib.parse.quote` first: trace events carry what SMTP peers, API clients and
upstream servers said.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from urllib.parse import quote, urlencode

from dispatch.monitoring.pages import _bytes, _duration, _e, _page
from dispatch.monitoring.traces import (
    BUCKETS,
    FAMILY_DESCRIPTIONS,
    Trace,
    TraceFamily,
    TraceLink,
    Tracer,
)
from dispatch.monitoring.vars import format_time

_ERROR_CLASS: Final = ' class="error"'

# Beside the shared style: dialogue lines keep their line breaks; histogram bars.
_STYLE: Final = (
    "<style>td.event { white-space: pre-wrap; font-family: ui-monospace, monospace; }"
    " div.bar { background: #7a9cc6; height: 0.9em; }</style>"
)

_BAR_WIDTH_EM: Final = 20


def _bucket_label(index: int) -> str:
    return f"≥{BUCKETS[index]:g} s"


def _range_label(index: int) -> str:
    """``[50 ms, 100 ms)``: bucket ``index`` of the histogram, as a half-open range."""
    low = _duration(BUCKETS[index])
    if index + 1 == len(BUCKETS):
        return f"≥ {low}"
    return f"[{low}, {_duration(BUCKETS[index + 1])})"


def _traces_link(family: str, which: str) -> str:
    return "traces?" + urlencode({"family": family, "show": which})


def _trace_href(trace_id: str) -> str:
    return f"traces?id={quote(trace_id, safe='')}"


def _link(link: TraceLink) -> str:
    return f'<a href="{_e(_trace_href(link.trace_id))}">{_e(link.family)}: {_e(link.title)}</a>'


def traces_page(
    tracer: Tracer, *, family: str | None = None, show: str | None = None, intake_processes: int = 1
) -> str:
    """``/debug/traces``: per family active / bucket / error counts and a latency histogram;
    one list if asked.

    ``show`` is ``"active"``, ``"errors"`` or a bucket index (``"0"``..); anything else is
    ignored (the query string comes from the browser). ``intake_processes`` > 1: the SMTP
    sessions run in that many intake worker processes, which keep no traces; the page says so.
    """
    head = "<th>family</th><th>what</th><th>active</th>" + "".join(
        f"<th>{_e(_bucket_label(i))}</th>" for i in range(len(BUCKETS))
    )
    rows: list[str] = []
    for name, state in tracer.families.items():
        cells = [
            _e(name),
            _e(FAMILY_DESCRIPTIONS.get(name, "")),
            _count_link(name, "active", len(state.active), state.unlisted_active),
        ]
        for index, size in enumerate(state.bucket_sizes()):
            cells.append(_count_link(name, str(index), size))
        cells.append(_count_link(name, "errors", len(state.errors)))
        cells.append(f"{state.finished_total} ({state.errors_total} with errors)")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    body = [
        _STYLE,
        f"<p>Memory held by traces: about {_e(_bytes(tracer.memory_estimate()))}. Each ring "
        "keeps the most recent traces; the histograms count every finished trace.</p>",
        f"<table><tr>{head}<th>errors</th><th>finished</th></tr>{''.join(rows)}</table>",
    ]
    if intake_processes > 1:
        body.insert(
            2,
            f"<p>SMTP sessions run in {intake_processes} intake worker processes "
            "(<code>listener.processes</code>), which keep no traces: <code>smtp.session</code> "
            "lists none, and the messages they queue are traced from their first delivery "
            "attempt. Their log lines say what each session did.</p>",
        )
    chosen = tracer.families.get(family or "")
    if chosen is not None and show is not None:
        selected = _select(chosen, show)
        if selected is not None:
            label, traces = selected
            body.append(f"<h2>{_e(chosen.name)}: {_e(label)}</h2>")
            body.append(_trace_list(traces))
    body.append("<h3>Latency histograms of finished traces</h3>")
    body.extend(_histogram(state) for state in tracer.families.values())
    return _page("Traces", "\n".join(body))


def _histogram(state: TraceFamily) -> str:
    """One family's histogram: count, share and cumulative share per latency range."""
    total = state.finished_total
    if not total:
        return f"<p>{_e(state.name)}: no finished traces yet.</p>"
    mean = state.seconds_total / total
    rows: list[str] = []
    cumulative = 0
    for index, count in enumerate(state.histogram):
        cumulative += count
        share = count / total
        bar = f'<div class="bar" style="width: {share * _BAR_WIDTH_EM:.2f}em"></div>'
        rows.append(
            f"<tr><td>{_e(_range_label(index))}</td><td class='num'>{count}</td>"
            f"<td class='num'>{share:.1%}</td><td class='num'>{cumulative / total:.1%}</td>"
            f"<td>{bar}</td></tr>"
        )
    return (
        f"<table><caption>{_e(state.name)}: {total} finished, mean {_e(_duration(mean))}"
        "</caption><tr><th>latency</th><th>count</th><th>share</th><th>cumulative</th><th></th>"
        f"</tr>{''.join(rows)}</table>"
    )


def _count_link(family: str, which: str, count: int, unlisted: int = 0) -> str:
    text = f"{count} (+{unlisted} not listed)" if unlisted else str(count)
    if not count:
        return _e(text)
    return f'<a href="{_e(_traces_link(family, which))}">{_e(text)}</a>'


def _select(state: TraceFamily, show: str) -> tuple[str, list[Trace]] | None:
    if show == "active":
        return "active", state.active
    if show == "errors":
        return "recent errors", state.errors
    if show.isdigit() and int(show) < len(BUCKETS):
        return f"recent {_bucket_label(int(show))}", state.bucket(int(show))
    return None


def _trace_list(traces: Sequence[Trace]) -> str:
    head = "<tr><th>started</th><th>elapsed</th><th>id</th><th>title</th><th>last event</th></tr>"
    rows: list[str] = []
    for trace in traces:
        events = trace.events()
        last = events[-1].message if events else ""
        title_class = _ERROR_CLASS if trace.errored else ""
        state = "" if trace.finished else " (running)"
        rows.append(
            f"<tr><td>{_e(format_time(trace.started_at))}</td>"
            f'<td class="num">{_e(_duration(trace.elapsed) + state)}</td>'
            f'<td><a href="{_e(_trace_href(trace.id))}">{_e(trace.id)}</a></td>'
            f'<td{title_class}>{_e(trace.title)}</td><td class="event">{_e(last)}</td></tr>'
        )
    return f"<table>{head}{''.join(rows)}</table>"


def trace_page(trace: Trace) -> str:
    """One trace's timeline (``/debug/traces?id=…``), its parent and its children linked."""
    status = "error" if trace.errored else "ok"
    status += "" if trace.finished else ", running"
    family_href = _traces_link(trace.family, "active" if not trace.finished else "0")
    facts = (
        ("id", _e(trace.id)),
        ("family", f'<a href="{_e(family_href)}">{_e(trace.family)}</a>'),
        ("title", _e(trace.title)),
        ("started", _e(format_time(trace.started_at))),
        ("elapsed", _e(_duration(trace.elapsed))),
        ("status", _e(status)),
        ("events", _e(trace.event_count)),
        ("parent", _link(trace.parent) if trace.parent is not None else "—"),
    )
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in facts)
    lines = "".join(
        f'<tr><td class="num">+{event.offset:.6f} s</td>'
        f'<td class="event"><span{_ERROR_CLASS if event.is_error else ""}>{_e(event.message)}'
        f"</span>{' → ' + _link(event.link) if event.link is not None else ''}</td></tr>"
        for event in trace.events()
    )
    body = [
        _STYLE,
        f"<table>{rows}</table>",
        f"<table><tr><th>at</th><th>event</th></tr>{lines}</table>",
    ]
    children = trace.children
    if children:
        more = f" (and {trace.children_dropped} more, not listed)" if trace.children_dropped else ""
        items = "".join(f"<li>{_link(child)}</li>" for child in children)
        body.append(f"<h2>Children{_e(more)}</h2><ul>{items}</ul>")
    return _page(f"Trace {trace.id}", "\n".join(body))


def trace_not_found_page(trace_id: str) -> str:
    """The ``404`` for ``/debug/traces?id=…`` naming a trace no ring holds."""
    return _page(
        "Traces: no such trace",
        f"<p>No trace {_e(trace_id)} is kept: it never existed, or it has left every ring "
        "since (each keeps only its most recent traces, and running ones).</p>"
        '<p><a href="traces">All traces</a></p>',
    )
