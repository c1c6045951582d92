"""The HTML of ``/debug/traces``: pure functions from a :class:`Tracer` to ``str``.

As for every ``/debug/`` page (:mod:`dispatch.monitoring.pages`), every value that reaches the
HTML goes through :func:`html.escape` and every value in a link through
:func:`urllib.parse.quote` first: trace events carry what SMTP peers, API clients and
upstream servers said.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote, urlencode

from dispatch.monitoring.pages import _bytes, _duration, _e, _page
from dispatch.monitoring.traces import BUCKETS, Trace, TraceFamily, Tracer
from dispatch.monitoring.vars import format_time

_ERROR_CLASS = ' class="error"'


def _bucket_label(index: int) -> str:
    return f"≥{BUCKETS[index]:g} s"


def _traces_link(family: str, which: str) -> str:
    return "traces?" + urlencode({"family": family, "show": which})


def traces_page(tracer: Tracer, *, family: str | None = None, show: str | None = None) -> str:
    """``/debug/traces``: per family active / bucket / error counts; one list if asked.

    ``show`` is ``"active"``, ``"errors"`` or a bucket index (``"0"``..); anything else is
    ignored (the query string comes from the browser).
    """
    head = "<th>family</th><th>active</th>" + "".join(
        f"<th>{_e(_bucket_label(i))}</th>" for i in range(len(BUCKETS))
    )
    rows: list[str] = []
    for name, state in tracer.families.items():
        cells = [_e(name), _count_link(name, "active", len(state.active), state.unlisted_active)]
        for index, size in enumerate(state.bucket_sizes()):
            cells.append(_count_link(name, str(index), size))
        cells.append(_count_link(name, "errors", len(state.errors)))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    body = [
        f"<p>Memory held by traces: about {_e(_bytes(tracer.memory_estimate()))}.</p>",
        f"<table><tr>{head}<th>errors</th></tr>{''.join(rows)}</table>",
    ]
    chosen = tracer.families.get(family or "")
    if chosen is not None and show is not None:
        selected = _select(chosen, show)
        if selected is not None:
            label, traces = selected
            body.append(f"<h2>{_e(chosen.name)}: {_e(label)}</h2>")
            body.append(_trace_list(traces))
    return _page("Traces", "\n".join(body))


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
            f'<td><a href="traces?id={_e(quote(trace.id))}">{_e(trace.id)}</a></td>'
            f"<td{title_class}>{_e(trace.title)}</td><td>{_e(last)}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def trace_page(trace: Trace) -> str:
    """One trace's timeline (``/debug/traces?id=…``)."""
    status = "error" if trace.errored else "ok"
    status += "" if trace.finished else ", running"
    facts = (
        ("id", trace.id),
        ("family", trace.family),
        ("title", trace.title),
        ("started", format_time(trace.started_at)),
        ("elapsed", _duration(trace.elapsed)),
        ("status", status),
        ("events", trace.event_count),
    )
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    lines = "".join(
        f'<tr><td class="num">+{event.offset:.6f} s</td>'
        f"<td{_ERROR_CLASS if event.is_error else ''}>{_e(event.message)}</td></tr>"
        for event in trace.events()
    )
    return _page(
        f"Trace {trace.id}",
        f"<table>{rows}</table>\n<table><tr><th>at</th><th>event</th></tr>{lines}</table>",
    )


def trace_not_found_page(trace_id: str) -> str:
    """The ``404`` for ``/debug/traces?id=…`` naming a trace no ring holds."""
    return _page(
        "Traces: no such trace",
        f"<p>No trace {_e(trace_id)} is kept: it never existed, or it has left every ring "
        'since (each keeps only recent traces).</p><p><a href="traces">All traces</a></p>',
    )
