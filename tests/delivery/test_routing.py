"""Routing rules: priority, specificity, globs, default relay, splitting by recipient."""

from __future__ import annotations

import random

import pytest

from dispatch.config.settings import RouteSettings
from dispatch.config.types import RelayChoice
from dispatch.delivery.routing import Router, domain_of
from dispatch.delivery.schedule import RetrySchedule


def rule(
    relay: str | tuple[str, ...],
    sender: str = "*",
    recipient: str = "*",
    priority: int = 100,
    enabled: bool = True,
) -> RouteSettings:
    relays = (relay,) if isinstance(relay, str) else relay
    return RouteSettings(
        priority=priority,
        sender_domain=sender,
        recipient_domain=recipient,
        relay=RelayChoice(relays),
        enabled=enabled,
    )


ROUTES = [
    rule("catchall"),  # 0: no pattern
    rule("marketing", sender="*.marketing.example.com"),  # 1: one pattern
    rule("partner-mx", recipient="partner.example"),  # 2: one pattern
    rule("special", sender="app.example.com", recipient="*.gov"),  # 3: both patterns
    rule("urgent", recipient="vip.example", priority=1),  # 4: lower priority wins
    rule("disabled", recipient="vip.example", priority=0, enabled=False),  # 5
    rule(("primary", "backup"), recipient="FAILOVER.example"),  # 6: failover list
]


@pytest.mark.parametrize(
    ("sender", "recipient", "relays", "label"),
    [
        ("a@news.marketing.example.com", "x@anywhere.test", ("marketing",), "routes[1]"),
        ("a@marketing.example.com", "x@anywhere.test", ("catchall",), "routes[0]"),  # *. = sub only
        ("a@app.example.com", "x@agency.gov", ("special",), "routes[3]"),  # both > one
        ("a@news.marketing.example.com", "x@partner.example", ("marketing",), "routes[1]"),
        ("a@app.example.com", "x@VIP.example", ("urgent",), "routes[4]"),
        ("a@x.test", "x@failover.example", ("primary", "backup"), "routes[6]"),
        ("", "x@partner.example", ("partner-mx",), "routes[2]"),  # null sender: empty domain
    ],
)
def test_first_match_by_priority_then_specificity(
    sender: str, recipient: str, relays: tuple[str, ...], label: str
) -> None:
    decision = Router(ROUTES, "default").route(sender, recipient)
    assert decision.relays == relays
    assert decision.label == label
    assert label in decision.explain()


def test_no_match_goes_to_the_default_relay() -> None:
    router = Router([rule("x", recipient="only.example")], "fallback")
    decision = router.route("a@b.test", "c@d.test")
    assert decision.relays == ("fallback",)
    assert decision.rule is None
    assert decision.explain() == "no rule matched: default_relay fallback"


def test_equal_priority_and_specificity_keep_file_order() -> None:
    router = Router([rule("first", recipient="*.test"), rule("second", recipient="*.test")], "d")
    assert router.route("a@b", "c@d.test").relays == ("first",)


def test_split_groups_recipients_by_route_in_order() -> None:
    router = Router([rule("mx", recipient="external.test")], "local")
    groups = router.split("a@b.test", ["1@external.test", "2@internal.test", "3@EXTERNAL.test"])
    assert [(d.relays, r) for d, r in groups.items()] == [
        (("mx",), ("1@external.test", "3@EXTERNAL.test")),
        (("local",), ("2@internal.test",)),
    ]


def test_domain_of() -> None:
    assert domain_of("User@Example.COM") == "example.com"
    assert domain_of('"odd@local"@host.test') == "host.test"
    assert domain_of("postmaster") == ""
    assert domain_of("") == ""


def test_retry_schedule_repeats_the_last_delay_with_bounded_jitter() -> None:
    schedule = RetrySchedule([30, 300, 1800], max_retries=3, rng=random.Random(7))
    for attempts, base in [(1, 30), (2, 300), (3, 1800), (4, 1800), (9, 1800)]:
        delay = schedule.delay(attempts)
        assert base <= delay <= base * 1.1
    assert not schedule.exhausted(3)  # first attempt + 2 retries so far
    assert not schedule.exhausted(3)
    assert schedule.exhausted(4)  # first attempt + 3 retries: done
    with pytest.raises(ValueError, match="at least one delay"):
        RetrySchedule([], 1)
