"""Routing rules (SPEC §6): which relay (or failover list of relays) takes which recipients.

Rules carry glob patterns (``fnmatch``, case-insensitive) on the sender's and the recipient's
domain. Enabled rules are tried by priority (lower first), then by specificity (a rule whose
two patterns are both set beats one with one pattern set, which beats one with none; a
pattern is "set" unless it is ``*``), then in file order; the first match wins. No match:
``default_relay``. ``*.example.com`` matches subdomains only, not ``example.com`` itself.
The null sender ``<>`` and an address without ``@`` have the empty domain, which only ``*``
matches.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

import attrs

from dispatch.config.settings import RouteSettings


def domain_of(address: str) -> str:
    """The domain part of an address, lower-cased; "" when there is none."""
    _, at, domain = address.rpartition("@")
    return domain.lower() if at else ""


def _specificity(rule: RouteSettings) -> int:
    return (rule.sender_domain != "*") + (rule.recipient_domain != "*")


def _matches(pattern: str, domain: str) -> bool:
    return pattern == "*" or fnmatch.fnmatchcase(domain, pattern.lower())


@attrs.frozen
class RouteDecision:
    """Where one (sender, recipient) pair goes, and why."""

    relays: tuple[str, ...]  # the first one, then failover on transient failure
    rule: RouteSettings | None  # None: no rule matched, default_relay
    rule_index: int | None  # position of the rule in the configuration's `routes`
    forced: bool = False  # chosen by an operator (send-test), not by the rules

    @property
    def label(self) -> str:
        """A short name for logs and the message log: ``routes[2]``, ``default``, ``forced``."""
        if self.forced:
            return "forced"
        return "default" if self.rule_index is None else f"routes[{self.rule_index}]"

    def explain(self) -> str:
        relays = " then ".join(self.relays)
        if self.forced:
            return f"relay chosen by the operator: {relays}"
        if self.rule is None:
            return f"no rule matched: default_relay {relays}"
        rule = self.rule
        return (
            f"{self.label} matched (priority {rule.priority}, sender_domain "
            f"{rule.sender_domain!r}, recipient_domain {rule.recipient_domain!r}): {relays}"
        )


class Router:
    """An immutable view of the routing table, built once per configuration."""

    def __init__(self, routes: Sequence[RouteSettings], default_relay: str) -> None:
        indexed = [(i, rule) for i, rule in enumerate(routes) if rule.enabled]
        indexed.sort(key=lambda item: (item[1].priority, -_specificity(item[1]), item[0]))
        self._rules = indexed
        self._default = default_relay

    @property
    def rules(self) -> list[tuple[int, RouteSettings]]:
        """The enabled rules in the order they are tried, with their position in ``routes``."""
        return list(self._rules)

    def route(self, sender: str, recipient: str) -> RouteDecision:
        sender_domain, recipient_domain = domain_of(sender), domain_of(recipient)
        for index, rule in self._rules:
            if _matches(rule.sender_domain, sender_domain) and _matches(
                rule.recipient_domain, recipient_domain
            ):
                return RouteDecision(tuple(rule.relay), rule, index)
        return RouteDecision((self._default,), None, None)

    def split(self, sender: str, recipients: Iterable[str]) -> dict[RouteDecision, tuple[str, ...]]:
        """Group recipients by their route; each group becomes one delivery, in order."""
        groups: dict[RouteDecision, list[str]] = {}
        for recipient in recipients:
            groups.setdefault(self.route(sender, recipient), []).append(recipient)
        return {decision: tuple(group) for decision, group in groups.items()}
