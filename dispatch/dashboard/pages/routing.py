"""The Routing page: the rules in the order they are tried, and the simulate form.

``GET /routing[?from=…&to=…]`` lists the enabled rules as :class:`~dispatch.delivery.routing.Router`
tries them (priority, then specificity, then file order), the disabled ones, and the
``default_relay``; with ``from`` and ``to`` it also answers where such a message would go and
why — the same :class:`Router` the delivery workers build from the running configuration, as
``dispatch route simulate FROM TO`` does — and marks the rule that matched. Rules are edited
in the configuration file (``[[routes]]``) and applied with a reload (Settings page).
"""

from __future__ import annotations

from typing import Final

import attrs
from quart import Blueprint, Response, request

from dispatch.config.settings import RouteSettings
from dispatch.dashboard.notices import address_problem
from dispatch.dashboard.render import render_page
from dispatch.dashboard.sources import DashboardSources
from dispatch.delivery.routing import RouteDecision, Router

MAX_FIELD: Final = 256
NULL_SENDERS: Final = frozenset({"", "<>"})


@attrs.frozen
class RuleRow:
    """A rule as the page lists it: its position in ``routes`` and in the trying order."""

    index: int
    order: int | None  # None: disabled, never tried
    rule: RouteSettings


def rule_rows(routes: tuple[RouteSettings, ...], default_relay: str) -> list[RuleRow]:
    """Enabled rules in the order the router tries them, then the disabled ones."""
    tried = Router(routes, default_relay).rules
    rows = [RuleRow(i, n + 1, rule) for n, (i, rule) in enumerate(tried)]
    rows += [RuleRow(i, None, rule) for i, rule in enumerate(routes) if not rule.enabled]
    return rows


def simulate(
    sources: DashboardSources, sender: str, recipient: str
) -> tuple[RouteDecision | None, list[str]]:
    """Where ``sender`` → ``recipient`` would go, or the problems with the two fields."""
    problems = []
    if sender not in NULL_SENDERS and (problem := address_problem(sender)):
        problems.append(f"From: {problem}")
    if problem := address_problem(recipient):
        problems.append(f"To: {problem}")
    if problems:
        return None, problems
    current = sources.settings.current
    sender = "" if sender in NULL_SENDERS else sender
    return Router(current.routes, current.default_relay).route(sender, recipient), []


def register(bp: Blueprint, sources: DashboardSources) -> None:
    @bp.get("/routing")
    async def routing() -> Response:
        current = sources.settings.current
        sender = request.args.get("from", "").strip()[:MAX_FIELD]
        recipient = request.args.get("to", "").strip()[:MAX_FIELD]
        asked = "from" in request.args or "to" in request.args
        decision, problems = simulate(sources, sender, recipient) if asked else (None, [])
        return await render_page(
            "dashboard/routing.html",
            title="Routing",
            active="routing",
            status=400 if problems else 200,
            rows=rule_rows(current.routes, current.default_relay),
            default_relay=current.default_relay,
            relay_names=[relay.name for relay in current.relays],
            sender=sender,
            recipient=recipient,
            decision=decision,
            problems=problems,
            config_path=sources.settings.path,
        )
