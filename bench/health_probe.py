"""``/health`` probed on a fixed schedule, the way an orchestrator's probe would.

Each probe is a new HTTPS connection to the dashboard port (a Kubernetes ``httpGet`` probe
does not keep connections), timed from the request to the last byte of the answer. Probes
run on their own schedule whether or not the previous one has answered, so a slow answer
cannot hide the next one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from bench.stats import percentile

PROBE_INTERVAL = 0.1  # 10 probes a second: many samples for a p99, little load
PROBE_TIMEOUT = 30.0  # far above the deadline: a late answer is measured, not cut off


@dataclass
class HealthRun:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    check_ms: dict[str, list[float]] = field(default_factory=dict)
    check_status: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    first_error: str = ""

    def p(self, fraction: float) -> float:
        return percentile(self.latencies, fraction) if self.latencies else math.nan

    def record(self, seconds: float, document: dict[str, Any]) -> None:
        self.latencies.append(seconds)
        self.statuses[str(document.get("status"))] += 1
        for name, check in document.get("checks", {}).items():
            self.check_ms.setdefault(name, []).append(float(check.get("durationMs", 0.0)))
            self.check_status[f"{name}: {check.get('status')}"] += 1


async def poll(url: str, run: HealthRun, stop: trio.Event) -> None:
    """Probe ``url`` every :data:`PROBE_INTERVAL` s until ``stop`` is set (then drain)."""
    limits = httpx.Limits(max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(verify=False, timeout=PROBE_TIMEOUT, limits=limits) as client,  # noqa: S501  # loopback, self-signed
        trio.open_nursery() as nursery,
    ):

        async def probe() -> None:
            began = trio.current_time()
            try:
                response = await client.get(url)
                document = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                run.errors += 1
                run.first_error = run.first_error or f"{type(exc).__name__}: {exc}"
                return
            run.record(trio.current_time() - began, document)

        next_due = trio.current_time()
        while not stop.is_set():
            nursery.start_soon(probe)
            next_due += PROBE_INTERVAL
            with trio.move_on_at(next_due):
                await stop.wait()


async def probe_while[T](url: str, work: Callable[[], T]) -> tuple[HealthRun, T]:
    """Probe ``url`` for as long as the blocking ``work`` runs (in a thread)."""
    run = HealthRun()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll, url, run, stop)
        await trio.sleep(0.2)
        try:
            result = await trio.to_thread.run_sync(work)
        finally:
            stop.set()
    return run, result


async def probe_for(url: str, seconds: float) -> HealthRun:
    """Probe ``url`` for ``seconds``."""
    run = HealthRun()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll, url, run, stop)
        await trio.sleep(seconds)
        stop.set()
    return run
