"""How much to measure: the quick variant (a few minutes) and the full one.

Every figure's load is bounded in count *and* time, so a peer that stalls costs at most the
time limit of its runs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    name: str
    rounds: int
    """N: interleaved rounds per figure; each reports the median of N and the spread."""
    intake_messages: int
    intake_timeout: float
    latency_rate: float
    latency_seconds: float
    e2e_messages: int
    e2e_timeout: float
    profile_seconds: float
    health_load_messages: int
    wedge_seconds: float
    idle_connections: int
    idle_rounds: int
    scale_messages: int
    scale_intake_messages: int
    shape_large_messages: int = 200
    """Messages of 1 MiB per run of the shapes figure."""
    shape_rcpt_messages: int = 200
    """Messages of 100 recipients per run of the shapes figure."""
    shape_timeout: float = 20.0


QUICK = Plan(
    name="quick",
    rounds=3,
    intake_messages=1000,
    intake_timeout=10.0,
    latency_rate=200.0,
    latency_seconds=5.0,
    e2e_messages=1000,
    e2e_timeout=15.0,
    profile_seconds=3.0,
    health_load_messages=2000,
    wedge_seconds=5.0,
    idle_connections=10_000,
    idle_rounds=1,
    scale_messages=20_000,
    scale_intake_messages=1000,
)

FULL = Plan(
    name="full",
    rounds=7,
    intake_messages=5000,
    intake_timeout=30.0,
    latency_rate=200.0,
    latency_seconds=10.0,
    e2e_messages=5000,
    e2e_timeout=120.0,
    profile_seconds=10.0,
    health_load_messages=8000,
    wedge_seconds=15.0,
    idle_connections=10_000,
    idle_rounds=3,
    scale_messages=100_000,
    scale_intake_messages=5000,
)
