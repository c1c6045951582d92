"""Traces that keep nothing, for a process whose traces nobody can read.

An intake worker process (``listener.processes`` > 1, ``intake/worker.py``) serves no
monitoring pages: the ``/debug/traces`` of the main process follows the messages the workers
queued from their first delivery attempt, never the workers' SMTP sessions
(docs/operations.md). Tracing those sessions anyway cost every message over a hundred
microseconds of CPU — each command and reply formatted, a message trace started, linked and,
past the followed limit, finished into the rings — for timelines no page could show
(docs/intake-cpu.md, round 8). A worker's sessions therefore get :class:`UntracedTracer`'s
one :class:`UntracedTrace`, whose appends do nothing and whose :attr:`~Trace.recording` is
False, so that callers skip formatting what would not be kept.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import ClassVar

from dispatch.monitoring.traces import Trace, TraceLink, Tracer


class UntracedTrace(Trace):
    """A trace that records nothing and never finishes; one is shared by every caller."""

    recording: ClassVar[bool] = False

    def child(self, family: str, title: str, *, note: str = "") -> Trace:
        return self

    def linked(self, link: TraceLink, message: str) -> None:
        pass

    def error(self, message: str) -> None:
        pass

    def event_lines(self, lines: Iterable[str], *, is_error: bool = False) -> None:
        pass

    def finish(self) -> None:
        pass

    def _append(
        self,
        message: str,
        *,
        is_error: bool,
        link: TraceLink | None = None,
        escaped: bool = False,
    ) -> None:
        pass


class UntracedTracer(Tracer):
    """A :class:`Tracer` with no families: :meth:`start` and :meth:`message_queued` hand
    out the same :class:`UntracedTrace`, and nothing is listed or kept."""

    def __init__(self) -> None:
        super().__init__(families=())
        self._untraced = UntracedTrace(self, "0", "untraced", "", time.monotonic)

    def start(self, family: str, title: str, *, parent: TraceLink | None = None) -> Trace:
        return self._untraced

    trace = start

    def message_queued(
        self,
        message_id: str,
        *,
        mail_from: str,
        recipients: Sequence[str],
        size: int,
        parent: Trace | None,
    ) -> Trace:
        return self._untraced

    def message_trace(self, message_id: str, title: str = "") -> Trace:
        return self._untraced
