"""The debug page. Placeholder until its page is built: it says what will be here."""

from __future__ import annotations

from quart import Blueprint

from dispatch.dashboard.pages.placeholder import register_placeholder
from dispatch.dashboard.sources import DashboardSources


def register(bp: Blueprint, sources: DashboardSources) -> None:
    register_placeholder(
        bp,
        "debug",
        (
            "The /debug/ pages (configuration, variables, traces, queue, tasks, profile, "
            "memory) behind the admin login."
        ),
    )
