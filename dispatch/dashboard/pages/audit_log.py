"""The Audit log page: who did what to the configuration, keys, relays, spool and logins.

``GET /audit[?category=…&level=…&until=…]`` lists :data:`PAGE_SIZE` entries newest first
(``LogQueries.audit_entries``: the ``audit_log_at`` index, walked newest first), filtered by
category (``Auth``, ``Config``, ``ApiKey``, ``Relay``, ``System``) and severity (``Info``,
``Notice``, ``Warning``); "Older entries" continues before the last one shown. Entries
written while the database was down wait in the journal and appear once it is back.
"""

from __future__ import annotations

from typing import Final

from quart import Blueprint, Response, request

from dispatch.dashboard import formats
from dispatch.dashboard.render import render_page
from dispatch.dashboard.sources import DashboardSources
from dispatch.storage import (
    AUDIT_CATEGORIES,
    AUDIT_LEVELS,
    AuditEntry,
    DatabaseUnavailableError,
)

PAGE_SIZE: Final = 100


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def register(bp: Blueprint, sources: DashboardSources) -> None:
    @bp.get("/audit")
    async def audit() -> Response:
        category = request.args.get("category") or None
        level = request.args.get("level") or None
        problems = []
        if category is not None and category not in AUDIT_CATEGORIES:
            problems.append(f"category must be one of {', '.join(AUDIT_CATEGORIES)}")
            category = None
        if level is not None and level not in AUDIT_LEVELS:
            problems.append(f"severity must be one of {', '.join(AUDIT_LEVELS)}")
            level = None
        until = _float(request.args.get("until"))
        entries: list[AuditEntry] = []
        unavailable = None
        try:
            entries = await sources.store.queries.audit_entries(
                category=category,
                level=level,
                until=until,
                limit=PAGE_SIZE,
            )
        except DatabaseUnavailableError as exc:
            unavailable = str(exc) or type(exc).__name__
        return await render_page(
            "dashboard/audit.html",
            title="Audit log",
            active="audit",
            status=400 if problems else 503 if unavailable else 200,
            fmt=formats,
            entries=entries,
            categories=AUDIT_CATEGORIES,
            levels=AUDIT_LEVELS,
            category=category,
            level=level,
            until=until,
            problems=problems,
            unavailable=unavailable,
            older=entries[-1].at if len(entries) == PAGE_SIZE else None,
        )
